"""Notebook 05's views: the ablation lab (an explorer), the figures, and the verdict read from all results."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .ablation import (DamageReport, NoiseDenoise, Scrub, SelfRepair, Sweep, Task, control_values, self_repair,
                       task_values, top_entropy_rises)
from .lab.hooks import Head, head_label, parse_heads
from .lab.patching import heads_replaced, run_patched
from .lab.readout import direct_logit_attribution, entropy, kl_div
from .plots import finish

@dataclass
class LabResult:
    """One ablation experiment: task effect, damage, entropy and compensation."""

    task: str
    heads: list[Head]
    kind: str
    repair: SelfRepair
    task_kl: float
    task_entropy_change: float
    control_kl: float
    control_entropy_change: float


class Lab:
    """Everything the ablation lab needs, precomputed, so one experiment costs ~3 small forward passes."""

    def __init__(self, model, tasks: dict[str, Task], ctrl: torch.Tensor):
        self.model, self.tasks, self.ctrl = model, tasks, ctrl
        self._values = {}
        self._dla = {}
        self._ctrl_values = {}
        self._cache: dict = {}
        with torch.no_grad():
            self._ctrl_logits = model(ctrl)

    def values(self, task: str, kind: str):
        if (task, kind) not in self._values:
            self._values[task, kind] = task_values(self.model, self.tasks[task], kind)
        return self._values[task, kind]

    def run(self, task: str, heads: Sequence[Head], kind: str) -> LabResult:
        """Ablate `heads` on `task` with `kind`; measure everything (cached)."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; choose from {list(self.tasks)}")
        heads = sorted({(int(l), int(h)) for l, h in heads})
        key = (task, tuple(heads), kind)
        if key in self._cache:
            return self._cache[key]
        t = self.tasks[task]
        if task not in self._dla:
            self._dla[task] = direct_logit_attribution(self.model, t.tokens, t.answer, t.wrong)
        vals = self.values(task, kind)
        rep = self_repair(self.model, t, heads, vals, self._dla[task])
        with torch.no_grad():
            clean_last = self.model(t.tokens)[:, -1]
            abl_last = run_patched(self.model, t.tokens, heads_replaced(heads, vals))[:, -1]
            if kind not in self._ctrl_values:
                self._ctrl_values[kind] = control_values(self.model, self.ctrl, kind)
            ctrl_abl = run_patched(self.model, self.ctrl, heads_replaced(heads, self._ctrl_values[kind]))
        res = LabResult(task, heads, kind, rep,
                        float(kl_div(clean_last, abl_last).mean()),
                        float((entropy(abl_last) - entropy(clean_last)).mean()),
                        float(kl_div(self._ctrl_logits, ctrl_abl).mean()),
                        float((entropy(ctrl_abl) - entropy(self._ctrl_logits)).mean()))
        self._cache[key] = res
        return res


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_effect_maps(tables: dict[str, torch.Tensor], title: str = ""):
    """One layer x head map per ablation method (drop in logit difference)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(3.2 * len(tables), 5.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (name, t) in zip(axes, tables.items()):
        v = float(torch.nan_to_num(t).abs().max()) or 1.0
        im = ax.imshow(t.numpy(), aspect="auto", cmap="RdBu_r", vmin=-v, vmax=v, origin="lower")
        ax.set_title(name)
        ax.set_xlabel("head")
        fig.colorbar(im, ax=ax, fraction=0.05)
    axes[0].set_ylabel("layer")
    fig.suptitle(title)
    return finish(fig, tight_layout=True)


def plot_damage(points: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]], flagged: dict[str, list[int]] | None = None,
                title: str = ""):
    """Task effect (y) against KL on control text (x, log scale), one colour per ablation method.

    `points`: {method: (control_kl [n], task_drop [n], labels [n])}; `flagged` marks indices.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colours = {"zero": "#d62728", "mean": "#1f77b4", "resample": "#2ca02c"}
    for m, (kl, drop, labels) in points.items():
        ax.scatter(kl.clamp_min(1e-6).numpy(), drop.numpy(), s=22, alpha=0.75, label=m, color=colours.get(m))
        for i in (flagged or {}).get(m, []):
            ax.annotate(labels[i], (max(float(kl[i]), 1e-6), float(drop[i])), fontsize=7, color=colours.get(m))
            ax.scatter([max(float(kl[i]), 1e-6)], [float(drop[i])], s=80, facecolors="none", edgecolors="k")
    ax.set_xscale("log")
    ax.set_xlabel("damage: KL(clean || ablated) on control text (nats, log scale)")
    ax.set_ylabel("task effect: drop in logit difference")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(title="ablation")
    ax.set_title(title)
    return finish(fig, tight_layout=True)


def plot_self_repair(rep: SelfRepair, k: int = 6, title: str = "", ax=None):
    """Bars: direct effect, compensation, total effect; then the top compensating components."""
    import matplotlib.pyplot as plt

    own = ax is None
    fig, ax = plt.subplots(figsize=(7.5, 3.6)) if own else (ax.figure, ax)
    top = rep.top(k)
    names = ["direct", "compensation", "total"] + [n for n, _ in top]
    vals = [rep.direct, rep.compensation, rep.total] + [v for _, v in top]
    cols = ["#1f77b4", "#2ca02c", "#d62728"] + ["#98df8a"] * len(top)
    ax.bar(range(len(vals)), vals, color=cols)
    ax.set_xticks(range(len(vals)), names, rotation=40, ha="right", fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(2.5, color="grey", lw=0.5, ls=":")
    ax.set_ylabel("logit difference")
    ax.set_title(title or f"ablating {', '.join(head_label(h) for h in rep.heads)}: "
                 f"{rep.repaired:.0%} of the direct effect repaired")
    return finish(fig, tight_layout=True) if own else fig


def plot_noise_denoise(nd: NoiseDenoise, title: str = ""):
    """Necessity (noising) against sufficiency (denoising), one dot per head."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    x, y = nd.necessity.numpy(), nd.sufficiency.numpy()
    ax.scatter(x, y, s=24)
    lim = [min(x.min(), y.min(), 0) - 0.02, max(x.max(), y.max()) + 0.02]
    ax.plot(lim, lim, color="grey", lw=0.6, ls="--")
    gap = np.abs(x - y)
    for i in np.argsort(-gap)[:6]:
        ax.annotate(head_label(nd.heads[i]), (x[i], y[i]), fontsize=7)
    ax.set_xlabel("necessity: noising drop / (clean - corrupt)")
    ax.set_ylabel("sufficiency: denoising gain / (clean - corrupt)")
    ax.set_title(title)
    return finish(fig, tight_layout=True)


def plot_lens_probe(lens: dict[str, torch.Tensor], probe: torch.Tensor | None = None,
                    ablation_by_layer: dict[str, torch.Tensor] | None = None, title: str = ""):
    """Logit lens per layer (left axis), probe accuracy and per-layer ablation effect (right panel)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, v in lens.items():
        axes[0].plot(range(len(v)), v.numpy(), marker=".", label=name)
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].set_xlabel("layer (0 = embeddings)")
    axes[0].set_ylabel("logit difference read early")
    axes[0].set_title("logit lens")
    axes[0].legend(fontsize=8)
    if probe is not None:
        axes[1].plot(range(len(probe)), probe.numpy(), marker=".", color="k", label="probe accuracy (IOI: IO first?)")
    for name, v in (ablation_by_layer or {}).items():
        axes[1].plot(np.arange(len(v)) + 1, (v / v.abs().max().clamp_min(1e-9)).numpy(), alpha=0.7, label=f"{name} (scaled)")
    axes[1].set_xlabel("layer")
    axes[1].set_title("where the information is / where removing it hurts")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    return finish(fig, tight_layout=True)


def plot_flip(flips: dict, title: str = ""):
    """Per task: each prompt's share of the way to B's answer, for the named heads, random head sets and damage."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(flips), figsize=(5.2 * len(flips), 3.4), squeeze=False)
    for ax, (t, f) in zip(axes[0], flips.items()):
        groups = {"named heads\n(from B)": f.moved(), "random heads\n(from B)": f.moved(f.random).flatten()}
        if f.damaged is not None:
            groups["named heads\nmean-ablated"] = f.moved(f.damaged)
        ax.boxplot([g.numpy() for g in groups.values()], showfliers=False)
        for i, g in enumerate(groups.values(), start=1):
            ax.scatter(np.full(len(g), i) + np.linspace(-0.15, 0.15, len(g)), g.numpy(), s=6, alpha=0.4)
        ax.set_xticks(range(1, len(groups) + 1), list(groups), fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axhline(1, color="k", lw=0.5, ls="--")
        ax.set_ylabel("share of the way to B's answer")
        ax.set_title(f"{t}: {', '.join(head_label(h) for h in f.heads)}", fontsize=9)
    fig.suptitle(title)
    return finish(fig, tight_layout=True)


def plot_lab(lab: Lab, task: str, heads: str, kind: str):
    """The ablation lab view: task effect, damage on control text, entropy changes, compensation."""
    import matplotlib.pyplot as plt

    hs = parse_heads(heads, lab.model.cfg.n_layers, lab.model.cfg.n_heads)
    r = lab.run(task, hs, kind)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1.1, 1.1, 2.2]})
    rep = r.repair
    axes[0].bar(["clean", "ablated"], [rep.ld_clean, rep.ld_ablated], color=["#7f7f7f", "#d62728"])
    axes[0].set_title(f"{task}: logit difference\n(total effect {rep.total:+.2f})", fontsize=9)
    axes[1].bar(["KL task", "KL control", "ΔH task", "ΔH control"],
                [r.task_kl, r.control_kl, r.task_entropy_change, r.control_entropy_change],
                color=["#9467bd", "#ff7f0e", "#9467bd", "#ff7f0e"])
    axes[1].tick_params(axis="x", rotation=35, labelsize=8)
    axes[1].axhline(0, color="k", lw=0.5)
    axes[1].set_title("damage (nats)", fontsize=9)
    plot_self_repair(rep, k=5, ax=axes[2], title=f"{kind} ablation of {', '.join(head_label(h) for h in hs)}: "
                     f"compensation {rep.compensation:+.2f}")
    axes[2].title.set_fontsize(9)
    return finish(fig, tight_layout=True)


# --------------------------------------------------------------------------------------
# Readings generated from the values (the prose of the notebook branches on these)
# --------------------------------------------------------------------------------------


def early_reading(effects: dict[str, dict[str, torch.Tensor]], last_early_layer: int = 3, k: int = 10) -> list[str]:
    """Per task: how many of the top-`k` heads under zero and under resample ablation sit in layers 0..`last_early_layer`."""
    from .lab.hooks import top_heads

    out = []
    for t, tabs in effects.items():
        z = sum(layer <= last_early_layer for layer, _ in top_heads(tabs["zero"], k))
        r = sum(layer <= last_early_layer for layer, _ in top_heads(tabs["resample"], k))
        verdict = ("zero ablation favours early heads here" if z > k // 2 and z > r else
                   "zero ablation does not favour early heads here" if z <= k // 2 else
                   "early heads rank high under both")
        out.append(f"{t}: top-{k} in layers 0-{last_early_layer}: zero {z}/{k}, resample {r}/{k} -> {verdict}")
    return out


def _rank_text(r) -> str:
    """A rank, with its bootstrap interval when it has one."""
    if hasattr(r, "low"):
        return f"{r.value:.0f} [{r.low:.0f}, {r.high:.0f}]"
    return f"{int(r)}"


def baseline_reading(effects: dict[str, torch.Tensor], task: str, mean_removes: str, resample_removes: str,
                     evidence=None) -> str:
    """The head whose rank differs most between mean and resample ablation, and why (what each baseline removes).

    With `evidence` (an `ablation_screen.TaskEvidence`) only heads measured exactly are considered, and
    both ranks carry bootstrap intervals over prompts."""
    from .lab.scores import ranks

    rm, rr = ranks(effects["mean"]), ranks(effects["resample"])
    gap = (rm - rr).abs()
    if evidence is not None:
        gap = gap.masked_fill(~(evidence.measured("mean") & evidence.measured("resample")), -1)
    i = int(torch.argmax(gap))
    h = (i // gap.shape[1], i % gap.shape[1])
    n = gap.numel()
    head = head_label(h)
    which = "head measured exactly" if evidence is not None else "head"
    if int(gap[h]) < n // 4:
        return (f"{task}: mean and resample ablation rank every {which} within {int(gap[h])} places of each other "
                f"(largest gap {head}): here the two baselines remove about the same information.")
    r_m = evidence.rank("mean", h) if evidence is not None else int(rm[h])
    r_r = evidence.rank("resample", h) if evidence is not None else int(rr[h])
    if evidence is not None and max(r_m.low, r_r.low) <= min(r_m.high, r_r.high):
        return (f"{task}: the largest rank gap between mean and resample ablation is {head} (rank {_rank_text(r_m)} vs "
                f"{_rank_text(r_r)} of {n}), but its intervals over prompts overlap: no reliable disagreement here.")
    return (f"{task}: {head} is rank {_rank_text(r_m)} of {n} under mean ablation and {_rank_text(r_r)} under resample. "
            f"The mean baseline removes {mean_removes}; resample removes only {resample_removes}. "
            "The two 'on-distribution' ablations ask different questions, so they can disagree even in sign: "
            "name the information your baseline removes.")


def pair_reading(pairs, single_rank, n: int, k: int = 3, tol: float = 0.05) -> list[str]:
    """The `k` pairs with the largest interaction, each labelled from its numbers: OR-like backup (both alone
    help, together much more) or a negative head (its own ablation RAISES the metric) whose effect
    depends on what the other head writes (copy suppression, McDougall et al. 2023, arXiv 2310.04625).
    `single_rank`: a ``[L, H]`` table of ranks or a function head -> rank (an int or an `Interval`).
    With per-prompt drops (pooled `Pairs`), a head helps or is negative only if its interval excludes zero, and an
    interaction whose interval crosses zero is called uncertain; without them, drops within `tol` of zero count
    as neither."""
    from .ablation_evidence import pair_intervals

    rank_of = single_rank if callable(single_rank) else (lambda h: int(single_rank[h]))
    out = []
    for a, b, inter in pairs.strongest(k):
        ia, ib = pairs.heads.index(a), pairs.heads.index(b)
        sa, sb, sab = float(pairs.single[ia]), float(pairs.single[ib]), float(pairs.pair[ia, ib])
        iv = pair_intervals(pairs, a, b) if pairs.single_pp is not None else None
        if iv:
            sign = {x: -1 if iv[x].high < 0 else 1 if iv[x].low > 0 else 0 for x in ("a", "b")}
        else:
            sign = {x: -1 if v < -tol else 1 if v > tol else 0 for x, v in (("a", sa), ("b", sb))}
        neg = [head_label(h) for h, x in ((a, "a"), (b, "b")) if sign[x] < 0]
        if iv and iv["interaction"].low <= 0:
            label = "uncertain: the interaction's interval crosses zero"
        elif len(neg) == 2:
            label = ("not a backup of helpers: ablating either head alone RAISES the logit difference (two negative "
                     "heads); together they raise it less than the sum, so their suppression overlaps")
        elif neg:
            other = head_label(b) if neg[0] == head_label(a) else head_label(a)
            label = (f"not a backup: ablating {neg[0]} alone RAISES the logit difference ({neg[0]} is a negative head); "
                     f"its suppression depends on what {other} writes")
        elif sign["a"] > 0 and sign["b"] > 0 and inter > 0:
            label = "OR-like: each alone helps, together they matter more than the sum"
        else:
            label = "interaction without a clear backup pattern"
        if iv:
            ci = lambda x: f"[{x.low:+.2f}, {x.high:+.2f}]"  # noqa: E731
            nums = (f"alone {sa:+.2f} {ci(iv['a'])} and {sb:+.2f} {ci(iv['b'])}, together {sab:+.2f} (interaction "
                    f"{inter:+.2f} {ci(iv['interaction'])}; per template {' / '.join(f'{v:+.2f}' for v in iv['per_template'])})")
        else:
            nums = f"alone {sa:+.2f} and {sb:+.2f}, together {sab:+.2f} (interaction {inter:+.2f})"
        out.append(f"{head_label(a)} + {head_label(b)}: {nums}; single-ablation ranks {_rank_text(rank_of(a))} and "
                   f"{_rank_text(rank_of(b))} of {n} -> {label}")
    return out


def scrub_reading(sc: Scrub, tolerance: float = 0.2) -> str:
    """A complement-resampling test passes only if the kept share is within `tolerance` of 100% and above the
    random sets' 95th percentile (Wang et al.'s faithfulness |F(C) - F(M)|; Chan et al.'s loss recovered)."""
    rnd = np.array(sc.random_kept) / sc.clean
    q95 = float(np.quantile(rnd, 0.95))
    head = (f"hypothesis keeps {sc.kept:.0%} of the clean logit difference; {len(rnd)} random sets of "
            f"{sc.n_heads} heads keep {np.median(rnd):.0%} (median; 95th percentile {q95:.0%})")
    if sc.kept > 1 + tolerance:
        return (head + f" -> FAILS: more than {1 + tolerance:.0%} means the resampled heads were, on balance, working "
                "against the answer: the hypothesis leaves out negative components (e.g. negative or "
                "copy-suppression heads), so it is not a faithful account")
    if sc.kept < 1 - tolerance:
        better = "better than random sets" if sc.kept > q95 else "no better than random sets"
        return head + f" -> FAILS: the hypothesis misses part of the mechanism ({better})"
    if sc.kept <= q95:
        return head + " -> inconclusive: random head sets keep as much"
    return head + f" -> passes at this tolerance (+-{tolerance:.0%})"


def flip_reading(task: str, flip, what_b: str) -> str:
    """One line: how far patching the heads from B moved A's output towards B's answer, against damage and random."""
    s = flip.summary()
    mv = s["moved"]
    heads = ", ".join(head_label(h) for h in flip.heads)
    line = (f"{task}: patching {heads} from B ({what_b}) moves A's output {mv.value:.0%} of the way to B's answer "
            f"[{mv.low:.0%}, {mv.high:.0%}]; {s['flip rate']:.0%} of prompts now prefer B's answer. "
            f"{len(flip.random)} random sets of {len(flip.heads)} heads: {s['random moved']:.0%} "
            f"(best {s['random moved max']:.0%}), flip rate {s['random flip rate']:.0%}")
    if "damage moved" in s:
        line += f"; mean-ablating the same heads (damage): {s['damage moved']:.0%}, flip rate {s['damage flip rate']:.0%}"
    if mv.low > 0.5 and mv.low > s["random moved max"]:
        line += " -> a specific, predicted change: damage does not produce it"
    elif mv.low > s["random moved max"]:
        line += " -> partial: the heads carry part of what decides the answer"
    else:
        line += " -> no flip beyond random heads: these heads do not carry the answer"
    return line


def top_line(ev, kind: str, k: int = 5) -> str:
    """The top-`k` heads of one ablation: mean drop over prompts and the rank's 95% interval over prompts."""
    from .lab.hooks import top_heads

    tab = ev.table(kind)
    parts = []
    for h in top_heads(tab, k):
        r = ev.rank(kind, h)
        parts.append(f"{head_label(h)} {float(tab[h]):+.2f} (rank {_rank_text(r)})")
    return f"  {kind:9s} " + ", ".join(parts)


def screen_reading(evidence: dict, k: int = 10) -> list[str]:
    """Per task and ablation: how well the attribution screen agrees with the exact drops on the heads measured
    exactly (Spearman with its interval over prompts, top-`k` overlap, the largest miss)."""
    out = []
    for t, ev in evidence.items():
        for kind in ev.kinds:
            a = ev.agreement(kind, k=k)
            rho = a["spearman"]
            verdict = ("the screen orders these heads like the exact values" if rho.low > 0.8 else
                       "the screen orders them closely, though the interval over prompts is wide" if rho.value > 0.8 else
                       "the screen is a rough guide only" if rho.value > 0.5 else
                       "the screen does not predict the exact values")
            out.append(f"{t:9s} {kind:9s}: screen vs exact over {a['n_measured']} heads: Spearman {rho.value:.2f} "
                       f"[{rho.low:.2f}, {rho.high:.2f}], top-{a['k']} overlap {a['overlap']}/{a['k']}; largest miss "
                       f"{head_label(a['worst'])} (exact {a['worst_exact']:+.2f}, estimate {a['worst_screen']:+.2f}) "
                       f"-> {verdict}")
    return out


def kind_correlations(ev, k: int = 10):
    """(DataFrame of Spearman correlations between ablations over the heads measured exactly, lines with their
    intervals over prompts and the top-`k` overlap)."""
    import pandas as pd

    kinds = list(ev.kinds)
    iv = {(a, b): ev.spearman(a, b) for a in kinds for b in kinds if a < b}
    get = lambda a, b: 1.0 if a == b else iv[(a, b) if a < b else (b, a)].value  # noqa: E731
    df = pd.DataFrame([[get(a, b) for b in kinds] for a in kinds], index=kinds, columns=kinds)
    n = int((ev.measured(kinds[0])).sum())
    lines = [f"  {a} vs {b}: Spearman {r.value:.2f} [{r.low:.2f}, {r.high:.2f}] over {n} exactly measured heads; "
             f"top-{k} overlap {ev.top_overlap(a, b, k)}/{k}" for (a, b), r in iv.items()]
    return df, lines


def early_reading_evidence(evidence: dict, last_early_layer: int = 3, k: int = 10) -> list[str]:
    """`early_reading` with the shares' bootstrap intervals over prompts."""
    from .lab.hooks import top_heads

    out = []
    for t, ev in evidence.items():
        def share(kind, ev=ev):
            return ev.share(lambda tabs: sum(l <= last_early_layer for l, _ in top_heads(tabs[kind], k)))
        z, r = share("zero"), share("resample")
        if z.low > r.high:
            verdict = (f"zero ablation reliably puts more early heads in its top-{k} than resample"
                       + (" (most of its top heads are early)" if z.value > k / 2 else ""))
        elif z.value > r.value:
            verdict = f"zero ablation puts more early heads in its top-{k}, but not reliably (the intervals overlap)"
        else:
            verdict = "zero ablation does not favour early heads here"
        out.append(f"{t}: top-{k} in layers 0-{last_early_layer}: zero {z.value:.0f}/{k} [{z.low:.0f}, {z.high:.0f}], "
                   f"resample {r.value:.0f}/{k} [{r.low:.0f}, {r.high:.0f}] -> {verdict}")
    return out


def entropy_reading(ev, kind: str, k: int = 6) -> str:
    """Do the top-`k` heads raise the answer entropy when ablated more often than random heads do (the base rate)?"""
    up, n_top, up_r, n_r = ev.entropy_rises(kind, k)
    a, b = up / max(n_top, 1), up_r / max(n_r, 1)
    line = (f"{ev.name:9s} {kind:9s}: top-{n_top} heads raising the answer entropy: {up}/{n_top}; random heads "
            f"(base rate): {up_r}/{n_r}")
    if a - b >= 0.3:
        return line + " -> top heads raise it more often than random heads, but a rise only says the model is less sure"
    return line + " -> about the base rate: counting entropy rises says nothing about mechanism"


def linear_reading(rho) -> str:
    """What the agreement of attribution patching with exact noising (an `Interval`) says about linearity."""
    if rho.value > 0.8 and rho.low > 0.5:
        return f"rank corr. {rho.value:.2f} [{rho.low:.2f}, {rho.high:.2f}] -> near-linear regime for these interventions"
    return (f"rank corr. {rho.value:.2f} [{rho.low:.2f}, {rho.high:.2f}] -> the linear estimate misses much of the exact "
            "effect (saturation or cancellation)")


def cost_reading(evidence: dict, n_heads: int) -> list[str]:
    """What the exact part of the sweeps measured, against a full exact all-heads sweep of the same prompts."""
    out = []
    for t, ev in evidence.items():
        m = int(ev.measured(ev.kinds[0]).sum())
        out.append(f"{t}: {len(ev)} prompts; every head screened ({n_heads} x {len(ev.kinds)} estimates per prompt from one "
                   f"backward pass per batch); {m} heads x {len(ev.kinds)} ablations measured exactly = "
                   f"{m / n_heads:.0%} of the patched runs of a full exact sweep")
    return out


# --------------------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------------------


def _verdict_frame(rows: Sequence[dict]):
    """A pandas DataFrame with columns method, assumes, measured here, missed, forward passes."""
    import pandas as pd

    cols = ["method", "assumes", "measured here", "missed", "forward passes"]
    for r in rows:
        missing = [c for c in cols if c not in r]
        if missing:
            raise ValueError(f"verdict row {r.get('method', '?')!r} lacks {missing}")
    return pd.DataFrame(list(rows), columns=cols).set_index("method")


@dataclass
class Findings:
    """Everything notebook 05 measured, read together: the verdict table and the charges tested."""

    n_heads: int
    corr: dict                      # task -> Spearman DataFrame between ablation methods
    damage: DamageReport
    sweeps: dict[str, dict[str, Sweep]]
    resample_top: Head              # top head under resample ablation (IOI)
    max_interaction: float
    best_repair: SelfRepair
    necessity_gap: float
    n_shortlist: int
    obs_corr: object                # DataFrame: methods x methods (IOI)
    probe_first: int | None
    lens_final: float
    scrub: Scrub
    obs_prompts: int = 24           # prompts of the observational methods
    flips: dict | None = None       # task -> ablation_evidence.Flip
    frozen: list | None = None      # ablation_evidence.FrozenSplit per head
    evidence: dict | None = None    # task -> ablation_screen.TaskEvidence (the all-heads sweeps)
    atp: object = None              # attribution vs exact noising: Spearman (an Interval) over the heads measured exactly

    def verdict_table(self):
        """Per method: what it assumes, what this run measured, what it missed, what it costs."""
        n, c, d, oc = self.n_heads, self.corr["IOI"], self.damage.damage, self.obs_corr
        rc = lambda m: (f"rank corr. with exact resample {getattr(self.atp, 'value', self.atp):.2f} (heads measured exactly)"  # noqa: E731
                        if m == "attribution" and self.atp is not None else
                        f"rank corr. with resample {float(oc.loc[m, 'resample ablation']):.2f}")
        ev = (self.evidence or {}).get("IOI")
        passes = (f"screen: 1 forward + 1 backward per batch; exact: {int(ev.measured(ev.kinds[0]).sum())} of {n} heads"
                  if ev is not None else f"{n + 1} per task")
        med = lambda k: float(d[k].kl.median())  # noqa: E731
        sc = self.scrub
        return _verdict_frame([
            {"method": "zero ablation", "assumes": "a missing head = output 0",
             "measured here": f"rank corr. with resample {float(c.loc['zero', 'resample']):.2f}; "
                              f"median control KL {med('zero'):.3f}",
             "missed": "confuses damage with mechanism (early heads)", "forward passes": passes},
            {"method": "mean ablation", "assumes": "the average output carries no task information",
             "measured here": f"rank corr. with resample {float(c.loc['mean', 'resample']):.2f}; "
                              f"median control KL {med('mean'):.3f}",
             "missed": f"OR-like pairs (max interaction {self.max_interaction:+.2f})", "forward passes": passes},
            {"method": "resample ablation = noising", "assumes": "the counterfactual differs only in the task variable",
             "measured here": f"top head {head_label(self.resample_top)}; self-repair up to "
                              f"{self.best_repair.compensation:+.2f} LD ({head_label(self.best_repair.heads[0])})",
             "missed": "sufficiency; compensation hides direct effects", "forward passes": passes},
            {"method": "denoising", "assumes": "restoring one component can restore behaviour",
             "measured here": f"largest necessity-sufficiency gap {self.necessity_gap:.2f}",
             "missed": "necessary heads that need their inputs", "forward passes": f"{self.n_shortlist + 1} (shortlist)"},
            {"method": "attention", "assumes": "where a head looks = what it does", "measured here": rc("attention IO-S2"),
             "missed": "what is moved, and heads acting via other heads", "forward passes": "1"},
            {"method": "DLA", "assumes": "the final norm scale is fixed; only direct paths", "measured here": rc("DLA"),
             "missed": "indirect (upstream) heads", "forward passes": "1"},
            {"method": "attribution patching (a gradient estimate of noising, not observational)",
             "assumes": "the metric is linear in each head's output",
             "measured here": rc("attribution"),
             "missed": "non-linear effects (saturation, cancellation; Kramar et al. 2024, AtP*)",
             "forward passes": "2 + 1 backward"},
            {"method": "natural covariation", "assumes": "the behaviour varies across prompts",
             "measured here": f"{rc('covariation')} ({self.obs_prompts} prompts)",
             "missed": "causation; heads with constant output", "forward passes": f"1 ({self.obs_prompts} prompts)"},
            {"method": "logit lens + probe", "assumes": "early layers read by the final unembedding / a linear read-out",
             "measured here": f"probe >= 0.9 from layer {self.probe_first}; lens final LD {self.lens_final:+.2f}",
             "missed": "which component wrote it; whether it is used", "forward passes": f"1 ({self.obs_prompts} prompts)"},
            {"method": "complement resampling (scrubbing-style)",
             "assumes": "heads outside the hypothesis are interchangeable across prompts",
             "measured here": f"{sc.kept:.0%} of LD kept (pass needs ~100%) vs median "
                              f"{float(np.median(sc.random_kept)) / sc.clean:.0%} for {len(sc.random_kept)} random sets",
             "missed": "finer hypotheses (positions, paths); the inputs of kept heads",
             "forward passes": f"{3 + len(sc.random_kept)}"},
        ] + [{"method": f"interchange flip ({t})", "assumes": "B differs from A only in the variable the heads carry",
              "measured here": f"{f.summary()['moved'].value:.0%} of the way to B's answer vs "
                               f"{f.summary()['random moved']:.0%} for random heads",
              "missed": "heads that carry the variable only jointly with unpatched ones",
              "forward passes": f"{len(f.random) + 3}"} for t, f in (self.flips or {}).items()])

    def charges(self) -> list[str]:
        """The essay's charges, each with the number this run measured and the reading it supports."""
        zr = min(float(c.loc["zero", "resample"]) for c in self.corr.values())
        mr = min(float(c.loc["mean", "resample"]) for c in self.corr.values())
        d = self.damage.damage
        zmed, rmed = float(d["zero"].kl.median()), float(d["resample"].kl.median())
        sc = self.scrub
        atp = (getattr(self.atp, "value", self.atp) if self.atp is not None
               else float(self.obs_corr.loc["attribution", "resample ablation"]))
        out = [
            f"1. separability: the largest pair interaction is {self.max_interaction:+.2f} LD (non-additivity); "
            f"baseline dependence (a different question): zero vs resample rank correlation {zr:.2f}, mean vs "
            f"resample {mr:.2f} (lower of the two tasks"
            + (f", over {len(next(iter(self.evidence.values())))}+ prompts per task" if self.evidence else "") + ")",
            f"2. artificial states: median control KL zero {zmed:.3f} vs resample {rmed:.3f} nats -> "
            + ("zero ablation is the most damaging on average" if zmed > rmed else
               "NOT supported on average: zero ablation is not more damaging than resampling for the typical head")
            + "; attribution patching (linear) vs exact noising: "
            + (linear_reading(self.atp) if hasattr(self.atp, "low") else f"rank corr. {atp:.2f} -> "
               + ("near-linear regime for these interventions" if atp > 0.8 else "the interventions are not near-linear")),
        ]
        if self.flips:
            parts = [f"{t} {f.summary()['moved'].value:.0%} (random heads {f.summary()['random moved']:.0%}"
                     + ("; partial: the lower bound is below 80%" if f.summary()["moved"].low < 0.8 else "") + ")"
                     for t, f in self.flips.items()]
            strong = all(f.summary()["moved"].low > f.summary()["random moved max"] for f in self.flips.values())
            out.append("3. damage vs mechanism: interchange moves the output towards B's answer: " + ", ".join(parts)
                       + (" -> specific, predicted changes that damage does not make" if strong else
                          " -> not beyond random heads on every task"))
        else:
            out.append(f"3. damage vs mechanism: {len(self.damage.rows)} (task, method, head) top-5 entries change "
                       "unrelated text at least as much as the task answer")
        if self.evidence is not None:
            up, n_top, up_r, n_r = self.evidence["IOI"].entropy_rises("resample", 6)
            base = ("more often than" if up / max(n_top, 1) - up_r / max(n_r, 1) >= 0.3 else "about as often as")
            out.append(f"4. entropy: resample-ablating a top-{n_top} IOI head raised the answer entropy for {up}/{n_top} "
                       f"heads, {base} random heads ({up_r}/{n_r}); a rise only says the model is less sure: the "
                       "interchange flip and the control KL, not the entropy, separate damage from mechanism")
        else:
            out.append(f"4. entropy: ablating a top-10 IOI head raised the answer entropy for "
                       f"{top_entropy_rises(self.sweeps['IOI']['resample'])}/10 heads (resample), with no base rate; "
                       "the interchange flip and the control KL, not the entropy, separate damage from mechanism")
        if self.frozen:
            best = max(self.frozen, key=lambda f: f.compensation)
            c = best.interval("compensation") if best.per_prompt else None
            ci = (f" [{c.low:+.2f}, {c.high:+.2f}] over {len(best.per_prompt['total'])} prompts"
                  + ("" if c.low > 0 else ", uncertain") if c else "")
            out.append(f"5. self-repair: {head_label(best.heads[0])} compensation {best.compensation:+.2f}{ci} of direct "
                       f"{best.direct:+.2f} = final-norm scale {best.norm_repair:+.2f} + other components "
                       f"{best.other_repair:+.2f}; complement resampling keeps {sc.kept:.0%}")
        return out


__all__ = [
    "LabResult", "Lab", "plot_effect_maps", "plot_damage", "plot_self_repair", "plot_noise_denoise", "plot_lens_probe",
    "plot_lab", "plot_flip", "Findings", "early_reading", "baseline_reading", "pair_reading", "scrub_reading", "flip_reading",
    "top_line", "screen_reading", "kind_correlations", "early_reading_evidence", "entropy_reading", "cost_reading",
    "linear_reading",
]
