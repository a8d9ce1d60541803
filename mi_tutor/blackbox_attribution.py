"""Notebook 00: what the first interpretability tools measure on the black box of `mi_tutor.blackbox`.

- Per-unit contributions (`unit_contributions`): the last hidden layer feeds a linear readout, so the
  prediction is exactly the sum of what each unit adds, plus a bias. This is direct logit
  attribution in miniature (the same decomposition, applied to a transformer's residual stream,
  is notebook 03's first tool). `basis_check` shows the sum holds in any rotated basis.
- Max activation (`max_activating_inputs`) and ablation of one unit (`mean_ablate_unit`,
  `zero_ablate_unit`, `ablation_costs`, `ablation_effects` for any layer), with the exact
  zero- vs mean-ablation gap of a unit that feeds a linear readout (`ablation_gap_formula`).
- Obstacle 1, non-linearity: `marginal_effect`, `weight_effects` (one weight means different things
  at different ages) and `linear_pieces` (a ReLU MLP is a patchwork of linear models).
- Obstacle 2, attribution under correlated inputs: `dimensionality_demo` and `credit_across_seeds`
  measure two kinds of credit, gradient credit (which input wires a unit reads) and variance
  credit (which input its activity varies with), which come apart when inputs are correlated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .blackbox import AGE_MAX, AGE_MIN, WageData, WageMLP, age_grid, as_2d, mse, one_thread, response_curves, train_mlp


# --------------------------------------------------------------------------------------
# Per-unit contributions (direct attribution in miniature), max activation, ablation
# --------------------------------------------------------------------------------------

def unit_contributions(model: WageMLP, ages: np.ndarray) -> np.ndarray:
    """What each last-layer unit adds to the predicted wage, [len(ages), width].

    The prediction is exactly ``contributions.sum(1) + model_offset(model)``.
    """
    h = torch.as_tensor(response_curves(model, ages), dtype=torch.float32)
    with torch.no_grad():
        return (h * model.out.weight[0] * model.y_std).numpy().astype(float)


def model_offset(model: WageMLP) -> float:
    """The constant part of the prediction (output bias, in thousands)."""
    with torch.no_grad():
        return float(model.out.bias[0] * model.y_std + model.y_mean)


def units_active_per_age(contributions: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """At each age, how many units contribute more than `threshold` x the largest contribution
    anywhere (a measure of how much the units' response curves overlap)."""
    c = np.abs(np.asarray(contributions))
    return (c > threshold * c.max()).sum(1)


def max_activating_inputs(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` inputs that activate each unit most.

    Args:
        acts: activations [n_inputs, n_units].
        k: how many inputs per unit.
    Returns:
        LongTensor [k, n_units]; column j lists unit j's top inputs, strongest first.
    """
    if acts.ndim != 2:
        raise ValueError(f"acts must be [n_inputs, n_units], got shape {tuple(acts.shape)}")
    if not 1 <= k <= acts.shape[0]:
        raise ValueError(f"k must be between 1 and n_inputs={acts.shape[0]}, got {k}")
    return acts.topk(k, dim=0).indices


def mean_ablate_unit(hidden: torch.Tensor, unit: int) -> torch.Tensor:
    """A copy of `hidden` [n_inputs, n_units] whose column `unit` is replaced by its mean over the inputs."""
    if hidden.ndim != 2:
        raise ValueError(f"hidden must be [n_inputs, n_units], got shape {tuple(hidden.shape)}")
    out = hidden.clone()
    out[:, unit] = hidden[:, unit].mean()
    return out


def zero_ablate_unit(hidden: torch.Tensor, unit: int) -> torch.Tensor:
    """A copy of `hidden` whose column `unit` is set to 0."""
    out = hidden.clone()
    out[:, unit] = 0.0
    return out


def predict_ablated(model: WageMLP, ages: np.ndarray, unit: int, mode: str = "mean",
                    reference_ages: np.ndarray | None = None) -> np.ndarray:
    """Predicted wages with one last-layer unit ablated.

    mode "zero" sets the unit to 0; "mean" sets it to its mean over `reference_ages`
    (default: `ages` themselves).
    """
    with torch.no_grad():
        h = model.hidden(ages)[-1].clone()
        if mode == "zero":
            h[:, unit] = 0.0
        elif mode == "mean":
            ref = h if reference_ages is None else model.hidden(reference_ages)[-1]
            h[:, unit] = ref[:, unit].mean()
        else:
            raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
        return model.readout(h).numpy().astype(float)


def ablation_effects(model: WageMLP, ages: np.ndarray, wages: np.ndarray, layer: int = -1) -> dict[str, np.ndarray]:
    """Increase in MSE when each unit of hidden layer `layer` (default: the last) is ablated, for zero and
    mean ablation ([width] each; the mean is taken over `ages` themselves)."""
    base = mse(model.predict(ages), wages)
    target = torch.as_tensor(np.asarray(wages, dtype=np.float32))
    with torch.no_grad():
        h = model.hidden(ages)[layer]
        out = {}
        for mode, ablate in (("zero", zero_ablate_unit), ("mean", mean_ablate_unit)):
            out[mode] = np.array([mse(model.run_from(layer, ablate(h, j)), target) - base for j in range(h.shape[1])])
    return out


def readout_weights(model: WageMLP) -> tuple[torch.Tensor, float]:
    """The last layer's readout in wage units: (w [width], b) with prediction = hidden @ w + b exactly."""
    with torch.no_grad():
        return (model.out.weight[0] * model.y_std).clone(), float(model.out.bias[0] * model.y_std + model.y_mean)


def _check_readout_args(hidden: torch.Tensor, w_out: torch.Tensor, target: torch.Tensor, unit: int) -> None:
    if hidden.ndim != 2:
        raise ValueError(f"hidden must be [n_inputs, n_units], got shape {tuple(hidden.shape)}")
    n, m = hidden.shape
    if tuple(w_out.shape) != (m,) or tuple(target.shape) != (n,):
        raise ValueError(f"w_out must be [{m}] and target [{n}] to match hidden {tuple(hidden.shape)}, "
                         f"got {tuple(w_out.shape)} and {tuple(target.shape)}")
    if not 0 <= unit < m:
        raise ValueError(f"unit must be between 0 and {m - 1}, got {unit}")


def ablation_costs(hidden: torch.Tensor, w_out: torch.Tensor, b_out: float, target: torch.Tensor,
                   unit: int) -> torch.Tensor:
    """What ablating one unit of a layer that feeds a linear readout costs.

    Args:
        hidden: activations [n_inputs, n_units]; the prediction is ``hidden @ w_out + b_out``.
        w_out: readout weights [n_units]; b_out: readout bias (a float).
        target: the values to predict [n_inputs].
        unit: the unit to ablate.
    Returns:
        tensor [2]: the increase in mean squared error over the intact readout when column `unit`
        is set to 0 (zero ablation) and when it is set to its mean over the inputs (mean ablation).
        `hidden` is not changed.
    """
    _check_readout_args(hidden, w_out, target, unit)
    base = ((hidden @ w_out + b_out - target) ** 2).mean()
    costs = [((ablated @ w_out + b_out - target) ** 2).mean() - base
             for ablated in (zero_ablate_unit(hidden, unit), mean_ablate_unit(hidden, unit))]
    return torch.stack(costs)


def ablation_gap_formula(hidden: torch.Tensor, w_out: torch.Tensor, b_out: float, target: torch.Tensor) -> torch.Tensor:
    """The zero- minus mean-ablation cost of every unit [n_units], from the derivation, not by ablating.

    Zero ablation = mean ablation followed by a shift of every prediction by -w_j * mean(h_j), so
    cost_zero - cost_mean = (w_j mean(h_j))^2 + 2 w_j mean(h_j) * mean(target - prediction).
    The second term vanishes when the intact model's residuals average to zero on these inputs.
    """
    _check_readout_args(hidden, w_out, target, 0)
    shift = w_out * hidden.mean(0)
    mean_residual = (target - (hidden @ w_out + b_out)).mean()
    return shift ** 2 + 2 * shift * mean_residual


def zero_fraction(model: WageMLP, ages: np.ndarray, layer: int = -1) -> np.ndarray:
    """For each unit of `layer`, the share of `ages` at which it is exactly 0 (a ReLU unit that is off)."""
    with torch.no_grad():
        return (model.hidden(ages)[layer] == 0).float().mean(0).numpy().astype(float)


@dataclass
class BasisCheck:
    """Per-unit contributions in the neuron basis vs a random rotated basis of the same layer."""

    max_sum_error: float         # |sum of rotated contributions - sum of unit contributions|, largest over inputs
    negative_share_units: float  # share of the units' activations that are < 0 (ReLU: none)
    negative_share_rotated: float  # the same for the coordinates along the rotated directions


def basis_check(model: WageMLP, ages: np.ndarray, seed: int = 0) -> BasisCheck:
    """Rotate the last hidden layer by a random orthogonal Q (and the readout by Q^T): the prediction and
    the sum of contributions are unchanged, but the coordinates are no longer ReLU outputs."""
    w, _ = readout_weights(model)
    with torch.no_grad():
        h = model.hidden(ages)[-1]
    q, _ = torch.linalg.qr(torch.randn(h.shape[1], h.shape[1], generator=torch.Generator().manual_seed(seed)))
    h_rot, w_rot = h @ q, q.T @ w
    err = float(((h_rot * w_rot).sum(1) - (h * w).sum(1)).abs().max())
    return BasisCheck(err, float((h < 0).float().mean()), float((h_rot < 0).float().mean()))


# --------------------------------------------------------------------------------------
# Obstacle 1, non-linearity: the same weight means different things at different ages
# --------------------------------------------------------------------------------------


def marginal_effect(model: WageMLP, ages: np.ndarray) -> np.ndarray:
    """d wage / d age at each age (thousands per year): for a line this is its slope everywhere."""
    a = torch.as_tensor(np.asarray(ages, dtype=np.float32)).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(a).sum(), a)
    return grad.numpy().astype(float)


def weight_effects(model: WageMLP, ages: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """How the prediction at each age responds to nudging each weight: d wage(age) / d w.

    Returns (effects [len(ages), n_parameters], parameter names like "layers.0.weight[3,0]").
    """
    names = []
    for pname, p in model.named_parameters():
        for idx in np.ndindex(*p.shape):
            names.append(f"{pname}[{','.join(map(str, idx))}]")
    rows = []
    params = list(model.parameters())
    with one_thread():
        for age in np.asarray(ages, dtype=np.float32):
            grads = torch.autograd.grad(model(torch.tensor([age]))[0], params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]).numpy())
    return np.stack(rows).astype(float), names


@dataclass
class EffectSummary:
    """How many weights have an effect whose sign or presence depends on the age."""

    n_weights: int
    sign_flips: int
    switched_off: int

    @property
    def flip_fraction(self) -> float:
        return self.sign_flips / self.n_weights

    @property
    def off_fraction(self) -> float:
        return self.switched_off / self.n_weights


def summarise_effects(effects: np.ndarray, tol: float = 0.1, off_tol: float = 1e-6, min_off: float = 0.1) -> EffectSummary:
    """Count weights whose effect flips sign (both > tol x and < -tol x their largest |effect|) and
    weights that do nothing at all (|effect| < off_tol x largest) on at least `min_off` of the ages."""
    e = np.asarray(effects)
    scale = np.abs(e).max(0)
    live = scale > 0
    flips = (e.max(0) > tol * scale) & (e.min(0) < -tol * scale) & live
    off = ((np.abs(e) <= off_tol * scale).mean(0) >= min_off) & live
    return EffectSummary(e.shape[1], int(flips.sum()), int(off.sum()))


def linear_weight_effects(ages: np.ndarray) -> np.ndarray:
    """The line's d wage / d (intercept, slope) at each age: (1, age), the same sign everywhere."""
    ages = np.asarray(ages, dtype=float)
    return np.column_stack([np.ones_like(ages), ages])


@dataclass
class LinearPieces:
    """A ReLU MLP along one input: where its on/off pattern changes, and how linear it is in between."""

    n_pieces: int
    kinks: np.ndarray          # ages at which some unit switches on or off
    slopes: np.ndarray         # the prediction's slope on each piece (k$ per year)
    max_misfit: float          # largest distance of the prediction from a straight line inside any piece


def linear_pieces(model: WageMLP, ages: np.ndarray | None = None) -> LinearPieces:
    """Split the age range where the ReLU on/off pattern of any hidden unit changes; on each piece the
    network is one linear function, so a line fitted to it must match to rounding error."""
    ages = np.sort(np.asarray(age_grid(2001) if ages is None else ages, dtype=float))
    with torch.no_grad():
        pattern = torch.cat([h > 0 for h in model.hidden(ages)], dim=1).numpy()
    pred = model.predict(ages)
    change = np.flatnonzero((pattern[1:] != pattern[:-1]).any(1)) + 1
    starts, ends = np.r_[0, change], np.r_[change, len(ages)]
    slopes, misfit = [], 0.0
    for a, b in zip(starts, ends):
        if b - a >= 3:
            coef = np.polyfit(ages[a:b], pred[a:b], 1)
            misfit = max(misfit, float(np.abs(np.polyval(coef, ages[a:b]) - pred[a:b]).max()))
            slopes.append(coef[0])
        elif b - a == 2:
            slopes.append((pred[a + 1] - pred[a]) / (ages[a + 1] - ages[a]))
    kinks = (ages[change - 1] + ages[change]) / 2
    return LinearPieces(len(starts), kinks, np.array(slopes), misfit)


# --------------------------------------------------------------------------------------
# Obstacle 2, dimensionality: extra inputs smear what one unit means
# --------------------------------------------------------------------------------------

DIMS_SETTINGS = ("age only", "age + experience", "age + experience + 8 noise")


def wage_features(age: np.ndarray, setting: str, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Input features for the dimensionality demo (the wage still depends on age only).

    "age only": [age]. "age + experience": also years of work experience = age - 18 - years
    of study (0-8) + noise, strongly correlated with age. "... + 8 noise": also 8 irrelevant
    standard-normal features.
    """
    if setting not in DIMS_SETTINGS:
        raise ValueError(f"setting must be one of {DIMS_SETTINGS}, got {setting!r}")
    cols, names = [np.asarray(age, dtype=float)], ["age"]
    if setting != "age only":
        study = rng.integers(0, 9, len(age))
        cols.append(np.clip(age - AGE_MIN - study + rng.normal(0, 1, len(age)), 0, None))
        names.append("experience")
    if setting.endswith("noise"):
        for i in range(8):
            cols.append(rng.normal(0, 1, len(age)))
            names.append(f"noise{i}")
    return np.column_stack(cols), names


def age_explained_share(model: WageMLP, x: np.ndarray) -> np.ndarray:
    """For each last-layer unit: the share of its activation variance that age alone explains.

    The unit's activations are grouped by age (2-year bins); the share is Var(E[h | age bin]) / Var(h).
    1.0 means "this unit is a function of age" and its response curve tells the whole story.
    """
    with torch.no_grad():
        h = model.hidden(x)[-1].numpy().astype(float)
    bins = np.digitize(x[:, 0], np.arange(AGE_MIN + 2, AGE_MAX, 2.0))
    total = h.var(0)
    means = np.zeros_like(h)
    for b in np.unique(bins):
        means[bins == b] = h[bins == b].mean(0)
    share = np.divide(means.var(0), total, out=np.ones_like(total), where=total > 1e-12)
    return share[total > 1e-12] if (total > 1e-12).any() else share


def unit_input_credit(model: WageMLP, x: np.ndarray) -> np.ndarray:
    """How each last-layer unit's activity divides among the input features, [width, d_in].

    Credit of input i to unit j = mean over inputs of |d h_j / d x_i| x std(x_i), normalised so each
    live unit's row sums to 1 (rows of units that never change are 0).
    """
    x = as_2d(x)
    xt = torch.as_tensor(x, dtype=torch.float32)
    with one_thread():
        jac = torch.func.vmap(torch.func.jacrev(lambda v: model.hidden(v[None])[-1][0]))(xt)  # [n, width, d_in]
    credit = jac.detach().abs().mean(0).numpy().astype(float) * x.std(0)
    total = credit.sum(1, keepdims=True)
    return np.divide(credit, total, out=np.zeros_like(credit), where=total > 1e-12)


@dataclass
class DimsResult:
    """One setting of the dimensionality demo."""

    setting: str
    inputs: list[str]
    test_mse: float
    unit_credit: np.ndarray    # `unit_input_credit`, [width, d_in]
    age_share: float           # mean over live units of `age_explained_share`
    output_age_credit: float   # share of the prediction's |d wage / d input| x spread that goes to age
    unit_age_shares: np.ndarray  # `age_explained_share` of each live unit
    input_corr: float          # correlation of the first two inputs (age, experience); 1.0 with one input

    @property
    def live_unit_credit(self) -> np.ndarray:
        """Each live unit's share of input credit that goes to age."""
        return self.unit_credit[self.unit_credit.sum(1) > 0, 0]

    @property
    def unit_age_credit(self) -> float:
        """Mean over live units of the share of the unit's input credit that goes to age."""
        return float(self.live_unit_credit.mean())


def _dims_run(data: WageData, setting: str, feature_seed: int, seed: int, steps: int, width: int) -> DimsResult:
    rng = np.random.default_rng(feature_seed)
    x_tr, names = wage_features(data.age_train, setting, rng)
    x_te, _ = wage_features(data.age_test, setting, rng)
    model = train_mlp(x_tr, data.wage_train, width=width, steps=steps, seed=seed).model
    x_t = torch.as_tensor(x_te, dtype=torch.float32).requires_grad_(True)
    (g,) = torch.autograd.grad(model(x_t).sum(), x_t)
    credit = np.abs(g.numpy()).mean(0) * x_te.std(0)
    shares = age_explained_share(model, x_te)
    return DimsResult(setting, names, mse(model.predict(x_te), data.wage_test), unit_input_credit(model, x_te),
                      float(shares.mean()), float(credit[0] / credit.sum()), shares,
                      float(np.corrcoef(x_te.T)[0, 1]) if x_te.shape[1] > 1 else 1.0)


def dimensionality_demo(data: WageData, settings: Sequence[str] = DIMS_SETTINGS, seed: int = 0,
                        steps: int = 600, width: int = 16) -> list[DimsResult]:
    """Train the same MLP on the same wages with more and more input features; measure how much of
    each unit's activity (and of the prediction) still traces back to age."""
    return [_dims_run(data, setting, seed + 1, seed, steps, width) for setting in settings]


def credit_across_seeds(data: WageData, seeds: Sequence[int], setting: str = "age + experience",
                        feature_seed: int = 1, steps: int = 600, width: int = 16) -> list[DimsResult]:
    """The same inputs (features drawn with `feature_seed`), the same wages, one MLP per training seed:
    how much of the two credit measures is the data, and how much the training run."""
    return [_dims_run(data, setting, feature_seed, s, steps, width) for s in seeds]


def dims_table(results: Sequence[DimsResult]) -> str:
    """The demo's results as a fixed-width text table."""
    lines = [f"{'inputs':<28}{'d_in':>5}{'test MSE':>10}{'unit credit to age':>20}{'unit var. from age':>20}"
             f"{'output credit to age':>22}"]
    for r in results:
        lines.append(f"{r.setting:<28}{len(r.inputs):>5}{r.test_mse:>10.1f}{r.unit_age_credit:>20.2f}"
                     f"{r.age_share:>20.2f}{r.output_age_credit:>22.2f}")
    return "\n".join(lines)


def plot_dims(results: Sequence[DimsResult]):
    """One heatmap per setting: rows = last-layer units, columns = inputs, colour = share of the unit's credit."""
    import matplotlib.pyplot as plt

    widths = [max(len(r.inputs), 3) for r in results]
    fig, axes = plt.subplots(1, len(results), figsize=(3 + 0.45 * sum(widths), 3.8),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, r in zip(axes[0], results):
        im = ax.imshow(r.unit_credit, cmap="Greens", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(r.inputs)))
        ax.set_xticklabels([n.replace("experience", "exper.") for n in r.inputs], rotation=90, fontsize=8)
        n = len(r.inputs)
        ax.set_title(f"{n} input{'s' if n > 1 else ''}\nunit credit to age {r.unit_age_credit:.2f}", fontsize=9)
        ax.set_yticks([])
    axes[0][0].set_ylabel("last-layer unit")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, pad=0.02, label="share of the unit's input credit")
    return fig


def plot_units(model: WageMLP, highlight: Sequence[int] = (), top_inputs: np.ndarray | None = None):
    """Left: each last-layer unit's response curve (`highlight`ed units drawn thick, with their
    `top_inputs` ages [k, width] marked). Right: what each unit adds to the wage, and their sum."""
    import matplotlib.pyplot as plt

    ages = age_grid()
    acts = response_curves(model, ages)
    contrib = unit_contributions(model, ages)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    cmap = plt.get_cmap("tab20")
    for j in range(acts.shape[1]):
        lw, alpha = (2.2, 1.0) if j in highlight else (1.0, 0.7)
        a1.plot(ages, acts[:, j], color=cmap(j % 20), lw=lw, alpha=alpha)
        a2.plot(ages, contrib[:, j], color=cmap(j % 20), lw=lw, alpha=alpha)
        if top_inputs is not None and j in highlight:
            a1.plot(top_inputs[:, j], np.interp(top_inputs[:, j], ages, acts[:, j]), "o", color=cmap(j % 20), ms=6,
                    mec="k", label=f"unit {j}: top inputs")
    a2.plot(ages, contrib.sum(1), "k", lw=2.5, label=f"sum = prediction - {model_offset(model):.0f} (bias)")
    a2.axhline(0, color="grey", lw=0.8)
    a1.set_title(f"response curves of the {acts.shape[1]} last-layer units", fontsize=10)
    a1.set_xlabel("age (years)")
    a1.set_ylabel("activation")
    a2.set_title("each unit's contribution to the wage (k$)", fontsize=10)
    a2.set_xlabel("age (years)")
    a2.legend(fontsize=8)
    if top_inputs is not None and highlight:
        a1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_nonlinearity(model: WageMLP, line_coef: np.ndarray, examples: int = 4):
    """Left: the effect of one more year of age, line vs MLP. Right: the effect of nudging single
    MLP weights, against age (the line's slope nudge is shown for comparison)."""
    import matplotlib.pyplot as plt

    ages = age_grid(120)
    eff, names = weight_effects(model, ages)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.axhline(line_coef[1], color="tab:blue", lw=2, label=f"line: {line_coef[1]:+.2f} at every age")
    a1.plot(ages, marginal_effect(model, ages), color="tab:red", lw=2, label="MLP: depends on the age")
    a1.axhline(0, color="grey", lw=0.8)
    a1.set_title("what does one more year of age add? (k$ / year)", fontsize=10)
    a1.set_xlabel("age (years)")
    a1.legend(fontsize=8)
    # the first-layer weights whose effect swings most in sign
    first = [i for i, n in enumerate(names) if n.startswith("layers.0.weight")]
    swing = np.minimum(eff[:, first].max(0), -eff[:, first].min(0))
    chosen = [first[i] for i in np.argsort(-swing)[:examples]]
    for i in chosen:
        a2.plot(ages, eff[:, i] / np.abs(eff[:, i]).max(), lw=1.8, label=f"MLP {names[i]}")
    lin = linear_weight_effects(ages)[:, 1]
    a2.plot(ages, lin / lin.max(), color="tab:blue", lw=2, ls="--", label="line: slope")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_title("effect of nudging one weight on the prediction\n(scaled to max 1)", fontsize=10)
    a2.set_xlabel("age (years)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_ablation(model: WageMLP, data: WageData, effects: dict[str, np.ndarray]):
    """Left: per-unit MSE increase under zero vs mean ablation. Right: the fit with the unit that
    matters most (by mean ablation) removed, both ways."""
    import matplotlib.pyplot as plt

    width = len(effects["mean"])
    top = int(np.argmax(effects["mean"]))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    idx = np.arange(width)
    a1.bar(idx - 0.2, effects["zero"], 0.4, label="zero ablation", color="tab:orange")
    a1.bar(idx + 0.2, effects["mean"], 0.4, label="mean ablation", color="tab:purple")
    a1.axhline(0, color="grey", lw=0.8)
    a1.set_xticks(idx)
    a1.set_xlabel("last-layer unit")
    a1.set_ylabel("test MSE increase (k$²)")
    a1.set_title("how much does removing one unit hurt?", fontsize=10)
    a1.legend(fontsize=8)
    ages = age_grid()
    a2.scatter(data.age_test, data.wage_test, s=4, alpha=0.25, color="grey")
    a2.plot(ages, model.predict(ages), "k", lw=2, label="intact MLP")
    a2.plot(ages, predict_ablated(model, ages, top, "mean", data.age_test), color="tab:purple", lw=2,
            label=f"unit {top} mean-ablated")
    a2.plot(ages, predict_ablated(model, ages, top, "zero"), color="tab:orange", lw=2, ls="--",
            label=f"unit {top} zero-ablated")
    a2.set_xlabel("age (years)")
    a2.set_ylabel("wage (k$ / year)")
    a2.set_title(f"where does unit {top} matter?", fontsize=10)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = [
    "unit_contributions", "model_offset", "units_active_per_age", "max_activating_inputs", "mean_ablate_unit",
    "zero_ablate_unit", "predict_ablated", "ablation_effects", "readout_weights", "ablation_costs",
    "ablation_gap_formula", "zero_fraction", "BasisCheck", "basis_check",
    "marginal_effect", "weight_effects", "EffectSummary", "summarise_effects", "linear_weight_effects",
    "LinearPieces", "linear_pieces",
    "DIMS_SETTINGS", "wage_features", "age_explained_share", "unit_input_credit", "DimsResult",
    "dimensionality_demo", "credit_across_seeds", "dims_table", "plot_dims",
    "plot_units", "plot_nonlinearity", "plot_ablation",
]
