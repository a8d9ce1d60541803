"""Exercise checks for notebook 04 (successor heads: four methods)."""
from __future__ import annotations

import numpy as np
import torch

from .. import successor as S
from .. import successor_sources as SS
from .core import Exercise, Mistake, register

NB = "04_successor_heads"


def _ordinal_case(rng: np.random.Generator, sizes: list[int]):
    """Random effective-OV logits over categories of the given sizes (successor = next in category)."""
    cats, succ = [], []
    for c, k in enumerate(sizes):
        start = len(cats)
        for j in range(k):
            cats.append(c)
            succ.append(start + j + 1 if j + 1 < k else -1)
    n = len(cats)
    logits = torch.tensor(rng.normal(size=(n, n)), dtype=torch.float32)
    # make some rows prefer their successor, and some prefer a token of ANOTHER category
    for i in range(n):
        if succ[i] >= 0 and rng.random() < 0.5:
            logits[i, succ[i]] += 3.0
        if rng.random() < 0.4:
            other = [j for j in range(n) if cats[j] != cats[i]]
            logits[i, other[rng.integers(len(other))]] += 6.0
    return (logits, torch.tensor(cats), torch.tensor(succ)), {}


# ---- successor score ----------------------------------------------------------------------

def _score_no_category(logits, category, successor):
    has = torch.nonzero(successor >= 0).flatten()
    return float((logits[has].argmax(-1) == successor[has]).float().mean())


def _score_all_rows(logits, category, successor):
    same = category[None, :] == category[:, None]
    top = logits.masked_fill(~same, float("-inf")).argmax(-1)
    return float((top == successor).float().mean())


def _score_mask_zero(logits, category, successor):
    has = torch.nonzero(successor >= 0).flatten()
    same = category[None, :] == category[has][:, None]
    return float(((logits[has] * same).argmax(-1) == successor[has]).float().mean())


def _successor_edge_cases():
    """All-negative logits: masking other categories with 0 (not -inf) makes them win the argmax."""
    (logits, cats, succ), _ = _ordinal_case(np.random.default_rng(11), [4, 5, 3])
    return [((logits - logits.max() - 1.0, cats, succ), {})]


def _score_transposed(logits, category, successor):
    return S.successor_score(logits.T.contiguous(), category, successor)


register(Exercise(
    name="successor_score",
    notebook=NB,
    reference=S.successor_score,
    cases=lambda rng: [_ordinal_case(rng, [5, 7, 4]), _ordinal_case(rng, [10, 3]), _ordinal_case(rng, [6, 6, 6, 2])],
    edge_cases=_successor_edge_cases,
    hints=[
        "Keep only the rows (input tokens) that have a successor: successor >= 0.",
        "Before the argmax, set the logits of tokens from OTHER categories to -inf: the top-1 is taken among the task's tokens.",
        "Rows are input tokens, columns output tokens: logits[i].argmax() is what head maps token i to.",
    ],
    mistakes=[
        Mistake("you took the argmax over all ordinal tokens instead of only the input token's own category", _score_no_category),
        Mistake("you counted tokens that have no successor (successor == -1) in the denominator", _score_all_rows),
        Mistake("you masked the other categories with 0 instead of -inf: when every logit is negative, 0 wins the "
                "argmax; use masked_fill(~same, float('-inf'))", _score_mask_zero),
        Mistake("you read the table by columns (output tokens) instead of rows (input tokens)", _score_transposed),
    ],
))


# ---- ICA input matrix ---------------------------------------------------------------------

def _ica_case(rng: np.random.Generator, L: int, H: int, n: int):
    x = torch.tensor(rng.normal(size=(L, H, n, n)) * rng.uniform(0.5, 5, size=(L, H, 1, 1)) + rng.normal(size=(L, H, n, 1)) * 3,
                     dtype=torch.float32)
    return (x,), {}


def _ica_no_centre(eff_ov):
    L, H, n, _ = eff_ov.shape
    x = eff_ov.double().reshape(L * H, n * n)
    x = x / x.std(-1, keepdim=True)
    return x.T.contiguous().numpy()


def _ica_no_scale(eff_ov):
    L, H, n, _ = eff_ov.shape
    x = (eff_ov.double() - eff_ov.double().mean(-1, keepdim=True)).reshape(L * H, n * n)
    return x.T.contiguous().numpy()


def _ica_heads_as_rows(eff_ov):
    return np.ascontiguousarray(S.ica_matrix(eff_ov).T)


def _ica_centre_columns(eff_ov):
    L, H, n, _ = eff_ov.shape
    x = eff_ov.double() - eff_ov.double().mean(-2, keepdim=True)
    x = x.reshape(L * H, n * n)
    x = x / x.std(-1, keepdim=True)
    return x.T.contiguous().numpy()


def _ica_population_std(eff_ov):
    L, H, n, _ = eff_ov.shape
    x = (eff_ov.double() - eff_ov.double().mean(-1, keepdim=True)).reshape(L * H, n * n)
    return (x / x.std(-1, keepdim=True, correction=0)).T.contiguous().numpy()


def _ica_compare(got, want):
    """The task says "unit standard deviation": the unbiased (torch default) and the population std are both accepted."""
    from .compare import compare_values

    problem = compare_values(got, want, 1e-4, 1e-5)
    if problem is None or not isinstance(got, np.ndarray) or got.shape != want.shape:
        return problem
    n = want.shape[0]
    return None if compare_values(got, want * np.sqrt(n / (n - 1)), 1e-4, 1e-5) is None else problem


register(Exercise(
    name="ica_matrix",
    compare=_ica_compare,
    notebook=NB,
    reference=S.ica_matrix,
    cases=lambda rng: [_ica_case(rng, 2, 3, 5), _ica_case(rng, 3, 2, 4), _ica_case(rng, 1, 4, 6)],
    hints=[
        "Centre each head's table row by row: subtract, for every input token, the mean of its logits over output "
        "tokens (mean over the LAST axis).",
        "Flatten each head's [n, n] table to n*n numbers and divide by that head's standard deviation.",
        "FastICA treats rows as samples and columns as features: return [n*n, n_layers*n_heads] (heads are the columns).",
    ],
    mistakes=[
        Mistake("you did not centre each input token's row (a constant shift of a row's logits is meaningless)", _ica_no_centre),
        Mistake("you did not scale each head to unit standard deviation, so big heads dominate", _ica_no_scale),
        Mistake("you returned heads as rows: FastICA needs the (input, output) pairs as rows and heads as columns",
                _ica_heads_as_rows),
        Mistake("you centred the columns (over input tokens) instead of each input token's row", _ica_centre_columns),
    ],
))


# ---- mean-ablation hook -------------------------------------------------------------------

def _ablate_case(rng: np.random.Generator, b: int, p: int, h: int, d: int):
    z = torch.tensor(rng.normal(size=(b, p, h, d)), dtype=torch.float32)
    mean_z = torch.tensor(rng.normal(size=(p, h, d)), dtype=torch.float32)
    return (z, int(rng.integers(h)), mean_z), {}


def _ablate_zero(z, head, mean_z):
    z = z.clone()
    z[:, :, head] = 0
    return z


def _ablate_batch_mean(z, head, mean_z):
    z = z.clone()
    z[:, :, head] = z[:, :, head].mean(0, keepdim=True)
    return z


def _ablate_all_heads(z, head, mean_z):
    return mean_z[None].expand_as(z).clone()


def _ablate_pos_mean(z, head, mean_z):
    z = z.clone()
    z[:, :, head] = mean_z[:, head].mean(0)[None, None]
    return z


register(Exercise(
    name="mean_ablate_head",
    notebook=NB,
    reference=S.mean_ablate_head,
    returns_copy=True,
    cases=lambda rng: [_ablate_case(rng, 3, 4, 5, 2), _ablate_case(rng, 2, 6, 3, 4), _ablate_case(rng, 4, 2, 2, 3)],
    hints=[
        "Clone z first, then overwrite only z[:, :, head].",
        "mean_z is [pos, head, d_head]: the mean was taken over prompts but kept per position, so every prompt of "
        "the batch gets the same [pos, d_head] slice for that head (add a leading batch axis to broadcast it).",
    ],
    mistakes=[
        Mistake("you zero-ablated the head instead of replacing it by its mean", _ablate_zero),
        Mistake("you used the mean over THIS batch instead of the reference mean mean_z", _ablate_batch_mean),
        Mistake("you replaced every head, not only the chosen one", _ablate_all_heads),
        Mistake("you averaged the mean over positions too: mean ablation keeps one mean per position", _ablate_pos_mean),
    ],
))


# ---- attribution patching -----------------------------------------------------------------

def _attr_case(rng: np.random.Generator, b: int, p: int, h: int, d: int):
    mk = lambda: torch.tensor(rng.normal(size=(b, p, h, d)), dtype=torch.float32)
    return (mk(), mk() + 0.5, mk()), {}


def _attr_no_difference(z_target, z_source, grad):
    return (z_target * grad).sum(dim=(1, 3)).mean(0)


def _attr_wrong_sign(z_target, z_source, grad):
    return ((z_target - z_source) * grad).sum(dim=(1, 3)).mean(0)


def _attr_sum_batch(z_target, z_source, grad):
    return ((z_source - z_target) * grad).sum(dim=(0, 1, 3))


def _attr_last_pos(z_target, z_source, grad):
    return ((z_source - z_target)[:, -1] * grad[:, -1]).sum(-1).mean(0)


register(Exercise(
    name="attribution_estimate",
    notebook=NB,
    reference=S.attribution_estimate,
    cases=lambda rng: [_attr_case(rng, 3, 4, 5, 2), _attr_case(rng, 2, 3, 3, 4), _attr_case(rng, 5, 2, 4, 3)],
    rtol=1e-3, atol=1e-4,
    hints=[
        "Patching moves z from z_target to z_source: the first-order change is (z_source - z_target) . grad.",
        "A head's estimate adds up its change over every position and every component of its output; the prompts "
        "are averaged, not summed, and the head axis is what you return.",
    ],
    mistakes=[
        Mistake("you multiplied the gradient by the activation itself (gradient x activation) instead of by the "
                "DIFFERENCE z_source - z_target", _attr_no_difference),
        Mistake("the sign is flipped: patching moves z from the target value to the source value, so use z_source - z_target",
                _attr_wrong_sign),
        Mistake("you summed over the batch instead of averaging over prompts", _attr_sum_batch),
        Mistake("you used only the last position; a head's output at every position can matter", _attr_last_pos),
    ],
))


# ---- effective OV circuit of one head -------------------------------------------------------

def _ov_case(rng: np.random.Generator, n: int, d: int, e: int):
    t = lambda *s, scale=1.0: torch.tensor(rng.normal(size=s) * scale, dtype=torch.float32)
    resid = t(n, d, scale=3.0) + t(1, d, scale=2.0)  # a shared offset: the norms matter
    w_in = torch.tensor(rng.uniform(0.3, 2.0, size=d), dtype=torch.float32)
    w_final = torch.tensor(rng.uniform(0.3, 2.0, size=d), dtype=torch.float32)
    return (resid, w_in, t(d, e), t(e, d, scale=5.0), w_final, t(d, n)), {}


def _ov_no_input_norm(resid, w_in, W_V, W_O, w_final, W_U):
    return SS.rms_norm(resid @ W_V @ W_O, w_final) @ W_U


def _ov_no_final_norm(resid, w_in, W_V, W_O, w_final, W_U):
    return SS.rms_norm(resid, w_in) @ W_V @ W_O @ W_U


def _ov_no_weights(resid, w_in, W_V, W_O, w_final, W_U):
    one = torch.ones_like(w_in)
    return SS.rms_norm(SS.rms_norm(resid, one) @ W_V @ W_O, one) @ W_U


def _ov_l2(resid, w_in, W_V, W_O, w_final, W_U):
    unit = lambda x, w: x / x.norm(dim=-1, keepdim=True) * w
    return unit(unit(resid, w_in) @ W_V @ W_O, w_final) @ W_U


def _ov_transposed(resid, w_in, W_V, W_O, w_final, W_U):
    return SS.effective_ov_head(resid, w_in, W_V, W_O, w_final, W_U).T.contiguous()


def _ov_layernorm(resid, w_in, W_V, W_O, w_final, W_U):
    ln = lambda x, w: torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-5) * w
    return ln(ln(resid, w_in) @ W_V @ W_O, w_final) @ W_U


def _ov_final_on_sum(resid, w_in, W_V, W_O, w_final, W_U):
    x = SS.rms_norm(resid, w_in)
    return SS.rms_norm(resid + x @ W_V @ W_O, w_final) @ W_U


register(Exercise(
    name="effective_ov_head",
    notebook=NB,
    reference=SS.effective_ov_head,
    cases=lambda rng: [_ov_case(rng, 5, 8, 3), _ov_case(rng, 7, 6, 2), _ov_case(rng, 4, 10, 4)],
    rtol=1e-3, atol=1e-4,
    hints=[
        "RMSNorm divides each vector by sqrt(mean(x**2) + 1e-5) over its last axis, then multiplies by the weight.",
        "Three steps in order: the head's input norm on resid; then @ W_V @ W_O (what the head writes); then the "
        "final norm and @ W_U.",
        "Build new tensors (x = x / ...), never x /= ... on an input: resid belongs to the caller.",
    ],
    mistakes=[
        Mistake("you skipped the head's input norm: a head reads rms_norm(resid, w_in), not resid", _ov_no_input_norm),
        Mistake("you skipped the final norm before the unembedding", _ov_no_final_norm),
        Mistake("you left out the norms' weights (w_in, w_final)", _ov_no_weights),
        Mistake("you divided by the vector's length instead of its root-mean-square (they differ by sqrt(d_model))", _ov_l2),
        Mistake("you returned [output, input]: rows must be input tokens", _ov_transposed),
        Mistake("you used LayerNorm (subtracting the mean); this model's norm is RMSNorm", _ov_layernorm),
        Mistake("you normalised the residual stream plus the head's output; the effective OV circuit reads the head's "
                "output on its own", _ov_final_on_sum),
    ],
))
