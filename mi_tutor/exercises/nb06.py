"""Exercises of notebook 06 (gradient views): per-example gradients, random projection, the exact per-token Gram."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..gradients import random_projection, rank_one_gram
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
        "Write the loss of ONE example as a function of the weights: logits W x_n (shape [C]) and the cross-entropy with "
        "label y_n. F.cross_entropy expects a batch axis, so give it a batch of one.",
        "torch.func.grad turns that function into one that returns d loss / d W for one example; torch.func.vmap maps it "
        "over the examples. Its in_dims tell it which arguments are batched (the rows of X and y) and which one is shared "
        "(W).",
        "The result has shape [N, C, D]. Sanity checks: example n's gradient is (softmax(W x_n) - onehot(y_n)) x_n^T, and "
        "the mean over examples equals the gradient of the mean loss.",
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
        "Draw R exactly as the task says: shape [D, k], from a generator seeded with `seed`, in G's dtype. The check "
        "compares with the same random matrix, so the shape of the draw matters, not only its values.",
        "Every row g of G becomes g R / s for one scale s; a single matrix product projects all the rows at once, giving "
        "shape [N, k].",
        "Choose s so that inner products survive on average: the entries of R have variance 1, so E[(g R)(h R)^T] = k (g "
        "h^T). The scale depends on k, not on D.",
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


# ---------------------------------------------------------------- the exact per-token Gram (rank-one trick)

def _gram_cases(rng: np.random.Generator):
    cases = []
    for n, d_out, d_in in ((5, 3, 4), (7, 6, 2), (4, 5, 5)):
        deltas = torch.tensor(rng.normal(size=(n, d_out)), dtype=torch.float32)
        xs = torch.tensor(rng.normal(size=(n, d_in)) + rng.normal(size=(1, d_in)), dtype=torch.float32)
        cases.append(((deltas, xs), {}))
    return cases


def _gram_matmul(deltas, xs):
    return (deltas @ deltas.T) @ (xs @ xs.T)


def _gram_sum(deltas, xs):
    return deltas @ deltas.T + xs @ xs.T


def _gram_x_only(deltas, xs):
    return xs @ xs.T


def _gram_delta_only(deltas, xs):
    return deltas @ deltas.T


def _gram_cosine(deltas, xs):
    d = deltas / deltas.norm(dim=1, keepdim=True)
    x = xs / xs.norm(dim=1, keepdim=True)
    return (d @ d.T) * (x @ x.T)


register(Exercise(
    name="per_token_gram",
    notebook=NOTEBOOK,
    reference=rank_one_gram,
    cases=_gram_cases,
    hints=[
        "Write the Frobenius inner product of two outer products as a double sum: <delta_t x_t^T, delta_s x_s^T> = sum_i "
        "sum_j delta_ti x_tj delta_si x_sj. It factorises into a sum over i times a sum over j.",
        "For all pairs (t, s) at once, each factor is an ordinary [N, N] Gram matrix: one of the deltas, one of the "
        "inputs. Entry (t, s) of the answer is the product of the two matrices' entries (t, s): which operation combines "
        "them that way, and which does not?",
        "Sanity check for one pair: build delta_t x_t^T and delta_s x_s^T explicitly, multiply them entry by entry and "
        "sum; that must equal your entry (t, s). Return raw inner products (not cosines) in the inputs' dtype.",
    ],
    mistakes=[
        Mistake("you multiplied the two Gram matrices with @ (a matrix product): the inner product of two outer "
                "products is the elementwise product <delta_t, delta_s> * <x_t, x_s>", _gram_matmul),
        Mistake("you added the two Gram matrices: the inner product of outer products is their (elementwise) "
                "product, not their sum", _gram_sum),
        Mistake("you returned only the input Gram xs @ xs.T: that is the activation similarity; the gradient "
                "similarity multiplies it by the output-gradient Gram", _gram_x_only),
        Mistake("you returned only the output-gradient Gram deltas @ deltas.T: multiply it, elementwise, by the "
                "input Gram xs @ xs.T", _gram_delta_only),
        Mistake("you normalised the rows (cosines): the task asks for the raw inner products, which is what sums "
                "correctly over several layers", _gram_cosine),
    ],
    rtol=1e-4, atol=1e-4,
))
