"""Successor heads, four ways: weights, decomposition, ablation and attribution.

A successor head (Gould, Ong, Ogden & Conmy 2023, "Successor Heads", arXiv 2312.09230)
maps an ordinal token to its successor: Monday -> Tuesday, 3 -> 4. Ameisen & Batson
("Investigating successor heads", Circuits Updates, Sept 2024) looked for such heads with
four methods and found that the methods disagree. This module implements the four methods
for ANY TransformerBridge (a toy model trained here, SmolLM2, GPT-2), plus the comparison
and a path-patching test of why a head can matter without having a successor OV circuit.

1. **Weights.** `effective_ov`: the residual stream after layer 0 of each ordinal token
   (on its own, so layer 0 sees only that token), through a head's OV circuit and the
   unembedding: a [n, n] logit table per head. `successor_scores`: the fraction of ordinal
   tokens whose top logit, among their category's tokens, is the true successor.
2. **Decomposition.** `run_ica`: scikit-learn FastICA across all heads' effective OV
   tables; components are labelled by correlation with succession / copying / category
   templates; each head's weight on each component is its score.
3. **Ablation.** `ablation_effects`: mean-ablate each head on successor prompts; the drop
   in the correct successor's log-probability. One forward pass per layer, started at
   that layer from the cached residual stream.
4. **Attribution.** `attribution_effects`: attribution patching from corrupted prompts
   (same category, no succession) into clean ones, per head: 2 forwards + 1 backward.

Then `rank_table`, `rank_correlations`, `disagreements` and `path_patch_effects`.

The toy model (`ToyTask`, `train_toy`) is a 2-layer transformer trained on comma-separated
ordinal lists mixed with distractor text. `interchange_flip_rates` locates where its
succession lives by a decisive intervention that none of the four methods uses.

Head indices are never hard-coded: every head this module names comes from a computation.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .interventions import Metric, attribution_patch_heads, head_outputs, heads_replaced_hooks, patch_each_head, z_name
from .ordinal import OrdinalTokens, SuccessorPrompts, successor_prompts
from .plots import finish

METHODS = ("weights", "ICA", "ablation", "attribution")

# --------------------------------------------------------------------------------------
# The toy model: a known answer
# --------------------------------------------------------------------------------------

TOY_CATEGORIES: dict[str, list[str]] = {
    "numbers": [str(i) for i in range(10)],
    "days": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
    "months": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
    "letters": list("ABCDEFGHIJ"),
}


@dataclass
class ToyTask:
    """A vocabulary of ordinal lists and distractor words, and a sampler of training text.

    Token 0 is BOS, token 1 is ",", then the ordinal items of `TOY_CATEGORIES`, then
    `n_distractors` distractor words. A sequence is BOS followed by segments:

    - a *list* (probability `p_list`): 2-5 consecutive items of one category, each followed
      by a comma ("Tue , Wed , Thu ,");
    - *distractor text*: 2-5 words, 30% of them random ordinal items, each followed by a
      comma with probability `p_comma`. So "x ," alone does not say that succ(x) comes
      next: the model must read the context, as a language model must.
    """

    n_distractors: int = 32
    p_list: float = 0.5
    p_comma: float = 0.3
    n_ctx: int = 24
    vocab: list[str] = field(init=False)
    otok: OrdinalTokens = field(init=False)

    def __post_init__(self):
        items = [t for c in TOY_CATEGORIES.values() for t in c]
        self.vocab = ["<bos>", ","] + items + [f"w{i:02d}" for i in range(self.n_distractors)]
        cats, succ, labels = [], [], []
        for ci, c in enumerate(TOY_CATEGORIES.values()):
            for j, t in enumerate(c):
                labels.append(t)
                cats.append(ci)
                succ.append(len(labels) if j + 1 < len(c) else -1)
        ids = torch.arange(2, 2 + len(items))
        self.otok = OrdinalTokens(ids, labels, labels, torch.tensor(cats), list(TOY_CATEGORIES), torch.tensor(succ))

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` sequences [n, n_ctx] and a mask [n, n_ctx] of list commas after >= 2 items
        (where the next token is surely the successor of the token before the comma)."""
        rng = np.random.default_rng(seed)
        cat_ids = [self.otok.ids[self.otok.in_category(c)].tolist() for c in range(len(self.otok.category_names))]
        ord_ids = self.otok.ids.tolist()
        dis_ids = list(range(2 + len(ord_ids), self.d_vocab))
        X = torch.zeros(n, self.n_ctx, dtype=torch.long)
        M = torch.zeros(n, self.n_ctx, dtype=torch.bool)
        for r in range(n):
            seq, mask = [0], [False]
            while len(seq) < self.n_ctx:
                if rng.random() < self.p_list:
                    c = cat_ids[rng.integers(len(cat_ids))]
                    s = int(rng.integers(0, len(c) - 1))
                    k = min(int(rng.integers(2, 6)), len(c) - s)
                    for j in range(k):
                        seq += [c[s + j], 1]
                        mask += [False, 1 <= j < k - 1]
                else:
                    for _ in range(int(rng.integers(2, 6))):
                        pool = ord_ids if rng.random() < 0.3 else dis_ids
                        seq.append(pool[rng.integers(len(pool))]); mask.append(False)
                        if rng.random() < self.p_comma:
                            seq.append(1); mask.append(False)
            X[r] = torch.tensor(seq[: self.n_ctx])
            M[r] = torch.tensor(mask[: self.n_ctx])
        return X, M

    def prompts(self, n_items: int = 2, seed: int = 0) -> SuccessorPrompts:
        """Aligned successor prompts "BOS a , b ," for the toy vocabulary."""
        return successor_prompts(None, self.otok, n_items=n_items, seed=seed, bos=[0], comma=1)


def toy_model(task: ToyTask, seed: int = 0, d_model: int = 64, n_heads: int = 4, n_layers: int = 2, d_mlp: int = 128):
    """An untrained 2-layer transformer (attention + ReLU MLP, no LayerNorm) for `task`."""
    from .models import ToyConfig, build_toy

    cfg = ToyConfig(d_model=d_model, d_head=d_model // n_heads, n_layers=n_layers, n_ctx=task.n_ctx,
                    n_heads=n_heads, d_vocab=task.d_vocab, d_mlp=d_mlp, act_fn="relu",
                    normalization_type=None, seed=seed, extra={"task": "successor"})
    return build_toy(cfg)


@torch.no_grad()
def toy_successor_accuracy(model, X: torch.Tensor, M: torch.Tensor) -> float:
    """Top-1 accuracy of the next token at the masked list commas of sequences `X`."""
    logits = model(X)[:, :-1]
    tgt, mask = X[:, 1:], M[:, :-1]
    return float((logits.argmax(-1)[mask] == tgt[mask]).float().mean())


def train_toy(task: ToyTask, steps: int = 400, batch: int = 64, lr: float = 3e-3, seed: int = 0,
              n_train: int = 3000, eval_every: int = 50, progress: bool = True):
    """Train `toy_model(task)` on next-token prediction over the task's text.

    Returns:
        (model, history, test set (X, M)); history records `train_loss`, `test_loss` and
        `successor_acc` (accuracy at list commas of held-out text).
    """
    from .training import train

    torch.manual_seed(seed)
    model = toy_model(task, seed=seed)
    Xtr, _ = task.sample(n_train, seed=seed + 1)
    Xte, Mte = task.sample(400, seed=seed + 2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)

    def lm_loss(x):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

    def step_fn(step):
        model.train()
        x = Xtr[torch.randint(0, n_train, (batch,), generator=g)]
        loss = lm_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach().item()

    def eval_fn(step):
        model.eval()
        with torch.no_grad():
            return {"test_loss": float(lm_loss(Xte)), "successor_acc": toy_successor_accuracy(model, Xte, Mte)}

    history = train(step_fn, steps, eval_fn=eval_fn, eval_every=eval_every, desc="toy successor model",
                    progress=progress)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, history, (Xte, Mte)


def _last_position_mask(n_pos: int) -> torch.Tensor:
    mask = torch.zeros(n_pos, dtype=torch.bool)
    mask[-1] = True
    return mask


@torch.no_grad()
def interchange_flip_rates(model, prompts: SuccessorPrompts, shift: int = 1) -> torch.Tensor:
    """The decisive intervention: does a head's output *decide* which successor is predicted?

    For every prompt (ending in item x) take a source prompt ending in another item x'
    (the prompt list rolled by `shift`, skipping same answers), patch ONE head's output at
    the final position from the source run, and count how often the model's top-1 becomes
    succ(x'). A head that carries the answer flips it; a head that merely helps does not.

    Returns:
        [n_layers, n_heads] flip rates in [0, 1].
    """
    n = len(prompts)
    src = torch.roll(torch.arange(n), shift)
    same = prompts.target[src] == prompts.target
    src[same] = torch.roll(torch.arange(n), shift + 1)[same]
    src_target = prompts.target[src]

    def flipped(logits):
        return (logits[:, -1].argmax(-1) == src_target).float()

    return patch_each_head(model, prompts.tokens, prompts.tokens[src], flipped,
                           positions=_last_position_mask(prompts.tokens.shape[1]))


@torch.no_grad()
def flip_rate_of_heads(model, prompts: SuccessorPrompts, heads: Sequence[tuple[int, int]], shift: int = 1) -> float:
    """Like `interchange_flip_rates`, but patching a SET of heads at once."""
    n = len(prompts)
    src = torch.roll(torch.arange(n), shift)
    same = prompts.target[src] == prompts.target
    src[same] = torch.roll(torch.arange(n), shift + 1)[same]
    source = head_outputs(model, prompts.tokens[src])
    logits = model.run_with_hooks(prompts.tokens, fwd_hooks=heads_replaced_hooks(heads, source, pos=-1))
    return float((logits[:, -1].argmax(-1) == prompts.target[src]).float().mean())


# --------------------------------------------------------------------------------------
# Method 1: weights (effective OV circuits)
# --------------------------------------------------------------------------------------


def _norm_params(module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    w = b = None
    for name, p in module.named_parameters():
        if name.endswith("weight"):
            w = p.detach()
        elif name.endswith("bias"):
            b = p.detach()
    return w, b


def _apply_norm(x: torch.Tensor, module, kind: str | None, eps: float = 1e-5) -> torch.Tensor:
    """Apply a bridge norm layer's maths to `x` [..., d] without its hooks (LN, RMS or none)."""
    if kind is None or module is None:
        return x
    if kind.startswith("LN"):
        x = x - x.mean(-1, keepdim=True)
    if kind.startswith("LN") or kind.startswith("RMS"):
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if kind in ("LN", "RMS"):
        w, b = _norm_params(module)
        if w is not None:
            x = x * w
        if b is not None:
            x = x + b
    return x


@torch.no_grad()
def resid_after_layer0(model, ids: torch.Tensor) -> torch.Tensor:
    """The residual stream after layer 0 for each token on its own ([n, d_model]).

    Each token is a one-token sequence (no BOS), so layer 0's attention can only attend to
    the token itself: this is "embedding, then the first attention + MLP layer" (Gould et
    al. use embedding -> MLP0; Ameisen & Batson the residual after layer 0's MLP).
    """
    name = "blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(ids[:, None], names_filter=lambda n: n == name)
    return cache[name][:, 0].clone()


@torch.no_grad()
def effective_ov(model, ids: torch.Tensor, resid: torch.Tensor | None = None) -> torch.Tensor:
    """Effective OV circuit of every head, restricted to the tokens `ids`.

    ``logits[L, h, i, j]`` = unembed(norm_final(OV_{L,h}(norm1_L(resid0(ids[i])))))[ids[j]]:
    how strongly head (L, h), attending to token i, raises token j. Works with LayerNorm,
    RMSNorm or none, and with grouped-query attention (key/value heads are shared by
    groups of query heads). Value biases are left out.

    Returns:
        [n_layers, n_heads, n, n]
    """
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    resid = resid_after_layer0(model, ids) if resid is None else resid
    cfg = model.cfg
    kind = cfg.normalization_type
    W_V, W_O, W_U = model.W_V.detach(), model.W_O.detach(), model.W_U.detach()  # recomputed per access: read once
    if W_V.shape[1] != cfg.n_heads:  # GQA: query head h uses kv head h // group
        W_V = W_V.repeat_interleave(cfg.n_heads // W_V.shape[1], dim=1)
    W_U = W_U[:, ids]
    out = torch.empty(cfg.n_layers, cfg.n_heads, len(ids), len(ids))
    final = getattr(model, "ln_final", None)
    for L in range(cfg.n_layers):
        x = _apply_norm(resid, getattr(model.blocks[L], "ln1", None), kind)
        v = torch.einsum("nd,hde->hne", x, W_V[L])
        o = torch.einsum("hne,hed->hnd", v, W_O[L])
        o = _apply_norm(o, final, kind)
        out[L] = o @ W_U
    return out


def successor_score(logits: torch.Tensor, category: torch.Tensor, successor: torch.Tensor) -> float:
    """Fraction of tokens (that have a successor) whose top logit within their category is the successor.

    Args:
        logits: [n, n] effective OV logits, row = input token, column = output token.
        category: [n] category of each token.
        successor: [n] index of each token's successor, -1 if none.
    """
    has = torch.nonzero(successor >= 0).flatten()
    if len(has) == 0:
        return float("nan")
    same = category[None, :] == category[has][:, None]  # [m, n]
    masked = logits[has].masked_fill(~same, float("-inf"))
    return float((masked.argmax(-1) == successor[has]).float().mean())


def successor_scores(eff_ov: torch.Tensor, otok: OrdinalTokens, categories: Sequence[int] | None = None) -> torch.Tensor:
    """`successor_score` of every head ([n_layers, n_heads]); optionally only some categories."""
    succ = otok.successor.clone()
    if categories is not None:
        keep = torch.isin(otok.category, torch.tensor(list(categories)))
        succ[~keep] = -1
    L, H = eff_ov.shape[:2]
    out = torch.empty(L, H)
    for l in range(L):
        for h in range(H):
            out[l, h] = successor_score(eff_ov[l, h], otok.category, succ)
    return out


def category_scores(eff_ov: torch.Tensor, otok: OrdinalTokens) -> torch.Tensor:
    """Successor score per category: [n_categories, n_layers, n_heads]."""
    return torch.stack([successor_scores(eff_ov, otok, [c]) for c in range(len(otok.category_names))])


# --------------------------------------------------------------------------------------
# Method 2: decomposition (ICA over heads)
# --------------------------------------------------------------------------------------


def ica_matrix(eff_ov: torch.Tensor) -> np.ndarray:
    """The data matrix FastICA sees: one column per head, one row per (input, output) pair.

    Each head's [n, n] table is centred per row (a constant shift of one input token's
    logits changes nothing), flattened, and scaled to unit standard deviation, so that
    heads are compared by the *shape* of their OV circuit, not its size.

    Returns:
        [n * n, n_layers * n_heads] float64 array.
    """
    L, H, n, _ = eff_ov.shape
    x = eff_ov.double() - eff_ov.double().mean(-1, keepdim=True)
    x = x.reshape(L * H, n * n)
    x = x / x.std(-1, keepdim=True).clamp_min(1e-12)
    return x.T.contiguous().numpy()


def templates(otok: OrdinalTokens) -> dict[str, np.ndarray]:
    """[n, n] template matrices: succession (i -> succ(i)), copying (i -> i), category (same category)."""
    n = len(otok)
    succ = np.zeros((n, n))
    for i, j in enumerate(otok.successor.tolist()):
        if j >= 0:
            succ[i, j] = 1
    cat = (otok.category[:, None] == otok.category[None, :]).double().numpy()
    return {"succession": succ, "copying": np.eye(n), "category": cat}


def _row_centre(m: np.ndarray) -> np.ndarray:
    return m - m.mean(-1, keepdims=True)


@dataclass
class ICAResult:
    """FastICA over heads' effective OV circuits.

    Attributes:
        components: [k, n, n] component tables (the "meta-heads"), sign fixed so that each
            correlates positively with its label's template.
        head_scores: [k, n_layers, n_heads] each head's weight on each component.
        labels: k labels ("succession", "copying", "category" or "other").
        template_corr: [k, 3] correlation of each component with the three templates.
    """

    components: np.ndarray
    head_scores: torch.Tensor
    labels: list[str]
    template_corr: np.ndarray
    template_names: list[str]

    def best(self, label: str) -> int:
        """Index of the component that correlates most with template `label`."""
        return int(np.argmax(self.template_corr[:, self.template_names.index(label)]))

    def scores_for(self, label: str) -> torch.Tensor:
        """[n_layers, n_heads] head scores on the component best matching `label`."""
        return self.head_scores[self.best(label)]


def run_ica(eff_ov: torch.Tensor, otok: OrdinalTokens, n_components: int = 16, seed: int = 0,
            min_corr: float = 0.1) -> ICAResult:
    """Decompose all heads' effective OV circuits with scikit-learn's FastICA.

    The samples are the n*n (input, output) pairs and the features are the heads
    (`ica_matrix`); the independent sources are [n, n] tables and ``mixing_`` holds each
    head's weight on each. A component is labelled by the template it correlates with most
    (after row-centring); below `min_corr` it is "other". Signs are flipped so that the
    labelled correlation is positive (ICA does not fix signs).
    """
    from sklearn.decomposition import FastICA

    X = ica_matrix(eff_ov)
    L, H, n, _ = eff_ov.shape
    from threadpoolctl import threadpool_limits

    # one BLAS thread: FastICA's many small products are 10-20x slower with contended threads
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        ica = FastICA(n_components=n_components, random_state=seed, whiten="unit-variance", max_iter=1000, tol=1e-4)
        S = ica.fit_transform(X)  # [n*n, k]
    A = ica.mixing_  # [heads, k]
    T = templates(otok)
    names = list(T)
    tflat = np.stack([_row_centre(T[k]).ravel() for k in names])  # [3, n*n]
    comps, corr = [], []
    for k in range(S.shape[1]):
        c = _row_centre(S[:, k].reshape(n, n)).ravel()
        r = np.array([np.corrcoef(c, t)[0, 1] for t in tflat])
        best = int(np.argmax(np.abs(r)))
        sign = 1.0 if r[best] >= 0 else -1.0
        S[:, k] *= sign
        A[:, k] *= sign
        comps.append(S[:, k].reshape(n, n))
        corr.append(r * sign)
    corr = np.array(corr)
    labels = [names[int(np.argmax(np.abs(r)))] if np.max(np.abs(r)) >= min_corr else "other" for r in corr]
    head_scores = torch.tensor(A.T.reshape(-1, L, H), dtype=torch.float32)
    return ICAResult(np.stack(comps), head_scores, labels, corr, names)


# --------------------------------------------------------------------------------------
# Method 3: mean ablation
# --------------------------------------------------------------------------------------


def mean_ablate_head(z: torch.Tensor, head: int, mean_z: torch.Tensor) -> torch.Tensor:
    """Replace head `head`'s output in `z` [batch, pos, head, d_head] by `mean_z` [pos, head, d_head].

    Returns a new tensor (the input is not modified); other heads are untouched.
    """
    z = z.clone()
    z[:, :, head] = mean_z[None, :, head]
    return z


def logprob_metric(target: torch.Tensor) -> Metric:
    """metric(logits) = log-probability of `target` [batch] at the last position, per prompt."""
    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = logits[:, -1].float().log_softmax(-1)
        return lp[torch.arange(lp.shape[0]), target[: lp.shape[0]]]
    return metric


#: unembed only the last position (the metric reads nothing else): on SmolLM2 the unembedding
#: (49,152 x 576) would otherwise cost as much as several layers per prompt.
_LAST_ONLY = ("unembed.hook_in", lambda x, hook: x[:, -1:])


@torch.no_grad()
def ablation_effects(model, prompts: SuccessorPrompts, max_batch: int = 256) -> torch.Tensor:
    """Drop in log p(successor) when each head is mean-ablated (mean over the prompts), [n_layers, n_heads].

    Positive = the head helps. Equivalent to `interventions.ablate_each_head(..., "mean")`
    (a test checks this), but each layer's forward pass starts at that layer from the
    cached residual stream (about half the compute on a deep model), and only the last
    position is unembedded.
    """
    tokens, metric = prompts.tokens, logprob_metric(prompts.target)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = {f"blocks.{l}.hook_resid_pre" for l in range(n_layers)} | {z_name(l) for l in range(n_layers)}
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    base = metric(logits).mean()
    batch = tokens.shape[0]
    per_chunk = max(1, max_batch // batch)
    out = torch.empty(n_layers, n_heads)
    for layer in range(n_layers):
        mean_z = cache[z_name(layer)].mean(0)  # [pos, head, d_head]
        resid = cache[f"blocks.{layer}.hook_resid_pre"]
        for h0 in range(0, n_heads, per_chunk):
            heads = list(range(h0, min(n_heads, h0 + per_chunk)))

            def hook(z, hook, heads=heads, mean_z=mean_z):
                z = z.clone()
                for i, h in enumerate(heads):
                    z[i * batch:(i + 1) * batch, :, h] = mean_z[None, :, h]
                return z

            x = resid.repeat(len(heads), *([1] * (resid.ndim - 1)))
            lg = model.run_with_hooks(x, start_at_layer=layer, fwd_hooks=[(z_name(layer), hook), _LAST_ONLY])
            for i, h in enumerate(heads):
                out[layer, h] = base - metric(lg[i * batch:(i + 1) * batch]).mean()
    return out


# --------------------------------------------------------------------------------------
# Method 4: attribution patching
# --------------------------------------------------------------------------------------


def attribution_estimate(z_target: torch.Tensor, z_source: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """First-order estimate of patching each head from the source run into the target run.

    Args:
        z_target, z_source: [batch, pos, head, d_head] head outputs on the two runs.
        grad: [batch, pos, head, d_head] gradient of the metric w.r.t. z on the target run.

    Returns:
        [head]: sum over positions and d_head of (z_source - z_target) * grad, mean over the batch.
    """
    return ((z_source - z_target) * grad).sum(dim=(1, 3)).mean(0)


def attribution_effects(model, prompts: SuccessorPrompts) -> torch.Tensor:
    """Estimated drop in log p(successor) when each head takes its value on the corrupted
    prompts (same category, no succession): attribution patching, [n_layers, n_heads].

    Positive = the head helps. Uses `interventions.attribution_patch_heads`.
    """
    est = attribution_patch_heads(model, prompts.tokens, prompts.corrupt, logprob_metric(prompts.target))
    return -est


# --------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every head (1 = highest score), [n_layers, n_heads]."""
    flat = scores.flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    r = torch.empty_like(order)
    r[order] = torch.arange(1, len(flat) + 1)
    return r.reshape(scores.shape)


def rank_table(scores: dict[str, torch.Tensor], top: int = 10, sort_by: str | None = None):
    """A pandas DataFrame: the heads in any method's top `top`, with each method's rank."""
    import pandas as pd

    rk = {m: ranks(s) for m, s in scores.items()}
    any_s = next(iter(scores.values()))
    H = any_s.shape[1]
    heads = sorted({(int(i) // H, int(i) % H) for r in rk.values() for i in torch.nonzero(r.flatten() <= top).flatten()})
    rows = [{"head": head_name(l, h), **{f"{m} rank": int(rk[m][l, h]) for m in scores}} for l, h in heads]
    df = pd.DataFrame(rows).set_index("head")
    sort_by = sort_by or f"{next(iter(scores))} rank"
    return df.sort_values(sort_by)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two score tables (ties broken by order)."""
    ra, rb = ranks(a).flatten().double(), ranks(b).flatten().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def rank_correlations(scores: dict[str, torch.Tensor]):
    """Spearman correlation between every pair of methods (a pandas DataFrame)."""
    import pandas as pd

    names = list(scores)
    m = [[spearman(scores[a], scores[b]) for b in names] for a in names]
    return pd.DataFrame(m, index=names, columns=names)


def disagreements(scores: dict[str, torch.Tensor], top: int = 5, low: int | None = None) -> list[dict]:
    """Heads that one method ranks in its top `top` while another ranks them below `low`.

    `low` defaults to 4 * top. One row per (head, high method, low method).
    """
    low = low or 4 * top
    rk = {m: ranks(s) for m, s in scores.items()}
    H = next(iter(scores.values())).shape[1]
    rows = []
    for m_hi, r_hi in rk.items():
        for i in torch.nonzero(r_hi.flatten() <= top).flatten().tolist():
            l, h = i // H, i % H
            for m_lo, r_lo in rk.items():
                if m_lo != m_hi and int(r_lo[l, h]) > low:
                    rows.append({"head": head_name(l, h), "layer": l, "index": h, "high in": m_hi,
                                 "rank (high)": int(r_hi[l, h]), "low in": m_lo, "rank (low)": int(r_lo[l, h])})
    return rows


def high_ablation_low_weight(scores: dict[str, torch.Tensor], top: int = 5, low: int | None = None) -> list[tuple[int, int]]:
    """Heads in the ablation top `top` that BOTH weight-based methods rank below `low` (default 4*top)."""
    low = low or 4 * top
    ra, rw, ri = ranks(scores["ablation"]), ranks(scores["weights"]), ranks(scores["ICA"])
    H = ra.shape[1]
    out = []
    for i in torch.argsort(ra.flatten()).tolist():
        l, h = i // H, i % H
        if int(ra[l, h]) > top:
            break
        if int(rw[l, h]) > low and int(ri[l, h]) > low:
            out.append((l, h))
    return out


@torch.no_grad()
def path_patch_effects(model, prompts: SuccessorPrompts, sender: tuple[int, int],
                       receivers: Sequence[tuple[int, int]]) -> dict[str, float]:
    """Where does a head's ablation effect go? Path patching of a mean-ablated sender.

    Run A mean-ablates the sender (mean over the prompts); run B is clean except that some
    *receiving* activations take their run-A values. The drop in log p(successor):

    - ``total``: the sender ablated outright (run A);
    - ``via receivers' queries``: only the queries of the `receivers` heads (Q-composition);
    - ``via receivers' keys+values``: only their keys and values (K/V-composition; on
      grouped-query models this patches the whole key/value group);
    - ``via later MLPs``: only the inputs of every MLP after the sender's layer;
    - ``direct``: only the sender's own contribution to the final residual stream.

    Run A's values include everything upstream of the receiver (paths through
    intermediate heads too), so the parts need not add up to the total.
    """
    tokens, metric = prompts.tokens, logprob_metric(prompts.target)
    ls, hs = sender
    mean_z = head_outputs(model, tokens, [ls])[ls].mean(0)

    def ablate(z, hook):
        return mean_ablate_head(z, hs, mean_z)

    n_layers = model.cfg.n_layers
    rec_layers = sorted({l for l, _ in receivers})
    want = set()
    for l in rec_layers:
        want |= {f"blocks.{l}.attn.hook_q", f"blocks.{l}.attn.hook_k", f"blocks.{l}.attn.hook_v"}
    mlp_names = [f"blocks.{l}.hook_resid_mid" for l in range(ls + 1, n_layers)]
    if not getattr(model.cfg, "attn_only", False):
        want |= set(mlp_names)
    store: dict[str, torch.Tensor] = {}

    def keep(name):  # keyed by the name we asked for: hook.name may be an alias
        def hook(x, hook):
            store[name] = x.clone()
            return x
        return hook

    clean = metric(model(tokens)).mean()
    lg_a = model.run_with_hooks(tokens, fwd_hooks=[(z_name(ls), ablate)] + [(n, keep(n)) for n in sorted(want)])
    out = {"total": float(clean - metric(lg_a).mean())}

    def replace(heads_by_layer, which):
        hooks = []
        n_q = model.cfg.n_heads
        for l, hs_ in heads_by_layer.items():
            name = f"blocks.{l}.attn.hook_{which}"

            def hook(x, hook, name=name, hs_=hs_):
                x = x.clone()
                idx = hs_
                if x.shape[2] != n_q:  # grouped-query keys/values
                    idx = sorted({h // (n_q // x.shape[2]) for h in hs_})
                x[:, :, idx] = store[name][:, :, idx]
                return x
            hooks.append((name, hook))
        return hooks

    by_layer: dict[int, list[int]] = {}
    for l, h in receivers:
        by_layer.setdefault(l, []).append(h)
    lg = model.run_with_hooks(tokens, fwd_hooks=replace(by_layer, "q"))
    out["via receivers' queries"] = float(clean - metric(lg).mean())
    lg = model.run_with_hooks(tokens, fwd_hooks=replace(by_layer, "k") + replace(by_layer, "v"))
    out["via receivers' keys+values"] = float(clean - metric(lg).mean())
    if not getattr(model.cfg, "attn_only", False) and mlp_names:
        lg = model.run_with_hooks(tokens, fwd_hooks=[(n, lambda x, hook, n=n: store[n]) for n in mlp_names])
        out["via later MLPs"] = float(clean - metric(lg).mean())
    # direct: remove the sender's output from the final residual stream only
    z = head_outputs(model, tokens, [ls])[ls]
    W_O = model.W_O[ls, hs].detach()
    delta = torch.einsum("bpe,ed->bpd", mean_z[None, :, hs] - z[:, :, hs], W_O)
    lg = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{n_layers - 1}.hook_resid_post", lambda x, hook: x + delta)])
    out["direct"] = float(clean - metric(lg).mean())
    return out


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------



def plot_toy_history(history):
    """Test loss and successor accuracy of the toy model's training run."""
    from .training import plot_history

    return finish(plot_history(history, panels=[["test_loss"], ["successor_acc"]], title="toy successor model"))


def plot_successor_matrix(eff_ov: torch.Tensor, otok: OrdinalTokens, layer: int, head: int,
                          category: str | int = 0, ax=None):
    """Heatmap of one head's effective OV logits within one category; boxes mark true successors."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    idx = otok.in_category(category)
    m = eff_ov[layer, head][idx][:, idx]
    m = m - m.mean(-1, keepdim=True)
    own = ax is None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.8))
    else:
        fig = ax.figure
    lim = float(m.abs().max()) or 1.0
    ax.imshow(m.numpy(), cmap="RdBu", vmin=-lim, vmax=lim)
    labels = [otok.labels[i] for i in idx]
    ax.set_xticks(range(len(idx)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(idx)))
    ax.set_yticklabels(labels, fontsize=6)
    pos = {int(i): k for k, i in enumerate(idx)}
    for r, i in enumerate(idx.tolist()):
        j = int(otok.successor[i])
        if j in pos:
            ax.add_patch(Rectangle((pos[j] - 0.5, r - 0.5), 1, 1, fill=False, ec="k", lw=0.8))
        ax.plot(int(m[r].argmax()), r, "k.", ms=3)
    name = otok.category_names[category] if isinstance(category, int) else category
    score = successor_score(eff_ov[layer, head][idx][:, idx], otok.category[idx],
                            torch.tensor([pos.get(int(otok.successor[i]), -1) for i in idx.tolist()]))
    ax.set_title(f"{head_name(layer, head)} on {name}: score {score:.2f}", fontsize=9)
    ax.set_xlabel("output token (box = true successor, dot = top-1)", fontsize=7)
    ax.set_ylabel("input token", fontsize=7)
    fig.tight_layout()
    return finish(fig) if own else fig


def plot_top_heads(eff_ov: torch.Tensor, otok: OrdinalTokens, cat_scores: torch.Tensor, k: int = 2):
    """For every category, the effective OV tables of its `k` best heads (by that category's score)."""
    import matplotlib.pyplot as plt

    C = len(otok.category_names)
    fig, axes = plt.subplots(k, C, figsize=(2.9 * C, 2.8 * k), squeeze=False)
    for c in range(C):
        flat = cat_scores[c].flatten()
        for r, i in enumerate(torch.argsort(flat, descending=True, stable=True)[:k].tolist()):
            l, h = divmod(i, cat_scores.shape[2])
            plot_successor_matrix(eff_ov, otok, l, h, c, ax=axes[r, c])
            axes[r, c].set_xlabel("")
            axes[r, c].set_ylabel("")
    fig.tight_layout()
    return finish(fig)


def plot_ica(ica: ICAResult, otok: OrdinalTokens, show: int = 4):
    """The succession component and the `show - 1` most template-like others (first row), with each
    head's weight on them (second row). Titles give the correlation with each template."""
    import matplotlib.pyplot as plt

    k_succ = ica.best("succession")  # always shown first: it is the ICA score of the comparison
    rest = [int(k) for k in np.argsort(-np.abs(ica.template_corr).max(1)) if int(k) != k_succ]
    order = [k_succ] + rest[: show - 1]
    fig, axes = plt.subplots(2, show, figsize=(3.3 * show, 6.2), squeeze=False)
    for col, k in enumerate(order):
        c = _row_centre(ica.components[k])
        lim = np.abs(c).max() or 1.0
        axes[0, col].imshow(c, cmap="RdBu", vmin=-lim, vmax=lim)
        r = ", ".join(f"{n[:4]} {v:.2f}" for n, v in zip(ica.template_names, ica.template_corr[k]))
        extra = " (succession score)" if k == k_succ else ""
        axes[0, col].set_title(f"component {k}: {ica.labels[k]}{extra}\nr: {r}", fontsize=8)
        axes[0, col].set_xlabel("output ordinal token", fontsize=7)
        axes[0, col].set_ylabel("input ordinal token", fontsize=7)
        s = ica.head_scores[k].numpy()
        lim = np.abs(s).max() or 1.0
        im = axes[1, col].imshow(s, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        axes[1, col].set_xlabel("head", fontsize=7)
        axes[1, col].set_ylabel("layer", fontsize=7)
        axes[1, col].set_title("head weights", fontsize=8)
        fig.colorbar(im, ax=axes[1, col], fraction=0.046)
    fig.tight_layout()
    return finish(fig)


def plot_four_maps(scores: dict[str, torch.Tensor], mark: Sequence[tuple[int, int]] = ()):
    """The four methods' [layer, head] score maps side by side; `mark` circles chosen heads."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(3.6 * len(scores), 3.4), squeeze=False)
    for ax, (name, s) in zip(axes[0], scores.items()):
        v = s.numpy()
        lim = np.abs(v).max() or 1.0
        im = ax.imshow(v, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for l, h in mark:
            ax.plot(h, l, "o", mfc="none", mec="k", ms=9)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        step = max(1, v.shape[0] // 8)
        ax.set_yticks(range(0, v.shape[0], step))
        ax.set_xticks(range(0, v.shape[1], max(1, v.shape[1] // 9)))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return finish(fig)


def plot_method_scatter(scores: dict[str, torch.Tensor], x: str, y: str, n_labels: int = 6, use_ranks: bool = False):
    """Scatter of every head's score under two methods, labelling the heads where they disagree most.

    Outliers = largest |rank_x - rank_y| among heads that at least one method ranks highly.
    """
    import matplotlib.pyplot as plt

    sx, sy = scores[x].flatten(), scores[y].flatten()
    rx, ry = ranks(scores[x]).flatten(), ranks(scores[y]).flatten()
    H = scores[x].shape[1]
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    vx, vy = (rx, ry) if use_ranks else (sx, sy)
    ax.scatter(vx.numpy(), vy.numpy(), s=12, alpha=0.6)
    n = len(sx)
    interesting = torch.minimum(rx, ry) <= max(5, n // 20)
    gap = (rx - ry).abs().float() * interesting
    for i in torch.argsort(gap, descending=True)[:n_labels].tolist():
        ax.scatter([vx[i]], [vy[i]], s=30, color="tab:red")
        ax.annotate(head_name(i // H, i % H), (float(vx[i]), float(vy[i])), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    for i in torch.argsort(torch.maximum(rx, ry))[:3].tolist():  # heads both methods rank top
        ax.scatter([vx[i]], [vy[i]], s=30, color="tab:green")
        ax.annotate(head_name(i // H, i % H), (float(vx[i]), float(vy[i])), fontsize=8, xytext=(3, -9),
                    textcoords="offset points", color="tab:green")
    ax.set_xlabel(f"{x} {'rank' if use_ranks else 'score'}")
    ax.set_ylabel(f"{y} {'rank' if use_ranks else 'score'}")
    if use_ranks:
        ax.invert_xaxis(); ax.invert_yaxis()
    ax.set_title(f"{x} vs {y}: Spearman {spearman(scores[x], scores[y]):.2f}\n"
                 "red = largest disagreement, green = agreed top heads", fontsize=9)
    fig.tight_layout()
    return finish(fig)


__all__ = [
    "METHODS", "TOY_CATEGORIES", "ToyTask", "toy_model", "train_toy", "toy_successor_accuracy",
    "interchange_flip_rates", "flip_rate_of_heads", "resid_after_layer0", "effective_ov", "successor_score",
    "successor_scores", "category_scores", "ica_matrix", "templates", "ICAResult", "run_ica",
    "mean_ablate_head", "logprob_metric", "ablation_effects", "attribution_estimate", "attribution_effects",
    "head_name", "ranks", "rank_table", "spearman", "rank_correlations", "disagreements",
    "high_ablation_low_weight", "path_patch_effects", "plot_successor_matrix", "plot_top_heads", "plot_ica",
    "plot_four_maps", "plot_method_scatter",
]


@torch.no_grad()
def minimal_flip_set(model, prompts: SuccessorPrompts, threshold: float = 0.8, max_heads: int | None = None,
                     shift: int = 1) -> tuple[list[tuple[int, int]], list[float]]:
    """Greedy ground truth: the smallest set of heads whose outputs, patched together at the
    final position from a prompt with another answer, flip the prediction to that answer.

    Heads are added one at a time (the one that raises the set's flip rate most) until the
    flip rate reaches `threshold`. Returns (heads in the order added, flip rate after each).
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    max_heads = max_heads or L * H
    chosen: list[tuple[int, int]] = []
    rates: list[float] = []
    while len(chosen) < max_heads and (not rates or rates[-1] < threshold):
        best, best_rate = None, -1.0
        for l in range(L):
            for h in range(H):
                if (l, h) in chosen:
                    continue
                r = flip_rate_of_heads(model, prompts, chosen + [(l, h)], shift)
                if r > best_rate:
                    best, best_rate = (l, h), r
        chosen.append(best)
        rates.append(best_rate)
    return chosen, rates


def recovery(scores: torch.Tensor, truth: Sequence[tuple[int, int]]) -> float:
    """Fraction of the known heads `truth` that are among the method's top len(truth) heads."""
    r = ranks(scores)
    return sum(int(r[l, h]) <= len(truth) for l, h in truth) / len(truth)


__all__ += ["minimal_flip_set", "recovery"]


@dataclass
class FourMethods:
    """The four methods' per-head scores on one model, and what they were computed from.

    `scores` maps "weights", "ICA", "ablation", "attribution" to [n_layers, n_heads] tables,
    all oriented so that larger = more successor-like / more important.
    """

    scores: dict[str, torch.Tensor]
    eff_ov: torch.Tensor
    ica: ICAResult
    chance: float


def four_methods(model, otok: OrdinalTokens, prompts: SuccessorPrompts, n_components: int = 16, seed: int = 0) -> FourMethods:
    """Run all four methods: successor scores of effective OV circuits, FastICA's succession
    component, mean ablation and attribution patching on `prompts`."""
    eff = effective_ov(model, otok.ids)
    ica = run_ica(eff, otok, n_components=n_components, seed=seed)
    scores = {
        "weights": successor_scores(eff, otok),
        "ICA": ica.scores_for("succession"),
        "ablation": ablation_effects(model, prompts),
        "attribution": attribution_effects(model, prompts),
    }
    return FourMethods(scores, eff, ica, otok.chance())


def recovery_table(scores: dict[str, torch.Tensor], truth: Sequence[tuple[int, int]]):
    """Per method: which of the known heads it ranks in its top len(truth), as a DataFrame."""
    import pandas as pd

    rows = []
    for m, s in scores.items():
        r = ranks(s)
        rows.append({"method": m, "recovered": recovery(s, truth),
                     "ranks of the known heads": ", ".join(str(int(r[l, h])) for l, h in truth)})
    return pd.DataFrame(rows).set_index("method")


__all__ += ["FourMethods", "four_methods", "recovery_table"]


@torch.no_grad()
def layer_flip_rates(model, prompts: SuccessorPrompts, shift: int = 1) -> list[float]:
    """Flip rate (see `interchange_flip_rates`) when ALL heads of one layer are patched together, per layer."""
    H = model.cfg.n_heads
    return [flip_rate_of_heads(model, prompts, [(l, h) for h in range(H)], shift) for l in range(model.cfg.n_layers)]


def known_succession_heads(model, prompts: SuccessorPrompts, threshold: float = 0.8) -> tuple[list[tuple[int, int]], list[float]]:
    """Ground truth for a toy model: every head of each layer whose heads, patched together at the
    final position, flip the answer on at least `threshold` of the prompts.

    Returns (the heads, the per-layer flip rates).
    """
    rates = layer_flip_rates(model, prompts)
    heads = [(l, h) for l, r in enumerate(rates) if r >= threshold for h in range(model.cfg.n_heads)]
    return heads, rates


__all__ += ["layer_flip_rates", "known_succession_heads", "plot_toy_history"]
