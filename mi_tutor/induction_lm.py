"""Induction heads in a pretrained language model: readings of the repeat loss, in-context learning, ablations.

The toy part of notebook 02 lives in `mi_tutor.induction`; this module holds what the notebook
does on SmolLM2 (or GPT-2): the offline text corpus, loss by position, the readings of the loss
on repeated random tokens (against a uniform guess and the model's own confidence), and the
intervention the claim "induction heads drive in-context learning" needs in this model: mean-ablate
the top induction heads and re-measure the second-copy loss and the in-context-learning score,
beside a control of as many low-induction heads, with bootstrap intervals over sequences and
documents. Every intervention runs on `mi_tutor.lab.patching`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .lab import scores as head_scores
from .lab.hooks import Head, head_label
from .lab.patching import Patch, ablation_values, heads_replaced, run_patched
from .plots import finish

#: Heads the literature names in GPT-2 small, as (layer, head). Quoted, not computed.
GPT2_LITERATURE = {
    "induction, tutorial sweep [secondary source]": [(5, 1), (5, 5), (6, 9), (7, 2), (7, 10)],
    "induction, IOI paper (Wang et al. 2022)": [(5, 5), (6, 9)],
    "previous token, IOI paper (Wang et al. 2022)": [(2, 2), (4, 11)],
}

CORPUS_DIR = __import__("pathlib").Path(__file__).resolve().parent / "data" / "corpus"
DOC_SEPARATOR = "<<<END OF DOCUMENT>>>"


def load_corpus(name: str = "python_reference.txt") -> list[str]:
    """The offline natural-text corpus shipped with mi_tutor (see data/corpus/SOURCES.md)."""
    path = CORPUS_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall mi_tutor (the corpus ships as package data)")
    return [d.strip() for d in path.read_text().split(DOC_SEPARATOR) if d.strip()]


def text_windows(model, n_ctx: int, max_windows: int = 10) -> torch.Tensor:
    """``[n, n_ctx]`` token windows of natural text, BOS first (when the model has one).

    Window i is the opening of corpus document i (the first ``n_ctx - 1`` tokens), so the
    windows cover different topics; documents shorter than that are skipped.
    """
    bos = head_scores.token_range(model)[2]
    body = n_ctx - (1 if bos is not None else 0)
    rows = []
    for doc in load_corpus():
        toks = model.to_tokens(doc, prepend_bos=False)[0]
        if len(toks) < body:
            continue
        chunk = toks[:body]
        if bos is not None:
            chunk = torch.cat([torch.tensor([bos], dtype=chunk.dtype), chunk])
        rows.append(chunk)
        if len(rows) == max_windows:
            break
    if not rows:
        raise ValueError(f"no corpus document is {n_ctx} tokens long; lower n_ctx")
    return torch.stack(rows)


@torch.no_grad()
def loss_by_position(model, tokens: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
    """Per-token loss ``[n, seq-1]`` (column p = loss of predicting token p+1), in batches."""
    out = []
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i: i + batch_size]
        out.append(head_scores.per_token_loss(model(batch), batch))
    return torch.cat(out)


def literature_table(scores: head_scores.HeadScores) -> list[tuple[str, str, float, int]]:
    """For GPT-2 small: (source, head, our induction or previous-token score, its rank among all heads)."""
    rows = []
    for source, heads in GPT2_LITERATURE.items():
        kind = "previous_token" if source.startswith("previous") else "induction"
        s = getattr(scores, kind)
        order = s.flatten().argsort(descending=True).tolist()
        for l, h in heads:
            rank = order.index(l * s.shape[1] + h) + 1
            rows.append((source, f"{l}.{h}", float(s[l, h]), rank))
    return rows


def plot_repeat_loss(scores: head_scores.HeadScores, title: str = ""):
    """Per-token loss along a repeated random sequence: high on the first copy, low on the second."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    lp = scores.loss_by_position.numpy()
    pos = np.arange(1, len(lp) + 1)  # predicted token index
    ax.plot(pos, lp, marker=".", lw=1)
    s, L = scores.start, scores.half_len
    ax.axvspan(s + L - 0.5, s + 2 * L - 0.5, color="tab:green", alpha=0.12, label="second copy")
    first, second = scores.first_vs_second_repeat_loss()
    ax.hlines(first, s + 1, s + L - 1, color="tab:red", label=f"mean, first copy: {first:.2f}")
    ax.hlines(second, s + L + 1, s + 2 * L - 1, color="tab:green", label=f"mean, second copy: {second:.2f}")
    ax.set_xlabel("token index in the sequence")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title or "loss on repeated random tokens", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return finish(fig)


def plot_icl(loss: torch.Tensor, early: int, late: int, halfwidth: int, title: str = ""):
    """Mean per-token loss against position on natural text, with the two ICL windows marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    mean = loss.float().mean(0).numpy()
    k = 9
    smooth = np.convolve(mean, np.ones(k) / k, mode="valid")
    ax.plot(np.arange(len(mean)), mean, color="lightgrey", lw=0.8, label="mean over documents")
    ax.plot(np.arange(k // 2, k // 2 + len(smooth)), smooth, lw=1.5, label=f"moving average ({k} tokens)")
    for c, lab in ((early, "early"), (late, "late")):
        ax.axvspan(c - halfwidth, c + halfwidth, color="tab:orange", alpha=0.25)
        ax.text(c, ax.get_ylim()[1] * 0.95, lab, ha="center", fontsize=8)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("token index (log scale)")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title or "loss falls as the context grows", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return finish(fig)


# --------------------------------------------------------------------------------------
# Reading the loss on repeated random tokens
# --------------------------------------------------------------------------------------


def repeated_tokens(model, n_seqs: int, half_len: int, seed: int = 0) -> torch.Tensor:
    """``[n_seqs, (1 if BOS) + 2*half_len]`` random tokens above the special ids, repeated once (BOS first)."""
    low, high, bos = head_scores.token_range(model)
    return head_scores.random_repeated_tokens(n_seqs, half_len, low, high, bos=bos, seed=seed)


@torch.no_grad()
def loss_and_entropy(model, tokens: torch.Tensor, patches: Sequence[Patch] = (),
                     batch_size: int = 2, entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token loss and predictive entropy ``[n, seq-1]`` (column p predicts token p+1), with `patches` applied.

    Patch values cover all `tokens` (batch first); they are sliced batch by batch, so that only
    ``batch_size`` sequences of logits are held at once. ``entropy=False`` skips the entropy (returns None).
    """
    losses, ents = [], []
    for i in range(0, len(tokens), batch_size):
        rows = slice(i, i + batch_size)
        batch = tokens[rows]
        ps = [dataclasses.replace(p, value=p.value[rows]) for p in patches]
        logits = run_patched(model, batch, ps) if ps else model(batch)
        logp = logits[:, :-1].float().log_softmax(-1)
        losses.append(-logp.gather(-1, batch[:, 1:, None]).squeeze(-1))
        if entropy:
            ents.append(-(logp.exp() * logp).sum(-1))
        del logits, logp
    return torch.cat(losses), (torch.cat(ents) if entropy else None)


@dataclass
class RepeatReading:
    """Loss on the two copies of repeated random tokens, beside what they should be compared with."""

    first: float  # mean loss on the first copy (tokens 2..L of it)
    second: float  # mean loss on the second copy (tokens 2..L of it)
    uniform: float  # ln(vocabulary): a uniform guess
    first_entropy: float  # the model's own predictive entropy on the first copy
    onset: int  # how many leading tokens of the second copy `second_onset` averages
    second_onset: float
    second_rest: float

    @property
    def second_probability(self) -> float:
        """exp(-second): the geometric-mean probability of the right token on the second copy."""
        return math.exp(-self.second)


def repeat_reading(loss: torch.Tensor, entropy: torch.Tensor, half_len: int, start: int, vocab: int,
                   onset: int = 4) -> RepeatReading:
    """Summarise `loss_and_entropy` on repeated tokens whose first copy starts at `start` (1 after a BOS)."""
    L, s = half_len, start
    first, second = loss[:, s: s + L - 1], loss[:, s + L: s + 2 * L - 1]
    return RepeatReading(first.mean().item(), second.mean().item(), math.log(vocab),
                         entropy[:, s: s + L - 1].mean().item(), onset, second[:, :onset].mean().item(),
                         second[:, onset:].mean().item())


# --------------------------------------------------------------------------------------
# Ablating induction heads in the pretrained model
# --------------------------------------------------------------------------------------


def icl_per_row(loss: torch.Tensor, early: int, late: int, halfwidth: int) -> torch.Tensor:
    """`scores.in_context_learning_score` of each row (document) ``[n]``; their mean is the score of all rows."""
    head_scores.in_context_learning_score(loss, early, late, halfwidth)  # validates the windows
    w = halfwidth
    return loss[:, late - w: late + w + 1].float().mean(1) - loss[:, early - w: early + w + 1].float().mean(1)


def control_heads(induction: torch.Tensor, k: int, seed: int = 0) -> list[Head]:
    """`k` heads drawn at random (seeded) among those whose induction score is below the median."""
    n_heads = induction.shape[1]
    low = (induction.flatten() < induction.flatten().median()).nonzero().flatten()
    pick = low[torch.randperm(len(low), generator=torch.Generator().manual_seed(seed))[:k]]
    return sorted((int(i) // n_heads, int(i) % n_heads) for i in pick)


@dataclass
class AblationStudy:
    """Per-sequence second-copy loss and per-document ICL score, clean and with each head set mean-ablated."""

    heads: dict[str, list[Head]]
    second_copy: dict[str, torch.Tensor]  # condition -> [n_seqs]; "clean" included
    icl: dict[str, torch.Tensor]  # condition -> [n_docs]

    def change(self, condition: str, what: str = "second_copy") -> head_scores.Interval:
        """Ablated minus clean, paired by sequence (or document), with a bootstrap 95% interval."""
        table = getattr(self, what)
        return head_scores.bootstrap(table[condition] - table["clean"])

    def summary(self) -> str:
        n_seq, n_doc = len(self.second_copy["clean"]), len(self.icl["clean"])
        lines = [f"{'condition':<26}{'second-copy loss':>18}{'change [95% CI]':>26}{'ICL score':>12}{'change [95% CI]':>26}",
                 f"{'clean':<26}{self.second_copy['clean'].mean():>18.2f}{'':>26}{self.icl['clean'].mean():>12.2f}"]
        for name in self.heads:
            a, b = self.change(name), self.change(name, "icl")
            lines.append(f"{name:<26}{self.second_copy[name].mean():>18.2f}{f'{a.value:+.2f} [{a.low:+.2f}, {a.high:+.2f}]':>26}"
                         f"{self.icl[name].mean():>12.2f}{f'{b.value:+.2f} [{b.low:+.2f}, {b.high:+.2f}]':>26}")
        lines.append(f"(bootstrap over {n_seq} repeated sequences and {n_doc} documents; heads: " +
                     "; ".join(f"{n}: {', '.join(head_label(h) for h in hs)}" for n, hs in self.heads.items()) + ")")
        return "\n".join(lines)


def mean_head_outputs(model, tokens: torch.Tensor, layers: Sequence[int], batch_size: int = 2) -> dict[int, torch.Tensor]:
    """`patching.ablation_values(..., "mean", tokens)` computed `batch_size` sequences at a time (a whole
    batch of long documents in one cached pass would hold all of its logits), shaped like hook_z of `tokens`."""
    total: dict[int, torch.Tensor] = {}
    for i in range(0, len(tokens), batch_size):
        chunk = tokens[i: i + batch_size]
        for l, v in ablation_values(model, chunk, "mean", chunk, layers=layers).items():
            total[l] = total.get(l, 0) + v[0] * len(chunk)
    return {l: (t / len(tokens)).expand(len(tokens), *t.shape).clone() for l, t in total.items()}


def ablation_study(model, heads: dict[str, list[Head]], repeat: torch.Tensor, half_len: int, text: torch.Tensor,
                   early: int, late: int, halfwidth: int, clean_text_loss: torch.Tensor | None = None,
                   batch_size: int = 1) -> AblationStudy:
    """Mean-ablate each named set of heads (all at once) and re-measure the repeat loss and the ICL score.

    The mean is taken per position over the same distribution (the repeated sequences for the repeat
    loss, the documents for the ICL score), as `patching.ablation_values` does.
    """
    start = 1 if head_scores.token_range(model)[2] is not None else 0
    layers = sorted({l for hs in heads.values() for l, _ in hs})
    rep_mean = mean_head_outputs(model, repeat, layers, batch_size=2)
    txt_mean = mean_head_outputs(model, text, layers, batch_size)

    def second(loss):
        return loss[:, start + half_len: start + 2 * half_len - 1].mean(1)

    if clean_text_loss is None:
        clean_text_loss = loss_and_entropy(model, text, batch_size=batch_size, entropy=False)[0]
    sc = {"clean": second(loss_and_entropy(model, repeat, entropy=False)[0])}
    icl = {"clean": icl_per_row(clean_text_loss, early, late, halfwidth)}
    for name, hs in heads.items():
        sc[name] = second(loss_and_entropy(model, repeat, heads_replaced(hs, rep_mean), entropy=False)[0])
        icl[name] = icl_per_row(loss_and_entropy(model, text, heads_replaced(hs, txt_mean), batch_size, False)[0],
                                early, late, halfwidth)
    return AblationStudy(dict(heads), sc, icl)


__all__ = [
    "GPT2_LITERATURE", "load_corpus", "text_windows", "loss_by_position", "literature_table", "plot_repeat_loss",
    "plot_icl", "repeated_tokens", "loss_and_entropy", "RepeatReading", "repeat_reading", "icl_per_row",
    "control_heads", "AblationStudy", "mean_head_outputs", "ablation_study",
]
