"""Finding a circuit in a real language model: notebook 03's classes, validation, figures and explorers.

The method of Wang et al. 2022 ("Interpretability in the Wild: a Circuit for Indirect Object
Identification in GPT-2 small", arXiv 2211.00593), for any `TransformerBridge` the course loads
(GPT-2 small, SmolLM2-135M, toy GPT-2s). The measurements come from the instruments in
`mi_tutor.lab` (patching, path patching, direct logit attribution, attention readouts); this
module turns them into the paper's head classes by computed criteria, tests the circuit
(faithfulness, knockouts and backup heads), and draws it.

Conventions: prompts are aligned (one template, same length); `metric(logits)` returns one
score per prompt from logits ``[batch, pos, vocab]`` at position -1 (see `mi_tutor.ioi`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .lab.hooks import Head, all_heads, head_label, parse_heads, top_heads
from .lab.patching import ablation_values, heads_replaced, patch_hooks, run_patched
from .lab.readout import DLA, direct_logit_attribution

# --------------------------------------------------------------------------------------
# Classification into the paper's classes
# --------------------------------------------------------------------------------------


#: The paper's classes (Wang et al. 2022), in the order information flows, and their colours.
CLASSES = {
    "previous token": "#8c564b",
    "duplicate token": "#9467bd",
    "induction": "#e377c2",
    "S-inhibition": "#ff7f0e",
    "name mover": "#2ca02c",
    "negative name mover": "#d62728",
    "backup name mover": "#17becf",
}
#: Heads found by the criteria that fit none of the paper's classes.
EXTRA_CLASS = "direct, attends to S (not a paper class)"

#: The paper's GPT-2 small heads per class (Wang et al. 2022), quoted for comparison only.
PAPER_GPT2_HEADS = {
    "name mover": ["L9H9", "L9H6", "L10H0"],
    "negative name mover": ["L10H7", "L11H10"],
    "S-inhibition": ["L7H3", "L7H9", "L8H6", "L8H10"],
    "induction": ["L5H5", "L6H9", "(fuzzy L5H8, L5H9)"],
    "duplicate token": ["L0H1", "L3H0", "(fuzzy L0H10)"],
    "previous token": ["L2H2", "L4H11"],
    "backup name mover": ["L9H0", "L9H7", "L10H1", "L10H2", "L10H6", "L10H10", "L11H2", "L11H9"],
}


@dataclass
class Evidence:
    """Per-head measurements ([n_layers, n_heads] each; NaN = not measured) used to classify heads.

    dla: direct logit attribution of IO - S. attn_io / attn_s2: attention END -> IO / END -> S2.
    patch: change in logit difference when the head's output is patched from ABC.
    pp_q: change through the name movers' queries (path patching); pp_v: through the
    S-inhibition heads' values. induction: attention S2 -> S1+1; duplicate: S2 -> S1;
    prev_token: S1+1 -> S1. backup_gain: rise in DLA when the name movers are knocked out.
    clean_ld: the model's mean logit difference (thresholds are fractions of it).
    """

    dla: torch.Tensor
    attn_io: torch.Tensor
    attn_s2: torch.Tensor
    patch: torch.Tensor
    induction: torch.Tensor
    duplicate: torch.Tensor
    prev_token: torch.Tensor
    clean_ld: float
    dla_io: torch.Tensor | None = None
    dla_s: torch.Tensor | None = None
    pp_q: torch.Tensor | None = None
    pp_v: torch.Tensor | None = None
    backup_gain: torch.Tensor | None = None


def _top(score: torch.Tensor, mask: torch.Tensor, k: int, largest: bool = True) -> list[Head]:
    """`top_heads` among the heads where `mask` holds."""
    s = score.clone().float()
    s[~mask] = float("nan")
    return top_heads(s, k, largest)


def name_mover_candidates(dla: torch.Tensor, dla_io: torch.Tensor | None, dla_s: torch.Tensor | None, clean_ld: float,
                          frac: float = 0.1, k: int = 4) -> tuple[list[Head], list[Head]]:
    """(name movers, negative name movers), from what the heads WRITE (not where they look).

    Name mover: DLA >= `frac` x LD, mostly by raising the IO logit (dla_io >= -dla_s).
    Negative name mover: DLA <= -`frac` x LD, mostly by lowering the IO logit (-dla_io >= dla_s).
    (With dla_io/dla_s None, only the DLA threshold is used.) Where they attend is then a test.
    """
    thr = frac * abs(clean_ld)
    if dla_io is not None and dla_s is not None:
        raises_io, lowers_io = dla_io >= -dla_s, -dla_io >= dla_s
    else:
        raises_io = lowers_io = torch.ones_like(dla, dtype=torch.bool)
    return (_top(dla, (dla >= thr) & raises_io, k), _top(dla, (dla <= -thr) & lowers_io, k, largest=False))


def answer_heads(dla: torch.Tensor, clean_ld: float, frac: float = 0.1, k: int = 8) -> list[Head]:
    """The heads that write the answer: |DLA| >= `frac` x LD (at most `k`, largest first)."""
    return _top(dla.abs(), dla.abs() >= frac * abs(clean_ld), k)


def classify_heads(ev: Evidence, frac: float = 0.1, path_frac: float = 0.05, k: int = 4,
                   prev_min: float = 0.3) -> dict[str, list[Head]]:
    """Assign heads to the paper's classes by computed criteria (each class at most `k` heads).

    - name mover: DLA >= `frac` x LD, mostly by raising the IO logit (`name_mover_candidates`);
    - negative name mover: DLA <= -`frac` x LD, mostly by lowering the IO logit;
    - S-inhibition: path patching through the queries of the heads that write the answer
      (`pp_q`) lowers LD by >= `path_frac` x LD;
    - induction / duplicate token: not S-inhibition; path patching through the S-inhibition
      heads' values and the answer heads' keys (`pp_v`) lowers LD by >= `path_frac` x LD, and
      the head attends S2 -> S1+1 (induction) more / less than S2 -> S1 (duplicate token);
    - previous token: below the first induction (or duplicate) head, attention
      S1+1 -> S1 >= `prev_min`;
    - backup name mover: not a (negative) name mover, attends IO more than S2, and its DLA rises by
      >= `frac` x LD when the name movers are knocked out;
    - `EXTRA_CLASS`: DLA >= `frac` x LD, not a name mover, and attends S2 more than IO (it
      lowers S rather than raising IO; no paper class).
    """
    L = abs(ev.clean_ld)
    out: dict[str, list[Head]] = {c: [] for c in CLASSES}
    out["name mover"], out["negative name mover"] = name_mover_candidates(ev.dla, ev.dla_io, ev.dla_s, ev.clean_ld, frac, k)
    if ev.pp_q is not None:
        out["S-inhibition"] = _top(ev.pp_q, ev.pp_q <= -path_frac * L, k, largest=False)
    if ev.pp_v is not None:
        strong = ev.pp_v <= -path_frac * L
        for h in out["S-inhibition"]:
            strong[h] = False
        out["induction"] = _top(ev.pp_v, strong & (ev.induction > ev.duplicate), k, largest=False)
        out["duplicate token"] = _top(ev.pp_v, strong & (ev.duplicate >= ev.induction), k, largest=False)
    upstream = out["induction"] or out["duplicate token"]
    if upstream:
        first = min(l for l, _ in upstream)
        layer_ok = torch.arange(ev.dla.shape[0])[:, None].expand_as(ev.dla) < first
        out["previous token"] = _top(ev.prev_token, layer_ok & (ev.prev_token >= prev_min), min(k, 3))
    if ev.backup_gain is not None:
        nm = set(out["name mover"]) | set(out["negative name mover"])
        mask = (ev.backup_gain >= frac * L) & (ev.attn_io > ev.attn_s2)
        out["backup name mover"] = [h for h in _top(ev.backup_gain, mask, k + len(nm)) if h not in nm][:k]
    taken = {h for hs in out.values() for h in hs}
    extra = [h for h in _top(ev.dla, (ev.dla >= frac * L) & (ev.attn_s2 >= ev.attn_io), k) if h not in taken]
    if extra:
        out[EXTRA_CLASS] = extra
    return out


def circuit_heads(classes: dict[str, list[Head]], include_backup: bool = False) -> list[Head]:
    """All heads of the classes (backup name movers only if asked), deduplicated, sorted."""
    hs = {h for c, heads in classes.items() if include_backup or c != "backup name mover" for h in heads}
    return sorted(hs)


def head_class(classes: dict[str, list[Head]], head: Head) -> str:
    """The class(es) of `head`, or "-"."""
    names = [c for c, hs in classes.items() if tuple(head) in hs]
    return ", ".join(names) if names else "-"


# --------------------------------------------------------------------------------------
# Validation: faithfulness and knockouts (mean ablation over the ABC distribution)
# --------------------------------------------------------------------------------------


def _abc_means(model, ds) -> dict[int, torch.Tensor]:
    return ablation_values(model, ds.tokens, "mean", reference_tokens=ds.abc_tokens)


@dataclass
class Faithfulness:
    """Mean logit differences: full model, circuit only (rest mean-ablated), nothing (all ablated)."""

    model_ld: float
    circuit_ld: float
    empty_ld: float
    n_heads: int

    @property
    def ratio(self) -> float:
        """circuit / model, the paper's measure (87% for GPT-2 small)."""
        return self.circuit_ld / self.model_ld

    @property
    def normalised(self) -> float:
        """(circuit - empty) / (model - empty): share of what the heads add that the circuit keeps."""
        return (self.circuit_ld - self.empty_ld) / (self.model_ld - self.empty_ld)


@torch.no_grad()
def faithfulness(model, ds, circuit: Sequence[Head], means: dict[int, torch.Tensor] | None = None) -> Faithfulness:
    """Mean-ablate every head outside `circuit` (ABC means per position) and compare logit differences."""
    means = _abc_means(model, ds) if means is None else means
    every = all_heads(model)
    circuit = {tuple(h) for h in circuit}
    outside = [h for h in every if h not in circuit]
    model_ld = float(ds.metric(model(ds.tokens)).mean())
    circuit_ld = float(ds.metric(run_patched(model, ds.tokens, heads_replaced(outside, means))).mean())
    empty_ld = float(ds.metric(run_patched(model, ds.tokens, heads_replaced(every, means))).mean())
    return Faithfulness(model_ld, circuit_ld, empty_ld, len(circuit))


@dataclass
class Knockout:
    """What happens when `heads` are mean-ablated: logit difference and every head's new DLA."""

    heads: list[Head]
    ld_before: float
    ld_after: float
    dla_before: torch.Tensor
    dla_after: torch.Tensor

    @property
    def kept(self) -> float:
        return self.ld_after / self.ld_before

    @property
    def gain(self) -> torch.Tensor:
        """Rise of each head's DLA after the knockout ([n_layers, n_heads]; knocked-out heads NaN)."""
        g = self.dla_after - self.dla_before
        for l, h in self.heads:
            g[l, h] = float("nan")
        return g


def knockout(model, ds, heads: Sequence[Head], dla_before: torch.Tensor | None = None,
             means: dict[int, torch.Tensor] | None = None) -> Knockout:
    """Mean-ablate `heads` (e.g. the name movers) and re-measure LD and DLA (backup behaviour)."""
    means = _abc_means(model, ds) if means is None else means
    before = direct_logit_attribution(model, ds.tokens, ds.io, ds.s) if dla_before is None else None
    after = direct_logit_attribution(model, ds.tokens, ds.io, ds.s, fwd_hooks=patch_hooks(model, heads_replaced(heads, means)))
    dla_b = before.heads if before is not None else dla_before
    ld_b = before.logit_diff if before is not None else float(ds.metric(model(ds.tokens)).mean())
    return Knockout(list(heads), ld_b, after.logit_diff, dla_b, after.heads)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_dla(dla: DLA, title: str = ""):
    """Left: each layer's attention and MLP share of the logit difference. Right: every head's."""
    import matplotlib.pyplot as plt

    from .plots import layer_head_heatmap

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    n = len(dla.attn)
    x = np.arange(n)
    axes[0].bar(x - 0.2, dla.attn.numpy(), 0.4, label="attention (all heads)", color="tab:blue")
    axes[0].bar(x + 0.2, dla.mlp.numpy(), 0.4, label="MLP", color="tab:gray")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("direct effect on logit diff (IO - S)")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"by layer (parts sum to {dla.total:.2f}; the model's logit diff is {dla.logit_diff:.2f})", fontsize=9)
    layer_head_heatmap(dla.heads, title="by head", ax=axes[1])
    fig.suptitle(title or "Direct logit attribution at the final token", fontsize=11)
    fig.tight_layout()
    return fig


def plot_io_vs_s_attention(heads: Sequence[Head], attn_io: torch.Tensor, attn_s2: torch.Tensor, dla: torch.Tensor):
    """Bars: attention from END to IO and to S2 for `heads` (labelled with their DLA)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(heads) + 1.5), 3.2))
    x = np.arange(len(heads))
    ax.bar(x - 0.2, [float(attn_io[l, h]) for l, h in heads], 0.4, label="END -> IO", color="tab:green")
    ax.bar(x + 0.2, [float(attn_s2[l, h]) for l, h in heads], 0.4, label="END -> S2", color="tab:red")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{head_label(h)}\nDLA {float(dla[h]):+.2f}" for h in heads], fontsize=8)
    ax.set_ylabel("attention weight")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Where the heads with the largest direct effect look from the final token", fontsize=10)
    fig.tight_layout()
    return fig


def plot_patching(exact: torch.Tensor, approx: torch.Tensor, title: str = ""):
    """Exact per-head patching next to attribution patching, and their scatter."""
    import matplotlib.pyplot as plt

    from .plots import layer_head_heatmap

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    layer_head_heatmap(exact, title="exact patching (ABC -> IOI): change in LD", ax=axes[0])
    layer_head_heatmap(approx, title="attribution patching estimate", ax=axes[1])
    e, a = exact.flatten().numpy(), approx.flatten().numpy()
    axes[2].scatter(e, a, s=8, alpha=0.6)
    lim = [min(e.min(), a.min()), max(e.max(), a.max())]
    axes[2].plot(lim, lim, "k--", lw=0.7)
    r = np.corrcoef(e, a)[0, 1]
    axes[2].set_xlabel("exact")
    axes[2].set_ylabel("attribution estimate")
    axes[2].set_title(f"agreement: r = {r:.2f}", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_circuit(classes: dict[str, list[Head]], n_layers: int, title: str = ""):
    """The circuit as a diagram: heads placed by layer, coloured by class, arrows along the paper's flow."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    lanes = [c for c in list(CLASSES) + [EXTRA_CLASS] if classes.get(c)]
    flow = [("previous token", "induction"), ("induction", "S-inhibition"), ("duplicate token", "S-inhibition"),
            ("S-inhibition", "name mover"), ("S-inhibition", "negative name mover"), ("S-inhibition", "backup name mover"),
            ("S-inhibition", EXTRA_CLASS)]
    fig, ax = plt.subplots(figsize=(12, 0.8 * len(lanes) + 1.8))
    pos: dict[tuple[str, Head], tuple[float, float]] = {}
    for y, c in enumerate(reversed(lanes)):
        heads = sorted(classes[c])
        for l, h in heads:
            same = [x for x in heads if x[0] == l]  # heads of one layer: stacked side by side, staggered
            k = same.index((l, h))
            xy = (l + 0.9 * (k - (len(same) - 1) / 2), y + (0.18 if k % 2 else -0.18) * (len(same) > 1))
            pos[(c, (l, h))] = xy
            ax.scatter(*xy, s=430, color=CLASSES.get(c, "#7f7f7f"), zorder=3, edgecolor="k", lw=0.5)
            ax.text(*xy, head_label((l, h)), ha="center", va="center", fontsize=6.5, color="white", zorder=4, weight="bold")
    for a, b in flow:
        for (ca, ha), pa in pos.items():
            if ca != a:
                continue
            for (cb, hb), pb in pos.items():
                if cb == b and hb[0] > ha[0]:
                    ax.add_patch(FancyArrowPatch(pa, pb, arrowstyle="-|>", mutation_scale=8, color="0.6", lw=0.6,
                                                 shrinkA=11, shrinkB=11, zorder=1))
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(list(reversed(lanes)), fontsize=9)
    ax.set_xlim(-1.5, n_layers + 0.8)
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlabel("layer")
    ax.grid(axis="x", alpha=0.2)
    ax.set_title(title or "The circuit found in this model (arrows: the paper's flow of information)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_resid_patching(table: torch.Tensor, tokens: Sequence[str], layers: Sequence[int], positions: Sequence[int]):
    """Heatmap of residual-stream patching [layers x positions] (the patched layers/positions only)."""
    from .plots import heatmap

    sub = table[list(layers)][:, list(positions)]
    return heatmap(sub, xlabels=[f"{p}:{tokens[p]}" for p in positions], ylabels=[str(l) for l in layers],
                   xlabel="position patched", ylabel="layer (residual stream entering it)",
                   title="Patching the residual stream from ABC into IOI: change in logit diff",
                   figsize=(1.2 + 0.75 * len(positions), 1.0 + 0.32 * len(layers)), annotate=True)


# --------------------------------------------------------------------------------------
# Explorers: a head inspector and a prompt editor
# --------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """Everything the explorers show, computed once (the explorers only plot)."""

    model: object
    ds: object
    patterns: torch.Tensor  # [n_layers, batch, head, q, k]
    dla: DLA
    patch: torch.Tensor  # exact patching change in LD [n_layers, n_heads]
    classes: dict[str, list[Head]]
    attn_io: torch.Tensor
    attn_s2: torch.Tensor

    def head_options(self) -> list[tuple[str, str]]:
        """Dropdown options: classified heads first, then all others."""
        n_layers, n_heads = self.dla.heads.shape
        classified = [h for hs in self.classes.values() for h in hs]
        rest = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in classified]
        return [(f"{head_label(h)} ({head_class(self.classes, h)})", head_label(h)) for h in classified + rest]


def inspect_head(analysis: Analysis, head: str, prompt: int = 0):
    """One head: its attention on a prompt, its direct effect, its patching effect and its class."""
    import matplotlib.pyplot as plt

    (l, h), = parse_heads(str(head), analysis.dla.heads.shape[0], analysis.dla.heads.shape[1])[:1]
    ds = analysis.ds
    toks = analysis.model.to_str_tokens(ds.tokens[prompt])
    pat = analysis.patterns[l, prompt, h].numpy()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.4, 1]})
    ax.imshow(pat, cmap="Blues", vmin=0, vmax=1)
    labels = [t.replace("\n", "\\n") for t in toks]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    for name, color in (("IO", "tab:green"), ("S1", "tab:red"), ("S2", "tab:red")):
        ax.get_xticklabels()[int(ds.pos[name][prompt])].set_color(color)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(f"head {head_label((l, h))}: attention on prompt {prompt}", fontsize=10)
    ax2.axis("off")
    rows = [
        ("class", head_class(analysis.classes, (l, h))),
        ("direct logit attribution", f"{float(analysis.dla.heads[l, h]):+.3f}"),
        ("patching ABC -> IOI (change in LD)", f"{float(analysis.patch[l, h]):+.3f}"),
        ("attention END -> IO (mean)", f"{float(analysis.attn_io[l, h]):.2f}"),
        ("attention END -> S2 (mean)", f"{float(analysis.attn_s2[l, h]):.2f}"),
        ("this prompt: END -> IO / S2", f"{pat[-1, int(ds.pos['IO'][prompt])]:.2f} / {pat[-1, int(ds.pos['S2'][prompt])]:.2f}"),
    ]
    for i, (k, v) in enumerate(rows):
        ax2.text(0, 0.9 - 0.13 * i, k, fontsize=9, color="0.35", transform=ax2.transAxes)
        ax2.text(0, 0.84 - 0.13 * i, v, fontsize=11, transform=ax2.transAxes)
    ax2.text(0, 0.05, ds.prompts[prompt], fontsize=8, style="italic", transform=ax2.transAxes, wrap=True)
    fig.tight_layout()
    return fig


def prompt_report(analysis: Analysis, text: str, top: int = 8):
    """Type an IOI sentence: its logit difference and the top heads' direct contributions.

    A sentence that is not IOI-shaped gets a figure that says what is wrong (no exception).
    """
    import matplotlib.pyplot as plt

    from .ioi import IOIError, parse_ioi_sentence

    model = analysis.model
    try:
        p = parse_ioi_sentence(model, text)
    except IOIError as e:
        fig, ax = plt.subplots(figsize=(9, 1.8))
        ax.axis("off")
        ax.text(0, 0.75, "Not an IOI sentence:", fontsize=11, weight="bold", color="tab:red", transform=ax.transAxes)
        ax.text(0, 0.35, str(e), fontsize=9, wrap=True, transform=ax.transAxes)
        return fig
    d = direct_logit_attribution(model, p.tokens, torch.tensor([p.io]), torch.tensor([p.s]))
    flat = d.heads.flatten()
    idx = flat.abs().argsort(descending=True)[:top].tolist()
    n_heads = d.heads.shape[1]
    heads = [(i // n_heads, i % n_heads) for i in idx]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    vals = [float(d.heads[hd]) for hd in heads]
    colors = [CLASSES.get(head_class(analysis.classes, hd).split(",")[0], "#7f7f7f") for hd in heads]
    ax.bar(range(len(heads)), vals, color=colors)
    ax.set_xticks(range(len(heads)))
    ax.set_xticklabels([f"{head_label(hd)}\n{head_class(analysis.classes, hd)}" for hd in heads], fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("direct effect on IO - S")
    verdict = "prefers IO" if d.logit_diff > 0 else "prefers S"
    ax.set_title(f"IO ={p.io_name!r}, S ={p.s_name!r}: logit diff {d.logit_diff:+.2f} ({verdict})", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = [
    "CLASSES", "EXTRA_CLASS", "PAPER_GPT2_HEADS", "Evidence", "name_mover_candidates", "answer_heads", "classify_heads",
    "circuit_heads", "head_class", "Faithfulness", "faithfulness", "Knockout", "knockout", "plot_dla",
    "plot_io_vs_s_attention", "plot_patching", "plot_circuit", "plot_resid_patching", "Analysis", "inspect_head",
    "prompt_report",
]
