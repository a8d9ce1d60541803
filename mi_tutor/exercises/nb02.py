"""Exercise checks for notebook 02 (induction heads)."""
from __future__ import annotations

import numpy as np
import torch

from .. import induction
from ..lab import scores
from .core import Exercise, Mistake, register

NB = "02_induction_heads"


def _random_patterns(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Causal attention patterns [..., q, k] with random (peaky) rows."""
    seq = shape[-1]
    logits = torch.as_tensor(rng.normal(0, 2.0, size=shape), dtype=torch.float32)
    mask = torch.ones(seq, seq).tril().bool()
    return logits.masked_fill(~mask, float("-inf")).softmax(-1)


# ---------------------------------------------------------------- previous-token score

def _prev_cases(rng):
    return [((_random_patterns(rng, (2, 3, 7, 7)),), {}), ((_random_patterns(rng, (4, 11, 11)),), {}),
            ((_random_patterns(rng, (5, 5)),), {})]


def _prev_diagonal(pattern):
    return pattern.diagonal(dim1=-2, dim2=-1).mean(-1)


def _prev_include_first(pattern):
    # sums the sub-diagonal but divides by the number of all positions (counts query 0 as a zero)
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1) / pattern.shape[-1]


def _prev_next(pattern):
    return pattern.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1)


def _prev_mean_all(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean()


def _prev_edge_cases():
    """A non-causal pattern: reading the diagonal above the main one gives non-zero numbers there."""
    p = torch.as_tensor(np.random.default_rng(3).random((2, 6, 6)), dtype=torch.float32)
    return [((p / p.sum(-1, keepdim=True),), {})]


register(Exercise(
    name="previous_token_score",
    notebook=NB,
    reference=scores.previous_token_score,
    cases=_prev_cases,
    edge_cases=_prev_edge_cases,
    hints=[
        "The entries pattern[..., q, q-1] for q = 1 .. n-1 lie on the diagonal just below the main one of each [n, n] "
        "matrix: n-1 numbers per batch item and head.",
        "torch.diagonal can read an off-main diagonal of the last two axes directly (work out the sign of its offset) and "
        "puts it in the last axis. Then average over that axis only.",
        "The output keeps every leading axis: shape [...]. Sanity check: on a pattern where every query q >= 1 attends "
        "only to q-1, the score is 1 for every batch item and head.",
    ],
    mistakes=[
        Mistake("you read the main diagonal (attention to the current token), not the one just below it "
                "(offset=-1)", _prev_diagonal),
        Mistake("you read the diagonal above the main one (offset=+1): a causal pattern is zero there; "
                "the previous token is offset=-1", _prev_next),
        Mistake("you divided by seq instead of seq-1: query 0 has no previous token and must not be counted",
                _prev_include_first),
        Mistake("you averaged over every axis: keep the leading axes (one score per batch item and head)",
                _prev_mean_all),
    ],
))


# ---------------------------------------------------------------- induction score

def _ind_cases(rng):
    cases = []
    for shape, half, start in [((2, 3, 13, 13), 6, 1), ((4, 10, 10), 5, 0), ((9, 9), 3, 2), ((1, 2, 17, 17), 7, 3)]:
        cases.append(((_random_patterns(rng, shape), half), {"start": start}))
    return cases


def _ind_duplicate(pattern, half_len, start=0):
    return scores.duplicate_token_score(pattern, half_len, start)


def _ind_no_start(pattern, half_len, start=0):
    return scores.induction_score(pattern, half_len, 0)


def _ind_whole_seq(pattern, half_len, start=0):
    # the right offset but every query from position L-1 on, first copy included
    q = torch.arange(half_len - 1, pattern.shape[-1])
    return pattern[..., q, q - half_len + 1].mean(-1)


register(Exercise(
    name="induction_score",
    notebook=NB,
    reference=scores.induction_score,
    cases=_ind_cases,
    hints=[
        "On a sequence repeated once, a query q in the second copy (positions start+L .. start+2L-1) saw its own token "
        "before, at q - L. Prefix matching attends to the token one AFTER that earlier occurrence.",
        "Build two aligned index vectors: the L query positions of the second copy and, for each, its key position. "
        "Indexing the last two axes of pattern with both at once pairs them up elementwise; then average over the "
        "queries.",
        "Sanity check: key = q - L would give the duplicate-token score, not the induction score; with a BOS token (start "
        "= 1) the second copy begins at position L + 1. The output has shape [...], like the leading axes.",
    ],
    mistakes=[
        Mistake("you measured attention to the earlier occurrence itself (key = q - L: the duplicate-token "
                "score), not to the token after it (key = q - L + 1)", _ind_duplicate),
        Mistake("you ignored `start`: with a BOS token the first copy begins at position 1, not 0", _ind_no_start),
        Mistake("you averaged over queries outside the second copy: only queries start+L .. start+2L-1 count",
                _ind_whole_seq),
    ],
))


# ---------------------------------------------------------------- K-composition

def _low_rank(rng, d, r):
    a = torch.as_tensor(rng.normal(size=(d, r)), dtype=torch.float32)
    b = torch.as_tensor(rng.normal(size=(r, d)), dtype=torch.float32)
    return a @ b


def _kcomp_cases(rng):
    cases = []
    for d, r in [(16, 4), (24, 6), (32, 8)]:
        cases.append(((_low_rank(rng, d, r), _low_rank(rng, d, r)), {}))
    # an aligned pair: the later head's keys read exactly the subspace the earlier head writes
    d = 20
    ov = _low_rank(rng, d, 3)
    qk = _low_rank(rng, d, 5) @ ov.T @ _low_rank(rng, d, 5)
    cases.append(((ov, qk), {}))
    return cases


def _kcomp_q(W_OV, W_QK):
    return scores.q_composition_score(W_OV, W_QK)


def _kcomp_unnormalised(W_OV, W_QK):
    return (W_QK @ W_OV.T).pow(2).sum().sqrt().item()


def _kcomp_v(W_OV, W_QK):
    return scores.composition_score(W_OV, W_QK)  # no transpose: the query side


register(Exercise(
    name="k_composition_score",
    notebook=NB,
    reference=scores.k_composition_score,
    cases=_kcomp_cases,
    hints=[
        "Follow the earlier head's output into the later head's key slot: in the bilinear form x_q W_QK x_k^T, replace "
        "x_k by x W_OV. Which single [d_model, d_model] matrix then sits between x_q and x^T?",
        "That matrix is W_QK W_OV^T. The score is its Frobenius norm divided by the product of the Frobenius norms of "
        "W_QK and W_OV; torch.linalg.matrix_norm computes the Frobenius norm by default. Return a float.",
        "Sanity check: the score lies in [0, 1] and does not change if you rescale either matrix. Q-composition puts W_OV "
        "on the query side instead, a different product with a different value.",
    ],
    mistakes=[
        Mistake("you computed Q-composition (W_OV @ W_QK: the earlier head feeding the query side); "
                "K-composition feeds the key side: W_QK @ W_OV.T", _kcomp_q),
        Mistake("you did not normalise by ||W_QK||_F * ||W_OV||_F, so the score depends on the weights' scale",
                _kcomp_unnormalised),
    ],
))


# ---------------------------------------------------------------- in-context learning score

def _icl_cases(rng):
    cases = []
    for b, n, early, late, w in [(3, 40, 5, 30, 2), (2, 64, 10, 60, 3), (5, 25, 3, 20, 0)]:
        base = rng.gamma(2.0, 1.5, size=(b, n))
        trend = np.linspace(1.0, 0.0, n)  # loss falls with context, as in a language model
        loss = torch.as_tensor(base + 2 * trend, dtype=torch.float32)
        cases.append(((loss,), {"early": early, "late": late, "halfwidth": w}))
    return cases


def _icl_flipped(loss, early=50, late=500, halfwidth=5):
    return -scores.in_context_learning_score(loss, early, late, halfwidth)


def _icl_no_window(loss, early=50, late=500, halfwidth=5):
    return (loss[:, late].mean() - loss[:, early].mean()).item()


def _icl_half_open(loss, early=50, late=500, halfwidth=5):
    lo = loss[:, early - halfwidth: early + halfwidth].mean()
    hi = loss[:, late - halfwidth: late + halfwidth].mean()
    return (hi - lo).item()


register(Exercise(
    name="in_context_learning_score",
    notebook=NB,
    reference=scores.in_context_learning_score,
    cases=_icl_cases,
    hints=[
        "Our convention: score = (mean loss around `late`) - (mean loss around `early`). A negative score means later "
        "tokens are predicted better: the model uses its context.",
        "Each window holds the 2*halfwidth + 1 columns from index - halfwidth to index + halfwidth, both ends included; "
        "average over every row and those columns, then subtract. A Python slice excludes its end, so choose the end with "
        "care.",
        "Sanity check: with halfwidth = 0 the score is the mean of column `late` minus the mean of column `early`. Return "
        "a Python float.",
    ],
    mistakes=[
        Mistake("you used the opposite sign convention (early minus late); this course fixes late minus early, "
                "so in-context learning gives a negative score", _icl_flipped),
        Mistake("you ignored `halfwidth`: average a window of 2*halfwidth+1 tokens around each index",
                _icl_no_window),
        Mistake("your windows stop one token short: the slice end must be index + halfwidth + 1", _icl_half_open),
    ],
))


# ---------------------------------------------------------------- hooks: mean ablation and key restoring

def _z(rng, *shape):
    return torch.as_tensor(rng.normal(size=shape), dtype=torch.float32)


def _mean_hook_cases(rng):
    out = []
    for b, p, h, d in [(3, 5, 4, 2), (2, 7, 3, 4), (4, 3, 6, 3)]:
        out.append(((_z(rng, b, p, h, d), None, int(rng.integers(h)), _z(rng, p, h, d)), {}))
    return out


def _mean_hook_zero(z, hook, head, mean_z):
    out = z.clone()
    out[:, :, head] = 0
    return out


def _mean_hook_batch(z, hook, head, mean_z):
    out = z.clone()
    out[:, :, head] = z[:, :, head].mean(0)
    return out


def _mean_hook_all(z, hook, head, mean_z):
    return mean_z.expand_as(z).clone()


def _mean_hook_positions(z, hook, head, mean_z):
    out = z.clone()
    out[:, :, head] = mean_z[:, head].mean(0)
    return out


register(Exercise(
    name="mean_ablation_hook",
    notebook=NB,
    reference=induction.mean_ablation_hook,
    returns_copy=True,
    cases=_mean_hook_cases,
    hints=[
        "hook_z is [batch, pos, head, d_head], so one head is a slice along axis 2. mean_z is [pos, head, d_head]: one "
        "mean per position and head, with no batch axis.",
        "Work on a copy of z (.clone()). Overwrite only head `head` of the copy with that head's slice of mean_z ([pos, "
        "d_head]), which broadcasts over the batch, and return the copy.",
        "Sanity check: every other head of the result equals z's; head `head` is identical for every batch item; and z "
        "itself is unchanged.",
    ],
    mistakes=[
        Mistake("you zero-ablated the head: mean ablation writes the head's mean output, mean_z[:, head]", _mean_hook_zero),
        Mistake("you took the mean over THIS batch (z.mean(0)); use the given reference mean mean_z", _mean_hook_batch),
        Mistake("you replaced every head by its mean, not only `head`", _mean_hook_all),
        Mistake("you averaged over positions too: mean ablation keeps one mean per position", _mean_hook_positions),
    ],
))


def _restore_cases(rng):
    out = []
    for b, p, n_heads, n_kv, head, d in [(2, 5, 9, 3, 2, 4), (3, 4, 8, 4, 3, 2), (2, 6, 4, 4, 1, 3), (1, 5, 6, 2, 5, 2)]:
        out.append(((_z(rng, b, p, n_kv, d), None, head, _z(rng, b, p, n_kv, d), n_heads), {}))
    return out


def _restore_modulo(k, hook, head, clean_k, n_heads):
    out = k.clone()
    out[:, :, head % k.shape[2]] = clean_k[:, :, head % k.shape[2]]
    return out


def _restore_all(k, hook, head, clean_k, n_heads):
    return clean_k.clone()


def _restore_nothing(k, hook, head, clean_k, n_heads):
    return k.clone()


register(Exercise(
    name="restore_keys_hook",
    notebook=NB,
    reference=induction.restore_keys_hook,
    returns_copy=True,
    cases=_restore_cases,
    hints=[
        "hook_k is [batch, pos, n_kv_heads, d_head]. With grouped-query attention the n_heads query heads share the "
        "n_kv_heads key/value heads in consecutive groups of n_heads / n_kv_heads: the first group reads kv head 0, the "
        "next kv head 1, and so on.",
        "Find which group query head `head` falls in (integer division, not the remainder). Then, on a copy of k "
        "(.clone()), replace that kv head's slice along axis 2 with clean_k's, and return the copy.",
        "Sanity check: with 9 query heads and 3 kv heads, query heads 3, 4 and 5 all map to kv head 1; without grouping "
        "(n_kv_heads == n_heads) the kv head is the query head itself.",
    ],
    mistakes=[
        Mistake("you mapped the query head to a key/value head with head % n_kv_heads (or used the query index "
                "directly): query heads are grouped consecutively, kv = head // (n_heads // n_kv_heads)",
                _restore_modulo),
        Mistake("you restored the keys of every head, not only the induction head's", _restore_all),
        Mistake("you returned the keys unchanged: copy the clean keys into the chosen head", _restore_nothing),
    ],
))
