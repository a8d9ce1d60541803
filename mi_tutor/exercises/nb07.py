"""Exercises of notebook 07 (decomposing activations vs parameters): the SAE loss, feature-recovery
scoring, SPD's causal-importance mask and SPD's stochastic reconstruction loss."""
from __future__ import annotations

import numpy as np
import torch

from ..sae import feature_recovery, sae_loss
from ..spd import causal_importance_mask, stochastic_recon_loss
from .core import Exercise, Mistake, register

NOTEBOOK = "07_parameter_vs_activation_decomposition"


def _t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


# ---------------------------------------------------------------- the SAE loss

def _sae_cases(rng: np.random.Generator):
    cases = []
    for batch, d, k, l1 in ((6, 3, 5, 0.1), (10, 4, 7, 0.03), (4, 2, 6, 1.0)):
        h = _t(rng.normal(size=(batch, d)))
        h_hat = h + _t(rng.normal(0, 0.3, size=(batch, d)))
        z = _t(np.maximum(rng.normal(size=(batch, k)), 0))
        cases.append(((h, h_hat, z, l1), {}))
    return cases


def _sae_mse_mean(h, h_hat, z, l1_coeff):
    return ((h - h_hat) ** 2).mean() + l1_coeff * z.abs().sum(-1).mean()


def _sae_l2(h, h_hat, z, l1_coeff):
    return ((h - h_hat) ** 2).sum(-1).mean() + l1_coeff * (z ** 2).sum(-1).mean()


def _sae_no_l1(h, h_hat, z, l1_coeff):
    return ((h - h_hat) ** 2).sum(-1).mean()


def _sae_l1_mean_all(h, h_hat, z, l1_coeff):
    return ((h - h_hat) ** 2).sum(-1).mean() + l1_coeff * z.abs().mean()


register(Exercise(
    name="sae_loss",
    notebook=NOTEBOOK,
    reference=sae_loss,
    cases=_sae_cases,
    hints=[
        "Two terms, each computed per input and then averaged over the batch: the squared reconstruction error ||h - "
        "h_hat||^2 and the L1 norm ||z||_1 (the sum of absolute values), the second weighted by l1_coeff.",
        "'Per input' means: reduce the last axis with a SUM (over dimensions for the error, over latents for the L1 "
        "norm), which gives [batch] vectors, and only then average over the batch. A built-in mean squared error averages "
        "over the dimensions too: that is a different loss.",
        "Sanity check: with h_hat = h and z = 0 the loss is 0; with h_hat = h it is l1_coeff times the batch mean of sum "
        "|z|. Return one scalar tensor.",
    ],
    mistakes=[
        Mistake("you averaged the squared error over dimensions too (F.mse_loss / .mean() over everything): "
                "sum over dimensions per input, then average over the batch", _sae_mse_mean),
        Mistake("you penalised z squared (an L2 penalty): the sparsity term is the L1 norm, sum of |z|", _sae_l2),
        Mistake("you left out the sparsity term l1_coeff * sum|z|", _sae_no_l1),
        Mistake("you averaged |z| over latents as well: the L1 term sums |z| over latents, then averages over the batch",
                _sae_l1_mean_all),
    ],
))


# ---------------------------------------------------------------- feature recovery

def _rec_cases(rng: np.random.Generator):
    cases = []
    for n, k, d in ((4, 6, 3), (5, 5, 2), (6, 9, 4)):
        true = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=(n, 1))
        learned = np.concatenate([true[: n - 1] + rng.normal(0, 0.2, size=(n - 1, d)), rng.normal(size=(k - n + 1, d))])
        learned = learned * rng.uniform(0.2, 4, size=(k, 1))
        cases.append(((_t(true), _t(learned[rng.permutation(k)])), {}))
    return cases


def _rec_no_norm(true_dirs, learned_dirs):
    return (true_dirs @ learned_dirs.T).max(dim=1).values.mean()


def _rec_wrong_axis(true_dirs, learned_dirs):
    t = true_dirs / true_dirs.norm(dim=-1, keepdim=True)
    l = learned_dirs / learned_dirs.norm(dim=-1, keepdim=True)
    return (t @ l.T).max(dim=0).values.mean()


def _rec_abs(true_dirs, learned_dirs):
    t = true_dirs / true_dirs.norm(dim=-1, keepdim=True)
    l = learned_dirs / learned_dirs.norm(dim=-1, keepdim=True)
    return (t @ l.T).abs().max(dim=1).values.mean()


register(Exercise(
    name="feature_recovery",
    notebook=NOTEBOOK,
    reference=feature_recovery,
    cases=_rec_cases,
    hints=[
        "A cosine similarity is the dot product of unit vectors: rescale every row of both matrices to norm 1 first (the "
        "learned directions come at arbitrary lengths).",
        "One matrix product gives the [n, k] table of cosines between every true feature and every learned direction. For "
        "each TRUE feature (a row of that table) keep its best match, then average over the true features.",
        "Sanity check: if learned_dirs contains every true direction (in any order, at any positive scale), the score is "
        "1 up to rounding. A learned direction pointing the opposite way has cosine -1: it does not count as a match.",
    ],
    mistakes=[
        Mistake("you did not normalise the directions, so you computed dot products, not cosine similarities",
                _rec_no_norm),
        Mistake("you took the max over the wrong axis (the best true feature for each learned direction); "
                "recovery asks, for each TRUE feature, how well its best learned direction matches", _rec_wrong_axis),
        Mistake("you took the absolute value of the cosine: a direction pointing the opposite way does not recover a "
                "feature (latents and features are non-negative)", _rec_abs),
    ],
))


# ---------------------------------------------------------------- the causal-importance mask

def _mask_cases(rng: np.random.Generator):
    cases = []
    for shape in ((4, 3), (6, 5), (2, 8)):
        pre = _t(rng.normal(0.5, 1.0, size=shape))
        r = _t(rng.uniform(size=shape))
        cases.append(((pre, r), {}))
    return cases


def _mask_sigmoid(pre, r):
    g = torch.sigmoid(pre)
    return g, g + (1 - g) * r


def _mask_u0g(pre, r):
    g = pre.clamp(0, 1)
    return g, g * r


def _mask_flipped(pre, r):
    g = pre.clamp(0, 1)
    return g, (1 - g) + g * r


def _mask_no_noise(pre, r):
    g = pre.clamp(0, 1)
    return g, g.clone()


register(Exercise(
    name="causal_importance_mask",
    notebook=NOTEBOOK,
    reference=causal_importance_mask,
    cases=_mask_cases,
    hints=[
        "SPD's hard sigmoid is the identity on [0, 1] and flat outside it: 0 below 0, 1 above 1. Unlike the smooth "
        "sigmoid it reaches 0 and 1 exactly (torch can clip a tensor to a range).",
        "To turn r ~ U(0, 1) into a sample of U(g, 1): the interval [g, 1] has length 1 - g; start at its lower end and "
        "move a fraction r of that length.",
        "Sanity check: where g = 1 the mask is 1 whatever r is; where g = 0 the mask equals r. Return the pair (g, m), "
        "both of the shape of pre.",
    ],
    mistakes=[
        Mistake("you used the smooth sigmoid: SPD's hard sigmoid clamp(pre, 0, 1) reaches exactly 0 (ablatable) and 1",
                _mask_sigmoid),
        Mistake("you sampled the mask from U(0, g) (g * r): the mask must lie between g and 1, so an important "
                "subcomponent (g = 1) is never ablated", _mask_u0g),
        Mistake("you swapped g and 1 - g: the mask must be U(g, 1), i.e. g + (1 - g) * r", _mask_flipped),
        Mistake("you returned g itself as the mask: the mask is random, m ~ U(g, 1)", _mask_no_noise),
    ],
))


# ---------------------------------------------------------------- SPD's stochastic reconstruction loss

def _recon_cases(rng: np.random.Generator):
    cases = []
    for C, m, n, B in ((4, 2, 3, 6), (6, 2, 5, 8), (5, 3, 4, 5)):
        U = _t(rng.normal(size=(C, m)))
        V = _t(rng.normal(size=(C, n)))
        bias = _t(rng.normal(0, 0.3, size=n))
        x = _t(rng.uniform(size=(B, n)) * (rng.random((B, n)) < 0.5))
        g = _t(np.clip(rng.normal(0.5, 0.6, size=(B, C)), 0, 1))     # some exactly 0, some exactly 1
        r = _t(rng.uniform(size=(B, C)))
        W = rng.normal(size=(m, n))
        target = _t(np.maximum(x.numpy() @ W.T @ W + bias.numpy(), 0))
        cases.append(((U, V, bias, x, g, r, target), {}))
    return cases


def _recon_mask_once(U, V, bias, x, g, r, target_out):
    mask = g + (1 - g) * r
    h = ((x @ V.T) * mask) @ U
    out = torch.relu((h @ U.T) @ V + bias)
    return ((out - target_out) ** 2).sum(-1).mean()


def _recon_u0g(U, V, bias, x, g, r, target_out):
    mask = g * r
    h = ((x @ V.T) * mask) @ U
    out = torch.relu(((h @ U.T) * mask) @ V + bias)
    return ((out - target_out) ** 2).sum(-1).mean()


def _recon_mean_all(U, V, bias, x, g, r, target_out):
    mask = g + (1 - g) * r
    h = ((x @ V.T) * mask) @ U
    out = torch.relu(((h @ U.T) * mask) @ V + bias)
    return ((out - target_out) ** 2).mean()


def _recon_g_mask(U, V, bias, x, g, r, target_out):
    h = ((x @ V.T) * g) @ U
    out = torch.relu(((h @ U.T) * g) @ V + bias)
    return ((out - target_out) ** 2).sum(-1).mean()


def _recon_no_relu(U, V, bias, x, g, r, target_out):
    mask = g + (1 - g) * r
    h = ((x @ V.T) * mask) @ U
    out = ((h @ U.T) * mask) @ V + bias
    return ((out - target_out) ** 2).sum(-1).mean()


register(Exercise(
    name="stochastic_recon_loss",
    notebook=NOTEBOOK,
    reference=stochastic_recon_loss,
    cases=_recon_cases,
    hints=[
        "Three steps: draw the mask m ~ U(g, 1) from r as in the previous exercise ([B, C]); run the masked model on x; "
        "compare its output with target_out.",
        "Encode: the inner activations v_c . x of all subcomponents ([B, C]), scaled by the mask, written with the u_c: h "
        "is [B, m]. Decode through the SAME subcomponents (the weights are tied): u_c . h ([B, C]), scaled by the same "
        "mask, written with the v_c, plus the bias, then the ReLU: [B, n].",
        "The loss sums the squared error over the n outputs and averages over the batch (a scalar). Sanity check: with g "
        "= 1 everywhere the mask is 1, and if sum_c u_c v_c^T equals the model's weight matrix the output matches "
        "target_out and the loss is 0.",
    ],
    mistakes=[
        Mistake("you masked only the first use of the weights: the toy model is tied (W encodes and W^T decodes), "
                "so each subcomponent's mask scales it in both uses", _recon_mask_once),
        Mistake("you sampled the mask from U(0, g) (g * r): the mask lies between g and 1, so a subcomponent with "
                "g = 1 is never ablated", _recon_u0g),
        Mistake("you averaged the squared error over outputs too (F.mse_loss / .mean() over everything): sum over "
                "outputs per input, then average over the batch", _recon_mean_all),
        Mistake("you used g itself as the mask: the loss must hold for a RANDOM mask m ~ U(g, 1), that is what "
                "makes a subcomponent with g = 0 ablatable by any amount", _recon_g_mask),
        Mistake("you left out the output ReLU: the model's output is relu(W^T h + b)", _recon_no_relu),
    ],
    rtol=1e-4, atol=1e-5,
))
