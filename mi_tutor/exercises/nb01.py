"""Exercise checks for notebook 01 (grokking modular addition)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..fourier import excluded_loss_from_activations, fourier_basis, frequency_fraction, frequency_shares
from ..fourier_circuit import restricted_loss_logits
from .core import Exercise, Mistake, register

NB = "01_grokking"


# --- 1. the Fourier basis --------------------------------------------------------------


def _basis_reference(p: int) -> torch.Tensor:
    return fourier_basis(p)[0]


def _basis_unnormalised(p: int) -> torch.Tensor:
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    return torch.stack(rows).float()


def _basis_no_two_pi(p: int) -> torch.Tensor:
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(k * x / p), torch.sin(k * x / p)]
    b = torch.stack(rows)
    return (b / b.norm(dim=1, keepdim=True)).float()


def _basis_cos_then_sin(p: int) -> torch.Tensor:
    b = fourier_basis(p)[0]
    return torch.cat([b[:1], b[1::2], b[2::2]])


register(Exercise(
    name="fourier_basis",
    notebook=NB,
    reference=_basis_reference,
    cases=lambda rng: [((int(p),), {}) for p in rng.choice([5, 7, 11, 13, 17], size=3, replace=False)],
    mistakes=[
        Mistake("you did not normalise the rows: every basis vector must have norm 1 (divide each row by its norm; "
                "the constant row becomes 1/sqrt(p))", _basis_unnormalised),
        Mistake("you forgot the 2*pi in the angular frequency: w_k = 2*pi*k/p, not k/p", _basis_no_two_pi),
        Mistake("you put all the cosines first and then all the sines: rows must alternate const, cos 1, sin 1, "
                "cos 2, sin 2, ...", _basis_cos_then_sin),
    ],
    hints=[
        "Evaluate each basis function at x = 0, 1, ..., p-1. Row order: the constant, then for k = 1 .. (p-1)/2 the pair "
        "cos(w_k x), sin(w_k x) with angular frequency w_k = 2 pi k / p. That is 1 + 2 (p-1)/2 = p rows of length p.",
        "Steps: a float vector of the p positions; the constant row; the cos and the sin row for each k, in that order; "
        "stack them into a [p, p] tensor; then rescale each row to Euclidean norm 1 (a norm over dim=1, keeping that "
        "dimension so the division broadcasts).",
        "Sanity check: basis @ basis.T is the identity to float precision. Before scaling, the constant row has norm "
        "sqrt(p) and every cos or sin row has norm sqrt(p / 2).",
    ],
    atol=1e-5,
))


# --- 2. how much of the embedding each frequency holds ------------------------------------


def _shares_with_eq_row(W_E: torch.Tensor, p: int) -> torch.Tensor:
    b = fourier_basis(p)[0]
    sq = ((b @ W_E[:p]) ** 2).sum(-1)
    return (sq[1::2] + sq[2::2]) / (W_E**2).sum()


def _shares_norm_not_squared(W_E: torch.Tensor, p: int) -> torch.Tensor:
    b = fourier_basis(p)[0]
    n = (b @ W_E[:p]).norm(dim=-1)
    return (n[1::2] + n[2::2]) / W_E[:p].norm()


def _shares_cos_only(W_E: torch.Tensor, p: int) -> torch.Tensor:
    b = fourier_basis(p)[0]
    sq = ((b @ W_E[:p]) ** 2).sum(-1)
    return sq[1::2] / (W_E[:p] ** 2).sum()


def _embedding_cases(rng: np.random.Generator):
    cases = []
    for p, d in ((7, 5), (11, 8), (13, 6)):
        W = torch.tensor(rng.normal(size=(p + 1, d)), dtype=torch.float32)
        W[-1] *= 10  # a loud "=" row, so forgetting to drop it shows
        cases.append(((W, p), {}))
    return cases


register(Exercise(
    name="frequency_shares",
    notebook=NB,
    reference=frequency_shares,
    cases=_embedding_cases,
    mistakes=[
        Mistake("you kept the '=' row: W_E has p + 1 rows, use only W_E[:p] (the numbers) in the total too",
                _shares_with_eq_row),
        Mistake("you used norms instead of squared norms: shares of ||W_E||^2 add squared norms", _shares_norm_not_squared),
        Mistake("you counted only the cosine row of each frequency: a frequency's share is its cos row plus its sin row",
                _shares_cos_only),
    ],
    hints=[
        "The basis is orthonormal, so projecting does not change norms: ||W_E[:p]||^2 is the sum of the squared norms of "
        "the rows of the Fourier coefficients basis @ W_E[:p] ([p, d], one row per basis function). Leave out the last "
        "row of W_E (the '=' token) everywhere, the total included.",
        "Row 0 is the constant; frequency k owns the cos row 2k-1 and the sin row 2k. Per frequency, add those two rows' "
        "squared norms, then divide by ||W_E[:p]||^2 (the constant stays in that total).",
        "The result has shape [(p-1)/2], entry k-1 for frequency k. Sanity check: the shares plus the constant row's "
        "share add up to 1.",
    ],
))


# --- 3. the excluded loss ------------------------------------------------------------------


def _excluded_kept_only(logits, acts, W_L, directions, labels) -> float:
    kept = directions.T @ (directions @ acts)
    return float(F.cross_entropy((kept @ W_L).double(), labels))


def _excluded_from_logits(logits, acts, W_L, directions, labels) -> float:
    removed = directions.T @ (directions @ logits)
    return float(F.cross_entropy((logits - removed).double(), labels))


def _excluded_no_transpose_back(logits, acts, W_L, directions, labels) -> float:
    coeff = directions @ acts  # [m, d_mlp]
    return float(F.cross_entropy((logits - coeff.sum(0, keepdim=True) @ W_L).double(), labels))


def _excluded_cases(rng: np.random.Generator):
    cases = []
    for n, p, d, m in ((40, 7, 12, 2), (60, 11, 9, 4), (30, 5, 16, 2)):
        q, _ = np.linalg.qr(rng.normal(size=(n, m)))
        cases.append(((
            torch.tensor(rng.normal(size=(n, p)), dtype=torch.float32),
            torch.tensor(np.abs(rng.normal(size=(n, d))), dtype=torch.float32),
            torch.tensor(rng.normal(size=(d, p)), dtype=torch.float32),
            torch.tensor(q.T, dtype=torch.float32),
            torch.tensor(rng.integers(0, p, size=n)),
        ), {}))
    return cases


register(Exercise(
    name="excluded_loss",
    notebook=NB,
    reference=excluded_loss_from_activations,
    cases=_excluded_cases,
    mistakes=[
        Mistake("you kept only the key-frequency part and dropped everything else: that is the restricted-loss idea; "
                "the excluded loss removes the key part and keeps the rest", _excluded_kept_only),
        Mistake("you projected the logits onto the directions instead of the neuron activations: remove the neurons' "
                "part and pass it through W_L", _excluded_from_logits),
        Mistake("you did not map the coefficients back onto the inputs: the part along the directions is "
                "directions.T @ (directions @ acts), shape [N, d_mlp]", _excluded_no_transpose_back),
    ],
    hints=[
        "Treat each neuron as a function over the N inputs: a column of acts. Its part along the directions is its "
        "orthogonal projection onto the span of the rows of D, that is D^T D applied along the input axis; the part has "
        "the shape of acts, [N, d_mlp].",
        "Removing that part from the neurons changes the logits only through W_L ([d_mlp, p]): map the part to logit "
        "space, subtract it from the logits, and take the cross-entropy with the labels (a Python float).",
        "Sanity check: the coefficients D @ acts are [m, d_mlp], one per direction and neuron, and must be mapped back "
        "onto the inputs before W_L. If the directions are orthogonal to every column of acts, nothing is removed and you "
        "get the plain loss of the logits.",
    ],
))


# --- 4. single-frequency neurons --------------------------------------------------------------


def _fraction_with_mean(coeffs: torch.Tensor, k: int) -> torch.Tensor:
    sq = coeffs.double() ** 2
    idx = torch.tensor([0, 2 * k - 1, 2 * k])
    return (sq[idx][:, idx].sum((0, 1)) / sq.sum((0, 1))).float()


def _fraction_products_only(coeffs: torch.Tensor, k: int) -> torch.Tensor:
    sq = coeffs.double() ** 2
    idx = torch.tensor([2 * k - 1, 2 * k])
    return (sq[idx][:, idx].sum((0, 1)) / (sq.sum((0, 1)) - sq[0, 0])).float()


def _fraction_cases(rng: np.random.Generator):
    cases = []
    for p, n, k in ((7, 4, 2), (11, 3, 5), (13, 5, 1)):
        c = rng.normal(size=(p, p, n))
        c[0, 0] *= 5  # a large mean, as ReLU neurons have
        c[2 * k - 1, 0] *= 3  # some linear terms in frequency k
        cases.append(((torch.tensor(c, dtype=torch.float32), int(k)), {}))
    return cases


register(Exercise(
    name="frequency_fraction",
    notebook=NB,
    reference=frequency_fraction,
    cases=_fraction_cases,
    mistakes=[
        Mistake("you counted the (const, const) mean term as variance: leave coeffs[0, 0] out of both the part and the total",
                _fraction_with_mean),
        Mistake("you kept only the products cos/sin(a) x cos/sin(b) and left out the terms that pair frequency k with "
                "the constant (cos(w_k a), sin(w_k b), ...): use indices {0, 2k-1, 2k} on both axes", _fraction_products_only),
    ],
    hints=[
        "Frequency k's own terms sit at the indices {0, 2k-1, 2k} (const, cos k, sin k) on BOTH axes: a 3 x 3 block of "
        "each neuron's [p, p] coefficient grid. Its corner [0, 0] is the neuron's mean, which is not variance.",
        "Work with squared coefficients. Numerator: the block's sum minus the mean term; denominator: the whole grid's "
        "sum minus the mean term. Both are per neuron, so sum over the first two axes only. Indexing one axis with a list "
        "of indices, then the other, picks out the block.",
        "The result has shape [n]. Sanity check: a neuron made only of a constant plus cos(w_k a) cos(w_k b) scores 1 for "
        "frequency k and 0 for every other frequency.",
    ],
))


# --- 5. the restricted loss on the logits (the paper's definition) ------------------------------


def _restricted_no_mean(logits, directions, labels) -> float:
    kept = directions.T @ (directions @ logits)
    return float(F.cross_entropy(kept.double(), labels))


def _restricted_excluded(logits, directions, labels) -> float:
    return float(F.cross_entropy((logits - directions.T @ (directions @ logits)).double(), labels))


def _restricted_cases(rng: np.random.Generator):
    cases = []
    for n, p, m in ((40, 7, 2), (60, 11, 4), (30, 5, 2)):
        raw = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, m))], axis=1)
        q, _ = np.linalg.qr(raw)  # q[:, 0] is the constant: the other columns are orthogonal to it
        logits = rng.normal(size=(n, p)) + 3 * rng.normal(size=(1, p))  # a large mean per class, as trained logits have
        cases.append(((
            torch.tensor(logits, dtype=torch.float32),
            torch.tensor(q[:, 1:].T, dtype=torch.float32),
            torch.tensor(rng.integers(0, p, size=n)),
        ), {}))
    return cases


register(Exercise(
    name="restricted_loss_logits",
    notebook=NB,
    reference=restricted_loss_logits,
    cases=_restricted_cases,
    mistakes=[
        Mistake("you dropped the logits' mean over the inputs: the directions are orthogonal to the constant, so add "
                "logits.mean(0, keepdim=True) back to the projected part (a mean over the classes, dim=1, changes no "
                "softmax, so it counts as no mean)", _restricted_no_mean),
        Mistake("you removed the part along the directions and kept the rest: that is the excluded loss; the restricted "
                "loss keeps only the mean and the part along the directions", _restricted_excluded),
    ],
    hints=[
        "View each class column of the logits as a function over the N inputs. Keep two parts of it: its mean over the "
        "inputs (the constant component) and its orthogonal projection onto the rows of D, D^T D applied along the input "
        "axis. The directions are orthogonal to the constant, so the two parts do not overlap.",
        "Build the kept logits ([N, p]) as a new tensor: the per-class mean over the inputs (one row, broadcast over all "
        "N rows) plus the projected part. Do not add or subtract in place: the caller's logits must stay as they were "
        "(work on a copy if you need one). Then the cross-entropy in float64, as a Python float.",
        "Sanity check: if the directions span everything orthogonal to the constant (m = N - 1), the kept logits equal "
        "the logits and you get the ordinary loss back.",
    ],
))
