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
        "An intercept is a slope on a feature that is always 1. Build a design matrix X of shape [n, d + 1] whose first "
        "column is all ones and whose other columns are the features; then b = (b_0, b_1, ..., b_d) and the fit is X b.",
        "The b that minimises ||y - X b||^2 solves the normal equations X^T X b = X^T y. numpy can solve that linear "
        "system (np.linalg.solve), or the least-squares problem directly (np.linalg.lstsq, which returns a tuple: the "
        "coefficients come first).",
        "Sanity check: on noise-free data y = 3 + 2x you should get back [3, 2]. The result has shape [d + 1], the "
        "intercept first.",
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
        "Each unit is a column of acts. For every column you want the positions (row indices) of its k largest entries, "
        "so you rank along the inputs axis, dim=0, not along the units.",
        "torch.topk returns a pair (values, indices), already sorted largest first. Decide which axis it should run over "
        "and which half of the pair the task asks for.",
        "The result is a LongTensor of shape [k, n_units]. Sanity check: for every unit j, acts[out[0, j], j] equals the "
        "largest entry of column j.",
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
        "Mean ablation replaces unit j's activation on every input by one number, its mean over the inputs: mean_j = "
        "(1/n) sum_i hidden[i, j], the average of column j over the rows.",
        "Work on a copy of hidden (.clone()), never on hidden itself. Compute that scalar from the original column, then "
        "overwrite only column `unit` of the copy with it: broadcasting fills every row.",
        "Sanity check: in the result, column `unit` is constant and has the same mean as before; every other column is "
        "identical to hidden's.",
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
        "A cost is MSE(ablated) - MSE(intact), where the prediction is y_hat_i = sum_k h_ik w_k + b and the MSE is the "
        "mean over inputs of (y_hat_i - target_i)^2. So you need three MSEs: intact, zero-ablated, mean-ablated.",
        "Build each ablated activation matrix on its own copy of hidden (.clone()), with only column `unit` overwritten: "
        "by 0, and by that column's mean over the inputs. Take the mean from the original activations, before anything is "
        "overwritten.",
        "Return a float32 tensor of shape [2], zero ablation first. Sanity check with the identity you derived: cost_zero "
        "- cost_mean = (w_j m_j)^2 + 2 w_j m_j r_bar, where m_j is the unit's mean activation and r_bar the intact "
        "model's mean residual.",
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
