"""Successor heads, four ways: weights, decomposition, ablation and attribution.

A successor head (Gould, Ong, Ogden & Conmy 2023, "Successor Heads", arXiv 2312.09230)
maps an ordinal token to its successor: Monday -> Tuesday, 3 -> 4. Ameisen & Batson
("Investigating successor heads", Circuits Updates, Sept 2024) looked for such heads with
four methods and found that the methods disagree. This module implements the four methods
for ANY TransformerBridge (a toy model trained here, SmolLM2, GPT-2), plus the comparison
and a path-patching test of why a head can matter without having a successor OV circuit.

1. **Weights.** `lab.readout.effective_ov`: the residual stream after layer 0 of each ordinal token
   (on its own, so layer 0 sees only that token), through a head's OV circuit and the
   unembedding: a [n, n] logit table per head. `successor_scores`: the fraction of ordinal
   tokens whose top logit, among their category's tokens, is the true successor.
2. **Decomposition.** `run_ica`: scikit-learn FastICA across all heads' effective OV
   tables; components are labelled by correlation with succession / copying / category
   templates; each head's weight on each component is its score.
3. **Ablation.** `ablation_effects`: mean-ablate each head on successor prompts; the drop
   in the correct successor's log-probability (the patching engine, `lab.patching`).
4. **Attribution.** `attribution_effects`: attribution patching from corrupted prompts
   (same category, no succession) into clean ones, per head: 2 forwards + 1 backward.

Then `disagreements` and `high_ablation_low_weight`; where a head's effect goes is in `successor_sources` (the rank
statistics themselves are in `lab.scores`).

The toy model (`ToyTask`, `train_toy`) is a 2-layer transformer trained on comma-separated
ordinal lists, "after" queries that need Q/K-composition, and distractor text.
`interchange_flip_rates` locates where its succession lives by a decisive intervention that
none of the four methods uses; `successor_toy` finds the planted layer-0 head and its route.

Head indices are never hard-coded: every head this module names comes from a computation.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .lab.hooks import Head, head_label, head_outputs, logprob_metric
from .lab.patching import (ablate_heads, attribution_patch_heads, copies_runner, heads_replaced,
                           patch_heads)
from .lab.readout import effective_ov
from .lab.scores import ranks
from .ordinal import OrdinalTokens, SuccessorPrompts, successor_prompts

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
    """A vocabulary of ordinal lists, "after" queries and distractor words, and a sampler of training text.

    Token 0 is BOS, token 1 is ",", then the ordinal items of `TOY_CATEGORIES`, then
    `n_distractors` distractor words, then the marker "after" and the query token "=". A
    sequence is BOS followed by segments:

    - a *list* (probability `p_list`): 2-5 consecutive items of one category, each followed
      by a comma ("Tue , Wed , Thu ,");
    - an *"after" query* (probability `p_query`): 1-3 (word, item) pairs, where exactly one
      word is the marker "after", then "=" and the successor of the marked item
      ("w03 Sep after Tue w17 4 = Wed"). The marked item sits 2, 4 or 6 tokens before "=",
      among other items, so a head at "=" can find it only after an earlier head has moved
      information between positions ("I follow 'after'" into the item, for its keys; or where
      "after" was, into "=", for its queries): Q/K-composition is needed;
    - *distractor text* otherwise: 2-5 words, 30% of them random ordinal items, each followed
      by a comma with probability `p_comma`. So "x ," alone does not say that succ(x) comes
      next: the model must read the context, as a language model must.
    """

    n_distractors: int = 32
    p_list: float = 0.35
    p_query: float = 0.3
    p_comma: float = 0.3
    n_ctx: int = 24
    vocab: list[str] = field(init=False)
    otok: OrdinalTokens = field(init=False)

    def __post_init__(self):
        items = [t for c in TOY_CATEGORIES.values() for t in c]
        self.vocab = ["<bos>", ","] + items + [f"w{i:02d}" for i in range(self.n_distractors)] + ["after", "="]
        cats, succ, labels = [], [], []
        for ci, c in enumerate(TOY_CATEGORIES.values()):
            for j, t in enumerate(c):
                labels.append(t)
                cats.append(ci)
                succ.append(len(labels) if j + 1 < len(c) else -1)
        ids = torch.arange(2, 2 + len(items))
        self.otok = OrdinalTokens(ids, labels, labels, torch.tensor(cats), list(TOY_CATEGORIES), torch.tensor(succ))

    @property
    def after(self) -> int:
        """Token id of the marker "after"."""
        return self.d_vocab - 2

    @property
    def query(self) -> int:
        """Token id of the query token "="."""
        return self.d_vocab - 1

    @property
    def distractors(self) -> list[int]:
        """Token ids of the distractor words."""
        start = 2 + len(self.otok)
        return list(range(start, start + self.n_distractors))

    @property
    def d_vocab(self) -> int:
        return len(self.vocab)

    def sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` sequences [n, n_ctx] and a mask [n, n_ctx] of the positions where the next token is surely a
        successor: list commas after >= 2 items, and the "=" of every "after" query."""
        rng = np.random.default_rng(seed)
        cat_ids = [self.otok.ids[self.otok.in_category(c)].tolist() for c in range(len(self.otok.category_names))]
        ord_ids = self.otok.ids.tolist()
        succ = {int(self.otok.ids[i]): int(self.otok.ids[j]) for i, j in enumerate(self.otok.successor.tolist()) if j >= 0}
        has_succ = list(succ)
        dis_ids = self.distractors
        X = torch.zeros(n, self.n_ctx, dtype=torch.long)
        M = torch.zeros(n, self.n_ctx, dtype=torch.bool)
        for r in range(n):
            seq, mask = [0], [False]
            while len(seq) < self.n_ctx:
                u = rng.random()
                if u < self.p_query:
                    k = int(rng.integers(1, 4))
                    marked = int(rng.integers(k))
                    for i in range(k):
                        if i == marked:
                            x = has_succ[rng.integers(len(has_succ))]
                            seq += [self.after, x]
                        else:
                            seq += [dis_ids[rng.integers(len(dis_ids))], ord_ids[rng.integers(len(ord_ids))]]
                        mask += [False, False]
                    seq += [self.query, succ[x]]
                    mask += [True, False]
                elif u < self.p_query + self.p_list:
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


def head_group_norms(model, layer: int) -> torch.Tensor:
    """||W_V||_F * ||W_O||_F of every head of `layer` ([n_heads], differentiable): the size of its OV circuit."""
    W_V, W_O = model.W_V[layer], model.W_O[layer]
    if W_V.shape[0] != W_O.shape[0]:
        raise ValueError("head_group_norms needs one value head per query head (no grouped-query attention)")
    return W_V.flatten(1).norm(dim=-1) * W_O.flatten(1).norm(dim=-1)


def toy_accuracies(model, task: ToyTask, X: torch.Tensor, M: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy at the masked positions of `X`, separately after list commas and at "after" queries' "="."""
    with torch.no_grad():
        pred = model(X)[:, :-1].argmax(-1)
    tgt, mask = X[:, 1:], M[:, :-1]
    query = mask & (X[:, :-1] == task.query)
    out = {}
    for name, m in (("lists", mask & ~query), ("after queries", query)):
        out[name] = float((pred[m] == tgt[m]).float().mean()) if m.any() else float("nan")
    return out


def train_toy(task: ToyTask, steps: int = 400, batch: int = 64, lr: float = 3e-3, seed: int = 0,
              n_train: int = 3000, eval_every: int = 50, progress: bool = True, sparsity: float = 0.01,
              sparse_layers: Sequence[int] = (0,)):
    """Train `toy_model(task)` on next-token prediction over the task's text.

    `sparsity` weights a group-lasso penalty, sum over the heads of `sparse_layers` of
    `head_group_norms`: each head pays for the size of its OV circuit, so a layer keeps only
    the heads its job needs (with the default, one head of layer 0 does the marking that the
    "after" queries require, and the others fade to nothing). 0 turns it off.

    Returns:
        (model, history, test set (X, M)); history records `train_loss`, `test_loss` and
        `successor_acc` (accuracy at list commas and queries of held-out text).
    """
    from .training import train

    if sparsity < 0:
        raise ValueError(f"sparsity is a penalty weight >= 0, got {sparsity}")
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
        total = loss + sparsity * sum(head_group_norms(model, l).sum() for l in sparse_layers) if sparsity else loss
        opt.zero_grad()
        total.backward()
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


def _flip_sources(prompts: SuccessorPrompts, shift: int) -> torch.Tensor:
    """For every prompt, a source prompt with another answer (the list rolled by `shift`)."""
    n = len(prompts)
    src = torch.roll(torch.arange(n), shift)
    same = prompts.target[src] == prompts.target
    src[same] = torch.roll(torch.arange(n), shift + 1)[same]
    return src


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
    src = _flip_sources(prompts, shift)
    src_target = prompts.target[src]

    def flipped(logits):
        return (logits[:, -1].argmax(-1) == src_target).float()

    return patch_heads(model, prompts.tokens, prompts.tokens[src], flipped, pos=-1)


@torch.no_grad()
def flip_rates_of_sets(model, prompts: SuccessorPrompts, head_sets: Sequence[Sequence[Head]], shift: int = 1,
                       max_rows: int = 128) -> list[float]:
    """Like `interchange_flip_rates`, but patching each SET of heads together (all sets in a few batched passes)."""
    src = _flip_sources(prompts, shift)
    source = head_outputs(model, prompts.tokens[src])
    run = copies_runner(model, prompts.tokens)
    per = max(1, max_rows // len(prompts))
    rates: list[float] = []
    for i in range(0, len(head_sets), per):
        logits = run([heads_replaced(hs, source, pos=-1) for hs in head_sets[i:i + per]])[1:, :, -1]
        rates += (logits.argmax(-1) == prompts.target[src]).float().mean(-1).tolist()
    return rates


# --------------------------------------------------------------------------------------
# Method 1: weights (effective OV circuits)
# --------------------------------------------------------------------------------------


# `lab.readout.effective_ov` computes the [n_layers, n_heads, n, n] tables this method scores.


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


def row_centre(m: np.ndarray) -> np.ndarray:
    """Each row minus its mean (what ICA components are compared on)."""
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
    tflat = np.stack([row_centre(T[k]).ravel() for k in names])  # [3, n*n]
    comps, corr = [], []
    for k in range(S.shape[1]):
        c = row_centre(S[:, k].reshape(n, n)).ravel()
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


def ablation_effects(model, prompts: SuccessorPrompts, max_rows: int = 256) -> torch.Tensor:
    """Drop in log p(successor) when each head is mean-ablated (mean over the prompts), [n_layers, n_heads].

    Positive = the head helps. One `lab.patching.ablate_heads` sweep (fast_llama on SmolLM2).
    """
    metric = logprob_metric(prompts.target)
    with torch.no_grad():
        base = metric(model(prompts.tokens)).float().mean()
    return base - ablate_heads(model, prompts.tokens, metric, "mean", reference_tokens=prompts.tokens, max_rows=max_rows)


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

    Positive = the head helps. Uses `lab.patching.attribution_patch_heads`.
    """
    est = attribution_patch_heads(model, prompts.tokens, prompts.corrupt, logprob_metric(prompts.target))
    return -est


# --------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------


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
                    rows.append({"head": head_label((l, h)), "layer": l, "index": h, "high in": m_hi,
                                 "rank (high)": int(r_hi[l, h]), "low in": m_lo, "rank (low)": int(r_lo[l, h])})
    return rows


def high_ablation_low_weight(scores: dict[str, torch.Tensor], top: int = 5, low: int | None = None) -> list[tuple[int, int]]:
    """Heads in the ablation top `top` that BOTH weight-based methods rank below `low` (default 4*top).

    Without an "ICA" entry (no succession component found), the weights alone decide.
    """
    low = low or 4 * top
    ra, rw = ranks(scores["ablation"]), ranks(scores["weights"])
    ri = ranks(scores["ICA"]) if "ICA" in scores else rw  # ICA may be left out (no succession component)
    H = ra.shape[1]
    out = []
    for i in torch.argsort(ra.flatten()).tolist():
        l, h = i // H, i % H
        if int(ra[l, h]) > top:
            break
        if int(rw[l, h]) > low and int(ri[l, h]) > low:
            out.append((l, h))
    return out


# --------------------------------------------------------------------------------------
# Ground truth on the toy, and the four methods together
# --------------------------------------------------------------------------------------


@torch.no_grad()
def minimal_flip_set(model, prompts: SuccessorPrompts, threshold: float = 0.8, max_heads: int | None = None,
                     shift: int = 1) -> tuple[list[Head], list[float]]:
    """Greedy ground truth: the smallest set of heads whose outputs, patched together at the
    final position from a prompt with another answer, flip the prediction to that answer.

    Heads are added one at a time (the one that raises the set's flip rate most; ties to the
    first) until the flip rate reaches `threshold`. Returns (heads in the order added, flip
    rate after each). Each step tries every candidate in a few batched passes.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    max_heads = max_heads or L * H
    chosen: list[Head] = []
    rates: list[float] = []
    while len(chosen) < max_heads and (not rates or rates[-1] < threshold):
        candidates = [(l, h) for l in range(L) for h in range(H) if (l, h) not in chosen]
        r = flip_rates_of_sets(model, prompts, [chosen + [c] for c in candidates], shift)
        best = int(np.argmax(r))
        chosen.append(candidates[best])
        rates.append(r[best])
    return chosen, rates


def layer_flip_rates(model, prompts: SuccessorPrompts, shift: int = 1) -> list[float]:
    """Flip rate (see `interchange_flip_rates`) when ALL heads of one layer are patched together, per layer."""
    H = model.cfg.n_heads
    return flip_rates_of_sets(model, prompts, [[(l, h) for h in range(H)] for l in range(model.cfg.n_layers)], shift)


def recovery(scores: torch.Tensor, truth: Sequence[tuple[int, int]]) -> float:
    """Fraction of the known heads `truth` that are among the method's top len(truth) heads."""
    r = ranks(scores)
    return sum(int(r[l, h]) <= len(truth) for l, h in truth) / len(truth)


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


def known_succession_heads(model, prompts: SuccessorPrompts, threshold: float = 0.8) -> tuple[list[tuple[int, int]], list[float]]:
    """Ground truth for a toy model: every head of each layer whose heads, patched together at the
    final position, flip the answer on at least `threshold` of the prompts.

    Returns (the heads, the per-layer flip rates).
    """
    rates = layer_flip_rates(model, prompts)
    heads = [(l, h) for l, r in enumerate(rates) if r >= threshold for h in range(model.cfg.n_heads)]
    return heads, rates


__all__ = [
    "METHODS", "TOY_CATEGORIES", "ToyTask", "toy_model", "train_toy", "toy_successor_accuracy", "toy_accuracies",
    "head_group_norms",
    "interchange_flip_rates", "flip_rates_of_sets", "successor_score",
    "successor_scores", "category_scores", "ica_matrix", "templates", "row_centre", "ICAResult", "run_ica",
    "mean_ablate_head", "ablation_effects", "attribution_estimate", "attribution_effects",
    "disagreements", "high_ablation_low_weight", "minimal_flip_set", "layer_flip_rates",
    "known_succession_heads", "recovery", "FourMethods", "four_methods", "recovery_table",
]
