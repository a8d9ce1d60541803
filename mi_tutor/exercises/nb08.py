"""Exercise checks for notebook 08 (reading and writing representations)."""
from __future__ import annotations

import numpy as np
import torch

from .. import representations as rep
from .core import Exercise, Mistake, register

NB = "08_reading_and_writing"


def _t(rng: np.random.Generator, *shape, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.tensor(rng.normal(shift, scale, size=shape), dtype=torch.float32)


# 1. the logit lens ------------------------------------------------------------------------


def _lens_cases(rng):
    cases = []
    for n, d, v, s in [(3, 8, 11, 5.0), (5, 12, 7, 0.3), (2, 16, 20, 40.0)]:
        # residuals with a non-zero mean and a large, varying size, as in a real residual stream
        resid = _t(rng, n, d, scale=s, shift=0.5 * s) * torch.tensor(rng.uniform(0.5, 3, (n, 1)), dtype=torch.float32)
        weight = torch.tensor(rng.uniform(0.2, 2.0, d), dtype=torch.float32)
        cases.append(((resid, weight, _t(rng, d, v), float(rng.choice([1e-5, 1e-2, 0.5]))), {}))
    return cases


register(Exercise(
    name="rms_lens", notebook=NB, reference=rep.rms_lens, cases=_lens_cases,
    hints=["The residual stream is not read directly: the model applies its final RMSNorm first, then W_U.",
           "RMSNorm divides each vector by sqrt(mean(x**2) + eps) over its last axis (keepdim=True), then multiplies "
           "by `weight`. It does not subtract the mean.",
           "logits = (resid / (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight) @ W_U"],
    mistakes=[
        Mistake("you forgot the final norm: the residual goes through the RMSNorm (divide by its root mean square, "
                "times `weight`) before the unembedding", lambda r, w, W, e: r @ W),
        Mistake("you applied the norm's scale but not its learned `weight`",
                lambda r, w, W, e: (r / (r.pow(2).mean(-1, keepdim=True) + e).sqrt()) @ W),
        Mistake("you subtracted the mean (LayerNorm): RMSNorm only divides by the root mean square",
                lambda r, w, W, e: rep.rms_lens(r - r.mean(-1, keepdim=True), w, W, e)),
        Mistake("you divided by the L2 norm (sqrt of the SUM of squares), not the root MEAN square",
                lambda r, w, W, e: (r / (r.pow(2).sum(-1, keepdim=True) + e).sqrt() * w) @ W),
        Mistake("you normalised over the wrong axis (over the batch, axis 0, instead of d_model)",
                lambda r, w, W, e: (r / (r.pow(2).mean(0, keepdim=True) + e).sqrt() * w) @ W),
    ],
))


# 2. the mean-difference direction -------------------------------------------------------------


def _md_cases(rng):
    cases = []
    for n, d, frac in [(10, 6, 0.3), (17, 9, 0.7), (8, 4, 0.25)]:
        labels = torch.tensor((rng.random(n) < frac).astype(np.int64))
        labels[0], labels[1] = 1, 0  # both classes present
        acts = _t(rng, n, d, shift=1.0) + 2.0 * labels[:, None].float() * _t(rng, 1, d)
        cases.append(((acts, labels), {}))
    return cases


register(Exercise(
    name="mean_difference_direction", notebook=NB, reference=rep.mean_difference_direction, cases=_md_cases,
    hints=["Select the rows of each class with a boolean mask: acts[labels == 1] and acts[labels == 0].",
           "Average each class over axis 0 separately, then subtract: class 1 minus class 0.",
           "Do not normalise the result: its length (the distance between the class means) is used later as a scale."],
    mistakes=[
        Mistake("the sign is flipped: the direction points from class 0 to class 1 (mean of 1 minus mean of 0)",
                lambda a, y: -rep.mean_difference_direction(a, y)),
        Mistake("you normalised the direction to unit length; the task asks for the raw difference of the means",
                lambda a, y: rep.mean_difference_direction(a, y) / rep.mean_difference_direction(a, y).norm()),
        Mistake("you divided both class sums by the total number of rows: each class mean divides by its own count "
                "(the classes are unbalanced)",
                lambda a, y: (a[y.bool()].sum(0) - a[~y.bool()].sum(0)) / len(a)),
        Mistake("you subtracted the overall mean instead of the class-0 mean",
                lambda a, y: a[y.bool()].mean(0) - a.mean(0)),
    ],
))


# 3. selectivity against a control task -----------------------------------------------------------


def _sel_cases(rng):
    cases = []
    for n_tr, n_te, d in [(40, 20, 5), (60, 30, 8), (30, 24, 4)]:
        n = n_tr + n_te
        y = torch.tensor(rng.integers(0, 2, n))
        c = torch.tensor(rng.integers(0, 2, n))
        w = _t(rng, d)
        x = _t(rng, n, d) + 1.2 * (2 * y[:, None].float() - 1) * w + 0.5 * (2 * c[:, None].float() - 1) * _t(rng, d) + 3.0
        cases.append(((x[:n_tr], y[:n_tr], c[:n_tr], x[n_tr:], y[n_tr:], c[n_tr:]), {}))
    return cases


def _acc_at_zero(tx, ty, vx, vy):
    pos = ty.bool()
    d = tx[pos].mean(0) - tx[~pos].mean(0)
    return float(((vx @ d > 0) == vy.bool()).float().mean())


register(Exercise(
    name="selectivity", notebook=NB, reference=rep.selectivity, cases=_sel_cases,
    hints=["Write a helper: fit the mean-difference classifier on (train_x, labels), score it on (test_x, labels).",
           "The classifier: d = mu1 - mu0 from the TRAINING rows; predict 1 when x @ d > ((mu1 + mu0) / 2) @ d "
           "(the midpoint between the class means, not 0).",
           "Selectivity = held-out accuracy on the task labels minus held-out accuracy on the control labels "
           "(a float)."],
    mistakes=[
        Mistake("you scored the probes on their training data: accuracy must be measured on the held-out rows",
                lambda a, y, c, ta, ty, tc: rep.selectivity(a, y, c, a, y, c)),
        Mistake("you computed control minus task; selectivity is task accuracy minus control accuracy",
                lambda a, y, c, ta, ty, tc: -rep.selectivity(a, y, c, ta, ty, tc)),
        Mistake("you thresholded the projection at 0; the boundary is the midpoint between the two class means",
                lambda a, y, c, ta, ty, tc: _acc_at_zero(a, y, ta, ty) - _acc_at_zero(a, c, ta, tc)),
        Mistake("you returned the task accuracy alone: subtract the control task's accuracy",
                lambda a, y, c, ta, ty, tc: rep.mean_difference_accuracy(a, y, ta, ty)),
    ],
))


# 4. the steering hook ------------------------------------------------------------------------------


def _steer_cases(rng):
    return [((_t(rng, b, p, d), _t(rng, d, scale=s), float(c)), {})
            for b, p, d, s, c in [(2, 5, 6, 3.0, 2.5), (3, 4, 8, 0.2, -1.5), (1, 7, 5, 10.0, 4.0)]]


register(Exercise(
    name="steer", notebook=NB, reference=rep.steer, returns_copy=True, cases=_steer_cases,
    hints=["Broadcasting does the work: a [d_model] vector added to [batch, pos, d_model] reaches every position.",
           "Scale the UNIT direction: direction / direction.norm(), times coeff.",
           "Return a new tensor (resid + ...), do not add in place (resid += ... changes the model's cached activation)."],
    mistakes=[
        Mistake("you added coeff * direction without normalising it to unit length first",
                lambda r, d, c: r + c * d),
        Mistake("you steered only the last position; the task adds the vector at every position",
                lambda r, d, c: torch.cat([r[:, :-1], r[:, -1:] + c * d / d.norm()], 1)),
        Mistake("you subtracted the direction (the sign of the coefficient is flipped)",
                lambda r, d, c: r - c * d / d.norm()),
        Mistake("you replaced the residual by the steering vector instead of adding to it",
                lambda r, d, c: (c * d / d.norm()).expand_as(r).clone()),
    ],
))
