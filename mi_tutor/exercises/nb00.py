"""Exercises of notebook 00 (linear models vs black boxes): least squares, max-activating inputs,
mean ablation of one unit, and the cost of zero vs mean ablation."""
from __future__ import annotations

import numpy as np
import torch

from ..blackbox import least_squares
from ..blackbox_attribution import ablation_costs, max_activating_inputs, mean_ablate_unit
from .core import Exercise, Mistake, register

NOTEBOOK = "00_linear_vs_black_box"


# ---------------------------------------------------------------- least squares

def _ls_cases(rng: np.random.Generator):
    cases = []
    for n, d in ((30, 1), (50, 2), (40, 3)):
        x = rng.uniform(-5, 20, size=(n, d))
        coef = rng.normal(0, 3, size=d + 1)
        y = coef[0] + x @ coef[1:] + rng.normal(0, 0.5, n)
        cases.append(((x, y), {}))
    return cases


def _ls_no_intercept(x, y):
    return np.linalg.lstsq(np.asarray(x, float), np.asarray(y, float), rcond=None)[0]


def _ls_zero_intercept(x, y):
    return np.concatenate([[0.0], _ls_no_intercept(x, y)])


def _ls_intercept_last(x, y):
    coef = least_squares(x, y)
    return np.concatenate([coef[1:], coef[:1]])


register(Exercise(
    name="least_squares",
    notebook=NOTEBOOK,
    reference=least_squares,
    cases=_ls_cases,
    hints=[
        "Build the design matrix X = [1, x]: a column of ones (for the intercept) next to the features, "
        "with np.column_stack([np.ones(len(x)), x]).",
        "The least-squares coefficients solve the normal equations (X^T X) b = X^T y: use "
        "np.linalg.solve(X.T @ X, X.T @ y), or np.linalg.lstsq(X, y, rcond=None)[0].",
        "Return one number per column of X, intercept first: shape [d + 1].",
    ],
    mistakes=[
        Mistake("you forgot the column of ones, so there is no intercept (the line is forced through the origin) "
                "and you return only d numbers", _ls_no_intercept),
        Mistake("you forgot the column of ones: the line is forced through the origin (your intercept is 0)",
                _ls_zero_intercept),
        Mistake("you put the intercept last; return it first: [intercept, slope_1, ..., slope_d]", _ls_intercept_last),
    ],
    rtol=1e-6, atol=1e-6,
))


# ---------------------------------------------------------------- max-activating inputs

def _max_cases(rng: np.random.Generator):
    cases = []
    for n, units, k in ((20, 3, 1), (40, 5, 3), (25, 7, 4)):
        acts = torch.tensor(rng.normal(size=(n, units)), dtype=torch.float32)
        cases.append(((acts, k), {}))
    return cases


register(Exercise(
    name="max_activating_inputs",
    notebook=NOTEBOOK,
    reference=max_activating_inputs,
    cases=_max_cases,
    hints=[
        "For each unit (a column of acts) you want the rows with the largest values: that is a top-k over dim=0.",
        "acts.topk(k, dim=0) returns (values, indices); you need the indices, already sorted strongest first.",
        "The result has shape [k, n_units]: column j holds unit j's top inputs.",
    ],
    mistakes=[
        Mistake("you took the k SMALLEST activations (ascending sort): you want the largest first",
                lambda acts, k: acts.argsort(dim=0)[:k]),
        Mistake("you returned the activation values; return the input indices (topk(...).indices)",
                lambda acts, k: acts.topk(k, dim=0).values),
        Mistake("you took the top-k along the wrong axis (over units, dim=1, instead of over inputs, dim=0)",
                lambda acts, k: acts.topk(k, dim=1).indices.T),
    ],
))


# ---------------------------------------------------------------- mean ablation of one unit

def _abl_cases(rng: np.random.Generator):
    cases = []
    for n, units in ((12, 4), (30, 6), (8, 9)):
        hidden = torch.tensor(rng.gamma(2.0, 1.0, size=(n, units)), dtype=torch.float32)
        cases.append(((hidden, int(rng.integers(units))), {}))
    return cases


def _zero_ablate(hidden, unit):
    out = hidden.clone()
    out[:, unit] = 0.0
    return out


def _mean_wrong_axis(hidden, unit):
    out = hidden.clone()
    out[:, unit] = hidden.mean(dim=1)
    return out


def _mean_all_units(hidden, unit):
    return hidden.mean(dim=0, keepdim=True).expand_as(hidden).clone()


register(Exercise(
    name="mean_ablate_unit",
    notebook=NOTEBOOK,
    reference=mean_ablate_unit,
    returns_copy=True,
    cases=_abl_cases,
    hints=[
        "Work on a copy (hidden.clone()) so the caller's activations are untouched.",
        "Replace column `unit` by one number: that unit's mean activation over all inputs, hidden[:, unit].mean().",
        "Leave every other column exactly as it was.",
    ],
    mistakes=[
        Mistake("you set the unit to zero (zero ablation); mean ablation sets it to its mean over the inputs",
                _zero_ablate),
        Mistake("you averaged over the wrong axis (over units, dim=1, for each input) instead of over inputs",
                _mean_wrong_axis),
        Mistake("you replaced every unit by its mean, not only the one unit", _mean_all_units),
    ],
))


# ---------------------------------------------------------------- zero vs mean ablation: what each costs

def _cost_cases(rng: np.random.Generator):
    cases = []
    for n, units in ((40, 5), (25, 8), (60, 3)):
        hidden = torch.tensor(np.maximum(rng.normal(0.5, 1.0, size=(n, units)), 0.0), dtype=torch.float32)
        w_out = torch.tensor(rng.normal(0, 2.0, size=units), dtype=torch.float32)
        b_out = float(rng.normal(0, 3.0))
        target = (hidden @ w_out + b_out + torch.tensor(rng.normal(0, 0.5, size=n), dtype=torch.float32))
        cases.append(((hidden, w_out, b_out, target, int(rng.integers(units))), {}))
    return cases


def _mse(h, w_out, b_out, target):
    return ((h @ w_out + b_out - target) ** 2).mean()


def _ablated(hidden, unit, value):
    out = hidden.clone()
    out[:, unit] = value
    return out


def _costs_from(hidden, w_out, b_out, target, zero, mean, base=None):
    base = _mse(hidden, w_out, b_out, target) if base is None else base
    return torch.stack([_mse(zero, w_out, b_out, target) - base, _mse(mean, w_out, b_out, target) - base])


def _cost_no_baseline(hidden, w_out, b_out, target, unit):
    return _costs_from(hidden, w_out, b_out, target, _ablated(hidden, unit, 0.0),
                       _ablated(hidden, unit, hidden[:, unit].mean()), base=torch.tensor(0.0))


def _cost_mean_after_zero(hidden, w_out, b_out, target, unit):
    zero = _ablated(hidden, unit, 0.0)
    return _costs_from(hidden, w_out, b_out, target, zero, _ablated(zero, unit, zero[:, unit].mean()))


def _cost_wrong_axis(hidden, w_out, b_out, target, unit):
    return _costs_from(hidden, w_out, b_out, target, _ablated(hidden, unit, 0.0),
                       _ablated(hidden, unit, hidden.mean(dim=1)))


def _cost_swapped(hidden, w_out, b_out, target, unit):
    return ablation_costs(hidden, w_out, b_out, target, unit).flip(0)


def _cost_no_bias(hidden, w_out, b_out, target, unit):
    return _costs_from(hidden, w_out, 0.0, target, _ablated(hidden, unit, 0.0),
                       _ablated(hidden, unit, hidden[:, unit].mean()))


def _cost_sum(hidden, w_out, b_out, target, unit):
    return ablation_costs(hidden, w_out, b_out, target, unit) * hidden.shape[0]


register(Exercise(
    name="ablation_costs",
    notebook=NOTEBOOK,
    reference=ablation_costs,
    cases=_cost_cases,
    hints=[
        "The prediction is hidden @ w_out + b_out. Compute the intact model's MSE once, then the MSE of two "
        "ablated copies (hidden.clone(), never hidden itself) and subtract the intact MSE from each.",
        "Zero ablation: copy[:, unit] = 0. Mean ablation: copy[:, unit] = hidden[:, unit].mean(), the mean over "
        "the inputs (rows) of the ORIGINAL activations, taken before anything is overwritten.",
        "Return torch.stack([zero_cost, mean_cost]): float32, zero ablation first.",
    ],
    mistakes=[
        Mistake("you returned the ablated models' MSEs; the task asks for the INCREASE over the intact model's MSE "
                "(subtract it)", _cost_no_baseline),
        Mistake("your mean ablation used the column after it had been zeroed (its mean is then 0), so both numbers "
                "are zero-ablation costs: take the mean from the original activations", _cost_mean_after_zero),
        Mistake("you averaged over the wrong axis (over units, dim=1, for each input) instead of over the inputs",
                _cost_wrong_axis),
        Mistake("you returned [mean cost, zero cost]; the task asks for zero ablation first", _cost_swapped),
        Mistake("you left out the readout bias b_out: the prediction is hidden @ w_out + b_out", _cost_no_bias),
        Mistake("you summed the squared errors; the task asks for the mean squared error", _cost_sum),
    ],
    rtol=1e-4, atol=1e-4,
))
