"""Notebook 00: a readable model (a line) against a black box (a small MLP) on wages vs age.

Everything the notebook shows is computed here, on seeded synthetic data:

- `make_wage_data`: wages against age, shaped like a real earnings profile (rising fast,
  flattening in mid-career, falling towards retirement), plus noise.
- `least_squares`, `residual_structure`: the line, and the evidence that it misses a shape.
- `WageMLP`, `train_mlp`: a small torch MLP (1 -> 16 -> 16 -> 1 by default) that fits better.
- The first interpretability tools on the black box: `response_curves`,
  `max_activating_inputs`, `mean_ablate_unit` / `ablation_effects`.
- Seed 001's two obstacles, measured: `weight_effects` (non-linearity: one weight means
  different things at different ages) and `dimensionality_demo` (extra input features
  smear what a single unit means).
- `plot_mlp_explorer`: the explorer's view (width, activation, training steps); runs are
  trained once, with snapshots, and cached, so a redraw only plots.

Training runs on one CPU thread: for models this small that is several times faster than
two threads (which spend their time synchronising), and it makes results identical on every CPU.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

#: age range of the synthetic population (years)
AGE_MIN, AGE_MAX = 18.0, 70.0
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def wage_profile(age: np.ndarray | float) -> np.ndarray:
    """The true mean wage (thousands per year) at `age`: a fast rise, a plateau, a fall after ~60."""
    age = np.asarray(age, dtype=float)
    rise = 45.0 * (1.0 - np.exp(-(age - AGE_MIN) / 9.0))
    retire = 30.0 / (1.0 + np.exp(-(age - 61.0) / 3.5))
    return 20.0 + rise - retire


@dataclass
class WageData:
    """Seeded synthetic wages (thousands per year) against age (years), split into train and test."""

    age_train: np.ndarray
    wage_train: np.ndarray
    age_test: np.ndarray
    wage_test: np.ndarray
    noise: float
    seed: int

    @property
    def n_train(self) -> int:
        return len(self.age_train)

    def __repr__(self) -> str:
        return (f"WageData({self.n_train} train + {len(self.age_test)} test people, ages "
                f"{AGE_MIN:.0f}-{AGE_MAX:.0f}, noise sd {self.noise} k$, seed {self.seed})")


def make_wage_data(n_train: int = 500, n_test: int = 500, noise: float = 4.0, seed: int = 0) -> WageData:
    """Draw ages uniformly in [18, 70] and wages = `wage_profile(age)` + Gaussian noise (sd `noise`)."""
    if n_train < 3 or n_test < 1:
        raise ValueError(f"need n_train >= 3 and n_test >= 1, got {n_train} and {n_test}")
    rng = np.random.default_rng(seed)
    age = rng.uniform(AGE_MIN, AGE_MAX, n_train + n_test)
    wage = wage_profile(age) + rng.normal(0.0, noise, n_train + n_test)
    return WageData(age[:n_train], wage[:n_train], age[n_train:], wage[n_train:], noise, seed)


def age_grid(n: int = 200) -> np.ndarray:
    """Evenly spaced ages covering the data's range (for curves)."""
    return np.linspace(AGE_MIN, AGE_MAX, n)


# --------------------------------------------------------------------------------------
# The readable model: least squares
# --------------------------------------------------------------------------------------


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        return x[:, None]
    if x.ndim != 2:
        raise ValueError(f"x must have shape [n] or [n, d], got {x.shape}")
    return x


def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ordinary least squares with an intercept.

    Args:
        x: inputs, shape [n, d] (or [n] for one feature).
        y: targets, shape [n].
    Returns:
        coefficients, shape [d + 1]: the intercept first, then one slope per feature,
        minimising sum_i (y_i - b0 - x_i . b)^2.
    """
    x = _as_2d(x)
    y = np.asarray(y, dtype=float)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape [{x.shape[0]}] to match x {x.shape}, got {y.shape}")
    design = np.column_stack([np.ones(len(x)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef


def predict_linear(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Predictions b0 + x . b of a `least_squares` fit."""
    x = _as_2d(x)
    if x.shape[1] != len(coef) - 1:
        raise ValueError(f"coef has {len(coef) - 1} slopes but x has {x.shape[1]} features")
    return coef[0] + x @ coef[1:]


def mse(pred, target) -> float:
    """Mean squared error (works on numpy arrays and tensors)."""
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred, dtype=float)
    t = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target, dtype=float)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from target shape {t.shape}")
    return float(np.mean((p - t) ** 2))


def runs_test(residuals_in_order: np.ndarray) -> tuple[int, float, float]:
    """Wald-Wolfowitz runs test on the signs of residuals (already sorted by the input).

    Returns (number of sign runs, the number expected if signs were random, z-score).
    Far fewer runs than expected (z << 0) means residuals come in long same-sign stretches:
    the model is systematically too high in one region and too low in another.
    """
    signs = np.asarray(residuals_in_order) > 0
    n_pos, n_neg = int(signs.sum()), int((~signs).sum())
    n = n_pos + n_neg
    if n_pos == 0 or n_neg == 0:
        return 1, 1.0, float("-inf")
    runs = 1 + int(np.sum(signs[1:] != signs[:-1]))
    expected = 2.0 * n_pos * n_neg / n + 1.0
    var = 2.0 * n_pos * n_neg * (2.0 * n_pos * n_neg - n) / (n ** 2 * (n - 1))
    return runs, expected, (runs - expected) / np.sqrt(var)


@dataclass
class ResidualReport:
    """How structured a model's residuals are (random residuals give corr ~ 0 and z ~ 0)."""

    corr_with_age_squared: float
    runs: int
    expected_runs: float
    runs_z: float

    def __str__(self) -> str:
        return (f"correlation(residual, (age - mean age)^2) = {self.corr_with_age_squared:+.2f}; "
                f"sign runs = {self.runs} (random: {self.expected_runs:.0f}), z = {self.runs_z:.1f}")


def residual_structure(age: np.ndarray, residuals: np.ndarray) -> ResidualReport:
    """Two numbers that say whether residuals have a shape: their correlation with the squared
    distance from the mean age (a hump or a bowl), and a runs test along age."""
    age = np.asarray(age, dtype=float)
    residuals = np.asarray(residuals, dtype=float)
    if age.shape != residuals.shape:
        raise ValueError(f"age {age.shape} and residuals {residuals.shape} must have the same shape")
    centred_sq = (age - age.mean()) ** 2
    corr = float(np.corrcoef(centred_sq, residuals)[0, 1])
    runs, expected, z = runs_test(residuals[np.argsort(age)])
    return ResidualReport(corr, runs, float(expected), float(z))


# --------------------------------------------------------------------------------------
# The black box: a small MLP
# --------------------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    table = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
    return table[name]()


class WageMLP(nn.Module):
    """features -> `depth` hidden layers of `width` units -> wage.

    Inputs are in natural units (age in years); the model rescales them to [0, 1] with fixed
    buffers (set from the training data) and predicts wages in thousands. `hidden(x)` returns
    every hidden layer's activations; `readout(h)` maps the last one to wages, so an
    intervention on the last hidden layer is `model.readout(edited(model.hidden(x)[-1]))`.
    """

    def __init__(self, width: int = 16, depth: int = 2, activation: str = "relu", d_in: int = 1):
        super().__init__()
        if width < 1 or depth < 1 or d_in < 1:
            raise ValueError(f"width, depth and d_in must be >= 1, got {width}, {depth}, {d_in}")
        self.width, self.depth, self.activation, self.d_in = width, depth, activation, d_in
        layers: list[nn.Module] = []
        d = d_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), _activation(activation)]
            d = width
        self.layers = nn.ModuleList(layers)
        self.out = nn.Linear(width, 1)
        self._init_boundaries()
        self.register_buffer("x_lo", torch.zeros(d_in))
        self.register_buffer("x_span", torch.ones(d_in))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    @torch.no_grad()
    def _init_boundaries(self) -> None:
        """Set each hidden unit's bias so that its on/off boundary passes through a random point of the
        (rescaled) input cube: with PyTorch's default biases about half the ReLU units start dead on the
        whole data range and never learn."""
        points = torch.rand(self.width, self.d_in)  # one point per unit
        h = points
        for i in range(0, len(self.layers), 2):
            lin = self.layers[i]
            lin.bias.zero_()
            lin.bias.copy_(-(lin(h) * torch.eye(self.width)).sum(1))  # unit j's pre-activation at its point = 0
            h = self.layers[i + 1](lin(h))

    def fit_scaling(self, x: np.ndarray, y: np.ndarray) -> None:
        """Set the input/output rescaling from training data."""
        x = _as_2d(x)
        lo, hi = x.min(0), x.max(0)
        self.x_lo.copy_(torch.as_tensor(lo, dtype=torch.float32))
        self.x_span.copy_(torch.as_tensor(np.maximum(hi - lo, 1e-8), dtype=torch.float32))
        self.y_mean.fill_(float(np.mean(y)))
        self.y_std.fill_(float(np.std(y)) or 1.0)

    def _inputs(self, x) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"expected inputs of shape [n, {self.d_in}] (or [n] when d_in=1), got {tuple(x.shape)}")
        return (x - self.x_lo) / self.x_span

    def hidden(self, x) -> list[torch.Tensor]:
        """Activations of every hidden layer, each [n, width]."""
        h = self._inputs(x)
        acts = []
        for i in range(0, len(self.layers), 2):
            h = self.layers[i + 1](self.layers[i](h))
            acts.append(h)
        return acts

    def readout(self, h_last: torch.Tensor) -> torch.Tensor:
        """Wages [n] from the last hidden layer's activations [n, width]."""
        return self.out(h_last).squeeze(-1) * self.y_std + self.y_mean

    def forward(self, x) -> torch.Tensor:
        return self.readout(self.hidden(x)[-1])

    def predict(self, x) -> np.ndarray:
        """Wages as a numpy array (no gradients)."""
        with torch.no_grad():
            return self(x).numpy().astype(float)


def n_parameters(model: nn.Module) -> int:
    """How many numbers the model learned."""
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (tiny models train faster that way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainedMLP:
    """A trained `WageMLP`, its loss curve, and (optionally) snapshots of its weights."""

    model: WageMLP
    steps: int
    train_mse: list[float] = field(default_factory=list)
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def at_step(self, step: int) -> WageMLP:
        """A copy of the model as it was at the snapshot nearest `step`."""
        if not self.snapshots:
            raise ValueError("this run kept no snapshots: train with snapshot_every=...")
        nearest = min(self.snapshots, key=lambda s: abs(s - step))
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.snapshots[nearest])
        return model


def train_mlp(
    x: np.ndarray,
    y: np.ndarray,
    width: int = 16,
    depth: int = 2,
    activation: str = "relu",
    steps: int = 600,
    lr: float = 3e-3,
    seed: int = 0,
    snapshot_every: int | None = None,
) -> TrainedMLP:
    """Fit a `WageMLP` to (x, y) by full-batch Adam on the mean squared error (constant learning rate).

    Args:
        x: inputs [n] or [n, d_in] in natural units; y: targets [n].
        snapshot_every: keep a copy of the weights every this many steps (for the explorer).
    """
    x2 = _as_2d(x)
    y = np.asarray(y, dtype=float)
    if y.shape != (len(x2),):
        raise ValueError(f"y must have shape [{len(x2)}], got {y.shape}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    torch.manual_seed(seed)
    model = WageMLP(width, depth, activation, d_in=x2.shape[1])
    model.fit_scaling(x2, y)
    xt = torch.as_tensor(x2, dtype=torch.float32)
    target = (torch.as_tensor(y, dtype=torch.float32) - model.y_mean) / model.y_std
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    run = TrainedMLP(model, steps)
    with one_thread():
        for step in range(steps + 1):
            if snapshot_every and step % snapshot_every == 0:
                run.snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if step == steps:
                break
            opt.zero_grad()
            scaled_pred = model.out(model.hidden(xt)[-1]).squeeze(-1)
            loss = ((scaled_pred - target) ** 2).mean()
            loss.backward()
            opt.step()
            run.train_mse.append(float(loss.detach()) * float(model.y_std) ** 2)
    model.eval()
    return run


def fit_mlp(data: WageData, **kwargs) -> WageMLP:
    """The notebook's black box: `train_mlp` on the training ages and wages (defaults: 16x16 ReLU, 600 steps)."""
    return train_mlp(data.age_train, data.wage_train, **kwargs).model


# --------------------------------------------------------------------------------------
# First interpretability tools: response curves, max activation, ablation
# --------------------------------------------------------------------------------------


def response_curves(model: WageMLP, ages: np.ndarray, layer: int = -1) -> np.ndarray:
    """Each hidden unit's activation as a function of age: shape [len(ages), width]."""
    with torch.no_grad():
        return model.hidden(ages)[layer].numpy().astype(float)


def unit_contributions(model: WageMLP, ages: np.ndarray) -> np.ndarray:
    """What each last-layer unit adds to the predicted wage, [len(ages), width].

    The prediction is exactly ``contributions.sum(1) + model_offset(model)``.
    """
    h = torch.as_tensor(response_curves(model, ages), dtype=torch.float32)
    with torch.no_grad():
        return (h * model.out.weight[0] * model.y_std).numpy().astype(float)


def model_offset(model: WageMLP) -> float:
    """The constant part of the prediction (output bias, in thousands)."""
    with torch.no_grad():
        return float(model.out.bias[0] * model.y_std + model.y_mean)


def units_active_per_age(contributions: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """At each age, how many units contribute more than `threshold` x the largest contribution
    anywhere (a measure of how much the units' response curves overlap)."""
    c = np.abs(np.asarray(contributions))
    return (c > threshold * c.max()).sum(1)


def max_activating_inputs(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` inputs that activate each unit most.

    Args:
        acts: activations [n_inputs, n_units].
        k: how many inputs per unit.
    Returns:
        LongTensor [k, n_units]; column j lists unit j's top inputs, strongest first.
    """
    if acts.ndim != 2:
        raise ValueError(f"acts must be [n_inputs, n_units], got shape {tuple(acts.shape)}")
    if not 1 <= k <= acts.shape[0]:
        raise ValueError(f"k must be between 1 and n_inputs={acts.shape[0]}, got {k}")
    return acts.topk(k, dim=0).indices


def mean_ablate_unit(hidden: torch.Tensor, unit: int) -> torch.Tensor:
    """A copy of `hidden` [n_inputs, n_units] whose column `unit` is replaced by its mean over the inputs."""
    if hidden.ndim != 2:
        raise ValueError(f"hidden must be [n_inputs, n_units], got shape {tuple(hidden.shape)}")
    out = hidden.clone()
    out[:, unit] = hidden[:, unit].mean()
    return out


def zero_ablate_unit(hidden: torch.Tensor, unit: int) -> torch.Tensor:
    """A copy of `hidden` whose column `unit` is set to 0."""
    out = hidden.clone()
    out[:, unit] = 0.0
    return out


def predict_ablated(model: WageMLP, ages: np.ndarray, unit: int, mode: str = "mean",
                    reference_ages: np.ndarray | None = None) -> np.ndarray:
    """Predicted wages with one last-layer unit ablated.

    mode "zero" sets the unit to 0; "mean" sets it to its mean over `reference_ages`
    (default: `ages` themselves).
    """
    with torch.no_grad():
        h = model.hidden(ages)[-1].clone()
        if mode == "zero":
            h[:, unit] = 0.0
        elif mode == "mean":
            ref = h if reference_ages is None else model.hidden(reference_ages)[-1]
            h[:, unit] = ref[:, unit].mean()
        else:
            raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
        return model.readout(h).numpy().astype(float)


def ablation_effects(model: WageMLP, ages: np.ndarray, wages: np.ndarray) -> dict[str, np.ndarray]:
    """Increase in MSE when each last-layer unit is ablated, for zero and mean ablation ([width] each)."""
    base = mse(model.predict(ages), wages)
    with torch.no_grad():
        h = model.hidden(ages)[-1]
        out = {}
        for mode, ablate in (("zero", zero_ablate_unit), ("mean", mean_ablate_unit)):
            out[mode] = np.array([mse(model.readout(ablate(h, j)), torch.as_tensor(wages, dtype=torch.float32)) - base
                                  for j in range(h.shape[1])])
    return out


# --------------------------------------------------------------------------------------
# Obstacle 1, non-linearity: the same weight means different things at different ages
# --------------------------------------------------------------------------------------


def marginal_effect(model: WageMLP, ages: np.ndarray) -> np.ndarray:
    """d wage / d age at each age (thousands per year): for a line this is its slope everywhere."""
    a = torch.as_tensor(np.asarray(ages, dtype=np.float32)).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(a).sum(), a)
    return grad.numpy().astype(float)


def weight_effects(model: WageMLP, ages: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """How the prediction at each age responds to nudging each weight: d wage(age) / d w.

    Returns (effects [len(ages), n_parameters], parameter names like "layers.0.weight[3,0]").
    """
    names = []
    for pname, p in model.named_parameters():
        for idx in np.ndindex(*p.shape):
            names.append(f"{pname}[{','.join(map(str, idx))}]")
    rows = []
    params = list(model.parameters())
    with one_thread():
        for age in np.asarray(ages, dtype=np.float32):
            grads = torch.autograd.grad(model(torch.tensor([age]))[0], params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]).numpy())
    return np.stack(rows).astype(float), names


@dataclass
class EffectSummary:
    """How many weights have an effect whose sign or presence depends on the age."""

    n_weights: int
    sign_flips: int
    switched_off: int

    @property
    def flip_fraction(self) -> float:
        return self.sign_flips / self.n_weights

    @property
    def off_fraction(self) -> float:
        return self.switched_off / self.n_weights


def summarise_effects(effects: np.ndarray, tol: float = 0.1, off_tol: float = 1e-6, min_off: float = 0.1) -> EffectSummary:
    """Count weights whose effect flips sign (both > tol x and < -tol x their largest |effect|) and
    weights that do nothing at all (|effect| < off_tol x largest) on at least `min_off` of the ages."""
    e = np.asarray(effects)
    scale = np.abs(e).max(0)
    live = scale > 0
    flips = (e.max(0) > tol * scale) & (e.min(0) < -tol * scale) & live
    off = ((np.abs(e) <= off_tol * scale).mean(0) >= min_off) & live
    return EffectSummary(e.shape[1], int(flips.sum()), int(off.sum()))


def linear_weight_effects(ages: np.ndarray) -> np.ndarray:
    """The line's d wage / d (intercept, slope) at each age: (1, age), the same sign everywhere."""
    ages = np.asarray(ages, dtype=float)
    return np.column_stack([np.ones_like(ages), ages])


# --------------------------------------------------------------------------------------
# Obstacle 2, dimensionality: extra inputs smear what one unit means
# --------------------------------------------------------------------------------------

DIMS_SETTINGS = ("age only", "age + experience", "age + experience + 8 noise")


def wage_features(age: np.ndarray, setting: str, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Input features for the dimensionality demo (the wage still depends on age only).

    "age only": [age]. "age + experience": also years of work experience = age - 18 - years
    of study (0-8) + noise, strongly correlated with age. "... + 8 noise": also 8 irrelevant
    standard-normal features.
    """
    if setting not in DIMS_SETTINGS:
        raise ValueError(f"setting must be one of {DIMS_SETTINGS}, got {setting!r}")
    cols, names = [np.asarray(age, dtype=float)], ["age"]
    if setting != "age only":
        study = rng.integers(0, 9, len(age))
        cols.append(np.clip(age - AGE_MIN - study + rng.normal(0, 1, len(age)), 0, None))
        names.append("experience")
    if setting.endswith("noise"):
        for i in range(8):
            cols.append(rng.normal(0, 1, len(age)))
            names.append(f"noise{i}")
    return np.column_stack(cols), names


def age_explained_share(model: WageMLP, x: np.ndarray) -> np.ndarray:
    """For each last-layer unit: the share of its activation variance that age alone explains.

    The unit's activations are grouped by age (2-year bins); the share is Var(E[h | age bin]) / Var(h).
    1.0 means "this unit is a function of age" and its response curve tells the whole story.
    """
    with torch.no_grad():
        h = model.hidden(x)[-1].numpy().astype(float)
    bins = np.digitize(x[:, 0], np.arange(AGE_MIN + 2, AGE_MAX, 2.0))
    total = h.var(0)
    means = np.zeros_like(h)
    for b in np.unique(bins):
        means[bins == b] = h[bins == b].mean(0)
    share = np.divide(means.var(0), total, out=np.ones_like(total), where=total > 1e-12)
    return share[total > 1e-12] if (total > 1e-12).any() else share


def unit_input_credit(model: WageMLP, x: np.ndarray) -> np.ndarray:
    """How each last-layer unit's activity divides among the input features, [width, d_in].

    Credit of input i to unit j = mean over inputs of |d h_j / d x_i| x std(x_i), normalised so each
    live unit's row sums to 1 (rows of units that never change are 0).
    """
    x = _as_2d(x)
    xt = torch.as_tensor(x, dtype=torch.float32)
    with one_thread():
        jac = torch.func.vmap(torch.func.jacrev(lambda v: model.hidden(v[None])[-1][0]))(xt)  # [n, width, d_in]
    credit = jac.detach().abs().mean(0).numpy().astype(float) * x.std(0)
    total = credit.sum(1, keepdims=True)
    return np.divide(credit, total, out=np.zeros_like(credit), where=total > 1e-12)


@dataclass
class DimsResult:
    """One setting of the dimensionality demo."""

    setting: str
    inputs: list[str]
    test_mse: float
    unit_credit: np.ndarray    # `unit_input_credit`, [width, d_in]
    age_share: float           # mean over live units of `age_explained_share`
    output_age_credit: float   # share of the prediction's |d wage / d input| x spread that goes to age

    @property
    def unit_age_credit(self) -> float:
        """Mean over live units of the share of the unit's input credit that goes to age."""
        live = self.unit_credit.sum(1) > 0
        return float(self.unit_credit[live, 0].mean())


def dimensionality_demo(data: WageData, settings: Sequence[str] = DIMS_SETTINGS, seed: int = 0,
                        steps: int = 600, width: int = 16) -> list[DimsResult]:
    """Train the same MLP on the same wages with more and more input features; measure how much of
    each unit's activity (and of the prediction) still traces back to age."""
    out = []
    for setting in settings:
        rng = np.random.default_rng(seed + 1)
        x_tr, names = wage_features(data.age_train, setting, rng)
        x_te, _ = wage_features(data.age_test, setting, rng)
        model = train_mlp(x_tr, data.wage_train, width=width, steps=steps, seed=seed).model
        x_t = torch.as_tensor(x_te, dtype=torch.float32).requires_grad_(True)
        (g,) = torch.autograd.grad(model(x_t).sum(), x_t)
        credit = np.abs(g.numpy()).mean(0) * x_te.std(0)
        out.append(DimsResult(setting, names, mse(model.predict(x_te), data.wage_test),
                              unit_input_credit(model, x_te), float(age_explained_share(model, x_te).mean()),
                              float(credit[0] / credit.sum())))
    return out


def dims_table(results: Sequence[DimsResult]) -> str:
    """The demo's results as a fixed-width text table."""
    lines = [f"{'inputs':<28}{'d_in':>5}{'test MSE':>10}{'unit credit to age':>20}{'unit var. from age':>20}"
             f"{'output credit to age':>22}"]
    for r in results:
        lines.append(f"{r.setting:<28}{len(r.inputs):>5}{r.test_mse:>10.1f}{r.unit_age_credit:>20.2f}"
                     f"{r.age_share:>20.2f}{r.output_age_credit:>22.2f}")
    return "\n".join(lines)


def plot_dims(results: Sequence[DimsResult]):
    """One heatmap per setting: rows = last-layer units, columns = inputs, colour = share of the unit's credit."""
    import matplotlib.pyplot as plt

    widths = [max(len(r.inputs), 3) for r in results]
    fig, axes = plt.subplots(1, len(results), figsize=(3 + 0.45 * sum(widths), 3.8),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, r in zip(axes[0], results):
        im = ax.imshow(r.unit_credit, cmap="Greens", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(r.inputs)))
        ax.set_xticklabels([n.replace("experience", "exper.") for n in r.inputs], rotation=90, fontsize=8)
        n = len(r.inputs)
        ax.set_title(f"{n} input{'s' if n > 1 else ''}\nunit credit to age {r.unit_age_credit:.2f}", fontsize=9)
        ax.set_yticks([])
    axes[0][0].set_ylabel("last-layer unit")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, pad=0.02, label="share of the unit's input credit")
    return fig


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def plot_data(data: WageData, line_coef: np.ndarray | None = None, models: dict[str, WageMLP] | None = None,
              show_truth: bool = True, ax=None):
    """Scatter of the training data, optionally with the line and model fits over it."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
    else:
        fig = ax.figure
    ages = age_grid()
    ax.scatter(data.age_train, data.wage_train, s=6, alpha=0.35, color="grey", label="people (train)")
    if show_truth:
        ax.plot(ages, wage_profile(ages), "k--", lw=1, label="true mean wage")
    if line_coef is not None:
        ax.plot(ages, predict_linear(line_coef, ages), color="tab:blue", lw=2, label="line (least squares)")
    for (name, model), color in zip((models or {}).items(), ("tab:red", "tab:green", "tab:purple")):
        ax.plot(ages, model.predict(ages), color=color, lw=2, label=name)
    ax.set_xlabel("age (years)")
    ax.set_ylabel("wage (k$ / year)")
    ax.legend(fontsize=8, loc="lower center")
    fig.tight_layout()
    return fig


def plot_residuals(data: WageData, line_coef: np.ndarray, model: WageMLP | None = None):
    """Residuals against age for the line (and the MLP), with a running mean that shows their shape."""
    import matplotlib.pyplot as plt

    fits = [("line", predict_linear(line_coef, data.age_test), "tab:blue")]
    if model is not None:
        fits.append(("MLP", model.predict(data.age_test), "tab:red"))
    fig, axes = plt.subplots(1, len(fits), figsize=(4.4 * len(fits), 3.2), sharey=True, squeeze=False)
    order = np.argsort(data.age_test)
    for ax, (name, pred, color) in zip(axes[0], fits):
        res = data.wage_test - pred
        ax.scatter(data.age_test, res, s=5, alpha=0.35, color=color)
        smooth = np.convolve(res[order], np.ones(40) / 40, mode="valid")
        ax.plot(data.age_test[order][19:-20], smooth, color="k", lw=2, label="running mean (40 people)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{name} residuals (test)", fontsize=10)
        ax.set_xlabel("age (years)")
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("wage - prediction (k$)")
    fig.tight_layout()
    return fig


def plot_units(model: WageMLP, highlight: Sequence[int] = (), top_inputs: np.ndarray | None = None):
    """Left: each last-layer unit's response curve (`highlight`ed units drawn thick, with their
    `top_inputs` ages [k, width] marked). Right: what each unit adds to the wage, and their sum."""
    import matplotlib.pyplot as plt

    ages = age_grid()
    acts = response_curves(model, ages)
    contrib = unit_contributions(model, ages)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    cmap = plt.get_cmap("tab20")
    for j in range(acts.shape[1]):
        lw, alpha = (2.2, 1.0) if j in highlight else (1.0, 0.7)
        a1.plot(ages, acts[:, j], color=cmap(j % 20), lw=lw, alpha=alpha)
        a2.plot(ages, contrib[:, j], color=cmap(j % 20), lw=lw, alpha=alpha)
        if top_inputs is not None and j in highlight:
            a1.plot(top_inputs[:, j], np.interp(top_inputs[:, j], ages, acts[:, j]), "o", color=cmap(j % 20), ms=6,
                    mec="k", label=f"unit {j}: top inputs")
    a2.plot(ages, contrib.sum(1), "k", lw=2.5, label=f"sum = prediction - {model_offset(model):.0f} (bias)")
    a2.axhline(0, color="grey", lw=0.8)
    a1.set_title(f"response curves of the {acts.shape[1]} last-layer units", fontsize=10)
    a1.set_xlabel("age (years)")
    a1.set_ylabel("activation")
    a2.set_title("each unit's contribution to the wage (k$)", fontsize=10)
    a2.set_xlabel("age (years)")
    a2.legend(fontsize=8)
    if top_inputs is not None and highlight:
        a1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_nonlinearity(model: WageMLP, line_coef: np.ndarray, examples: int = 4):
    """Left: the effect of one more year of age, line vs MLP. Right: the effect of nudging single
    MLP weights, against age (the line's slope nudge is shown for comparison)."""
    import matplotlib.pyplot as plt

    ages = age_grid(120)
    eff, names = weight_effects(model, ages)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.axhline(line_coef[1], color="tab:blue", lw=2, label=f"line: {line_coef[1]:+.2f} at every age")
    a1.plot(ages, marginal_effect(model, ages), color="tab:red", lw=2, label="MLP: depends on the age")
    a1.axhline(0, color="grey", lw=0.8)
    a1.set_title("what does one more year of age add? (k$ / year)", fontsize=10)
    a1.set_xlabel("age (years)")
    a1.legend(fontsize=8)
    # the first-layer weights whose effect swings most in sign
    first = [i for i, n in enumerate(names) if n.startswith("layers.0.weight")]
    swing = np.minimum(eff[:, first].max(0), -eff[:, first].min(0))
    chosen = [first[i] for i in np.argsort(-swing)[:examples]]
    for i in chosen:
        a2.plot(ages, eff[:, i] / np.abs(eff[:, i]).max(), lw=1.8, label=f"MLP {names[i]}")
    lin = linear_weight_effects(ages)[:, 1]
    a2.plot(ages, lin / lin.max(), color="tab:blue", lw=2, ls="--", label="line: slope")
    a2.axhline(0, color="grey", lw=0.8)
    a2.set_title("effect of nudging one weight on the prediction\n(scaled to max 1)", fontsize=10)
    a2.set_xlabel("age (years)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_ablation(model: WageMLP, data: WageData, effects: dict[str, np.ndarray]):
    """Left: per-unit MSE increase under zero vs mean ablation. Right: the fit with the unit that
    matters most (by mean ablation) removed, both ways."""
    import matplotlib.pyplot as plt

    width = len(effects["mean"])
    top = int(np.argmax(effects["mean"]))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    idx = np.arange(width)
    a1.bar(idx - 0.2, effects["zero"], 0.4, label="zero ablation", color="tab:orange")
    a1.bar(idx + 0.2, effects["mean"], 0.4, label="mean ablation", color="tab:purple")
    a1.axhline(0, color="grey", lw=0.8)
    a1.set_xticks(idx)
    a1.set_xlabel("last-layer unit")
    a1.set_ylabel("test MSE increase (k$²)")
    a1.set_title("how much does removing one unit hurt?", fontsize=10)
    a1.legend(fontsize=8)
    ages = age_grid()
    a2.scatter(data.age_test, data.wage_test, s=4, alpha=0.25, color="grey")
    a2.plot(ages, model.predict(ages), "k", lw=2, label="intact MLP")
    a2.plot(ages, predict_ablated(model, ages, top, "mean", data.age_test), color="tab:purple", lw=2,
            label=f"unit {top} mean-ablated")
    a2.plot(ages, predict_ablated(model, ages, top, "zero"), color="tab:orange", lw=2, ls="--",
            label=f"unit {top} zero-ablated")
    a2.set_xlabel("age (years)")
    a2.set_ylabel("wage (k$ / year)")
    a2.set_title(f"where does unit {top} matter?", fontsize=10)
    a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# The explorer: width x activation x training steps
# --------------------------------------------------------------------------------------

EXPLORER_MAX_STEPS = 1200
EXPLORER_SNAPSHOT_EVERY = 50
_EXPLORER_RUNS: dict[tuple, TrainedMLP] = {}
_EXPLORER_DATA: dict[int, WageData] = {}


def explorer_run(width: int, activation: str, seed: int = 0) -> TrainedMLP:
    """The explorer's cached training run for (width, activation): trained once, with snapshots."""
    key = (int(width), activation, seed)
    if key not in _EXPLORER_RUNS:
        data = _EXPLORER_DATA.setdefault(seed, make_wage_data(seed=seed))
        _EXPLORER_RUNS[key] = train_mlp(data.age_train, data.wage_train, width=int(width), activation=activation,
                                        steps=EXPLORER_MAX_STEPS, seed=seed, snapshot_every=EXPLORER_SNAPSHOT_EVERY)
    return _EXPLORER_RUNS[key]


def plot_mlp_explorer(width: int = 16, activation: str = "relu", steps: int = 600, seed: int = 0):
    """The fit and the last hidden layer's response curves of a 2-hidden-layer MLP of the given
    width and activation after `steps` full-batch Adam steps (same data and seed as the notebook)."""
    import matplotlib.pyplot as plt

    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not 0 <= steps <= EXPLORER_MAX_STEPS:
        raise ValueError(f"steps must be in [0, {EXPLORER_MAX_STEPS}], got {steps}")
    run = explorer_run(width, activation, seed)
    data = _EXPLORER_DATA[seed]
    model = run.at_step(steps)
    line = least_squares(data.age_train, data.wage_train)
    ages = age_grid()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.scatter(data.age_train, data.wage_train, s=5, alpha=0.3, color="grey")
    a1.plot(ages, wage_profile(ages), "k--", lw=1, label="true mean")
    a1.plot(ages, predict_linear(line, ages), color="tab:blue", lw=1.5,
            label=f"line: test MSE {mse(predict_linear(line, data.age_test), data.wage_test):.0f}")
    a1.plot(ages, model.predict(ages), color="tab:red", lw=2.2,
            label=f"MLP: test MSE {mse(model.predict(data.age_test), data.wage_test):.0f}")
    a1.set_ylim(0, 80)
    a1.set_xlabel("age (years)")
    a1.set_ylabel("wage (k$ / year)")
    a1.set_title(f"{width}x{width} {activation} MLP ({n_parameters(model)} weights), step {steps}", fontsize=10)
    a1.legend(fontsize=8, loc="lower center")
    acts = response_curves(model, ages)
    a2.plot(ages, acts, lw=1)
    a2.set_xlabel("age (years)")
    a2.set_ylabel("activation")
    dead = int((acts.max(0) - acts.min(0) < 1e-6).sum())
    a2.set_title(f"response curves of the {width} last-layer units ({dead} flat)", fontsize=10)
    fig.tight_layout()
    return fig


def mlp_explorer(width: int = 16, activation: str = "relu", steps: int = 600):
    """The interactive explorer (a `mi_tutor.widgets.Explorer`); its output carries a static PNG."""
    from .widgets import Explorer, dropdown, slider

    return Explorer(plot_mlp_explorer, {
        "width": slider(width, 2, 32, 2, description="width"),
        "activation": dropdown(list(ACTIVATIONS), activation, description="activation"),
        "steps": slider(steps, 0, EXPLORER_MAX_STEPS, EXPLORER_SNAPSHOT_EVERY, description="training steps"),
    }, title="MLP explorer: width, activation, training steps")


__all__ = [
    "AGE_MIN", "AGE_MAX", "ACTIVATIONS", "wage_profile", "WageData", "make_wage_data", "age_grid",
    "least_squares", "predict_linear", "mse", "runs_test", "ResidualReport", "residual_structure",
    "WageMLP", "n_parameters", "TrainedMLP", "train_mlp", "fit_mlp", "one_thread",
    "response_curves", "unit_contributions", "model_offset", "units_active_per_age",
    "max_activating_inputs", "mean_ablate_unit", "zero_ablate_unit", "predict_ablated", "ablation_effects",
    "marginal_effect", "weight_effects", "EffectSummary", "summarise_effects", "linear_weight_effects",
    "DIMS_SETTINGS", "wage_features", "age_explained_share", "unit_input_credit", "DimsResult",
    "dimensionality_demo", "dims_table", "plot_dims",
    "plot_data", "plot_residuals", "plot_units", "plot_nonlinearity", "plot_ablation",
    "explorer_run", "plot_mlp_explorer", "mlp_explorer",
]
