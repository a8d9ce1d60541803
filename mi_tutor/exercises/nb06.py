"""Exercises of notebook 06 (gradient views): per-example gradients, random projection, adjusted Rand index."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..gradients import adjusted_rand_index, random_projection
from .core import Exercise, Mistake, register

NOTEBOOK = "06_gradient_views"


# ---------------------------------------------------------------- per-example gradients

def softmax_regression_grads(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradient of cross_entropy(W @ x_n, y_n) w.r.t. W: [N, C, D] (torch.func vmap over grad)."""
    from torch.func import grad, vmap

    def loss(w, x, t):
        return F.cross_entropy((w @ x).unsqueeze(0), t.unsqueeze(0))

    return vmap(grad(loss), in_dims=(None, 0, 0))(W, X, y)


def _grad_cases(rng: np.random.Generator):
    cases = []
    for n, c, d in ((5, 3, 4), (8, 4, 6), (3, 2, 5)):
        W = torch.tensor(rng.normal(size=(c, d)), dtype=torch.float32)
        X = torch.tensor(rng.normal(size=(n, d)), dtype=torch.float32)
        y = torch.tensor(rng.integers(0, c, n), dtype=torch.long)
        cases.append(((W, X, y), {}))
    return cases


def _batch_grad_repeated(W, X, y):
    W = W.clone().requires_grad_(True)
    F.cross_entropy(X @ W.T, y).backward()
    return W.grad.unsqueeze(0).expand(len(X), *W.shape).clone()


def _no_softmax(W, X, y):
    onehot = F.one_hot(y, W.shape[0]).float()
    return -onehot[:, :, None] * X[:, None, :]


register(Exercise(
    name="per_example_grads",
    notebook=NOTEBOOK,
    reference=softmax_regression_grads,
    cases=_grad_cases,
    hints=[
        "Write loss(w, x, t) for ONE example: logits = w @ x (shape [C]); F.cross_entropy wants a batch, "
        "so use logits.unsqueeze(0) and t.unsqueeze(0).",
        "torch.func.grad(loss) is a function returning d loss / d w for one example; "
        "torch.func.vmap(..., in_dims=(None, 0, 0)) maps it over the rows of X and y while sharing W.",
        "The result has shape [N, C, D]: one gradient the shape of W per example. Check: its mean over "
        "examples equals the gradient of the mean loss.",
    ],
    mistakes=[
        Mistake("you computed the gradient of the batch-mean loss once and repeated it for every example; "
                "each example needs its own gradient (vmap over grad)", _batch_grad_repeated),
        Mistake("you left out the softmax: the gradient of cross-entropy w.r.t. the logits is "
                "softmax(logits) - onehot(y), not -onehot(y)", _no_softmax),
    ],
    rtol=1e-4, atol=1e-5,
))


# ---------------------------------------------------------------- random projection

def _proj_cases(rng: np.random.Generator):
    cases = []
    for n, d, k in ((6, 50, 8), (10, 200, 16), (4, 30, 5)):
        G = torch.tensor(rng.normal(size=(n, d)), dtype=torch.float32)
        cases.append(((G, k, int(rng.integers(0, 1000))), {}))
    return cases


def _proj_no_scale(G, k, seed):
    return random_projection(G, k, seed) * math.sqrt(k)


def _proj_scale_d(G, k, seed):
    return random_projection(G, k, seed) * math.sqrt(k) / math.sqrt(G.shape[1])


def _proj_transposed_draw(G, k, seed):
    gen = torch.Generator().manual_seed(seed)
    R = torch.randn(k, G.shape[1], generator=gen, dtype=G.dtype)
    return G @ R.T / math.sqrt(k)


register(Exercise(
    name="random_projection",
    notebook=NOTEBOOK,
    reference=random_projection,
    cases=_proj_cases,
    hints=[
        "Draw R with torch.randn(D, k, generator=torch.Generator().manual_seed(seed), dtype=G.dtype): "
        "same seed, same matrix, so the check can compare exactly.",
        "Project the rows: G @ R has shape [N, k].",
        "Divide by sqrt(k): then E[(gR)(hR)^T] = g h^T, so inner products and norms are kept on average.",
    ],
    mistakes=[
        Mistake("you forgot to divide by sqrt(k): the projected norms are about sqrt(k) times too big", _proj_no_scale),
        Mistake("you divided by sqrt(D) (the input size) instead of sqrt(k) (the number of projected dimensions)",
                _proj_scale_d),
        Mistake("you drew R as [k, D] and transposed it: draw it as torch.randn(D, k, ...) so the same seed gives "
                "the same matrix", _proj_transposed_draw),
    ],
    rtol=1e-4, atol=1e-4,
))


# ---------------------------------------------------------------- adjusted Rand index

def _ari_cases(rng: np.random.Generator):
    cases = []
    for n, ka, kb, noise in ((30, 3, 3, 0.2), (50, 4, 6, 0.4), (40, 2, 5, 0.6), (25, 3, 3, 0.0)):
        a = rng.integers(0, ka, n)
        b = (rng.permutation(kb)[a % kb] if kb >= ka else a % kb).copy()
        flip = rng.random(n) < noise
        b[flip] = rng.integers(0, kb, flip.sum())
        cases.append(((a, b), {}))
    return cases


def _rand_index(a, b):
    a, b = np.asarray(a), np.asarray(b)
    same_a = a[:, None] == a[None, :]
    same_b = b[:, None] == b[None, :]
    iu = np.triu_indices(len(a), 1)
    return float((same_a == same_b)[iu].mean())


def _label_accuracy(a, b):
    return float((np.asarray(a) == np.asarray(b)).mean())


register(Exercise(
    name="adjusted_rand_index",
    notebook=NOTEBOOK,
    reference=adjusted_rand_index,
    cases=_ari_cases,
    hints=[
        "Build the contingency table n_ij = number of points in cluster i of a and cluster j of b "
        "(np.unique(..., return_inverse=True) then np.add.at).",
        "Count pairs with comb2(x) = x (x - 1) / 2: index = sum comb2(n_ij); rows = sum comb2(a_i); "
        "cols = sum comb2(b_j); total = comb2(N).",
        "ARI = (index - expected) / (max - expected), with expected = rows * cols / total and "
        "max = (rows + cols) / 2.",
    ],
    mistakes=[
        Mistake("you returned the plain Rand index (fraction of pairs on which the labelings agree) without "
                "adjusting for chance: random labelings score well above 0", _rand_index),
        Mistake("you compared labels point by point (accuracy): cluster ids are arbitrary names, so compare "
                "pairs of points instead", _label_accuracy),
    ],
    rtol=1e-6, atol=1e-6,
))
