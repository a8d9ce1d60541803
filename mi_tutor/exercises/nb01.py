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
        "x = torch.arange(p); the row for cos k is torch.cos(2 * math.pi * k * x / p), and k runs from 1 to (p-1)//2.",
        "Start the list with a row of ones, append cos then sin for each k, torch.stack the rows.",
        "Divide every row by its own norm (basis / basis.norm(dim=1, keepdim=True)) and check basis @ basis.T is the identity.",
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
        "coeffs = basis @ W_E[:p] has one row per basis vector; (coeffs ** 2).sum(-1) is each component's squared norm.",
        "Frequency k owns rows 2k-1 (cos) and 2k (sin): sq[1::2] + sq[2::2]. Divide by (W_E[:p] ** 2).sum().",
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
        "The neurons' part along the directions is directions.T @ (directions @ acts): shape [N, d_mlp].",
        "That part reaches the logits through W_L, so subtract (part @ W_L) from the logits.",
        "Return float(F.cross_entropy(new_logits, labels)).",
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
        "Frequency k lives at indices idx = [0, 2k-1, 2k] on each axis; coeffs[idx][:, idx] is a 3x3xn block.",
        "Square the coefficients. Both the block's sum and the total must leave out the mean, sq[0, 0].",
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
        "The part of the logits along orthonormal rows D is D.T @ (D @ logits), shape [N, p].",
        "Add back each logit's mean over the inputs, logits.mean(0, keepdim=True), into a new tensor (no in-place -=).",
        "Return float(F.cross_entropy(kept.double(), labels)).",
    ],
))
