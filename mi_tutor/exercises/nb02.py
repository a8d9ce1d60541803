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
        "The entry pattern[..., q, q-1] is the attention from query q to the key just before it.",
        "torch.diagonal(pattern, offset=-1, dim1=-2, dim2=-1) collects pattern[..., q, q-1] for q = 1 .. seq-1.",
        "Average over that last axis only, so that every leading axis (batch, head) survives.",
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
        "The copy occupies positions start+L .. start+2L-1. A query q there saw its token before at q-L.",
        "An induction head attends to the token *after* that earlier occurrence: key = q - L + 1.",
        "Index with two aligned position vectors: pattern[..., q, q - half_len + 1], then mean over the last axis.",
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
        "The earlier head writes x @ W_OV. The later head compares query x_q with key x_k through x_q @ W_QK @ x_k.T.",
        "Put the earlier head's output in the key slot: x_q @ W_QK @ (x @ W_OV).T = x_q @ (W_QK @ W_OV.T) @ x.T.",
        "Score = ||W_QK @ W_OV.T||_F / (||W_QK||_F * ||W_OV||_F); torch.linalg.matrix_norm defaults to Frobenius.",
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
        "Our convention: late minus early. A negative score means later tokens are predicted better.",
        "Average the columns early-halfwidth .. early+halfwidth (inclusive: that is halfwidth*2+1 columns), "
        "over every row; the same around `late`.",
        "Slices exclude their end: loss[:, i - w : i + w + 1].",
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
        "hook_z is [batch, pos, head, d_head]: the head is axis 2. mean_z is [pos, head, d_head] (no batch axis).",
        "Clone first (out = z.clone()), then set out[:, :, head] = mean_z[:, head]: it broadcasts over the batch.",
        "Return the new tensor; leave z itself unchanged (the run's other hooks and caches may hold it).",
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
        "hook_k is [batch, pos, n_kv_heads, d_head]. With grouped-query attention, consecutive query heads share one "
        "key/value head: group = n_heads // n_kv_heads, kv = head // group.",
        "Clone first (out = k.clone()), then out[:, :, kv] = clean_k[:, :, kv].",
        "Without grouped-query attention (n_kv_heads == n_heads) kv is simply head.",
    ],
    mistakes=[
        Mistake("you mapped the query head to a key/value head with head % n_kv_heads (or used the query index "
                "directly): query heads are grouped consecutively, kv = head // (n_heads // n_kv_heads)",
                _restore_modulo),
        Mistake("you restored the keys of every head, not only the induction head's", _restore_all),
        Mistake("you returned the keys unchanged: copy the clean keys into the chosen head", _restore_nothing),
    ],
))
