"""Scores that say what an attention head does, and statistics to compare rankings of heads.

Pattern scores read an attention pattern ``[..., query, key]`` (as stored by the hook
``blocks.L.attn.hook_pattern``, shape ``[batch, head, query, key]``) on a sequence made of a
random segment followed by an exact copy of it:

    position:  start ... start+L-1 | start+L ... start+2L-1
    tokens:    t_0   ...  t_{L-1}   | t_0     ...  t_{L-1}

- `previous_token_score`: mean attention from each position to the one just before it.
- `duplicate_token_score`: mean attention from each token of the copy to its earlier
  occurrence (key = query - L).
- `induction_score`: mean attention from each token of the copy to the token *after* its
  earlier occurrence (key = query - L + 1). Olsson et al. (2022) call this prefix matching.

Weight scores read the model's matrices (row-vector convention of TransformerLens:
``W_QK = W_Q W_K^T`` and ``W_OV = W_V W_O``, both ``[d_model, d_model]``):

- `ov_copying_score`: the fraction of tokens that the head's full OV circuit
  ``W_E W_OV W_U`` maps to themselves at top-1.
- `k_composition_score` (and `q_`/`v_`): how much a later head's keys (queries, values) read
  what an earlier head writes (Elhage et al. 2021), with `composition_baseline` for random
  matrices of the same shapes.

`score_all_heads(model, ...)` scores every head of any model on repeated random tokens, in
batches; it works on GPT-2 (multi-head attention) and on SmolLM2 (grouped-query attention:
3 key/value heads for 9 query heads, which `head_weights` expands per query head).

Comparing methods: `ranks`, `spearman` and `rank_correlations` over all heads, `top_k_overlap`
beside them (a correlation over hundreds of heads is dominated by the unimportant ones), and
`bootstrap` for a confidence interval over prompts. `covariation` correlates a per-prompt
score with a per-prompt target.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .hooks import Head, expand_kv, hook_name, top_heads

Tensor = torch.Tensor


def _check_pattern(pattern: Tensor, name: str) -> Tensor:
    if not isinstance(pattern, torch.Tensor):
        pattern = torch.as_tensor(np.asarray(pattern))
    if pattern.ndim < 2 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(
            f"{name} needs an attention pattern [..., query, key] with query == key length, "
            f"got shape {tuple(pattern.shape)}. Pass cache['pattern', layer] ([batch, head, q, k])."
        )
    return pattern.float()


def _check_span(seq: int, half_len: int, start: int) -> None:
    if half_len < 1 or start < 0 or start + 2 * half_len > seq:
        raise ValueError(
            f"a repeat of half_len={half_len} starting at {start} does not fit in a pattern of "
            f"{seq} positions (needs start + 2*half_len <= {seq})."
        )


# --------------------------------------------------------------------------------------
# Pattern scores
# --------------------------------------------------------------------------------------


def previous_token_score(pattern: Tensor) -> Tensor:
    """Mean attention from each position q >= 1 to position q - 1.

    Args:
        pattern: attention probabilities ``[..., query, key]``.

    Returns:
        ``pattern[..., q, q-1]`` averaged over q, shape ``[...]`` (e.g. ``[batch, head]``).
    """
    pattern = _check_pattern(pattern, "previous_token_score")
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)


def _offset_score(pattern: Tensor, half_len: int, start: int, shift: int) -> Tensor:
    seq = pattern.shape[-1]
    _check_span(seq, half_len, start)
    q = torch.arange(start + half_len, start + 2 * half_len)
    return pattern[..., q, q - half_len + shift].mean(-1)


def induction_score(pattern: Tensor, half_len: int, start: int = 0) -> Tensor:
    """Mean attention from each token of the copy to the token after its first occurrence.

    Args:
        pattern: ``[..., query, key]`` on a sequence whose positions ``start .. start+L-1``
            are repeated at ``start+L .. start+2L-1`` (L = `half_len`).
        half_len: L, the length of the repeated segment.
        start: where the first copy begins (1 when a BOS token comes first).

    Returns:
        Scores ``[...]``; 1.0 means every query of the copy puts all its attention on
        ``query - L + 1``.
    """
    return _offset_score(_check_pattern(pattern, "induction_score"), half_len, start, shift=1)


def duplicate_token_score(pattern: Tensor, half_len: int, start: int = 0) -> Tensor:
    """Mean attention from each token of the copy to its own earlier occurrence (key = query - L)."""
    return _offset_score(_check_pattern(pattern, "duplicate_token_score"), half_len, start, shift=0)


def chance_level(seq_len: int) -> float:
    """The score of a head that spreads its attention uniformly over the causal prefix.

    A uniform head gives position q the weight 1/(q+1) on each key; averaged over the
    queries of a repeated sequence of `seq_len` tokens this is about ``ln(seq_len)/seq_len``.
    We return the mean of 1/(q+1) over the second half, the relevant queries for induction.
    """
    half = seq_len // 2
    return float(np.mean([1.0 / (q + 1) for q in range(half, seq_len)]))


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


@dataclass
class HeadWeights:
    """Per-query-head weights, shapes ``[n_layers, n_heads, d_model, d_head]`` (W_O transposed back).

    For grouped-query attention the key/value weights are repeated so that query head h
    uses key/value head ``h // (n_heads // n_kv_heads)``, as the model does.
    """

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor  # [n_layers, n_heads, d_head, d_model]
    W_E: Tensor  # [d_vocab, d_model]
    W_U: Tensor  # [d_model, d_vocab]

    def qk(self, layer: int, head: int) -> Tensor:
        """W_QK = W_Q W_K^T, ``[d_model, d_model]``: score = x_query W_QK x_key^T."""
        return self.W_Q[layer, head] @ self.W_K[layer, head].T

    def ov(self, layer: int, head: int) -> Tensor:
        """W_OV = W_V W_O, ``[d_model, d_model]``: what the head writes = x_key W_OV."""
        return self.W_V[layer, head] @ self.W_O[layer, head]


@torch.no_grad()
def head_weights(model) -> HeadWeights:
    """Read W_Q, W_K, W_V, W_O, W_E, W_U once (the bridge recomputes them on every access)."""
    n_heads = model.cfg.n_heads
    W_Q = model.W_Q.detach().float()
    return HeadWeights(
        W_Q=W_Q,
        W_K=expand_kv(model.W_K.detach().float(), n_heads),
        W_V=expand_kv(model.W_V.detach().float(), n_heads),
        W_O=model.W_O.detach().float(),
        W_E=model.W_E.detach().float(),
        W_U=model.W_U.detach().float(),
    )


@torch.no_grad()
def ov_copying_score(W_E: Tensor, W_OV: Tensor, W_U: Tensor, tokens: Tensor | None = None) -> float:
    """Fraction of tokens t whose full OV circuit ``W_E[t] W_OV W_U`` has its largest logit at t.

    Args:
        W_E: ``[d_vocab, d_model]``; W_OV: ``[d_model, d_model]``; W_U: ``[d_model, d_vocab]``.
        tokens: optional subset of token ids (for large vocabularies); the argmax is then
            taken within that subset.

    A copying head (an induction head's OV) scores near 1; a random matrix scores about 1/d_vocab.
    """
    if W_OV.shape[0] != W_OV.shape[1] or W_E.shape[1] != W_OV.shape[0] or W_U.shape[0] != W_OV.shape[1]:
        raise ValueError(
            f"shapes do not chain: W_E {tuple(W_E.shape)}, W_OV {tuple(W_OV.shape)}, W_U {tuple(W_U.shape)}; "
            "expected [vocab, d], [d, d], [d, vocab]"
        )
    if tokens is not None:
        W_E, W_U = W_E[tokens], W_U[:, tokens]
    full = W_E.float() @ W_OV.float() @ W_U.float()
    return (full.argmax(-1) == torch.arange(full.shape[0])).float().mean().item()


def _frob(x: Tensor) -> Tensor:
    return x.float().pow(2).sum().sqrt()


def composition_score(left: Tensor, right: Tensor) -> float:
    """``||left @ right||_F / (||left||_F ||right||_F)``: 0 = independent, 1 = perfectly aligned."""
    return (_frob(left @ right) / (_frob(left) * _frob(right))).item()


def k_composition_score(W_OV: Tensor, W_QK: Tensor) -> float:
    """How much a later head's keys read what an earlier head writes (Elhage et al. 2021).

    The earlier head adds ``x W_OV`` to the residual stream; the later head scores a key
    ``x_k`` against a query with ``x_q W_QK x_k^T``. Substituting the earlier head's output
    as the key gives ``x_q W_QK W_OV^T x^T``, so the score is
    ``||W_QK W_OV^T||_F / (||W_QK||_F ||W_OV||_F)`` (= ``||W_OV W_QK^T||``, TransformerLens's form).

    Args:
        W_OV: the earlier head's OV matrix ``[d_model, d_model]``.
        W_QK: the later head's QK matrix ``[d_model, d_model]``.
    """
    if W_OV.ndim != 2 or W_QK.shape != W_OV.shape:
        raise ValueError(f"need two [d_model, d_model] matrices, got {tuple(W_OV.shape)} and {tuple(W_QK.shape)}")
    return composition_score(W_OV, W_QK.T)


def q_composition_score(W_OV: Tensor, W_QK: Tensor) -> float:
    """How much a later head's queries read an earlier head's output: ``||W_OV W_QK||`` normalised."""
    return composition_score(W_OV, W_QK)


def v_composition_score(W_OV_early: Tensor, W_OV_late: Tensor) -> float:
    """How much a later head's values read an earlier head's output: ``||W_OV_early W_OV_late||`` normalised."""
    return composition_score(W_OV_early, W_OV_late)


def composition_baseline(d_model: int, d_head: int, n_samples: int = 50, seed: int = 0) -> float:
    """Mean K-composition score of random Gaussian heads of the same shapes (Elhage et al.'s baseline).

    Random low-rank matrices still overlap: in a small residual stream the baseline is far
    from 0, so only scores clearly above it mean anything.
    """
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(n_samples):
        q, k, v, o = (torch.randn(d_model, d_head, generator=g) for _ in range(4))
        scores.append(k_composition_score(v @ o.T, q @ k.T))
    return float(np.mean(scores))


def composition_scores(weights: HeadWeights, layer_from: int, layer_to: int, kind: str = "K") -> Tensor:
    """Scores ``[n_heads(layer_from), n_heads(layer_to)]`` for K-, Q- or V-composition."""
    fn = {"K": k_composition_score, "Q": q_composition_score}.get(kind.upper())
    n = weights.W_Q.shape[1]
    out = torch.zeros(n, n)
    for h1 in range(n):
        ov = weights.ov(layer_from, h1)
        for h2 in range(n):
            if kind.upper() == "V":
                out[h1, h2] = v_composition_score(ov, weights.ov(layer_to, h2))
            elif fn is None:
                raise ValueError(f"kind must be 'K', 'Q' or 'V', got {kind!r}")
            else:
                out[h1, h2] = fn(ov, weights.qk(layer_to, h2))
    return out


# --------------------------------------------------------------------------------------
# Scoring every head of a model
# --------------------------------------------------------------------------------------


def random_repeated_tokens(n_seqs: int, half_len: int, vocab_low: int, vocab_high: int,
                           bos: int | None = None, seed: int = 0) -> Tensor:
    """``[n_seqs, (1 if bos) + 2*half_len]``: random tokens in [vocab_low, vocab_high), repeated once.

    Within a segment tokens are drawn without replacement when the range allows it, so that
    the earlier occurrence of each token is unique and the scores are unambiguous.
    """
    if vocab_high - vocab_low < 2:
        raise ValueError("the token range needs at least two tokens")
    g = torch.Generator().manual_seed(seed)
    n_range = vocab_high - vocab_low
    if n_range >= half_len:
        seg = torch.stack([torch.randperm(n_range, generator=g)[:half_len] for _ in range(n_seqs)]) + vocab_low
    else:
        seg = torch.randint(vocab_low, vocab_high, (n_seqs, half_len), generator=g)
    toks = torch.cat([seg, seg], dim=1)
    if bos is not None:
        toks = torch.cat([torch.full((n_seqs, 1), bos, dtype=toks.dtype), toks], dim=1)
    return toks


def token_range(model) -> tuple[int, int, int | None]:
    """(low, high, bos) for random tokens: skip a model's first 100 ids (special tokens) when it has a tokenizer."""
    vocab = model.cfg.d_vocab
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return 0, vocab, None
    bos = tok.bos_token_id if tok.bos_token_id is not None else None
    return min(100, vocab // 10), min(vocab, len(tok)), bos


@dataclass
class HeadScores:
    """Per-head scores ``[n_layers, n_heads]`` plus the per-token loss on the repeated tokens."""

    previous_token: Tensor
    induction: Tensor
    duplicate_token: Tensor
    loss_by_position: Tensor  # [seq-1]: mean loss predicting token p+1
    half_len: int
    start: int
    chance: float
    extra: dict = field(default_factory=dict)

    def top(self, name: str, k: int = 5) -> list[Head]:
        """The k best heads for a score, best first (read a head's score as ``getattr(self, name)[head]``)."""
        return top_heads(getattr(self, name), k)

    def first_vs_second_repeat_loss(self) -> tuple[float, float]:
        """Mean loss on the tokens of the first copy vs the second copy (first token of each excluded)."""
        L, s = self.half_len, self.start
        lp = self.loss_by_position  # index p predicts token p+1
        first = lp[s: s + L - 1].mean().item()          # predicts tokens s+1 .. s+L-1
        second = lp[s + L: s + 2 * L - 1].mean().item()  # predicts tokens s+L+1 .. s+2L-1
        return first, second


@torch.no_grad()
def score_all_heads(model, half_len: int = 30, n_seqs: int = 8, batch_size: int = 4, seed: int = 0,
                    tokens: Tensor | None = None) -> HeadScores:
    """Score every head of `model` on repeated random tokens, `batch_size` sequences at a time.

    Works on any bridge: toy models (no tokenizer, no BOS) and pretrained LMs (BOS first,
    random ids above the special tokens). Only the attention patterns are cached.

    Args:
        half_len: length of the random segment that is repeated.
        n_seqs: how many sequences to average over.
        tokens: optional ready-made ``[n, (bos) + 2*half_len]`` batch (then `seed`/`n_seqs` are ignored).
    """
    low, high, bos = token_range(model)
    if tokens is None:
        tokens = random_repeated_tokens(n_seqs, half_len, low, high, bos=bos, seed=seed)
    start = 1 if bos is not None else 0
    if tokens.shape[1] != start + 2 * half_len:
        raise ValueError(f"tokens have {tokens.shape[1]} positions, expected {start + 2 * half_len}")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"{tokens.shape[1]} tokens exceed the model's context of {model.cfg.n_ctx}: lower half_len")
    n_layers = model.cfg.n_layers
    names = [hook_name(l, "pattern") for l in range(n_layers)]
    prev, ind, dup, losses = [], [], [], []
    for i in range(0, tokens.shape[0], batch_size):
        batch = tokens[i: i + batch_size]
        logits, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
        pats = [cache[n] for n in names]  # each [b, head, q, k]
        prev.append(torch.stack([previous_token_score(p).sum(0) for p in pats]))
        ind.append(torch.stack([induction_score(p, half_len, start).sum(0) for p in pats]))
        dup.append(torch.stack([duplicate_token_score(p, half_len, start).sum(0) for p in pats]))
        losses.append(per_token_loss(logits, batch).sum(0))
        del cache, logits
    n = tokens.shape[0]
    return HeadScores(
        previous_token=torch.stack(prev).sum(0) / n,
        induction=torch.stack(ind).sum(0) / n,
        duplicate_token=torch.stack(dup).sum(0) / n,
        loss_by_position=torch.stack(losses).sum(0) / n,
        half_len=half_len,
        start=start,
        chance=chance_level(2 * half_len),
    )


def per_token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Cross-entropy ``[batch, seq-1]``: entry p is the loss of predicting ``tokens[:, p+1]``."""
    if logits.shape[:2] != tokens.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree on [batch, seq]")
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def in_context_learning_score(loss: Tensor, early: int = 50, late: int = 500, halfwidth: int = 5) -> float:
    """ICL score = mean loss around token `late` minus mean loss around token `early`.

    Convention used throughout the course (stated once, kept everywhere): **late minus
    early**, so a *negative* score means the model predicts later tokens better because it
    has more context: more in-context learning. Olsson et al. (2022) use token 500 vs 50
    with a 512-token context.

    Args:
        loss: per-token loss ``[batch, positions]`` where column p is the loss of the token at
            index p (e.g. ``per_token_loss(...)`` columns shifted by one are fine: be consistent).
        early, late: the two token indices compared.
        halfwidth: average over ``index ± halfwidth`` to reduce noise.
    """
    if loss.ndim != 2:
        raise ValueError(f"loss must be [batch, positions], got shape {tuple(loss.shape)}")
    if not (0 <= early - halfwidth and late + halfwidth < loss.shape[1] and early < late):
        raise ValueError(f"need 0 <= early-halfwidth, early < late and late+halfwidth < {loss.shape[1]}")
    lo = loss[:, early - halfwidth: early + halfwidth + 1].float().mean()
    hi = loss[:, late - halfwidth: late + halfwidth + 1].float().mean()
    return (hi - lo).item()


# --------------------------------------------------------------------------------------
# Comparing rankings of heads
# --------------------------------------------------------------------------------------


def ranks(scores: Tensor) -> Tensor:
    """Rank of every head (1 = highest score; ties by order), same shape as `scores`."""
    flat = scores.flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    r = torch.empty_like(order)
    r[order] = torch.arange(1, len(flat) + 1)
    return r.reshape(scores.shape)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two score tables over all their entries (ties broken by order)."""
    ra, rb = ranks(a).flatten().double(), ranks(b).flatten().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def top_k_overlap(a: Tensor, b: Tensor, k: int = 10) -> float:
    """Share of the top-`k` heads of `a` that are also in the top `k` of `b` (0 to 1)."""
    return len(set(top_heads(a, k)) & set(top_heads(b, k))) / k


def rank_correlations(scores: dict[str, Tensor]):
    """Spearman correlation between every pair of methods (a pandas DataFrame)."""
    import pandas as pd

    names = list(scores)
    m = [[spearman(scores[a], scores[b]) for b in names] for a in names]
    return pd.DataFrame(m, index=names, columns=names)


def overlaps(scores: dict[str, Tensor], k: int = 10):
    """Top-`k` overlap between every pair of methods (a pandas DataFrame), to read beside `rank_correlations`."""
    import pandas as pd

    names = list(scores)
    m = [[top_k_overlap(scores[a], scores[b], k) for b in names] for a in names]
    return pd.DataFrame(m, index=names, columns=names)


def rank_table(scores: dict[str, Tensor], top: int = 10, sort_by: str | None = None):
    """A pandas DataFrame: the heads in any method's top `top`, with each method's rank."""
    import pandas as pd

    from .hooks import head_label

    rk = {m: ranks(s) for m, s in scores.items()}
    heads = sorted({h for s in scores.values() for h in top_heads(s, top)})
    rows = [{"head": head_label(h), **{f"{m} rank": int(rk[m][h]) for m in scores}} for h in heads]
    df = pd.DataFrame(rows).set_index("head")
    return df.sort_values(sort_by or f"{next(iter(scores))} rank")


def covariation(per_prompt: Tensor, target: Tensor) -> Tensor:
    """Pearson correlation, across prompts, of each head's per-prompt score with `target`.

    Args:
        per_prompt: ``[batch, n_layers, n_heads]`` (e.g. each head's direct logit attribution).
        target: ``[batch]`` (e.g. the model's logit difference).
    """
    if per_prompt.shape[0] != target.shape[0] or per_prompt.shape[0] < 3:
        raise ValueError("need the same number (>= 3) of prompts in per_prompt and target")
    x = per_prompt.double() - per_prompt.double().mean(0)
    y = target.double() - target.double().mean()
    num = (x * y[:, None, None]).sum(0)
    den = x.pow(2).sum(0).sqrt() * y.pow(2).sum().sqrt()
    return (num / den.clamp_min(1e-12)).float()


@dataclass
class Interval:
    """A statistic over prompts with its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(per_prompt: Tensor, statistic: Callable[[Tensor], float | Tensor] | None = None, n: int = 1000,
              level: float = 0.95, seed: int = 0) -> Interval:
    """Bootstrap over prompts: `statistic` (default the mean) of `per_prompt` (prompts on axis 0), resampled `n` times.

    Returns the statistic on all prompts and the percentile interval at `level`. Seeded.
    """
    x = torch.as_tensor(per_prompt)
    if x.shape[0] < 2:
        raise ValueError("the bootstrap needs at least 2 prompts")
    stat = statistic or (lambda t: t.float().mean(0))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.shape[0], (n, x.shape[0]), generator=g)
    draws = torch.tensor([float(stat(x[i])) for i in idx])
    lo, hi = torch.quantile(draws, torch.tensor([(1 - level) / 2, (1 + level) / 2])).tolist()
    return Interval(float(stat(x)), lo, hi, level)


__all__ = [
    "previous_token_score", "induction_score", "duplicate_token_score", "chance_level",
    "HeadWeights", "head_weights", "ov_copying_score", "composition_score", "k_composition_score",
    "q_composition_score", "v_composition_score", "composition_baseline", "composition_scores",
    "random_repeated_tokens", "token_range", "HeadScores", "score_all_heads", "per_token_loss",
    "in_context_learning_score", "ranks", "spearman", "top_k_overlap", "rank_correlations", "overlaps",
    "rank_table", "covariation", "Interval", "bootstrap",
]


# --------------------------------------------------------------------------------------
# Circuits read from the weights (Elhage et al. 2021): full OV, positional QK, K-composition
# --------------------------------------------------------------------------------------


@torch.no_grad()
def full_ov_circuit(weights: HeadWeights, layer: int, head: int) -> Tensor:
    """``W_E W_OV W_U``, ``[d_vocab, d_vocab]``: row t = the logits the head adds, via the token-embedding
    path, when it attends to a position holding token t (a copying head has a bright diagonal)."""
    return weights.W_E @ weights.ov(layer, head) @ weights.W_U


@torch.no_grad()
def positional_qk_pattern(model, layer: int, head: int, n_pos: int | None = None) -> Tensor:
    """The attention a head would pay from position only: softmax of ``W_pos W_QK W_pos^T / sqrt(d_head)``,
    causally masked, ``[n_pos, n_pos]`` (query, key). Tokens and biases are left out.

    Needs learned positional embeddings (``model.W_pos``); rotary models (SmolLM2) have none.
    """
    W_pos = getattr(model, "W_pos", None)
    if W_pos is None or getattr(model.cfg, "positional_embedding_type", "standard") not in ("standard", "shortformer"):
        raise ValueError("positional_qk_pattern needs learned positional embeddings (W_pos); "
                         "this model encodes position inside attention (e.g. rotary)")
    w = head_weights(model)
    pos = W_pos.detach().float()[: n_pos or W_pos.shape[0]]
    s = pos @ w.qk(layer, head) @ pos.T / model.cfg.d_head ** 0.5
    mask = torch.ones_like(s, dtype=torch.bool).triu(1)
    return s.masked_fill(mask, float("-inf")).softmax(-1)


@torch.no_grad()
def k_composition_circuit(weights: HeadWeights, early: Head, late: Head) -> Tensor:
    """The virtual weights ``W_E W_QK^late (W_E W_OV^early)^T``, ``[d_vocab, d_vocab]``.

    Entry (a, b): the attention score the late head gives, from a query holding token a, to a key
    position into which the early head moved token b (through the token-embedding paths only). A
    previous-token head feeding an induction head makes it diagonal: prefix matching in the weights.
    """
    (l0, h0), (l1, h1) = early, late
    if l0 >= l1:
        raise ValueError(f"the early head {early} must be in a lower layer than the late head {late}")
    moved = weights.W_E @ weights.ov(l0, h0)  # [vocab, d_model]: token b, written by the early head
    return weights.W_E @ weights.qk(l1, h1) @ moved.T


def diagonal_top1(matrix: Tensor, offset: int = 0) -> float:
    """Fraction of rows i whose largest entry is at column ``i + offset`` (rows where that column exists).

    offset 0 on a full OV circuit: the share of tokens copied at top-1; offset -1 on a positional
    pattern: the share of positions whose strongest key is the previous one.
    """
    if matrix.ndim != 2:
        raise ValueError(f"need a 2-D matrix, got shape {tuple(matrix.shape)}")
    rows = torch.arange(matrix.shape[0])
    ok = (rows + offset >= 0) & (rows + offset < matrix.shape[1])
    return (matrix.argmax(-1)[ok] == (rows + offset)[ok]).float().mean().item()


__all__ += ["full_ov_circuit", "positional_qk_pattern", "k_composition_circuit", "diagonal_top1"]
