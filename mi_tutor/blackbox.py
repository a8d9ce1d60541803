"""Notebook 00: a readable model (a line) against a black box (a small MLP) on wages vs age.

This module holds the data, the two models and the figures that show them; what the first
interpretability tools measure on the black box (per-unit contributions, credit, ablation)
lives in `mi_tutor.blackbox_attribution`.

- `make_wage_data`: seeded wages against age, shaped like a real earnings profile (rising fast,
  flattening in mid-career, falling towards retirement), plus noise.
- `least_squares`, `residual_structure`: the line, and the evidence that it misses a shape.
- `WageMLP`, `train_mlp`: a small torch MLP (1 -> 16 -> 16 -> 1 by default) that fits better;
  `response_curves` reads its hidden units.
- `plot_mlp_explorer`: the explorer's view (width, activation, training steps); runs are
  trained once, with snapshots, and cached, so a redraw only plots.

Training runs on one CPU thread: for models this small that is several times faster than
two threads (which spend their time synchronising), and it makes results identical on every CPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .env import one_thread

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


def as_2d(x: np.ndarray) -> np.ndarray:
    """`x` as a float array [n, d] (a 1-D array is one feature)."""
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
    x = as_2d(x)
    y = np.asarray(y, dtype=float)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape [{x.shape[0]}] to match x {x.shape}, got {y.shape}")
    design = np.column_stack([np.ones(len(x)), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef


def predict_linear(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Predictions b0 + x . b of a `least_squares` fit."""
    x = as_2d(x)
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
        x = as_2d(x)
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

    def run_from(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Wages [n] when hidden layer `layer` (0-based; -1 = last) holds the activations `h` [n, width]:
        the rest of the network runs on `h` (used to ablate a unit of any layer)."""
        layer = layer % self.depth
        for i in range(2 * (layer + 1), len(self.layers), 2):
            h = self.layers[i + 1](self.layers[i](h))
        return self.readout(h)

    def forward(self, x) -> torch.Tensor:
        return self.readout(self.hidden(x)[-1])

    def predict(self, x) -> np.ndarray:
        """Wages as a numpy array (no gradients)."""
        with torch.no_grad():
            return self(x).numpy().astype(float)


def n_parameters(model: nn.Module) -> int:
    """How many numbers the model learned."""
    return sum(p.numel() for p in model.parameters())




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
    x2 = as_2d(x)
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
# Reading the hidden units
# --------------------------------------------------------------------------------------


def response_curves(model: WageMLP, ages: np.ndarray, layer: int = -1) -> np.ndarray:
    """Each hidden unit's activation as a function of age: shape [len(ages), width]."""
    with torch.no_grad():
        return model.hidden(ages)[layer].numpy().astype(float)


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
    "AGE_MIN", "AGE_MAX", "ACTIVATIONS", "wage_profile", "WageData", "make_wage_data", "age_grid", "as_2d",
    "least_squares", "predict_linear", "mse", "runs_test", "ResidualReport", "residual_structure",
    "WageMLP", "n_parameters", "TrainedMLP", "train_mlp", "fit_mlp", "one_thread", "response_curves",
    "plot_data", "plot_residuals", "explorer_run", "plot_mlp_explorer", "mlp_explorer",
]
