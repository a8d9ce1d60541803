"""Baselines and controls for the gradient view of notebook 06, and a small data-attribution method.

- `toy_representations`: the multi-task toy's examples seen four ways: their full loss gradients,
  their final residual activation (what the unembedding reads), their output gradient
  delta = softmax - onehot (what the unembedding's gradient multiplies it by), and the predicted
  token. `baseline_table` clusters each and scores it against the truth, with a subsampling spread.
- `factor_report`: for the LM's last-block gradients, how much of the exact similarity
  <delta_t, delta_s> <x_t, x_s> each factor explains on its own.
- `reparametrise`: an exact change of the toy's residual-stream basis (the function is unchanged).
  An orthogonal change leaves every gradient cosine unchanged while coordinate-level views move;
  a rescaling changes the gradient cosines too (why influence methods precondition).
- `attribution_scores`: a TRAK-style kernel on projected training gradients (one model, one
  checkpoint): score(test, train) = g_test^T (Phi^T Phi + lambda I)^-1 g_train.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .gradients import (adjusted_rand_index, angular_similarity, cosine_matrix, cosine_to_angular, offdiag_correlation,
                        per_example_grads, purity, spectral_clusters)

# ------------------------------------------------------------------------------------------ toy baselines


@torch.no_grad()
def final_residual(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The activation the toy's unembedding reads (the last position's residual stream): [N, d_model]."""
    got = {}
    handle = model.unembed.register_forward_hook(lambda _m, args, _o: got.setdefault("r", args[0].detach()))
    try:
        model(tokens)
    finally:
        handle.remove()
    return got["r"]


@torch.no_grad()
def output_gradients(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """delta = d loss / d logits = softmax(logits) - onehot(target) for every example: [N, n_classes]."""
    logits = model(tokens)
    return logits.softmax(-1) - F.one_hot(targets, logits.shape[-1]).float()


@dataclass
class Representations:
    """The same examples as similarity matrices (angular) and as a fixed labeling (predicted token)."""

    similarities: dict[str, torch.Tensor]
    predicted: np.ndarray


def toy_representations(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor,
                        G: torch.Tensor | None = None) -> Representations:
    """Gradient (all parameters), activation (final residual), output gradient delta, and the predicted token."""
    G = per_example_grads(model, tokens, targets) if G is None else G
    with torch.no_grad():
        pred = model(tokens).argmax(-1).numpy()
    sims = {
        "gradient (all parameters)": angular_similarity(G),
        "activation (final residual)": angular_similarity(final_residual(model, tokens)),
        "output gradient delta": angular_similarity(output_gradients(model, tokens, targets)),
    }
    return Representations(sims, pred)


@dataclass
class BaselineRow:
    name: str
    ari_task: tuple[float, float]          # (mean, std over subsamples): k = n_tasks clusters vs the tasks
    ari_fine: tuple[float, float]          # k = n_fine clusters vs (task, answer)
    purity_fine: tuple[float, float]       # task purity of the n_fine clusters


def _stats(v: list[float]) -> tuple[float, float]:
    return float(np.mean(v)), float(np.std(v))


def baseline_table(reps: Representations, tasks: np.ndarray, fine: np.ndarray, n_tasks: int, n_fine: int,
                   n_subsamples: int = 8, fraction: float = 0.8, seed: int = 0) -> list[BaselineRow]:
    """Cluster every representation at k = n_tasks and k = n_fine, on `n_subsamples` random subsets
    (`fraction` of the examples each), and score the clusters; the predicted token is used as it is."""
    n = len(tasks)
    if len(fine) != n or any(S.shape != (n, n) for S in reps.similarities.values()) or len(reps.predicted) != n:
        raise ValueError(f"tasks, fine labels, predicted tokens and [N, N] similarities must all cover the same N={n} examples")
    rng = np.random.default_rng(seed)
    subsets = [np.sort(rng.choice(n, int(fraction * n), replace=False)) for _ in range(n_subsamples)]
    rows = []
    for name, S in reps.similarities.items():
        a3, af, pf = [], [], []
        for idx in subsets:
            sub = S[idx][:, idx]
            lab3 = spectral_clusters(sub, n_tasks, seed=seed)
            labf = spectral_clusters(sub, n_fine, seed=seed)
            a3.append(adjusted_rand_index(lab3, tasks[idx]))
            af.append(adjusted_rand_index(labf, fine[idx]))
            pf.append(purity(labf, tasks[idx]))
        rows.append(BaselineRow(name, _stats(a3), _stats(af), _stats(pf)))
    p = reps.predicted
    a3 = [adjusted_rand_index(p[idx], tasks[idx]) for idx in subsets]
    af = [adjusted_rand_index(p[idx], fine[idx]) for idx in subsets]
    pf = [purity(p[idx], tasks[idx]) for idx in subsets]
    rows.append(BaselineRow("predicted token (no clustering)", _stats(a3), _stats(af), _stats(pf)))
    return rows


def format_baselines(rows: list[BaselineRow], n_tasks: int, n_fine: int) -> str:
    """A fixed-width table of `baseline_table` (mean ± std over subsamples)."""
    task_col, fine_col = f"ARI vs task (k={n_tasks})", f"ARI vs (task, answer) (k={n_fine})"
    head = f"{'representation':<32}{task_col:>22}{fine_col:>32}{'task purity':>16}"
    lines = [head]
    for r in rows:
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in (r.ari_task, r.ari_fine, r.purity_fine)]
        lines.append(f"{r.name:<32}{cells[0]:>22}{cells[1]:>32}{cells[2]:>16}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the LM's two factors


def _normalise(gram: torch.Tensor) -> torch.Tensor:
    d = gram.diagonal().sqrt().clamp_min(1e-30)
    return gram / d[:, None] / d[None, :]


def factor_report(factor_grams: dict[str, tuple[torch.Tensor, torch.Tensor]], n_clusters: int,
                  predicted: np.ndarray, seed: int = 0) -> dict:
    """How much of the exact per-token gradient similarity each factor explains.

    factor_grams[layer] = (<delta_t, delta_s>, <x_t, x_s>) from `gradients.lm_token_gradients`. The exact
    Gram is sum over layers of their elementwise product. Returns: each layer's share of the summed squared
    gradient norm; r^2 of the exact angular similarity with the delta-only, the x-only similarity and
    their product; and ARIs of clusters of each factor against the exact clusters and the predicted token.
    """
    D = sum(d for d, _ in factor_grams.values())
    X = sum(x for _, x in factor_grams.values())
    exact = sum(d * x for d, x in factor_grams.values())
    sq = {name: float((d * x).diagonal().sum()) for name, (d, x) in factor_grams.items()}
    total = sum(sq.values())
    A = {"exact gradient": cosine_to_angular(_normalise(exact).float()),
         "output gradient delta only": cosine_to_angular(_normalise(D).float()),
         "input activation x only": cosine_to_angular(_normalise(X).float())}
    A["product of the two"] = cosine_to_angular((_normalise(D) * _normalise(X)).float())
    labels = {k: spectral_clusters(v, n_clusters, seed=seed) for k, v in A.items()}
    out = {"layer share": {k: v / total for k, v in sq.items()}, "r2": {}, "ari vs exact clusters": {},
           "ari vs predicted token": {}}
    for k in A:
        if k != "exact gradient":
            out["r2"][k] = offdiag_correlation(A["exact gradient"], A[k]) ** 2
            out["ari vs exact clusters"][k] = adjusted_rand_index(labels[k], labels["exact gradient"])
        out["ari vs predicted token"][k] = adjusted_rand_index(labels[k], predicted)
    return out


# ------------------------------------------------------------------------------------------ reparametrisation


def reparametrise(model: nn.Module, M: torch.Tensor) -> nn.Module:
    """The same function with the residual stream expressed in another basis: r' = M r (M invertible, [d, d]).

    Writers into the residual stream (embeddings, attention output, MLP output and its bias) are
    multiplied by M on the left; readers (query, key, value, MLP input, unembedding) by M^-1 on the
    right. The toy has no LayerNorm, so logits are unchanged for every M. For an orthogonal M the map
    from old to new parameters is orthogonal, so per-example gradient cosines are unchanged too.
    """
    import copy

    d = model.unembed.in_features
    if M.shape != (d, d):
        raise ValueError(f"M must be a [{d}, {d}] matrix (the residual stream's width), got {tuple(M.shape)}")
    M = M.to(torch.float32)
    Minv = torch.linalg.inv(M)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("embed", "pos", "o", "mlp_out"):
            getattr(new, name).weight.copy_(M @ getattr(model, name).weight)
        new.mlp_out.bias.copy_(M @ model.mlp_out.bias)
        for name in ("q", "k", "v", "mlp_in", "unembed"):
            getattr(new, name).weight.copy_(getattr(model, name).weight @ Minv)
    return new


def random_rotation(d: int, seed: int = 0) -> torch.Tensor:
    """A random orthogonal [d, d] matrix (QR of a Gaussian, signs fixed)."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def random_rescaling(d: int, spread: float = 10.0, seed: int = 0) -> torch.Tensor:
    """A diagonal [d, d] matrix with log-uniform scales in [1/spread, spread]."""
    g = torch.Generator().manual_seed(seed)
    return torch.diag(spread ** (2 * torch.rand(d, generator=g) - 1))


def best_single_coordinate(acts: torch.Tensor, labels: np.ndarray) -> tuple[int, float]:
    """A coordinate-level view: the residual coordinate whose value alone best predicts the label
    (nearest class mean on that one number); returns (coordinate, accuracy)."""
    a = acts.double().numpy()
    classes = np.unique(labels)
    means = np.stack([a[labels == c].mean(0) for c in classes])             # [n_classes, d]
    pred = classes[np.abs(a[None] - means[:, None]).argmin(0)]              # [N, d]
    acc = (pred == labels[:, None]).mean(0)
    j = int(acc.argmax())
    return j, float(acc[j])


@dataclass
class ReparamReport:
    name: str
    max_logit_change: float
    max_cosine_change: float
    similarity_correlation: float
    ari_vs_original_clusters: float
    coordinate: int
    coordinate_accuracy: float


def reparam_report(model: nn.Module, M: torch.Tensor, name: str, tokens: torch.Tensor, targets: torch.Tensor,
                   tasks: np.ndarray, n_clusters: int, labels: np.ndarray, S: torch.Tensor) -> ReparamReport:
    """What a change of residual basis M does to the function, the gradient view and a coordinate view.

    `labels`, `S`: the original gradient clusters and angular similarity of the same examples.
    """
    new = reparametrise(model, M)
    with torch.no_grad():
        dlogit = float((new(tokens) - model(tokens)).abs().max())
    C_new = cosine_matrix(per_example_grads(new, tokens, targets))
    C_old = cosine_matrix(per_example_grads(model, tokens, targets))
    S_new = cosine_to_angular(C_new)
    lab_new = spectral_clusters(S_new, n_clusters, seed=0)
    cos_change = float((C_new - C_old).abs().max())
    j, acc = best_single_coordinate(final_residual(new, tokens), tasks)
    return ReparamReport(name, dlogit, cos_change, offdiag_correlation(S, S_new),
                         adjusted_rand_index(lab_new, labels), j, acc)


# ------------------------------------------------------------------------------------------ data attribution


def attribution_scores(phi_train: torch.Tensor, phi_test: torch.Tensor, damping: float = 1e-3) -> torch.Tensor:
    """TRAK-style scores [n_test, n_train]: phi_test (Phi^T Phi + lambda I)^-1 Phi^T, with Phi the projected
    training gradients [n_train, k] and lambda = `damping` times the mean eigenvalue of Phi^T Phi."""
    if phi_train.ndim != 2 or phi_test.ndim != 2 or phi_train.shape[1] != phi_test.shape[1]:
        raise ValueError(f"phi_train [n_train, k] and phi_test [n_test, k] must share k, got {tuple(phi_train.shape)} "
                         f"and {tuple(phi_test.shape)}")
    Phi = phi_train.double()
    K = Phi.T @ Phi
    lam = damping * float(K.diagonal().mean())
    Kinv_phi = torch.linalg.solve(K + lam * torch.eye(K.shape[0], dtype=K.dtype), Phi.T)   # [k, n_train]
    return (phi_test.double() @ Kinv_phi).float()


def top_influencers_agreement(scores: torch.Tensor, k: int, same: dict[str, torch.Tensor],
                              n_boot: int = 200, seed: int = 0) -> dict[str, tuple[float, float, float, float]]:
    """For each test example, the share of its k top-scoring training examples that share a property.

    same[name] is a bool [n_test, n_train] matrix (e.g. "same task"). Returns, per property,
    (mean share, bootstrap 2.5%, 97.5% over test examples, chance = mean of same[name]).
    """
    top = scores.topk(k, dim=1).indices                                   # [n_test, k]
    rng = np.random.default_rng(seed)
    out = {}
    for name, m in same.items():
        share = m.gather(1, top).float().mean(1).numpy()
        boots = [share[rng.integers(0, len(share), len(share))].mean() for _ in range(n_boot)]
        out[name] = (float(share.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)),
                     float(m.float().mean()))
    return out


def input_overlap(test_tokens: torch.Tensor, train_tokens: torch.Tensor) -> float:
    """Fraction of test inputs (rows) that also occur, token for token, in the training set."""
    train = {tuple(r) for r in train_tokens.tolist()}
    return float(np.mean([tuple(r) in train for r in test_tokens.tolist()]))


__all__ = [
    "final_residual", "output_gradients", "Representations", "toy_representations", "BaselineRow", "baseline_table",
    "format_baselines", "factor_report", "reparametrise", "random_rotation", "random_rescaling",
    "best_single_coordinate", "ReparamReport", "reparam_report", "attribution_scores", "top_influencers_agreement",
    "input_overlap",
]
