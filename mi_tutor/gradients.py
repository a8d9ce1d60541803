"""Looking from the data side: cluster examples by their loss gradients, and make it cheap.

The recipe of Michaud et al. 2023 ("The Quantization Model of Neural Scaling", QDG):
take each example's loss gradient w.r.t. the parameters, normalise it, compare examples by
angular similarity ``1 - arccos(cos)/pi``, and cluster with spectral clustering.

Exact per-example gradients cost one parameter vector per example (`per_example_grads`,
with ``torch.func``). Two ways to make them cheap:

- a dense random (Johnson-Lindenstrauss) projection to k dimensions, as in TRAK
  (Park et al. 2023): `random_projection`;
- a per-layer Kronecker-structured projection, as in LoGra (Choe et al. 2024): a linear
  layer's per-example gradient is ``sum_t delta_t x_t^T`` (output gradient times input), so
  ``P_out G P_in^T = sum_t (P_out delta_t)(P_in x_t)^T`` can be computed from the layer's
  inputs and output gradients of one ordinary batched backward pass, without ever forming a
  per-example gradient: `LinearCapture` + `kronecker_project`.

For a language model, `lm_token_gradients` applies the Kronecker trick to the linear layers
of the *last* block whose output at position t reaches only the loss at position t (the
attention output projection and the MLP), where one backward pass gives every token's exact
gradient.
"""
from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------
# Exact per-example gradients (torch.func)
# ------------------------------------------------------------------------------------------


def per_example_grads(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 256,
                      params: Sequence[str] | None = None) -> torch.Tensor:
    """Every example's cross-entropy gradient w.r.t. the parameters, flattened: [N, n_params].

    Uses ``vmap(grad(loss))`` over examples with ``torch.func.functional_call``; `chunk`
    examples at a time bound the working memory. `params` restricts to some parameter names.
    """
    from torch.func import functional_call, grad, vmap

    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) must have the same length")
    named = {k: v.detach() for k, v in model.named_parameters() if params is None or k in params}
    if not named:
        raise ValueError(f"no parameters selected; the model has {[k for k, _ in model.named_parameters()]}")

    def loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, p, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    out = []
    for i in range(0, len(inputs), chunk):
        d = g(named, inputs[i:i + chunk], targets[i:i + chunk])
        out.append(torch.cat([d[k].flatten(1) for k in named], dim=1))
    return torch.cat(out)


def n_bytes(*tensors: torch.Tensor) -> int:
    """Bytes held by tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


# ------------------------------------------------------------------------------------------
# Similarity and clustering
# ------------------------------------------------------------------------------------------


def cosine_matrix(G: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of rows of G [N, D] -> [N, N]."""
    if G.ndim != 2:
        raise ValueError(f"G must be [n_examples, dim], got shape {tuple(G.shape)}")
    Gn = G / G.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return Gn @ Gn.T


def angular_similarity(G: torch.Tensor) -> torch.Tensor:
    """Michaud et al.'s affinity: 1 - arccos(cos)/pi, in [0, 1] (1 = same direction). G [N, D] -> [N, N]."""
    C = cosine_matrix(G).clamp(-1.0, 1.0)
    return 1.0 - torch.arccos(C) / math.pi


def spectral_clusters(S: torch.Tensor | np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering (scikit-learn) of a precomputed affinity matrix [N, N] -> labels [N]."""
    from sklearn.cluster import SpectralClustering

    A = S.detach().double().numpy() if isinstance(S, torch.Tensor) else np.asarray(S, float)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"S must be a square affinity matrix, got shape {A.shape}")
    A = np.clip((A + A.T) / 2, 0.0, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                                assign_labels="cluster_qr")
        return sc.fit_predict(A)


def adjusted_rand_index(labels_a, labels_b) -> float:
    """Adjusted Rand index of two labelings (1 = same partition, ~0 = chance): scikit-learn's `adjusted_rand_score`."""
    from sklearn.metrics import adjusted_rand_score

    a = np.asarray(labels_a).ravel()
    b = np.asarray(labels_b).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the two labelings must have the same length, got {a.shape} and {b.shape}")
    return float(adjusted_rand_score(a, b))


def purity(labels, truth) -> float:
    """Fraction of examples whose cluster's majority true label is their own (1 = every cluster is pure)."""
    labels, truth = np.asarray(labels), np.asarray(truth)
    _, t = np.unique(truth, return_inverse=True)
    return float(sum(np.bincount(t[labels == c]).max() for c in np.unique(labels)) / len(t))


def shuffled_purity(labels, truth, n: int = 50, seed: int = 0) -> np.ndarray:
    """Purity of `n` random relabelings with the same cluster sizes: the chance level of `purity`."""
    rng = np.random.default_rng(seed)
    return np.array([purity(rng.permutation(np.asarray(labels)), truth) for _ in range(n)])


def offdiag_correlation(S1: torch.Tensor, S2: torch.Tensor) -> float:
    """Pearson correlation of the off-diagonal entries of two similarity matrices."""
    if S1.shape != S2.shape:
        raise ValueError(f"similarity matrices differ in shape: {tuple(S1.shape)} vs {tuple(S2.shape)}")
    iu = torch.triu_indices(S1.shape[0], S1.shape[0], 1)
    a, b = S1[iu[0], iu[1]].double(), S2[iu[0], iu[1]].double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-30))


# ------------------------------------------------------------------------------------------
# Cheap 1: dense random projection (TRAK-style)
# ------------------------------------------------------------------------------------------


def random_projection(G: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Project rows of G [N, D] to k dims with a Gaussian matrix R [D, k] / sqrt(k) (R drawn from `seed`).

    E[<Gi R, Gj R>] = <Gi, Gj>: inner products, hence cosines, are kept up to O(1/sqrt(k)) noise.
    """
    if k < 1:
        raise ValueError(f"k must be a positive number of dimensions, got {k}")
    gen = torch.Generator().manual_seed(seed)
    R = torch.randn(G.shape[1], k, generator=gen, dtype=G.dtype)
    return G @ R / math.sqrt(k)


@dataclass
class SweepRow:
    """One projection size: how well it keeps similarities and clusters."""

    k: int
    correlation: float
    ari_vs_exact: float
    ari_vs_truth: float


def projection_sweep(G: torch.Tensor, ks: Sequence[int], n_clusters: int, exact_labels: np.ndarray,
                     truth: np.ndarray | None = None, seed: int = 0) -> list[SweepRow]:
    """For each k: correlation of projected vs exact angular similarity, ARI vs the exact clusters and vs truth."""
    S = angular_similarity(G)
    rows = []
    for k in ks:
        Sk = angular_similarity(random_projection(G, k, seed=seed))
        lab = spectral_clusters(Sk, n_clusters, seed=seed)
        rows.append(SweepRow(k, offdiag_correlation(S, Sk), adjusted_rand_index(lab, exact_labels),
                             adjusted_rand_index(lab, truth) if truth is not None else float("nan")))
    return rows


# ------------------------------------------------------------------------------------------
# Cheap 2: per-layer Kronecker projection (LoGra-style) from one batched backward pass
# ------------------------------------------------------------------------------------------


def kronecker_project(xs: torch.Tensor, deltas: torch.Tensor, P_in: torch.Tensor, P_out: torch.Tensor) -> torch.Tensor:
    """Projected per-example gradient of one linear layer, never forming the gradient.

    Args:
        xs: layer inputs [N, T, d_in] (T positions per example);
        deltas: loss gradients w.r.t. the layer outputs [N, T, d_out];
        P_in [k_in, d_in], P_out [k_out, d_out]: random projections.
    Returns:
        [N, k_out * k_in]: vec(P_out G_n P_in^T), where G_n = sum_t delta_nt x_nt^T is example n's gradient.
    """
    if xs.ndim != 3 or deltas.ndim != 3 or xs.shape[:2] != deltas.shape[:2]:
        raise ValueError(f"xs [N, T, d_in] and deltas [N, T, d_out] must agree on N and T, "
                         f"got {tuple(xs.shape)} and {tuple(deltas.shape)}")
    a = xs @ P_in.T          # [N, T, k_in]
    d = deltas @ P_out.T     # [N, T, k_out]
    return torch.einsum("nto,nti->noi", d, a).flatten(1)


def rank_one_gram(deltas: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """Exact Gram matrix of per-token gradients of one linear layer, never forming them.

    Token t's gradient is the outer product delta_t x_t^T, so <delta_t x_t^T, delta_s x_s^T> =
    <delta_t, delta_s> <x_t, x_s>: the Gram is (Delta Delta^T) * (X X^T), elementwise.
    deltas [N, d_out], xs [N, d_in] -> [N, N].
    """
    if deltas.ndim != 2 or xs.ndim != 2 or len(deltas) != len(xs):
        raise ValueError(f"deltas [N, d_out] and xs [N, d_in] must agree on N, got {tuple(deltas.shape)} and {tuple(xs.shape)}")
    return (deltas @ deltas.T) * (xs @ xs.T)


def gaussian(rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """A [rows, cols] Gaussian projection scaled by 1/sqrt(rows) (keeps inner products in expectation)."""
    return torch.randn(rows, cols, generator=gen) / math.sqrt(rows)


class LinearCapture:
    """Record the inputs and output gradients of chosen linear-like modules during forward/backward.

    A module's bias is handled by appending a constant 1 to its input. Use as a context manager;
    after ``loss.backward()``, `xs[name]` is [B, T, d_in(+1)] and `deltas[name]` is [B, T, d_out].
    `positions` (a [B, T] bool mask or None) keeps only some positions' contributions (others are zeroed).
    """

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.xs: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "LinearCapture":
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_hook(self._hook(name, getattr(mod, "bias", None) is not None)))
        return self

    def _hook(self, name: str, has_bias: bool):
        def fwd(_mod, args, out):
            x = args[0].detach()
            if x.ndim == 2:
                x = x.unsqueeze(1)
            if has_bias:
                x = torch.cat([x, torch.ones(*x.shape[:-1], 1)], dim=-1)
            self.xs[name] = x
            if out.requires_grad:
                def bwd(g):
                    self.deltas[name] = (g.unsqueeze(1) if g.ndim == 2 else g).detach()
                out.register_hook(bwd)
        return fwd

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def kronecker_grads(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, k_side: int = 16,
                    seed: int = 0, modules: dict[str, nn.Module] | None = None) -> torch.Tensor:
    """LoGra-style projected per-example gradients of every linear layer: [N, sum of k_out * k_in].

    One batched forward/backward of the *summed* loss: examples do not interact, so each example's
    output gradients are its own. Each layer gets P_out [min(k_side, d_out), d_out] and
    P_in [min(k_side, d_in), d_in]; the concatenation approximates the full gradient's inner products.
    """
    modules = modules or linear_modules(model)
    needs = [p for m in modules.values() for p in m.parameters(recurse=False)]
    old = [p.requires_grad for p in needs]
    for p in needs:
        p.requires_grad_(True)
    try:
        with LinearCapture(modules) as cap, torch.enable_grad():
            loss = F.cross_entropy(model(inputs), targets, reduction="sum")
            loss.backward(inputs=needs)
    finally:
        for p, r in zip(needs, old):
            p.grad = None
            p.requires_grad_(r)
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for name in modules:
        x, d = cap.xs[name], cap.deltas[name]
        P_in = gaussian(min(k_side, x.shape[-1]), x.shape[-1], gen)
        P_out = gaussian(min(k_side, d.shape[-1]), d.shape[-1], gen)
        parts.append(kronecker_project(x, d, P_in, P_out))
    return torch.cat(parts, dim=1)


@dataclass
class CostReport:
    """Time and memory of the exact and the cheap path, measured in one run."""

    n_examples: int
    n_params: int
    k: int
    exact_seconds: float
    cheap_seconds: float
    exact_bytes: int
    cheap_bytes: int
    correlation: float
    ari_exact_vs_cheap: float

    @property
    def time_ratio(self) -> float:
        return self.exact_seconds / max(self.cheap_seconds, 1e-9)

    @property
    def memory_ratio(self) -> float:
        return self.exact_bytes / max(self.cheap_bytes, 1)


def compare_exact_and_cheap(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, n_clusters: int,
                            k_side: int = 16, seed: int = 0, repeats: int = 3) -> CostReport:
    """Time both paths (best of `repeats`), count the bytes of the gradient representation they hold.

    Exact: vmap(grad) per-example gradients [N, P] + their angular similarity.
    Cheap: Kronecker-projected gradients [N, k] from one backward pass + their angular similarity.
    The exact path's bytes are the [N, P] matrix; the cheap path's are the captured layer
    inputs/output gradients plus the projected [N, k] matrix (its whole working set).
    """
    best_e = best_c = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        G = per_example_grads(model, inputs, targets)
        S = angular_similarity(G)
        best_e = min(best_e, time.perf_counter() - t0)
        t0 = time.perf_counter()
        K = kronecker_grads(model, inputs, targets, k_side=k_side, seed=seed)
        Sk = angular_similarity(K)
        best_c = min(best_c, time.perf_counter() - t0)
    mods = linear_modules(model)
    with LinearCapture(mods) as cap, torch.enable_grad():
        out = model(inputs)
    captured = sum(n_bytes(x) for x in cap.xs.values()) + sum(
        inputs.shape[0] * x.shape[1] * m.out_features * 4 for x, m in zip(cap.xs.values(), mods.values()))
    del out
    lab_e = spectral_clusters(S, n_clusters, seed=seed)
    lab_c = spectral_clusters(Sk, n_clusters, seed=seed)
    return CostReport(len(inputs), G.shape[1], K.shape[1], best_e, best_c, n_bytes(G), captured + n_bytes(K),
                      offdiag_correlation(S, Sk), adjusted_rand_index(lab_e, lab_c))


# ------------------------------------------------------------------------------------------
# Language model: per-token gradients of the last block, Kronecker-projected
# ------------------------------------------------------------------------------------------

#: linear layers of a block whose output at position t reaches only position t's loss, when in the LAST block
LOCAL_LINEAR_RE = re.compile(r"(o_proj|gate_proj|up_proj|down_proj|attn\.c_proj|attn\.o\.|mlp\.c_fc|mlp\.c_proj)")


def last_block_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The last block's attention-output and MLP linear layers (SmolLM2/Llama or GPT-2 naming).

    In the last block, these layers' outputs at position t feed only the residual stream at t and
    then the unembedding, so position t's output gradient comes from token t's loss alone: one
    backward pass of the summed loss gives every token's *exact* gradient for these weights.
    (Query/key/value projections mix positions through attention, so they are excluded.)
    """
    n_layers = model.cfg.n_layers
    pat = re.compile(rf"(^|\.)blocks\.{n_layers - 1}\.")
    found = {}
    for name, mod in model.named_modules():
        is_linear = isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"  # GPT-2 uses Conv1D
        if is_linear and pat.search(name) and LOCAL_LINEAR_RE.search(name):
            found[name] = mod
    if not found:
        raise RuntimeError("no attention-output/MLP linear layers found in the last block; "
                           "this helper knows Llama-style (o_proj, gate/up/down_proj) and GPT-2 (c_proj, c_fc) names")
    return found


def short_name(name: str) -> str:
    """'blocks.29._original_component.mlp._original_component.down_proj._original_component' -> 'mlp.down_proj'."""
    parts = [p for p in name.split(".") if p != "_original_component"]
    return ".".join(parts[-2:])


@dataclass
class TokenGradients:
    """Per-token projected gradients of an LM, and where each token sits in the corpus."""

    grads: torch.Tensor              # [N, k] Kronecker-projected gradients
    exact_sim: torch.Tensor          # [N, N] exact cosine over the same parameters (rank-1 trick)
    token_ids: torch.Tensor          # [N] the predicted token
    losses: torch.Tensor             # [N] its loss (nats)
    seq: torch.Tensor                # [N] which sequence
    pos: torch.Tensor                # [N] position of the predicted token in its sequence
    tokens: torch.Tensor             # [n_seq, T] all sequences
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (d_out, d_in)
    n_params: int = 0
    seconds: float = 0.0
    #: per layer, the two factors of the exact Gram: (<delta_t, delta_s>, <x_t, x_s>), each [N, N] float64
    factor_grams: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def load_corpus_06() -> str:
    """The notebook-06 corpus: Python standard-library docstrings and source shipped in mi_tutor/data/corpus_06/."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "corpus_06" / "stdlib_docs.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall mi_tutor (the file ships as package data)")
    return path.read_text(encoding="utf-8").split("\n", 2)[2]   # drop the two-line licence header


def token_windows(model, texts: Sequence[str], length: int = 64) -> torch.Tensor:
    """Tokenize texts (BOS first) and cut into non-overlapping windows of `length` tokens [n, length]."""
    ids: list[int] = []
    for t in texts:
        ids.extend(model.to_tokens(t, prepend_bos=False)[0].tolist())
    bos = model.to_tokens("")[0, :1].tolist() if model.to_tokens("").shape[1] else []
    step = length - len(bos)
    wins = [bos + ids[i:i + step] for i in range(0, len(ids) - step + 1, step)]
    if not wins:
        raise ValueError(f"the texts give {len(ids)} tokens, fewer than one window of {length}")
    return torch.tensor(wins, dtype=torch.long)


def lm_token_gradients(model, tokens: torch.Tensor, max_loss: float = 0.5, max_tokens: int = 300,
                       k_side: int = 16, seed: int = 0, batch: int = 8) -> TokenGradients:
    """Kronecker-projected per-token loss gradients for the last block's local linear layers.

    Tokens whose next-token loss is below `max_loss` are kept (at most `max_tokens`, the first ones in
    corpus order). Also returns the exact cosine similarity over the same parameters, computed via the
    rank-1 structure: token t's gradient of one layer is delta_t x_t^T, so
    <G_t, G_s> = sum over layers of <delta_t, delta_s> <x_t, x_s>, with no per-token gradient formed.
    """
    t0 = time.perf_counter()
    modules = last_block_linears(model)
    params = [p for m in modules.values() for p in m.parameters(recurse=False)]
    gen = torch.Generator().manual_seed(seed)
    xs: dict[str, list] = {n: [] for n in modules}
    ds: dict[str, list] = {n: [] for n in modules}
    keep_tok, keep_loss, keep_seq, keep_pos = [], [], [], []
    for p in params:
        p.requires_grad_(True)
    try:
        for b0 in range(0, len(tokens), batch):
            tok = tokens[b0:b0 + batch]
            with LinearCapture(modules) as cap, torch.enable_grad():
                logits = model(tok)
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tok[:, 1:].flatten(), reduction="none").view(
                    tok.shape[0], -1)
                loss.sum().backward(inputs=params)
            mask = loss.detach() < max_loss              # [b, T-1]: position t predicts token t+1
            bi, ti = mask.nonzero(as_tuple=True)
            for n in modules:
                xs[n].append(cap.xs[n][bi, ti])
                ds[n].append(cap.deltas[n][bi, ti])
            keep_tok.append(tok[bi, ti + 1])
            keep_loss.append(loss.detach()[bi, ti])
            keep_seq.append(bi + b0)
            keep_pos.append(ti + 1)
            if sum(len(k) for k in keep_tok) >= max_tokens:
                break
    finally:
        for p in params:
            p.grad = None
            p.requires_grad_(False)
    N = min(max_tokens, sum(len(k) for k in keep_tok))
    cat = {n: (torch.cat(xs[n])[:N], torch.cat(ds[n])[:N]) for n in modules}
    parts, gram = [], torch.zeros(N, N, dtype=torch.float64)
    layers, factors = {}, {}
    for n, (x, d) in cat.items():
        layers[short_name(n)] = (d.shape[-1], x.shape[-1])
        factors[short_name(n)] = (d.double() @ d.double().T, x.double() @ x.double().T)
        gram += rank_one_gram(d.double(), x.double())
        P_in = gaussian(min(k_side, x.shape[-1]), x.shape[-1], gen)
        P_out = gaussian(min(k_side, d.shape[-1]), d.shape[-1], gen)
        parts.append(kronecker_project(x.unsqueeze(1), d.unsqueeze(1), P_in, P_out))
    norms = gram.diagonal().sqrt().clamp_min(1e-30)
    exact = (gram / norms[:, None] / norms[None, :]).float()
    n_params = sum(p.numel() for p in params)
    return TokenGradients(torch.cat(parts, 1), exact, torch.cat(keep_tok)[:N], torch.cat(keep_loss)[:N],
                          torch.cat(keep_seq)[:N], torch.cat(keep_pos)[:N], tokens, layers, n_params,
                          time.perf_counter() - t0, factors)


def cosine_to_angular(C: torch.Tensor) -> torch.Tensor:
    """1 - arccos(C)/pi of a cosine matrix."""
    return 1.0 - torch.arccos(C.clamp(-1.0, 1.0)) / math.pi


# ------------------------------------------------------------------------------------------
# Showing clusters
# ------------------------------------------------------------------------------------------


def token_in_context(model, tg: TokenGradients, i: int, before: int = 8) -> str:
    """'...context [[token]]' for example i of a TokenGradients (newlines shown as ↵)."""
    s, p = int(tg.seq[i]), int(tg.pos[i])
    ctx = model.to_string(tg.tokens[s, max(1, p - before):p])
    tok = model.to_string(tg.tokens[s, p:p + 1])
    return (ctx + f"[[{tok}]]").replace("\n", "↵")


def cluster_table(labels: np.ndarray, S: torch.Tensor, describe: Callable[[int], str], per_cluster: int = 5,
                  order: str = "size") -> list[dict]:
    """For each cluster: size, mean within-cluster similarity, most central examples (described), sorted by size."""
    rows = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        sub = S[idx][:, idx]
        central = idx[np.argsort(-sub.mean(1).numpy())][:per_cluster]
        rows.append({"cluster": int(c), "size": len(idx), "cohesion": float(sub.mean()),
                     "examples": [describe(int(i)) for i in central]})
    rows.sort(key=lambda r: (-r["size"], r["cluster"]))
    return rows


def nearest_clusters(labels: np.ndarray, S: torch.Tensor, cluster: int, n: int = 3) -> list[tuple[int, float]]:
    """The `n` clusters with the highest mean similarity to `cluster` (excluding itself)."""
    idx = np.flatnonzero(labels == cluster)
    out = []
    for c in np.unique(labels):
        if c == cluster:
            continue
        jdx = np.flatnonzero(labels == c)
        out.append((int(c), float(S[idx][:, jdx].mean())))
    out.sort(key=lambda t: -t[1])
    return out[:n]


def plot_similarity(S: torch.Tensor, labels: np.ndarray, title: str = "", ax=None, truth: np.ndarray | None = None):
    """Heatmap of a similarity matrix with examples sorted by cluster (and by truth within)."""
    import matplotlib.pyplot as plt

    key = np.lexsort(((truth if truth is not None else labels), labels))
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
    im = ax.imshow(S[key][:, key].numpy(), cmap="viridis", interpolation="nearest")
    bounds = np.flatnonzero(np.diff(labels[key])) + 0.5
    for b in bounds:
        ax.axhline(b, color="w", lw=0.6)
        ax.axvline(b, color="w", lw=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax.figure


def plot_sweep(rows: list[SweepRow], title: str = "random projection: how small can k be?",
               exact_vs_truth: float | None = None):
    """Correlation with exact similarity and clustering agreement (ARI) against k; `exact_vs_truth` (the exact
    gradients' ARI against the truth) is drawn as a horizontal line."""
    import matplotlib.pyplot as plt

    ks = [r.k for r in rows]
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    ax.plot(ks, [r.correlation for r in rows], "o-", label="corr(projected, exact similarity)")
    ax.plot(ks, [r.ari_vs_exact for r in rows], "s-", label="ARI vs exact clusters")
    ax.plot(ks, [r.ari_vs_truth for r in rows], "^--", label="ARI vs ground truth")
    if exact_vs_truth is not None:
        ax.axhline(exact_vs_truth, color="0.4", ls=":", label="exact gradients: ARI vs ground truth")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("projection size k")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_cluster(labels: np.ndarray, S: torch.Tensor, describe: Callable[[int], str], cluster: int,
                 per_cluster: int = 8, loss: torch.Tensor | None = None):
    """A cluster browser page as a figure: its most central examples in context, and its nearest clusters."""
    import matplotlib.pyplot as plt

    idx = np.flatnonzero(labels == cluster)
    if idx.size == 0:
        raise ValueError(f"no cluster {cluster}; clusters are {sorted(set(labels.tolist()))}")
    sub = S[idx][:, idx]
    central = idx[np.argsort(-sub.mean(1).numpy())][:per_cluster]
    near = nearest_clusters(labels, S, cluster)
    lines = [f"cluster {cluster}: {idx.size} examples, mean within-cluster similarity {float(sub.mean()):.3f}", ""]
    for i in central:
        extra = f"  (loss {float(loss[i]):.3f})" if loss is not None else ""
        lines.append(f"  {describe(int(i))}{extra}")
    lines += ["", "nearest clusters (mean similarity) and one example each:"]
    for c, s in near:
        j = np.flatnonzero(labels == c)
        jc = j[np.argmax(S[j][:, j].mean(1).numpy())]
        lines.append(f"  cluster {c} ({s:.3f}): {describe(int(jc))}")
    fig = plt.figure(figsize=(10, 0.26 * len(lines) + 0.4))
    fig.text(0.01, 0.98, "\n".join(lines), family="monospace", fontsize=10, va="top")
    return fig


__all__ = [
    "per_example_grads", "n_bytes", "cosine_matrix", "angular_similarity", "spectral_clusters",
    "adjusted_rand_index", "purity", "shuffled_purity", "offdiag_correlation", "random_projection", "SweepRow",
    "projection_sweep",
    "kronecker_project", "rank_one_gram", "gaussian", "LinearCapture", "linear_modules", "kronecker_grads", "CostReport",
    "compare_exact_and_cheap", "last_block_linears", "short_name", "TokenGradients", "load_corpus_06", "token_windows",
    "lm_token_gradients", "cosine_to_angular", "token_in_context", "cluster_table", "nearest_clusters",
    "plot_similarity", "plot_sweep", "plot_cluster",
]
