"""A small stochastic parameter decomposition (SPD) of a toy model's weights.

SPD (Bushnaq, Braun & Sharkey 2025, arXiv 2506.20790) splits each weight matrix into C rank-one
*subcomponents*, W ~= sum_c u_c v_c^T, and learns for every input x a *causal importance*
g_c(x) in [0, 1] per subcomponent: how much that subcomponent may be ablated without changing
the output. Here, as in the paper, g_c is a tiny MLP of the subcomponent's inner activation
v_c . x followed by a hard sigmoid. Training minimises

    faithfulness            ||W - sum_c u_c v_c^T||^2               (the parts add up to the weights)
    stochastic recon        ||f(x; masked W) - f(x; W)||^2,  masks m_c ~ U(g_c(x), 1)
    importance minimality   sum_c |g_c(x)|^p                         (use as few parts as possible)

A subcomponent with g_c = 0 can be fully ablated (m_c anywhere in [0, 1]) and the output must
not change; with g_c = 1 it must be kept. The toy model here (`superposition.ToyModel`) has tied
weights (W encodes, W^T decodes), so one decomposition of W is used in both places, with the same
mask. With a single matrix, the paper's layerwise reconstruction loss coincides with the
stochastic one, so it is not added separately.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .superposition import ToyModel, sample_features
from .training import History, train


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """clamp(x, 0, 1): exactly 0 (ablatable) or 1 (essential) outside [0, 1]."""
    return x.clamp(0.0, 1.0)


def leaky_hard_sigmoid(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """A hard sigmoid with a small slope outside [0, 1], so gradients never die during training (our choice)."""
    return torch.where(x < 0, slope * x, torch.where(x > 1, 1 + slope * (x - 1), x))


def causal_importance_mask(pre: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal importance g = hard_sigmoid(pre) and a stochastic mask m = g + (1 - g) r, i.e. m ~ U(g, 1) for r ~ U(0, 1)."""
    if pre.shape != r.shape:
        raise ValueError(f"pre {tuple(pre.shape)} and r {tuple(r.shape)} must have the same shape")
    g = hard_sigmoid(pre)
    return g, g + (1 - g) * r


def stochastic_recon_loss(U: torch.Tensor, V: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
                          r: torch.Tensor, target_out: torch.Tensor) -> torch.Tensor:
    """SPD's stochastic reconstruction loss for the tied toy model, one mask sample.

    U [C, m] (write vectors u_c), V [C, n] (read vectors v_c), bias [n], inputs x [B, n], causal
    importances g [B, C], uniform noise r [B, C], the target model's outputs target_out [B, n].
    The mask m = g + (1 - g) r scales subcomponent c in BOTH uses of the tied weights:
    h = sum_c m_c (v_c . x) u_c, out = ReLU(sum_c m_c (u_c . h) v_c + bias); the loss is
    ||out - target_out||^2 summed over outputs and averaged over the batch (a scalar).
    """
    mask = g + (1 - g) * r
    h = ((x @ V.T) * mask) @ U
    out = torch.relu(((h @ U.T) * mask) @ V + bias)
    return ((out - target_out) ** 2).sum(-1).mean()


# The decomposition's maths, written once for k copies side by side (a leading "copy" dimension):
# U [k, C, m], V [k, C, n], CI-MLP weights w1, b1, w2 [k, C, H], b2 [k, C]; inputs x [batch, n].

def _inner(V: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """v_c . x for every copy: [batch, k, C]."""
    if x.shape[-1] != V.shape[-1]:
        raise ValueError(f"inputs have {x.shape[-1]} features, the decomposed model expects {V.shape[-1]}")
    return torch.einsum("kcn,bn->bkc", V, x)


def _ci_pre(V, w1, b1, w2, b2, x: torch.Tensor) -> torch.Tensor:
    """The causal-importance MLPs (one per subcomponent, input v_c . x) before the hard sigmoid: [batch, k, C]."""
    a = _inner(V, x)[..., None]                                 # [batch, k, C, 1]
    hid = torch.nn.functional.gelu(a * w1 + b1)                 # [batch, k, C, H]
    return (hid * w2).sum(-1) + b2


def _masked_forward(U, V, bias, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The tied toy model with subcomponent c scaled by mask[..., c] in both uses: (hidden [b, k, m], output [b, k, n])."""
    h = torch.einsum("bkc,kcm->bkm", _inner(V, x) * mask, U)            # sum_c m_c u_c (v_c . x)
    back = torch.einsum("bkm,kcm->bkc", h, U) * mask                     # u_c . h, masked
    return h, torch.relu(torch.einsum("bkc,kcn->bkn", back, V) + bias)


def _losses(params: tuple[torch.Tensor, ...], W_target: torch.Tensor, bias: torch.Tensor, target_out: torch.Tensor,
            x: torch.Tensor, g: torch.Generator, n_mask_samples: int, p: float) -> dict[str, torch.Tensor]:
    """The three SPD losses, one value per copy ([k] each)."""
    U, V, w1, b1, w2, b2 = params
    faith = ((W_target - torch.einsum("kcm,kcn->kmn", U, V)) ** 2).sum((1, 2))
    g_train = leaky_hard_sigmoid(_ci_pre(V, w1, b1, w2, b2, x))          # [batch, k, C]
    recon = 0.0
    for _ in range(n_mask_samples):
        # one noise draw shared by all copies, so that copy i sees exactly what it would see if trained alone
        r = torch.rand((g_train.shape[0], 1, g_train.shape[2]), generator=g)
        mask = g_train + (1 - g_train) * r
        _, out = _masked_forward(U, V, bias, x, mask)
        recon = recon + ((out - target_out[:, None, :]) ** 2).sum(-1).mean(0) / n_mask_samples
    imp = (g_train.clamp_min(0) + 1e-8).pow(p).sum(-1).mean(0)
    return {"faithfulness": faith, "stochastic_recon": recon, "importance_minimality": imp}


class SPDDecomposition(nn.Module):
    """C rank-one subcomponents of a toy model's W [m, n], plus one tiny causal-importance MLP each.

    Subcomponent c is u_c v_c^T: it reads the input along v_c (in R^n, row c of `V`) and writes
    u_c (in R^m, row c of `U`).
    """

    def __init__(self, target: ToyModel, n_components: int = 50, ci_hidden: int = 8, seed: int = 0):
        super().__init__()
        if target.instances != 1:
            raise ValueError("decompose a single-instance toy model (train_toy)")
        if n_components < 1 or ci_hidden < 1:
            raise ValueError("n_components and ci_hidden must be positive")
        g = torch.Generator().manual_seed(seed)
        m, n = target.n_hidden, target.n_features
        self.target = target
        self.C = n_components
        self.U = nn.Parameter(torch.randn(n_components, m, generator=g) / math.sqrt(m))
        self.V = nn.Parameter(torch.randn(n_components, n, generator=g) / math.sqrt(n))
        self.w1 = nn.Parameter(torch.randn(n_components, ci_hidden, generator=g))
        self.b1 = nn.Parameter(torch.randn(n_components, ci_hidden, generator=g) * 0.1)
        self.w2 = nn.Parameter(torch.randn(n_components, ci_hidden, generator=g) / math.sqrt(ci_hidden))
        self.b2 = nn.Parameter(torch.zeros(n_components))

    def _stacked(self) -> tuple[torch.Tensor, ...]:
        return tuple(p[None] for p in (self.U, self.V, self.w1, self.b1, self.w2, self.b2))

    @property
    def W_target(self) -> torch.Tensor:
        return self.target.W.detach()[0]

    def weights(self) -> torch.Tensor:
        """sum_c u_c v_c^T: [m, n]."""
        return self.U.T @ self.V

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """Inner activations v_c . x: [batch, C]."""
        return _inner(self.V[None], x)[:, 0]

    def ci_pre(self, x: torch.Tensor) -> torch.Tensor:
        """The causal-importance MLPs' outputs before the hard sigmoid: [batch, C]."""
        return _ci_pre(*self._stacked()[1:], x)[:, 0]

    @torch.no_grad()
    def importance(self, x: torch.Tensor) -> torch.Tensor:
        """Causal importances g_c(x) in [0, 1]: [batch, C]."""
        return hard_sigmoid(self.ci_pre(x))

    def masked_forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden, output) of the toy model with subcomponent c scaled by mask[:, c] (in both tied uses)."""
        h, out = _masked_forward(self.U[None], self.V[None], self.target.b.detach(), x, mask[:, None, :])
        return h[:, 0], out[:, 0]


def spd_losses(spd: SPDDecomposition, x: torch.Tensor, g: torch.Generator, n_mask_samples: int = 2,
               p: float = 1.0) -> dict[str, torch.Tensor]:
    """The three SPD losses on a batch x (scalars)."""
    with torch.no_grad():
        target_out = spd.target(x)
    losses = _losses(spd._stacked(), spd.W_target[None], spd.target.b.detach(), target_out, x, g, n_mask_samples, p)
    return {k: v[0] for k, v in losses.items()}


class SPDStack(nn.Module):
    """k SPD decompositions of the same target trained as ONE batched model (leading "copy" dimension).

    Copy i starts exactly as `SPDDecomposition(target, n_components, ci_hidden, seed)`; they differ only in
    their loss coefficients, so one run gives a whole hyperparameter sweep.
    """

    def __init__(self, target: ToyModel, copies: int, n_components: int = 50, ci_hidden: int = 8, seed: int = 0):
        super().__init__()
        base = SPDDecomposition(target, n_components, ci_hidden, seed)
        self.target = target
        self.C, self.copies = n_components, copies
        for name in ("U", "V", "w1", "b1", "w2", "b2"):
            setattr(self, name, nn.Parameter(getattr(base, name).detach()[None].repeat(copies, *[1] * getattr(base, name).ndim)))

    def stacked(self) -> tuple[torch.Tensor, ...]:
        return (self.U, self.V, self.w1, self.b1, self.w2, self.b2)

    def unstack(self, i: int) -> SPDDecomposition:
        """Copy i as an ordinary (frozen) `SPDDecomposition`."""
        spd = SPDDecomposition(self.target, self.C, self.w1.shape[-1])
        with torch.no_grad():
            for name in ("U", "V", "w1", "b1", "w2", "b2"):
                getattr(spd, name).copy_(getattr(self, name)[i])
        spd.eval()
        for name, prm in spd.named_parameters():
            if not name.startswith("target."):
                prm.requires_grad_(False)
        return spd


@dataclass
class SPDRun:
    spd: SPDDecomposition
    history: History
    coeffs: dict[str, float]
    seconds: float        # wall time of the training run (shared by `copies` decompositions trained together)
    n_params: int
    steps: int = 0
    batch: int = 0
    copies: int = 1


def train_spds(target: ToyModel, density: float, importance_coeffs: Sequence[float], n_components: int = 50,
               faithfulness_coeff: float = 1.0, recon_coeff: float = 1.0, steps: int = 2000, batch: int = 512,
               lr: float = 3e-3, p: float = 1.0, n_mask_samples: int = 1, ci_hidden: int = 8, warmup_steps: int = 200,
               seed: int = 0, progress: bool = False) -> list[SPDRun]:
    """Decompose `target`'s W once per importance-minimality coefficient, all copies in one batched run.

    Each copy minimises faithfulness_coeff * faithfulness + recon_coeff * stochastic_recon +
    importance_coeff * importance_minimality on the same inputs; the copies' losses are summed, so
    (Adam being per-parameter) they train independently. The history logs copy 0's losses.

    As in the SPD authors' code, a cheap faithfulness-only warm-up (`warmup_steps` steps, no data)
    first makes the subcomponents add up to W, so the main phase starts from a faithful decomposition.
    """
    if len(importance_coeffs) < 1:
        raise ValueError("give at least one importance coefficient")
    if steps < 1 or batch < 1:
        raise ValueError("steps and batch must be positive")
    torch.manual_seed(seed)
    k = len(importance_coeffs)
    stack = SPDStack(target, k, n_components, ci_hidden, seed=seed)
    W_target, bias = target.W.detach()[0][None], target.b.detach()
    if warmup_steps > 0:
        warm = torch.optim.Adam([stack.U, stack.V], lr=1e-2)
        for _ in range(warmup_steps):
            faith = ((W_target - torch.einsum("kcm,kcn->kmn", stack.U, stack.V)) ** 2).sum()
            warm.zero_grad()
            faith.backward()
            warm.step()
    imp_c = torch.tensor(list(importance_coeffs), dtype=torch.float32)
    opt = torch.optim.Adam(stack.parameters(), lr=lr, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed + 1)
    n = target.n_features
    last: dict[str, float] = {}

    def step_fn(step: int) -> float:
        x = sample_features(batch, n, density, gen)
        with torch.no_grad():
            target_out = target(x)
        losses = _losses(stack.stacked(), W_target, bias, target_out, x, gen, n_mask_samples, p)
        loss = (faithfulness_coeff * losses["faithfulness"] + recon_coeff * losses["stochastic_recon"]
                + imp_c * losses["importance_minimality"]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        last.update({name: float(v[0].detach()) for name, v in losses.items()})
        return float(loss.detach())

    t0 = time.perf_counter()
    hist = train(step_fn, steps, eval_fn=lambda step: dict(last), eval_every=max(1, steps // 10), desc="SPD", progress=progress)
    seconds = time.perf_counter() - t0
    runs = []
    for i, c in enumerate(importance_coeffs):
        spd = stack.unstack(i)
        coeffs = {"faithfulness": faithfulness_coeff, "stochastic_recon": recon_coeff, "importance_minimality": float(c)}
        n_params = sum(prm.numel() for name, prm in spd.named_parameters() if not name.startswith("target."))
        runs.append(SPDRun(spd, hist, coeffs, seconds, n_params, steps, batch, k))
    return runs


def train_spd(target: ToyModel, density: float, n_components: int = 50, importance_coeff: float = 3e-3,
              faithfulness_coeff: float = 1.0, recon_coeff: float = 1.0, steps: int = 2000, batch: int = 512,
              lr: float = 3e-3, p: float = 1.0, n_mask_samples: int = 1, ci_hidden: int = 8, warmup_steps: int = 200,
              seed: int = 0, progress: bool = False) -> SPDRun:
    """Decompose `target`'s W into `n_components` rank-one subcomponents with learned causal importances
    (`train_spds` with one copy)."""
    return train_spds(target, density, [importance_coeff], n_components, faithfulness_coeff, recon_coeff, steps,
                      batch, lr, p, n_mask_samples, ci_hidden, warmup_steps, seed, progress)[0]


# ----------------------------------------------------------------------------- metrics

@torch.no_grad()
def alive_components(spd: SPDDecomposition, x: torch.Tensor) -> torch.Tensor:
    """Boolean [C]: subcomponents with g > 0 on at least one input of x."""
    return (spd.importance(x) > 0).any(0)


@torch.no_grad()
def binary_forward(spd: SPDDecomposition, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, output) keeping exactly the subcomponents with g_c(x) > 0 (the others fully ablated)."""
    mask = (spd.importance(x) > 0).float()
    return spd.masked_forward(x, mask)


@torch.no_grad()
def active_per_input(spd: SPDDecomposition, x: torch.Tensor) -> float:
    """Mean number of subcomponents with g > 0 per input."""
    return float((spd.importance(x) > 0).float().sum(-1).mean())


@torch.no_grad()
def write_directions(spd: SPDDecomposition) -> torch.Tensor:
    """The subcomponents' write vectors u_c, oriented as they are used: u_c v_c^T = (-u_c)(-v_c)^T, so the
    sign of u_c alone means nothing; flip it so that v_c's largest entry (the input feature c mostly
    reads; inputs are non-negative) is positive. [C, m]."""
    return spd.U.detach() * _orientation(spd)[:, None]


def _orientation(spd: SPDDecomposition) -> torch.Tensor:
    """+1 or -1 per subcomponent: the sign of v_c's largest-magnitude entry."""
    sign = torch.sign(spd.V.detach()[torch.arange(spd.C), spd.V.detach().abs().argmax(1)])
    return torch.where(sign == 0, torch.ones_like(sign), sign)


@torch.no_grad()
def read_directions(spd: SPDDecomposition) -> torch.Tensor:
    """The read vectors v_c with the same orientation as `write_directions`: [C, n]."""
    return spd.V.detach() * _orientation(spd)[:, None]


@torch.no_grad()
def spd_writes(spd: SPDDecomposition, x: torch.Tensor) -> torch.Tensor:
    """What each subcomponent writes into the hidden space for each input, weighted by its causal
    importance: g_c(x) (v_c . x) u_c, [batch, C, m]."""
    return (spd.importance(x) * spd.inner(x))[:, :, None] * spd.U.detach()[None]


@torch.no_grad()
def spd_shrinkage(spd: SPDDecomposition, n_features: int, magnitude: float = 0.5) -> float:
    """Mean ||h_spd|| / ||h|| over single-feature inputs magnitude * e_i, keeping the subcomponents with g > 0
    (the same measurement as `sae.shrinkage`; 1 = no shrinkage)."""
    x = magnitude * torch.eye(n_features)
    h_spd, _ = binary_forward(spd, x)
    h = spd.target.hidden(x)
    return float((h_spd.norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-8)).mean())


@torch.no_grad()
def unused_feature_report(target: ToyModel, sae, e2e_sae, spd: SPDDecomposition, feature: int,
                          x: torch.Tensor, value: float = 0.8) -> dict[str, float]:
    """How each decomposition treats one feature of `target` against the others' mean, on single-feature inputs.

    output use: the output FVU caused by deleting the feature from the input (how much the model uses it);
    SAE / e2e-SAE fire: the largest latent activation when only this feature is on, times the decoder
    direction's |cos| with W_feature (0 = no latent for it); SPD importance: the largest g_c on that input.
    Keys end in '(feature)' or '(others)'.
    """
    from .sae import cosine_matrix

    n = target.n_features
    single = value * torch.eye(n)
    out = target(x)
    x_del = x.clone()
    x_del[:, feature] = 0
    use = float(((target(x_del) - out) ** 2).sum() / ((out - out.mean(0)) ** 2).sum())

    def fire(s) -> torch.Tensor:
        z = s.encode(target.hidden(single))                              # [n, d_sae]
        cos = cosine_matrix(target.feature_directions(), s.directions()).abs()   # [n, d_sae]
        return (z * cos).max(1).values

    g = spd.importance(single).max(1).values
    others = [i for i in range(n) if i != feature]
    rep = {"output use (feature)": use}
    for name, v in (("SAE latent", fire(sae)), ("e2e-SAE latent", fire(e2e_sae)), ("SPD importance", g)):
        rep[f"{name} (feature)"] = float(v[feature])
        rep[f"{name} (others)"] = float(v[others].mean())
    return rep


# ----------------------------------------------------------------------------- side by side with an SAE

@torch.no_grad()
def compare_methods(target: ToyModel, sae_run, spd_run: SPDRun, x: torch.Tensor,
                    single_value: float = 0.8) -> dict[str, dict[str, float]]:
    """The same metrics for an SAE (on h = W x) and an SPD decomposition of W, on inputs x.

    recovery: mean max cosine of the true directions W_i with SAE decoder rows / SPD write vectors
    (`write_directions`) of the live components;
    chance level: the recovery that as many random directions would reach (`sae.chance_recovery`);
    matched recovery: `sae.matched_recovery` on single-feature inputs (value `single_value`);
    input recovery: SPD read vectors v_c against the one-hot inputs e_i (an SAE has none);
    hidden FVU, output FVU: reconstruction error of h and of the model's output (SAE: output = readout(h_hat));
    shrinkage: mean ||h_hat|| / ||h|| on single-feature inputs of value 0.5 (1 = none; SAE: `sae.shrinkage`;
    SPD: the model run with the subcomponents of g > 0);
    active per input: latents with z > 0 / subcomponents with g > 0; cost: parameters, steps x batch, seconds.
    """
    from .sae import chance_recovery, feature_recovery, matched_recovery, sae_writes
    from .sae import shrinkage as sae_shrinkage

    true = target.feature_directions()
    n, m = target.n_features, target.n_hidden
    h = target.hidden(x)
    out = target(x)
    single = single_value * torch.eye(n)

    def fvu(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b) ** 2).sum() / ((b - b.mean(0)) ** 2).sum())

    sae = sae_run.sae
    h_sae, z = sae(h)
    sae_alive = (z > 0).any(0)
    spd = spd_run.spd
    alive = alive_components(spd, x)
    h_spd, out_spd = binary_forward(spd, x)
    return {
        "SAE": {
            "recovery": float(feature_recovery(true, sae.directions()[sae_alive])),
            "chance level": chance_recovery(n, int(sae_alive.sum()), m),
            "matched recovery": matched_recovery(true, sae_writes(sae, target.hidden(single))),
            "input recovery": float("nan"),
            "hidden FVU": fvu(h_sae, h),
            "output FVU": fvu(target.readout(h_sae), out),
            "shrinkage": sae_shrinkage(sae, true),
            "active per input": float((z > 0).float().sum(-1).mean()),
            "live components": float(sae_alive.sum()),
            "parameters": float(sae_run.n_params),
            "steps x batch": float(sae_run.steps * sae_run.batch),
            "train seconds": float(sae_run.seconds),
        },
        "SPD": {
            "recovery": float(feature_recovery(true, write_directions(spd)[alive])),
            "chance level": chance_recovery(n, int(alive.sum()), m),
            "matched recovery": matched_recovery(true, spd_writes(spd, single)),
            "input recovery": float(feature_recovery(torch.eye(n), read_directions(spd)[alive])),
            "hidden FVU": fvu(h_spd, h),
            "output FVU": fvu(out_spd, out),
            "shrinkage": spd_shrinkage(spd, n),
            "active per input": active_per_input(spd, x),
            "live components": float(alive.sum()),
            "parameters": float(spd_run.n_params),
            "steps x batch": float(spd_run.steps * spd_run.batch),
            "train seconds": float(spd_run.seconds),
        },
    }


def format_comparison(table: dict[str, dict[str, float]], true_active: float) -> str:
    """A fixed-width text table of `compare_methods`' output."""
    rows = list(next(iter(table.values())))
    lines = [f"{'metric':<18}" + "".join(f"{m:>10}" for m in table)]
    for r in rows:
        cells = []
        for m in table:
            v = table[m][r]
            cells.append(f"{'—':>10}" if math.isnan(v) else (f"{v:>10.0f}" if r in ("live components", "parameters",
                                                                                    "steps x batch") else f"{v:>10.2f}"))
        lines.append(f"{r:<18}" + "".join(cells))
    lines.append(f"{'(true active features per input: ' + format(true_active, '.2f') + ')'}")
    return "\n".join(lines)


def _order_by_feature(dirs: torch.Tensor, true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort directions by the true feature they match best; return (order, matched feature)."""
    cos = (true / true.norm(dim=1, keepdim=True)) @ (dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-8)).T
    best, match = cos.max(0)
    match = torch.where(best > 0.9, match, torch.full_like(match, true.shape[0]))
    order = torch.argsort(match * 10 - best, stable=True)
    return order, match[order]


@torch.no_grad()
def plot_component_view(target: ToyModel, sae, spd: SPDDecomposition, inputs: torch.Tensor, index: int):
    """Component viewer: input `index`'s features, which SAE latents fire, which SPD subcomponents are important.

    Latents and subcomponents are ordered (and labelled) by the true feature they match (cos > 0.9; '?' otherwise).
    """
    import matplotlib.pyplot as plt

    x = inputs[index: index + 1]
    true = target.feature_directions()
    n = target.n_features
    colors = plt.cm.tab10(range(10))
    z = sae.encode(target.hidden(x))[0]
    g = spd.importance(x)[0]
    s_order, s_match = _order_by_feature(sae.directions(), true)
    p_order, p_match = _order_by_feature(write_directions(spd), true)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 2.8), gridspec_kw={"width_ratios": [n, len(s_order), len(p_order)]})
    axes[0].bar(range(n), x[0], color=[colors[i % 10] for i in range(n)])
    axes[0].set_title(f"input {index}: true features", fontsize=9)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_xticks(range(n))
    for ax, vals, order, match, name in ((axes[1], z, s_order, s_match, "SAE latents z"),
                                          (axes[2], g, p_order, p_match, "SPD causal importance g")):
        ax.bar(range(len(order)), vals[order], color=[colors[int(m) % 10] if m < n else "0.6" for m in match])
        ax.set_xticks(range(len(order)), [str(int(m)) if m < n else "?" for m in match], fontsize=7)
        ax.set_xlabel("matched true feature", fontsize=8)
        ax.set_title(f"{name}: {int((vals[order] > 0).sum())} active", fontsize=9)
    axes[2].set_ylim(0, 1.05)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_importance_matrix(spd: SPDDecomposition, inputs: torch.Tensor, true_dirs: torch.Tensor):
    """Causal importances g_c for each input (rows), subcomponents ordered by the true feature they match."""
    import matplotlib.pyplot as plt

    order, match = _order_by_feature(write_directions(spd), true_dirs)
    g = spd.importance(inputs)[:, order]
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(order), 0.9 + 0.4 * len(inputs)))
    im = ax.imshow(g.numpy(), cmap="Greens", vmin=0, vmax=1)
    ax.set_xticks(range(len(order)), [f"{int(c)}→f{int(m)}" if m < true_dirs.shape[0] else f"{int(c)}→?"
                                      for c, m in zip(order, match)], rotation=60, fontsize=7)
    ax.set_yticks(range(len(inputs)), [f"input {i}" for i in range(len(inputs))], fontsize=8)
    ax.set_xlabel("subcomponent → matched true feature (cos > 0.9)")
    ax.set_title("causal importance g_c(x)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def plot_sensitivity(factors: list[float], curves: dict[str, list[float]], ylabel: str = "matched recovery"):
    """A recovery score against a multiplier of each method's sparsity coefficient."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for name, ys in curves.items():
        ax.plot(factors, ys, "o-", label=name)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(factors, [f"×{f:.2g}" for f in factors])
    ax.set_xlabel("sparsity coefficient relative to the chosen one")
    ax.set_ylabel(ylabel)
    ax.set_ylim(min(0.5, min(min(ys) for ys in curves.values()) - 0.05), 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


__all__ = [
    "plot_importance_matrix", "plot_sensitivity",
    "compare_methods", "format_comparison", "stochastic_recon_loss", "spd_shrinkage", "unused_feature_report",
    "write_directions", "read_directions", "spd_writes", "plot_component_view",
    "hard_sigmoid", "leaky_hard_sigmoid", "causal_importance_mask", "SPDDecomposition", "SPDStack", "spd_losses",
    "SPDRun", "train_spds", "train_spd", "alive_components", "binary_forward", "active_per_input",
]
