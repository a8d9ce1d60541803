"""All-heads ablation sweeps on many prompts, at the cost of a few: an attribution screen plus exact values.

An exact all-heads sweep recomputes every layer above each patched head, for every prompt: on a CPU,
270 heads x 48 prompts x 3 ablations does not fit a lesson's budget. This module does the next best
thing and shows how good it is:

1. **screen** every head on every prompt with attribution patching (Nanda 2023; Kramar et al. 2024,
   arXiv 2403.00745): one forward and one backward pass per batch of prompts give d(metric)/d(z) for
   every head, and the estimated drop of an ablation is ``-(z_replacement - z) . grad``. The gradient
   is the same for zero, mean and resample ablation, so all three screens cost one backward pass;
2. **measure exactly** (`ablation.sweep`, the fast engine) on every prompt the heads the notebook
   reads: each ablation's top heads by the screen, the heads whose replacement moves their output
   furthest (where a linear estimate is least trustworthy), and a seeded random set of heads (the base
   rate); then again for any head that the combined table puts in a top-k but was not measured;
3. keep both, so that every rank, correlation and share comes with a bootstrap interval over prompts
   and the screen's agreement with the exact values is printed beside it.

`TaskEvidence.table(kind)` is the table the notebook reads: exact where measured, the screen elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .ablation import Sweep, Task, kl_entropy, task_values
from .env import trim_memory
from .lab.hooks import Head, all_heads, head_outputs, top_heads
from .lab.patching import KINDS, Patch, copies_runner, head_output_grads
from .lab.scores import Interval, bootstrap, ranks, spearman


def attribution_drops(model, task: Task, values: dict[str, dict[int, torch.Tensor]], max_tokens: int = 64):
    """First-order estimate of each head's drop under each ablation, per prompt: {kind: [batch, n_layers, n_heads]}.

    One forward and one backward pass on `task.tokens` per chunk of prompts (at most `max_tokens` tokens per chunk:
    the backward pass holds every layer's activations, ~30 MB per 16-token prompt on SmolLM2);
    ``drop ~= -sum_{pos, d} (v - z) * d metric / d z`` for the replacement values `values[kind]`
    (``{layer: [batch, pos, head, d_head]}``, e.g. `task_values`).
    Returns (estimates, the clean metric ``[batch]``, {kind: ``[n_layers, n_heads]``} how far each head's
    replacement moves its output relative to the output's size: where a linear estimate is least safe).
    """
    if not values:
        raise ValueError("give at least one kind of replacement values")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    n_layers = model.cfg.n_layers
    per = max(1, max_tokens // task.tokens.shape[1])
    zs, grads, ms = [], [], []
    for i in range(0, len(task), per):
        rows = slice(i, i + per)
        sub = Task(task.name, task.tokens[rows], task.counterfactual[rows], task.answer[rows], task.wrong[rows])
        z, grad, m = head_output_grads(model, sub.tokens, sub.metric)
        zs.append(z)
        grads.append(grad)
        ms.append(m)
    z = {l: torch.cat([c[l] for c in zs]) for l in range(n_layers)}
    grad = {l: torch.cat([c[l] for c in grads]) for l in range(n_layers)}
    m = torch.cat(ms)
    out, far = {}, {}
    for kind, vals in values.items():
        est, dist = [], []
        for l in range(n_layers):
            est.append(-((vals[l] - z[l]) * grad[l]).sum((1, 3)))
            dist.append((vals[l] - z[l]).norm(dim=-1).mean((0, 1)) / z[l].norm(dim=-1).mean((0, 1)).clamp_min(1e-9))
        out[kind], far[kind] = torch.stack(est, 1).detach(), torch.stack(dist)
    return out, m, far


def task_values_shared(model, task: Task, kinds: Sequence[str]) -> dict[str, dict[int, torch.Tensor]]:
    """`ablation.task_values` for several kinds, with one forward pass of the counterfactual prompts when mean
    ablation averages those same prompts (the usual case here)."""
    same = task.mean_reference is None or (task.mean_reference.shape == task.counterfactual.shape
                                           and bool((task.mean_reference == task.counterfactual).all()))
    out: dict[str, dict[int, torch.Tensor]] = {}
    if same and "mean" in kinds and "resample" in kinds:
        ref = head_outputs(model, task.counterfactual, max_prompts=8)
        out["resample"] = ref
        out["mean"] = {l: z.mean(0, keepdim=True).expand_as(z).clone() for l, z in ref.items()}
    for k in kinds:
        if k not in out:
            out[k] = task_values(model, task, k)
    return {k: out[k] for k in kinds}


@dataclass
class TaskEvidence:
    """Every head of one task under each ablation, on many prompts.

    Attributes:
        name: the task. kinds: the ablations. groups: ``[batch]`` the sub-task (e.g. IOI template) of each prompt.
        clean: ``[batch]`` the clean logit difference. screen: {kind: ``[batch, L, H]``} estimated drops.
        exact: {kind: ``[batch, L, H]``} exact drops, NaN where not measured.
        kl, entropy_change: {kind: ``[L, H]``} at the answer position (mean over prompts), NaN where not measured.
        random_heads: the seeded random heads measured exactly (the base rate).
    """

    name: str
    kinds: tuple
    groups: torch.Tensor
    clean: torch.Tensor
    screen: dict[str, torch.Tensor]
    exact: dict[str, torch.Tensor]
    kl: dict[str, torch.Tensor]
    entropy_change: dict[str, torch.Tensor]
    random_heads: list[Head]
    _tasks: list = field(default_factory=list, repr=False)
    _values: list = field(default_factory=list, repr=False)
    _max_rows: int = 128

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(next(iter(self.screen.values())).shape[1:])

    def measured(self, kind: str) -> torch.Tensor:
        """``[L, H]`` True where the exact drop was measured."""
        return ~torch.isnan(self.exact[kind][0])

    def measured_heads(self, kind: str) -> list[Head]:
        return [tuple(int(v) for v in x) for x in torch.nonzero(self.measured(kind)).tolist()]

    def per_prompt(self, kind: str) -> torch.Tensor:
        """``[batch, L, H]``: the exact drop where measured, the screen's estimate elsewhere."""
        return torch.where(self.measured(kind)[None], self.exact[kind], self.screen[kind])

    def replacement_values(self, kind: str) -> list[dict[int, torch.Tensor]]:
        """The replacement values of `kind` the sweep used, one ``{layer: z}`` per sub-task (reuse them elsewhere)."""
        if kind not in self.kinds:
            raise ValueError(f"this evidence has no {kind!r} values; it has {self.kinds}")
        return [v[kind] for v in self._values]

    def table(self, kind: str) -> torch.Tensor:
        """``[L, H]`` mean drop over prompts (exact where measured)."""
        return self.per_prompt(kind).mean(0)

    def tables(self) -> dict[str, torch.Tensor]:
        return {k: self.table(k) for k in self.kinds}

    def rank(self, kind: str, head: Head, n: int = 200, seed: int = 0) -> Interval:
        """Rank (1 = largest drop) of `head` among all heads, with a bootstrap interval over prompts."""
        return bootstrap(self.per_prompt(kind), lambda t: float(ranks(t.mean(0))[head]), n=n, seed=seed)

    def spearman(self, a: str, b: str, exact: bool = True, n: int = 200, seed: int = 0) -> Interval:
        """Spearman correlation of two ablations' tables, resampling the same prompts for both.

        `exact`: over the heads measured exactly under both (the screens of two ablations share one
        gradient, so correlating estimates would overstate agreement); else over all heads.
        """
        m = (self.measured(a) & self.measured(b)) if exact else torch.ones(self.shape, dtype=torch.bool)
        x = torch.stack([self.per_prompt(a)[:, m], self.per_prompt(b)[:, m]], 1)
        return bootstrap(x, lambda t: spearman(t[:, 0].mean(0), t[:, 1].mean(0)), n=n, seed=seed)

    def top_overlap(self, a: str, b: str, k: int = 10) -> int:
        """How many of the top-`k` heads of ablation `a` are in the top `k` of `b`."""
        return len(set(top_heads(self.table(a), k)) & set(top_heads(self.table(b), k)))

    def share(self, stat, n: int = 200, seed: int = 0) -> Interval:
        """Interval of ``stat({kind: mean table}) -> float`` over prompts (e.g. a share of the top-10 in early layers)."""
        x = torch.stack([self.per_prompt(k) for k in self.kinds], 1)
        return bootstrap(x, lambda t: float(stat({k: t[:, i].mean(0) for i, k in enumerate(self.kinds)})), n=n, seed=seed)

    def agreement(self, kind: str, k: int = 10, n: int = 200, seed: int = 0) -> dict:
        """The screen against the exact values on the heads measured exactly: Spearman (with interval),
        top-`k` overlap, and the largest miss (the head whose estimate is furthest from its exact drop)."""
        m = self.measured(kind)
        ex, sc = self.exact[kind][:, m], self.screen[kind][:, m]
        x = torch.stack([sc, ex], 1)
        rho = bootstrap(x, lambda t: spearman(t[:, 0].mean(0), t[:, 1].mean(0)), n=n, seed=seed)
        heads = self.measured_heads(kind)
        e, s = ex.mean(0), sc.mean(0)
        kk = min(k, len(heads))
        top_e = set(torch.topk(e, kk).indices.tolist())
        top_s = set(torch.topk(s, kk).indices.tolist())
        miss = int(torch.argmax((e - s).abs()))
        return {"spearman": rho, "overlap": len(top_e & top_s), "k": kk, "n_measured": len(heads),
                "worst": heads[miss], "worst_exact": float(e[miss]), "worst_screen": float(s[miss])}

    def entropy_rises(self, kind: str, k: int = 10) -> tuple[int, int, int, int]:
        """(rises among the top-`k` heads, k, rises among the random heads, number of random heads)."""
        ent = self.entropy_change[kind]
        top = [h for h in top_heads(self.table(kind), k) if not torch.isnan(ent[h])]
        top_up = sum(float(ent[h]) > 0 for h in top)
        rnd = [h for h in self.random_heads if not torch.isnan(ent[h])]
        return top_up, len(top), sum(float(ent[h]) > 0 for h in rnd), len(rnd)

    def ensure_exact(self, model, heads: Sequence[Head], kinds: Sequence[str] | None = None) -> list[Head]:
        """Measure exactly (on every prompt, under `kinds`, default all) any of `heads` not measured yet under
        all of them; returns the new ones."""
        kinds = tuple(kinds or self.kinds)
        done = set.intersection(*[set(self.measured_heads(k)) for k in kinds])
        new = sorted({(int(l), int(h)) for l, h in heads} - done)
        if new:
            _measure(model, self._tasks, self._values, self, new, self._max_rows, kinds)
        return new

    def as_sweep(self, kind: str) -> Sweep:
        """An all-heads `ablation.Sweep` view (drop exact where measured; KL and entropy NaN where not)."""
        heads = all_heads_of(self.shape)
        pp = self.per_prompt(kind)
        flat = lambda t: torch.stack([t[h] for h in heads])  # noqa: E731
        return Sweep([[h] for h in heads], float(self.clean.mean()), flat(pp.mean(0)), flat(self.kl[kind]),
                     flat(self.entropy_change[kind]), torch.stack([pp[:, l, h] for l, h in heads]))


def all_heads_of(shape: tuple[int, int]) -> list[Head]:
    return [(l, h) for l in range(shape[0]) for h in range(shape[1])]


def task_evidence(model, name: str, tasks: Sequence[Task], kinds: Sequence[str] = KINDS, k_exact: int = 6,
                  k_far: int = 1, n_random: int = 10, seed: int = 0, rounds: int = 3, max_rows: int = 128) -> TaskEvidence:
    """Screen every head of `tasks` (sub-tasks of one task, e.g. one per IOI template) by attribution under
    each ablation and measure exactly, on every prompt, the heads listed in the module docstring.

    Every kind is measured on the same heads, so exact values can be compared between ablations.
    """
    kinds = tuple(kinds)
    if not tasks:
        raise ValueError("give at least one Task (one per template)")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown ablation kind(s) {bad}; use {KINDS}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    vals = [task_values_shared(model, t, kinds) for t in tasks]
    runs = [attribution_drops(model, t, v) for t, v in zip(tasks, vals)]
    trim_memory()  # the backward passes' activations are freed: give the heap back before the exact sweeps
    screen = {k: torch.cat([r[0][k] for r in runs]) for k in kinds}
    clean = torch.cat([r[1] for r in runs])
    far = {k: sum(r[2][k] for r in runs) for k in kinds}
    rng = np.random.default_rng(seed)
    every = all_heads(model)
    random_heads = [every[i] for i in sorted(rng.choice(len(every), n_random, replace=False))]
    batch = sum(len(t) for t in tasks)
    exact = {k: torch.full((batch, L, H), float("nan")) for k in kinds}
    kl = {k: torch.full((L, H), float("nan")) for k in kinds}
    ent = {k: torch.full((L, H), float("nan")) for k in kinds}
    ev = TaskEvidence(name, kinds, torch.cat([torch.full((len(t),), i) for i, t in enumerate(tasks)]), clean,
                      screen, exact, kl, ent, random_heads, list(tasks), vals, max_rows)
    want = set(random_heads)
    for k in kinds:
        want |= set(top_heads(screen[k].mean(0), k_exact)) | set(top_heads(far[k], k_far))
    for _ in range(rounds):
        new = sorted(h for h in want if not bool(ev.measured(kinds[0])[h]))
        if not new:
            break
        _measure(model, tasks, vals, ev, new, max_rows)
        trim_memory()
        want = {h for k in kinds for h in top_heads(ev.table(k), k_exact)}
    return ev


def _measure(model, tasks: Sequence[Task], vals, ev: TaskEvidence, heads: list[Head], max_rows: int,
             kinds: Sequence[str] | None = None) -> None:
    """Exact drops (per prompt), task KL and entropy change of `heads` under `kinds` (default all), written into
    `ev`. One engine (and one clean run) per sub-task, shared by every kind of this call and freed after it."""
    n = sum(len(t) for t in tasks)
    runners = [copies_runner(model, t.tokens) for t in tasks]  # not kept: each holds a clean run's activations
    for k in (kinds or ev.kinds):
        start = 0
        kl_sum = torch.zeros(len(heads))
        ent_sum = torch.zeros(len(heads))
        for t, v, run in zip(tasks, vals, runners):
            per = max(1, max_rows // len(t) - 1)
            for i in range(0, len(heads), per):
                chunk = heads[i:i + per]
                logits = run([[Patch(l, h, v[k][l])] for l, h in chunk])
                mp = torch.stack([t.metric(x).float() for x in logits])  # [1 + n, batch]
                for j, (l, h) in enumerate(chunk):
                    ev.exact[k][start:start + len(t), l, h] = mp[0] - mp[1 + j]
                kl, ent = kl_entropy(logits[:, :, -1])  # [1 + n, batch, vocab] -> [n]
                kl_sum[i:i + len(chunk)] += kl * len(t)
                ent_sum[i:i + len(chunk)] += ent * len(t)
            start += len(t)
        for i, h in enumerate(heads):
            ev.kl[k][h] = kl_sum[i] / n
            ev.entropy_change[k][h] = ent_sum[i] / n


def split_successor(prompts, per_category: int):
    """Split successor prompts into (`per_category` prompts of every category, evenly spread; all the others),
    so that later experiments can use prompts the sweeps never saw."""
    if per_category < 1:
        raise ValueError("per_category must be at least 1")
    cat = prompts.category.tolist()
    chosen: list[int] = []
    for c in sorted(set(cat)):
        idx = [i for i, x in enumerate(cat) if x == c]
        take = np.unique(np.linspace(0, len(idx) - 1, min(per_category, len(idx))).round().astype(int))
        chosen += [idx[j] for j in take]
    rest = [i for i in range(len(cat)) if i not in set(chosen)]

    def part(ix):
        t = torch.tensor(ix, dtype=torch.long)
        return type(prompts)(prompts.tokens[t], prompts.corrupt[t], prompts.target[t], prompts.target_index[t],
                             prompts.category[t], [prompts.text[i] for i in ix])
    return part(chosen), part(rest)


__all__ = ["attribution_drops", "task_values_shared", "TaskEvidence", "task_evidence", "all_heads_of", "split_successor"]
