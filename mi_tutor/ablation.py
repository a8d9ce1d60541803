"""The ablation critique: what destructive experiments show, what they hide, and what observing can add.

Notebook 05 puts four claims of an essay against ablation studies ("lobotomy") to the test on
the two real tasks of notebooks 03 (IOI) and 04 (successors):

1. components are assumed local and separable  -> zero / mean / resample disagree? (`sweep`)
2. removal creates an artificial state           -> damage on unrelated text (`control_damage`)
3. damage may be mistaken for mechanism          -> task KL vs control KL (`damage_flags`)
4. entropy rise mistaken for mechanism           -> entropy change, task and control

and adds the standard answers of the best-practice literature: self-repair split into direct
effect and compensation (`self_repair`), OR-like backups (`pair_interactions`), noising vs
denoising (`noising_denoising`), observational methods (`logit_lens`, `covariation`,
`probe_layers`, attention, DLA, attribution patching) and a causal-scrubbing-style test
(`scrub`). Every ablation and patch runs on the engine of `mi_tutor.lab.patching`.

Both tasks are wrapped as a `Task`: aligned clean prompts, aligned counterfactual prompts, and
a logit difference (answer - wrong) at the final position.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .env import trim_memory
from .lab.hooks import Head, Metric, all_heads, declare_logits, head_label, head_outputs
from .lab.patching import (KINDS, Kind, Patch, ablation_values, copies_runner, heads_replaced, patch_hooks, run_copies)
from .lab.readout import DLA, direct_logit_attribution, kl_div
from .lab.scores import ranks

#: Plain text with no names, no lists and no ordinal sequences: the "control" on which an
#: ablation should change nothing if the head it removes is specific to a task.
CONTROL_TEXT = (
    "The soup was ready after an hour on a low flame, and the kitchen smelled of onions and pepper. "
    "Rain had been falling since the morning, so the streets were quiet and the river was high. "
    "A good bridge needs a firm base, careful drawings and a lot of patience from its builders. "
    "Most plants grow faster in spring, when the soil is warm and the days are long."
)


# --------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------


@dataclass
class Task:
    """Aligned prompts, their counterfactuals, and the logit difference answer - wrong at the end.

    Attributes:
        name: "IOI" or "successor" (or anything).
        tokens, counterfactual: ``[batch, pos]`` (same shape).
        answer, wrong: ``[batch]`` token ids.
        mean_reference: optional ``[n, pos]`` counterfactual prompts (same template) whose mean
            is used by mean ablation; default `counterfactual` (with one prompt, mean = resample).
    """

    name: str
    tokens: torch.Tensor
    counterfactual: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor
    mean_reference: torch.Tensor | None = None

    def __post_init__(self):
        if self.tokens.ndim != 2 or self.tokens.shape != self.counterfactual.shape:
            raise ValueError(f"tokens and counterfactual must be aligned [batch, pos]: "
                             f"{tuple(self.tokens.shape)} vs {tuple(self.counterfactual.shape)}")
        if self.answer.shape != (self.tokens.shape[0],) or self.wrong.shape != self.answer.shape:
            raise ValueError("answer and wrong need one token id per prompt")
        if self.mean_reference is not None and self.mean_reference.shape[1] != self.tokens.shape[1]:
            raise ValueError("mean_reference prompts must have the same length as the prompts (same template)")

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def metric(self) -> Metric:
        """metric(logits): per-prompt logit difference at the final position (works on stacked
        copies of the batch). It declares the logits it reads (`hooks.declare_logits`)."""
        return declare_logits(self._logit_diff, torch.cat([self.answer, self.wrong]))

    def _logit_diff(self, logits: torch.Tensor) -> torch.Tensor:
        reps = logits.shape[0] // len(self)
        b = torch.arange(logits.shape[0])
        last = logits[b, -1]
        return last[b, self.answer.repeat(reps)] - last[b, self.wrong.repeat(reps)]


def ioi_task(ds, mean_ds=None) -> Task:
    """IOI (notebook 03): answer = IO, wrong = S, counterfactual = the ABC prompts; mean ablation
    uses the ABC prompts of `mean_ds` (a larger dataset of the same template) if given."""
    return Task("IOI", ds.tokens, ds.abc_tokens, ds.io, ds.s, None if mean_ds is None else mean_ds.abc_tokens)


def successor_task(prompts, mean_prompts=None) -> Task:
    """Successors (notebook 04): answer = the next item, wrong = the last item again (copying),
    counterfactual = the same category's items in an order with no succession; mean ablation uses
    the corrupted prompts of `mean_prompts` if given."""
    return Task("successor", prompts.tokens, prompts.corrupt, prompts.target, prompts.tokens[:, -2].clone(),
                None if mean_prompts is None else mean_prompts.corrupt)


def subset_successor(prompts, categories: Sequence[str], otok):
    """The successor prompts whose category is in `categories` (by name), same class."""
    keep = [i for i, c in enumerate(prompts.category.tolist()) if otok.category_names[c] in categories]
    if not keep:
        raise ValueError(f"no prompt in categories {list(categories)}; have {otok.category_names}")
    t = torch.tensor(keep)
    return type(prompts)(prompts.tokens[t], prompts.corrupt[t], prompts.target[t], prompts.target_index[t],
                         prompts.category[t], [prompts.text[i] for i in keep])


def task_values(model, task: Task, kind: Kind) -> dict[int, torch.Tensor]:
    """Replacement values for every head on `task` (hook_z shaped): zero, the counterfactual
    mean per position (over `task.mean_reference` if set), or the counterfactual prompt itself
    (resample, aligned). The same values as `lab.patching.ablation_values`, read a few prompts at a time."""
    if kind not in KINDS:
        raise ValueError(f"unknown ablation kind {kind!r}; use one of {KINDS}")
    if kind == "zero":
        return ablation_values(model, task.tokens, kind)
    ref = task.mean_reference if (kind == "mean" and task.mean_reference is not None) else task.counterfactual
    z = head_outputs(model, ref, max_prompts=8)
    if kind == "mean":
        return {l: v.mean(0, keepdim=True).expand(len(task), *v.shape[1:]).clone() for l, v in z.items()}
    return z


def kl_entropy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(clean || copy) and entropy change (copy - clean) per copy, each the mean over every other axis.

    `logits`: ``[1 + n, ..., vocab]``, row 0 the clean run. One copy at a time, so that only a few full-vocabulary
    temporaries of one copy exist at once (the same numbers as `kl_div` and `entropy` on the whole stack).
    """
    p = logits[0].float().log_softmax(-1)
    pe = p.exp()
    e0 = -(pe * p).sum(-1)
    kls, ents = [], []
    for x in logits[1:]:
        q = x.float().log_softmax(-1)
        kls.append((pe * (p - q)).sum(-1).mean())
        ents.append((-(q.exp() * q).sum(-1) - e0).mean())
        del q
    if not kls:
        return torch.zeros(0), torch.zeros(0)
    return torch.stack(kls), torch.stack(ents)


def _as_groups(heads) -> list[list[Head]]:
    groups = []
    for g in heads:
        if isinstance(g[0], (int, np.integer)):
            groups.append([(int(g[0]), int(g[1]))])
        else:
            groups.append([(int(l), int(h)) for l, h in g])
    return groups


def resample_head(z: torch.Tensor, head: int, perm: torch.Tensor) -> torch.Tensor:
    """Resample ablation of one head: prompt i gets head `head`'s output from prompt ``perm[i]``.

    Args:
        z: ``[batch, pos, head, d_head]`` head outputs; perm: ``[batch]`` source prompt per prompt.
    Returns a new tensor; the other heads are untouched.
    """
    out = z.clone()
    out[:, :, head] = z[perm][:, :, head]
    return out


def control_kl(clean_logits: torch.Tensor, ablated_logits: torch.Tensor) -> torch.Tensor:
    """Mean over every prompt and position of KL(clean || ablated) in nats (a 0-d tensor)."""
    return kl_div(clean_logits, ablated_logits).mean()


def split_total_effect(ld_clean: float, ld_ablated: float, dla_clean: torch.Tensor, dla_ablated: torch.Tensor,
                       head: tuple[int, int]) -> torch.Tensor:
    """[total, direct, compensation] for one ablated head: total = clean - ablated logit difference,
    direct = the fall of the head's own DLA term, compensation = direct - total."""
    total = float(ld_clean) - float(ld_ablated)
    direct = float(dla_clean[head] - dla_ablated[head])
    return torch.tensor([total, direct, direct - total])


# --------------------------------------------------------------------------------------
# Sweeps: task effect, task KL and task entropy for many ablations at once
# --------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """One ablation per entry of `groups` (a head, or several heads at once).

    `drop` = clean metric - ablated metric (positive: the behaviour needed it); `kl` and
    `entropy_change` at the task's final position (mean over prompts).
    """

    groups: list[list[Head]]
    clean: float
    drop: torch.Tensor
    kl: torch.Tensor
    entropy_change: torch.Tensor
    per_prompt: torch.Tensor | None = None  # [n_groups, batch] drop on each prompt (for bootstrap intervals)
    clean_per_prompt: torch.Tensor | None = None  # [batch] the unpatched metric on each prompt

    def table(self, n_layers: int, n_heads: int, what: str = "drop") -> torch.Tensor:
        """Single-head results as [n_layers, n_heads] (NaN where not measured)."""
        out = torch.full((n_layers, n_heads), float("nan"))
        for g, v in zip(self.groups, getattr(self, what)):
            if len(g) == 1:
                out[g[0]] = v
        return out


@torch.no_grad()
def sweep(model, tokens: torch.Tensor, values: dict[int, torch.Tensor], metric: Callable, heads=None,
          max_rows: int = 96) -> Sweep:
    """Replace each head (or group of heads) in `heads` by `values`, one copy each, batched.

    Args:
        values: {layer: [batch, pos, head, d_head]} (e.g. `task_values`, or `head_outputs` of a
            source run for activation patching).
        heads: a list of (layer, head) or of lists of them; default every head.
        max_rows: rows per forward pass (memory: keep it small on a 2 GB machine).
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got {tuple(tokens.shape)}")
    groups = _as_groups(all_heads(model) if heads is None else heads)
    if not groups:
        raise ValueError("no heads to ablate")
    batch = tokens.shape[0]
    per = max(1, max_rows // batch - 1)
    run = copies_runner(model, tokens)  # the patching engine; fast_llama on SmolLM2
    drops, kls, ents, pps, clean, clean_pp = [], [], [], [], None, None
    for i in range(0, len(groups), per):
        chunk = groups[i:i + per]
        logits = run([[Patch(l, h, values[l]) for l, h in g] for g in chunk])
        last = logits[:, :, -1]  # [1 + n, batch, vocab]
        mp = torch.stack([metric(x).float() for x in logits])  # [1 + n, batch]
        m = mp.mean(-1)
        clean, clean_pp = float(m[0]), mp[0]
        drops.append(m[0] - m[1:])
        pps.append(mp[0] - mp[1:])
        kl, ent = kl_entropy(last)
        kls.append(kl)
        ents.append(ent)
    return Sweep(groups, clean, torch.cat(drops), torch.cat(kls), torch.cat(ents), torch.cat(pps), clean_pp)


def task_sweeps(model, task: Task, kinds: Sequence[str] = KINDS, max_rows: int = 96) -> dict[str, Sweep]:
    """Every head ablated with each kind on `task`: {kind: Sweep}. Resample = noising."""
    return {k: sweep(model, task.tokens, task_values(model, task, k), task.metric, max_rows=max_rows) for k in kinds}


# --------------------------------------------------------------------------------------
# Damage on control text
# --------------------------------------------------------------------------------------


def control_tokens(model, text: str = CONTROL_TEXT, rows: int = 2, length: int = 24) -> torch.Tensor:
    """`rows` different segments of `text`, each BOS + (`length` - 1) tokens: ``[rows, length]``.

    Two rows let resample ablation on control text take a head's value from the OTHER segment.
    """
    ids = model.to_tokens(text, prepend_bos=False)[0]
    need = rows * (length - 1)
    if len(ids) < need:
        raise ValueError(f"control text has {len(ids)} tokens; {rows} rows of {length} need {need}")
    bos = model.to_tokens("", prepend_bos=True)[0, :1]
    return torch.stack([torch.cat([bos, ids[r * (length - 1):(r + 1) * (length - 1)]]) for r in range(rows)])


def control_values(model, ctrl: torch.Tensor, kind: Kind) -> dict[int, torch.Tensor]:
    """Replacement values on control text: zeros; the mean over all rows and positions; or the
    value of the next row (resample from another sentence)."""
    if ctrl.shape[0] < 2 and kind == "resample":
        raise ValueError("resample on control text needs at least 2 rows")
    z = head_outputs(model, ctrl)
    if kind == "zero":
        return {l: torch.zeros_like(v) for l, v in z.items()}
    if kind == "mean":
        return {l: v.mean((0, 1), keepdim=True).expand_as(v).clone() for l, v in z.items()}
    if kind == "resample":
        return {l: v.roll(1, 0) for l, v in z.items()}
    raise ValueError(f"unknown ablation kind {kind!r}; use one of {KINDS}")


@dataclass
class Damage:
    """Off-task damage of each ablation: KL from the clean model and entropy change, averaged over
    every position of the control text."""

    groups: list[list[Head]]
    kl: torch.Tensor
    entropy_change: torch.Tensor


@torch.no_grad()
def control_damage(model, ctrl: torch.Tensor, kind: Kind, heads=None, max_rows: int = 16) -> Damage:
    """KL(clean || ablated) and entropy change on control text, per head (or group) in `heads`."""
    groups = _as_groups(all_heads(model) if heads is None else heads)
    values = control_values(model, ctrl, kind)
    batch = ctrl.shape[0]
    per = max(1, max_rows // batch - 1)
    kls, ents = [], []
    for i in range(0, len(groups), per):
        chunk = groups[i:i + per]
        logits, _ = run_copies(model, ctrl, [[Patch(l, h, values[l]) for l, h in g] for g in chunk], last_only=False)
        kl, ent = kl_entropy(logits)
        kls.append(kl)
        ents.append(ent)
        del logits
    return Damage(groups, torch.cat(kls), torch.cat(ents))


def damage_flags(task_drop: torch.Tensor, task_kl: torch.Tensor, control_kl: torch.Tensor, k: int = 10) -> list[int]:
    """Indices among the top-`k` task effects whose ablation changes the unrelated control text at
    least as much as it changes the task's answer distribution (control KL >= task KL): damage,
    not a task-specific mechanism."""
    top = torch.argsort(task_drop, descending=True)[:k].tolist()
    return [i for i in top if float(control_kl[i]) >= float(task_kl[i])]


# --------------------------------------------------------------------------------------
# Comparing ablation methods
# --------------------------------------------------------------------------------------


def verdict_flips(scores: dict[str, torch.Tensor], top: int = 10, low: int = 40) -> list[dict]:
    """Heads in one method's top `top` that another method ranks below `low`: the verdict flips."""
    rk = {m: ranks(s) for m, s in scores.items()}
    H = next(iter(scores.values())).shape[1]
    rows = []
    for i in range(next(iter(scores.values())).numel()):
        r = {m: int(v.flatten()[i]) for m, v in rk.items()}
        if min(r.values()) <= top and max(r.values()) > low:
            rows.append({"head": head_label((i // H, i % H)), **{f"{m} rank": v for m, v in r.items()}})
    return sorted(rows, key=lambda d: min(v for k, v in d.items() if k != "head"))


# --------------------------------------------------------------------------------------
# Self-repair: total effect = direct effect - compensation
# --------------------------------------------------------------------------------------


@dataclass
class SelfRepair:
    """Ablating `heads`: total effect on the logit difference, split exactly into the change of
    the ablated heads' own direct terms (direct) minus the rise of every other term (compensation).

    ``total = direct - compensation``; `by_part` maps each other component ("L12H3", "MLP 20",
    "embed/bias") to its rise in direct logit attribution.
    """

    heads: list[Head]
    ld_clean: float
    ld_ablated: float
    direct: float
    by_part: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.ld_clean - self.ld_ablated

    @property
    def compensation(self) -> float:
        return self.direct - self.total

    @property
    def repaired(self) -> float:
        """Share of the direct effect that the rest of the network made up (0 = none, 1 = all)."""
        return self.compensation / self.direct if abs(self.direct) > 1e-9 else float("nan")

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k components whose direct contribution rose most."""
        return sorted(self.by_part.items(), key=lambda kv: -kv[1])[:k]


def self_repair(model, task: Task, heads: Sequence[Head], values: dict[int, torch.Tensor],
                dla_clean: DLA | None = None) -> SelfRepair:
    """Ablate `heads` (replace by `values`) and split the total effect with direct logit attribution.

    Both runs are attributed with `lab.readout.direct_logit_attribution` (each with its own final-norm
    scale), so every term is exact and the parts add up to each run's logit difference.
    """
    heads = [(int(l), int(h)) for l, h in heads]
    if not heads:
        raise ValueError("give at least one head to ablate")
    c = dla_clean or direct_logit_attribution(model, task.tokens, task.answer, task.wrong)
    a = direct_logit_attribution(model, task.tokens, task.answer, task.wrong,
                                          fwd_hooks=patch_hooks(model, heads_replaced(heads, values)))
    direct = float(sum(c.heads[h] - a.heads[h] for h in heads))
    parts: dict[str, float] = {}
    rise = a.heads - c.heads
    for l in range(rise.shape[0]):
        for h in range(rise.shape[1]):
            if (l, h) not in heads:
                parts[head_label((l, h))] = float(rise[l, h])
        parts[f"MLP {l}"] = float(a.mlp[l] - c.mlp[l])
        attn_bias = float((a.attn[l] - a.heads[l].sum()) - (c.attn[l] - c.heads[l].sum()))
        if abs(attn_bias) > 0:
            parts[f"attn bias {l}"] = attn_bias
    parts["embed/bias"] = a.rest - c.rest
    return SelfRepair(heads, c.logit_diff, a.logit_diff, direct, parts)


# --------------------------------------------------------------------------------------
# OR-like backups: pairs that matter together but not alone
# --------------------------------------------------------------------------------------


@dataclass
class Pairs:
    """Single and pairwise ablation drops over `heads`; interaction = pair - single a - single b.

    A large positive interaction is OR-like: either head suffices, so each alone looks unimportant.
    `single_pp` ``[n, batch]`` and `pair_pp` ``[n, n, batch]``: the same drops on each prompt (for intervals).
    """

    heads: list[Head]
    single: torch.Tensor
    pair: torch.Tensor
    single_pp: torch.Tensor | None = None
    pair_pp: torch.Tensor | None = None
    part: torch.Tensor | None = None  # [batch] the sub-task (template) of each prompt, when pooled

    @property
    def interaction(self) -> torch.Tensor:
        it = self.pair - self.single[:, None] - self.single[None, :]
        return it.fill_diagonal_(float("nan"))

    def strongest(self, k: int = 3) -> list[tuple[Head, Head, float]]:
        """The k pairs with the largest positive interaction."""
        it = torch.nan_to_num(torch.triu(self.interaction, 1), nan=-float("inf"))
        it[torch.tril(torch.ones_like(it, dtype=torch.bool))] = -float("inf")
        n = len(self.heads)
        idx = it.flatten().topk(min(k, n * (n - 1) // 2)).indices
        return [(self.heads[int(i) // n], self.heads[int(i) % n], float(it.flatten()[i])) for i in idx]


def pair_interactions(model, task: Task, heads: Sequence[Head], values: dict[int, torch.Tensor],
                      max_rows: int = 96) -> Pairs:
    """Ablate every head of `heads` alone and every pair together (one batched sweep)."""
    heads = [(int(l), int(h)) for l, h in heads]
    if len(heads) < 2:
        raise ValueError("need at least two heads to test pairs")
    pairs = [(i, j) for i in range(len(heads)) for j in range(i + 1, len(heads))]
    res = sweep(model, task.tokens, values, task.metric, [[h] for h in heads] + [[heads[i], heads[j]] for i, j in pairs],
                max_rows=max_rows)
    n = len(heads)
    single = res.drop[:n]
    pair = torch.full((n, n), float("nan"))
    pair_pp = torch.full((n, n, len(task)), float("nan"))
    for (i, j), v, pp in zip(pairs, res.drop[n:], res.per_prompt[n:]):
        pair[i, j] = pair[j, i] = v
        pair_pp[i, j] = pair_pp[j, i] = pp
    return Pairs(heads, single, pair, res.per_prompt[:n], pair_pp)


# --------------------------------------------------------------------------------------
# Noising vs denoising
# --------------------------------------------------------------------------------------


@dataclass
class NoiseDenoise:
    """Per head, as a share of (clean - corrupted): `necessity` = drop when its output on the
    clean run comes from the counterfactual (noising); `sufficiency` = gain when its clean output
    is put into the counterfactual run (denoising). `noise_pp`, `gain_pp` ``[n_heads, batch]``: the noising drop
    and the denoising gain on each prompt (in logit difference); `clean_pp`, `corrupt_pp` ``[batch]`` the metrics."""

    heads: list[Head]
    necessity: torch.Tensor
    sufficiency: torch.Tensor
    clean: float
    corrupt: float
    noise_pp: torch.Tensor | None = None
    gain_pp: torch.Tensor | None = None
    clean_pp: torch.Tensor | None = None
    corrupt_pp: torch.Tensor | None = None
    part: torch.Tensor | None = None  # [batch] the sub-task (template) of each prompt, when pooled


def noising_denoising(model, task: Task, heads: Sequence[Head], max_rows: int = 96) -> NoiseDenoise:
    """Activation patching both ways for the same heads."""
    heads = [(int(l), int(h)) for l, h in heads]
    z_clean, z_cf = head_outputs(model, task.tokens), head_outputs(model, task.counterfactual)
    noise = sweep(model, task.tokens, z_cf, task.metric, heads, max_rows)
    denoise = sweep(model, task.counterfactual, z_clean, task.metric, heads, max_rows)
    gap = noise.clean - denoise.clean
    if abs(gap) < 1e-6:
        raise ValueError("clean and counterfactual give the same metric: nothing to patch")
    return NoiseDenoise(heads, noise.drop / gap, -denoise.drop / gap, noise.clean, denoise.clean,
                        noise.per_prompt, -denoise.per_prompt, noise.clean_per_prompt, denoise.clean_per_prompt)


# --------------------------------------------------------------------------------------
# Observational methods (the network is left as it is)
# --------------------------------------------------------------------------------------


def probe_layers(resid: torch.Tensor, labels: torch.Tensor, folds: int = 4, alpha: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Cross-validated accuracy of a linear probe (standardised inputs, ridge classifier) per layer.

    Args:
        resid: ``[n_layers + 1, batch, d]`` (see `final_residuals`).
        labels: ``[batch]`` binary labels.
    """
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = labels.numpy()
    if len(np.unique(y)) != 2:
        raise ValueError("the probe needs two classes in labels")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    acc = []
    for layer in resid:
        clf = make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha))
        acc.append(cross_val_score(clf, layer.double().numpy(), y, cv=cv).mean())
    return torch.tensor(acc)


# --------------------------------------------------------------------------------------
# A causal-scrubbing-style test
# --------------------------------------------------------------------------------------


@dataclass
class Scrub:
    """Behaviour kept when every head OUTSIDE the hypothesis is resampled from another prompt.

    `kept` = scrubbed / clean logit difference; `random_kept` = the same with random head sets of
    equal size kept instead (a baseline); `none_kept` = every head resampled.
    """

    n_heads: int
    clean: float
    scrubbed: float
    random_kept: list[float]
    none_kept: float

    @property
    def kept(self) -> float:
        return self.scrubbed / self.clean


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A random permutation with no fixed point (every prompt takes values from ANOTHER prompt)."""
    if n < 2:
        raise ValueError("need at least 2 prompts to resample from another one")
    g = torch.Generator().manual_seed(seed)
    while True:
        p = torch.randperm(n, generator=g)
        if not (p == torch.arange(n)).any():
            return p


@torch.no_grad()
def scrub(model, task: Task, keep: Sequence[Head], n_random: int = 3, seed: int = 0, max_rows: int = 80) -> Scrub:
    """Hypothesis: only `keep` matters. Resample every other head from another prompt of the task
    (a random derangement of the prompts, i.e. other names, other order) and measure what is left.
    `max_rows`: rows per forward pass (each copy patches almost every head, so every layer runs on every row)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    keep = {(int(l), int(h)) for l, h in keep}
    heads = all_heads(model)
    z = head_outputs(model, task.tokens, max_prompts=8)
    perm = derangement(len(task), seed)
    other = {l: v[perm] for l, v in z.items()}

    rng = np.random.default_rng(seed)
    picks = [{heads[i] for i in rng.choice(len(heads), len(keep), replace=False)} for _ in range(n_random)]
    sets = [[h for h in heads if h not in keep]] + [[h for h in heads if h not in p] for p in picks] + [heads]
    run = copies_runner(model, task.tokens)  # the engine's fastest exact backend, a few copies per pass
    per = max(1, max_rows // len(task) - 1)
    lds = []
    for i in range(0, len(sets), per):
        logits = run([[Patch(l, h, other[l]) for l, h in s] for s in sets[i:i + per]])
        clean = float(task.metric(logits[0]).mean())
        lds += [float(task.metric(x).mean()) for x in logits[1:]]
        del logits
    trim_memory()
    return Scrub(len(keep), clean, lds[0], lds[1:-1], lds[-1])


# --------------------------------------------------------------------------------------
# Damage on control text, for the heads the sweeps rank high
# --------------------------------------------------------------------------------------


@dataclass
class DamageReport:
    """Damage on control text for a shortlist of heads, and the top task effects it flags.

    `shortlist`: every head in any task's and any method's top `k_short`; `damage[kind]`: its
    control-text damage; `flagged[kind]`: shortlist indices whose control KL >= task KL among
    a task's top `k_flag`; `rows`: one row per flagged (task, method, head).
    """

    shortlist: list[Head]
    damage: dict[str, Damage]
    flagged: dict[str, list[int]]
    rows: list[dict]

    @property
    def labels(self) -> list[str]:
        return [head_label(h) for h in self.shortlist]

    def table(self):
        """The flagged entries as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["task", "ablation", "head", "task drop", "task KL", "control KL"])


def damage_report(model, sweeps: dict[str, dict[str, Sweep]], ctrl: torch.Tensor, k_short: int = 6, k_flag: int = 5,
                  max_rows: int = 6) -> DamageReport:
    """Shortlist the heads that any ablation method ranks high on any task, measure their damage on
    control text with every kind of ablation, and flag the top-`k_flag` task effects that are damage."""
    from .lab.hooks import top_heads

    L, H = model.cfg.n_layers, model.cfg.n_heads
    shortlist = sorted({h for sw in sweeps.values() for s in sw.values() for h in top_heads(s.table(L, H), k_short)})
    damage = {k: control_damage(model, ctrl, k, shortlist, max_rows=max_rows) for k in KINDS}
    idx = [all_heads(model).index(h) for h in shortlist]
    flagged: dict[str, list[int]] = {k: [] for k in KINDS}
    rows = []
    for k in KINDS:
        for t_name, sw in sweeps.items():
            s = sw[k]
            for i in damage_flags(s.drop[idx], s.kl[idx], damage[k].kl, k=k_flag):
                if i not in flagged[k]:
                    flagged[k].append(i)
                rows.append({"task": t_name, "ablation": k, "head": head_label(shortlist[i]),
                             "task drop": round(float(s.drop[idx][i]), 2), "task KL": round(float(s.kl[idx][i]), 3),
                             "control KL": round(float(damage[k].kl[i]), 3)})
    return DamageReport(shortlist, damage, flagged, rows)


def top_entropy_rises(sweep_result: Sweep, k: int = 10) -> int:
    """How many of the `k` heads with the largest task drop raise the entropy of the answer distribution."""
    top = torch.argsort(sweep_result.drop, descending=True)[:k]
    return int((sweep_result.entropy_change[top] > 0).sum())


__all__ = [
    "CONTROL_TEXT", "KINDS", "Task", "ioi_task", "successor_task", "subset_successor", "task_values", "Sweep", "sweep",
    "task_sweeps", "control_tokens", "control_values", "Damage", "control_damage", "damage_flags", "resample_head",
    "control_kl", "split_total_effect", "verdict_flips", "SelfRepair", "self_repair", "Pairs", "pair_interactions",
    "NoiseDenoise", "noising_denoising", "probe_layers", "Scrub", "derangement", "scrub",
    "DamageReport", "damage_report", "top_entropy_rises", "kl_entropy",
]
