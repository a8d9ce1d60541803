"""Induction heads in a toy attention-only transformer: the task, live training, snapshots, the circuit.

The task (`TaskConfig`, `make_batch`): each sequence holds a random segment of random length
L that is immediately repeated, with random filler before and after it:

    [filler of random length] [t_1 ... t_L] [t_1 ... t_L] [filler]

Only the second copy is predictable (from the first copy), and because L and the start vary
from sequence to sequence, no fixed positional offset finds the earlier copy: the model
has to match content, which is what an induction head does. With ``fixed=True`` every
sequence is exactly ``[S S]`` with L = n_ctx/2: then a head can find "the token after the
earlier copy" from positions alone (attend to q - L + 1), a shortcut that lowers the loss
without any induction circuit.

`train_induction(RunConfig(...))` trains a model from `mi_tutor.models.attn_only_model`
with a progress bar and a live loss plot split into *repeated* tokens (the second copy,
after its first token) and *first-occurrence* tokens (everything else), and records
attention-pattern snapshots for the training-step scrubber.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .lab import scores as head_scores
from .lab.hooks import activations, hook_name
from .lab.patching import Patch, ablation_values, run_copies
from .models import attn_only_model
from .plots import finish
from .training import History, LivePlot, train

warnings.filterwarnings("ignore", message=".*use_deterministic_algorithms.*")


# --------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------


@dataclass
class TaskConfig:
    """Sequences of `n_ctx` tokens from a vocabulary of `d_vocab`, holding one repeated segment.

    Attributes:
        min_len, max_len: range of the segment length L (ignored when `fixed`).
        fixed: every sequence is ``[S S]`` with L = n_ctx // 2 (the positional-shortcut task).
        random_start: put random filler before the segment too (else the segment starts the
            sequence and the filler follows the second copy). Either way the offset between
            the copies, L, changes from sequence to sequence.
    """

    n_ctx: int = 48
    d_vocab: int = 64
    min_len: int = 16
    max_len: int = 24
    fixed: bool = False
    random_start: bool = False

    def __post_init__(self) -> None:
        if not self.fixed and not (2 <= self.min_len <= self.max_len and 2 * self.max_len <= self.n_ctx):
            raise ValueError(
                f"need 2 <= min_len <= max_len and 2*max_len <= n_ctx, got min_len={self.min_len}, "
                f"max_len={self.max_len}, n_ctx={self.n_ctx}"
            )
        longest = self.n_ctx // 2 if self.fixed else self.max_len
        if longest > self.d_vocab:
            raise ValueError(f"a segment of {longest} tokens cannot have all-different tokens from a "
                             f"vocabulary of {self.d_vocab}: lower max_len (or n_ctx) or raise d_vocab")


def make_batch(task: TaskConfig, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the task.

    Returns:
        tokens ``[batch, n_ctx]`` and ``repeated`` ``[batch, n_ctx - 1]`` (bool): entry p is True
        when the token at p+1 (the one predicted at position p) is predictable from an earlier
        copy, i.e. it lies in the second copy after its first token.
    """
    B, n = batch_size, task.n_ctx
    tokens = torch.randint(0, task.d_vocab, (B, n), generator=generator)
    repeated = torch.zeros(B, n - 1, dtype=torch.bool)
    if task.fixed:
        lengths = torch.full((B,), n // 2)
        starts = torch.zeros(B, dtype=torch.long)
    else:
        lengths = torch.randint(task.min_len, task.max_len + 1, (B,), generator=generator)
        starts = (torch.rand(B, generator=generator) * (n - 2 * lengths + 1)).long()
        if not task.random_start:
            starts.zero_()
    for b in range(B):
        L, s = int(lengths[b]), int(starts[b])
        seg = torch.randperm(task.d_vocab, generator=generator)[:L]
        tokens[b, s: s + L] = seg
        tokens[b, s + L: s + 2 * L] = seg
        repeated[b, s + L: s + 2 * L - 1] = True
    return tokens, repeated


def split_loss(logits: torch.Tensor, tokens: torch.Tensor, repeated: torch.Tensor) -> tuple[float, float]:
    """Mean loss on repeated tokens and on first-occurrence tokens."""
    loss = head_scores.per_token_loss(logits, tokens)
    return loss[repeated].mean().item(), loss[~repeated].mean().item()


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """One training run of an attention-only transformer on the task."""

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    lr: float = 3e-2
    batch_size: int = 64
    n_steps: int = 500
    eval_every: int = 20
    seed: int = 0
    normalization_type: str | None = None
    task: TaskConfig = field(default_factory=TaskConfig)
    probe_half_len: int = 20
    label: str = "2-layer"


@dataclass
class Run:
    """A finished run: the model, its History, and attention snapshots on one probe sequence."""

    config: RunConfig
    model: Any
    history: History
    probe_tokens: torch.Tensor  # [n_probe, 2 * probe_half_len] repeated random tokens
    snapshot_steps: list[int]
    snapshots: torch.Tensor  # [n_snapshots, n_layers, n_heads, q, k] on probe_tokens[0]
    cpu_seconds: float = 0.0  # CPU time of the training loop (process time, all threads)

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the training loop (inflated when the machine is shared)."""
        return self.history.seconds

    def scores(self) -> head_scores.HeadScores:
        """Per-head scores of the trained model on the probe sequences."""
        return head_scores.score_all_heads(self.model, half_len=self.config.probe_half_len,
                                       tokens=self.probe_tokens, batch_size=len(self.probe_tokens))


def probe_tokens(task: TaskConfig, half_len: int, n: int = 16, seed: int = 1234) -> torch.Tensor:
    """Repeated random tokens ``[n, 2*half_len]`` for scoring the toy models' heads."""
    if 2 * half_len > task.n_ctx:
        raise ValueError(f"probe of 2*{half_len} tokens does not fit in n_ctx={task.n_ctx}")
    return head_scores.random_repeated_tokens(n, half_len, 0, task.d_vocab, seed=seed)


def toy_params(model_or_state: Any) -> dict[str, torch.Tensor]:
    """The toy bridge's parameters by state-dict name (live Parameters, so gradients reach the bridge)."""
    if isinstance(model_or_state, dict):
        return model_or_state
    return dict(model_or_state.state_dict(keep_vars=True))


def fast_forward(model_or_state: Any, tokens: torch.Tensor, n_heads: int | None = None,
                 return_patterns: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """The attention-only toy model's forward in plain torch, on the bridge's own weights.

    The same computation as ``model(tokens)`` for a model from `attn_only_model` without
    LayerNorm (tested equal to it), without the bridge's hook machinery, which costs far more
    than the arithmetic of so small a model. Per layer: ``q, k, v`` as ``[batch, head, pos,
    d_head]``, scores ``q @ k^T / sqrt(d_head)`` with a causal mask, softmax, ``z = pattern @ v``,
    and the output projection added to the residual stream. Ordinary batched matmuls on
    ``[batch, head, pos, d_head]`` tensors are fast on a CPU (an einsum over a big batch can
    turn into thousands of tiny matmuls).

    Args:
        model_or_state: the bridge (its Parameters are used, so training updates the bridge)
            or the dict returned by `toy_params`.
        tokens: ``[batch, pos]`` token ids, pos <= n_ctx.
        n_heads: defaults to the model's own (needed when a dict is given).
        return_patterns: also return every layer's attention pattern ``[batch, head, q, k]``.

    Returns:
        logits ``[batch, pos, d_vocab]`` (and the list of patterns).
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    if n_heads is None:
        cfg = getattr(model_or_state, "cfg", None)
        if cfg is None:
            raise ValueError("pass n_heads when giving a parameter dict")
        n_heads = int(cfg.n_heads)
    s = toy_params(model_or_state)
    if any(".ln" in k or k.startswith("ln_final") for k in s):
        raise ValueError("fast_forward supports attention-only models without LayerNorm; use model(tokens)")
    if any(".mlp." in k for k in s):
        raise ValueError("fast_forward supports attention-only models (no MLPs); use model(tokens)")
    B, P = tokens.shape
    if P > s["pos_embed.weight"].shape[0]:
        raise ValueError(f"{P} tokens exceed the context of {s['pos_embed.weight'].shape[0]}")
    d_model = s["embed.weight"].shape[1]
    d_head = d_model // n_heads
    n_layers = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("blocks."))
    x = s["embed.weight"][tokens] + s["pos_embed.weight"][:P]
    mask = torch.ones(P, P, dtype=torch.bool).triu(1)
    patterns = []

    def heads(t: torch.Tensor) -> torch.Tensor:  # [B, P, d_model] -> [B, H, P, d_head]
        return t.view(B, P, n_heads, d_head).transpose(1, 2)

    for layer in range(n_layers):
        a = f"blocks.{layer}.attn."
        q = heads(F.linear(x, s[a + "q.weight"], s.get(a + "q.bias")))
        k = heads(F.linear(x, s[a + "k.weight"], s.get(a + "k.bias")))
        v = heads(F.linear(x, s[a + "v.weight"], s.get(a + "v.bias")))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d_head)
        pattern = scores.masked_fill(mask, float("-inf")).softmax(-1)
        if return_patterns:
            patterns.append(pattern)
        z = (pattern @ v).transpose(1, 2).reshape(B, P, d_model)
        x = x + F.linear(z, s[a + "o.weight"], s.get(a + "o.bias"))
    logits = F.linear(x, s["unembed.weight"], s.get("unembed.bias"))
    return (logits, patterns) if return_patterns else logits


@torch.no_grad()
def _patterns(model, tokens: torch.Tensor) -> list[torch.Tensor]:
    names = [hook_name(l, "pattern") for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return [cache[n] for n in names]


def train_induction(cfg: RunConfig, live: bool = True, progress: bool = True) -> Run:
    """Train an attention-only model on the task; returns a `Run`.

    The weights live in a `TransformerBridge` (from `attn_only_model`), so every analysis
    tool works on the result, but training and evaluation run `fast_forward` on those same
    Parameters: the bridge's hook machinery would cost more than the model's arithmetic.

    Every `eval_every` steps it records, on a fixed evaluation batch of the run's own task:
    ``loss_repeated`` and ``loss_first``; on repeated random probe tokens: the best
    ``induction`` score (last layer) and the best ``previous_token`` score (layers before the
    last); and a snapshot of every head's attention on one probe sequence.
    """
    if cfg.normalization_type is not None:
        raise ValueError("train_induction trains models without LayerNorm (normalization_type=None), "
                         f"got {cfg.normalization_type!r}")
    if cfg.eval_every < 1 or cfg.n_steps < 1:
        raise ValueError(f"n_steps and eval_every must be >= 1, got {cfg.n_steps} and {cfg.eval_every}")
    torch.manual_seed(cfg.seed)
    model = attn_only_model(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                            d_vocab=cfg.task.d_vocab, n_ctx=cfg.task.n_ctx,
                            normalization_type=cfg.normalization_type, seed=cfg.seed)
    params = toy_params(model)
    n_heads = cfg.n_heads
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    eval_tokens, eval_rep = make_batch(cfg.task, 256, torch.Generator().manual_seed(777))
    probe = probe_tokens(cfg.task, cfg.probe_half_len)
    snaps: list[torch.Tensor] = []
    snap_steps: list[int] = []

    def step_fn(step: int) -> float:
        tokens, _ = make_batch(cfg.task, cfg.batch_size, gen)
        logits = fast_forward(params, tokens, n_heads)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    @torch.no_grad()
    def eval_fn(step: int) -> dict[str, float]:
        rep, first = split_loss(fast_forward(params, eval_tokens, n_heads), eval_tokens, eval_rep)
        _, pats = fast_forward(params, probe, n_heads, return_patterns=True)
        ind = torch.stack([head_scores.induction_score(p, cfg.probe_half_len).mean(0) for p in pats])
        prev = torch.stack([head_scores.previous_token_score(p).mean(0) for p in pats])
        snaps.append(torch.stack([p[0] for p in pats]).half())
        snap_steps.append(step)
        out = {"loss_repeated": rep, "loss_first": first, "induction": ind[-1].max().item()}
        out["previous_token"] = prev[:-1].max().item() if cfg.n_layers > 1 else prev[0].max().item()
        return out

    plot = LivePlot([["loss_repeated", "loss_first"], ["induction", "previous_token"]],
                    title=f"{cfg.label}: loss and head scores while training") if live else None
    model.train()
    cpu0 = time.process_time()
    history = train(step_fn, cfg.n_steps, eval_fn=eval_fn, eval_every=cfg.eval_every, live=plot,
                    live_every=cfg.eval_every * 4, desc=cfg.label, progress=progress)
    if plot is not None:
        plot.close(history)
    model.eval()
    return Run(cfg, model, history, probe, snap_steps, torch.stack(snaps), time.process_time() - cpu0)


# --------------------------------------------------------------------------------------
# Reading a run
# --------------------------------------------------------------------------------------


@dataclass
class PhaseChange:
    """Where the repeated-token loss plateaus and where it drops."""

    initial_loss: float
    plateau_end: int  # last step still within `tolerance` of the initial loss
    drop_step: int  # step of the steepest fall between two evaluations
    drop: float  # how much the loss fell in that one interval (nats)
    final_loss: float

    def __str__(self) -> str:
        return (f"repeated-token loss: {self.initial_loss:.2f} at the start, still within 10% of it until step "
                f"{self.plateau_end}, steepest fall ({self.drop:.2f} nats in one interval) ending at step "
                f"{self.drop_step}, {self.final_loss:.2f} at the end")


def phase_change(history: History, key: str = "loss_repeated", tolerance: float = 0.1) -> PhaseChange:
    """Locate the plateau (loss within `tolerance` x initial) and the steepest drop of `key`."""
    steps, loss = np.array(history.steps), np.array(history[key])
    within = np.nonzero(loss >= (1 - tolerance) * loss[0])[0]
    plateau_end = int(steps[within.max()]) if len(within) else int(steps[0])
    drop = int(np.argmin(np.diff(loss)))
    return PhaseChange(float(loss[0]), plateau_end, int(steps[drop + 1]), float(-np.diff(loss)[drop]), float(loss[-1]))


@dataclass
class Circuit:
    """The two heads of an induction circuit, found from scores (never typed in)."""

    previous_token_head: tuple[int, int]
    induction_head: tuple[int, int]
    previous_token_score: float
    induction_score: float
    duplicate_token_score: float
    ov_copying: torch.Tensor  # [n_layers, n_heads]
    k_composition: torch.Tensor  # [heads of layer 0, heads of layer 1]
    k_baseline: float
    chance: float

    @property
    def k_composition_of_pair(self) -> float:
        return float(self.k_composition[self.previous_token_head[1], self.induction_head[1]])

    def summary(self) -> str:
        (l0, h0), (l1, h1) = self.previous_token_head, self.induction_head
        return "\n".join([
            f"previous-token head: L{l0}H{h0} (score {self.previous_token_score:.2f}; chance {self.chance:.2f})",
            f"induction head:      L{l1}H{h1} (score {self.induction_score:.2f}; chance {self.chance:.2f})",
            f"OV copying of the induction head: {float(self.ov_copying[l1, h1]):.2f} of tokens copied at top-1",
            f"K-composition L{l0}H{h0} -> L{l1}H{h1}: {self.k_composition_of_pair:.2f} "
            f"(random-matrix baseline {self.k_baseline:.2f})",
        ])


def find_circuit(model, scores: head_scores.HeadScores) -> Circuit:
    """Pick the induction head (best induction score in the last layer) and the previous-token head
    (best previous-token score in layer 0) from computed scores, and compute the weight scores."""
    if model.cfg.n_layers != 2:
        raise ValueError("find_circuit expects a 2-layer model (layer 0 -> layer 1)")
    ind_h = int(scores.induction[1].argmax())
    prev_h = int(scores.previous_token[0].argmax())
    w = head_scores.head_weights(model)
    ov = torch.tensor([[head_scores.ov_copying_score(w.W_E, w.ov(l, h), w.W_U) for h in range(model.cfg.n_heads)]
                       for l in range(model.cfg.n_layers)])
    kc = head_scores.composition_scores(w, 0, 1, "K")
    base = head_scores.composition_baseline(model.cfg.d_model, model.cfg.d_head)
    return Circuit((0, prev_h), (1, ind_h), float(scores.previous_token[0, prev_h]),
                   float(scores.induction[1, ind_h]), float(scores.duplicate_token[1, ind_h]),
                   ov, kc, base, scores.chance)


# --------------------------------------------------------------------------------------
# The causal check
# --------------------------------------------------------------------------------------


@torch.no_grad()
def ablation_experiment(model, circuit: Circuit, tokens: torch.Tensor, half_len: int) -> dict[str, float]:
    """Induction score of the induction head: clean, with the previous-token head mean-ablated,
    and ablated but with the induction head's *keys* (or, as a control, its *queries*)
    patched back from the clean run.

    Mean ablation replaces the head's output ``z`` by its mean over the batch, position by
    position: it keeps the head's average contribution and removes only what depends on the
    tokens (here, which token came just before). Restoring the keys alone brings the score
    back if the previous-token head acts through K-composition (Elhage et al. 2021). All
    three runs are copies of one `run_copies` pass.
    """
    (l0, h0), (l1, h1) = circuit.previous_token_head, circuit.induction_head
    pat = hook_name(l1, "pattern")
    mean = ablation_values(model, tokens, "mean", tokens, layers=[l0])[l0]
    clean = activations(model, tokens, [hook_name(l1, "k"), hook_name(l1, "q")])
    ablate = Patch(l0, h0, mean)
    copies = [[ablate], [ablate, Patch(l1, h1, clean[hook_name(l1, "k")], "k")],
              [ablate, Patch(l1, h1, clean[hook_name(l1, "q")], "q")]]
    _, cap = run_copies(model, tokens, copies, capture=[pat], stop_after_layer=l1)
    score = [head_scores.induction_score(p[:, h1], half_len).mean().item() for p in cap[pat]]
    return dict(zip(["clean", "ablated", "ablated + keys restored", "ablated + queries restored"], score))


# --------------------------------------------------------------------------------------
# The circuit in the weights
# --------------------------------------------------------------------------------------


@dataclass
class WeightCircuits:
    """The circuit read from the weights alone (token-embedding and positional paths; no biases).

    ``full_ov``: the induction head's ``W_E W_OV W_U`` [vocab, vocab]; ``positional``: the
    previous-token head's positional pattern [n_ctx, n_ctx]; ``k_circuit``: the K-composition
    virtual weights previous-token head -> induction head [vocab, vocab]. The ``*_top1`` tensors
    hold the same top-1 reading for every candidate head, so the circuit's heads can be compared.
    """

    full_ov: torch.Tensor
    positional: torch.Tensor
    k_circuit: torch.Tensor
    ov_top1: torch.Tensor  # [n_heads of the last layer]: share of tokens copied at top-1
    previous_top1: torch.Tensor  # [n_heads of layer 0]: share of positions attending most to q-1
    k_top1: torch.Tensor  # [n_heads of layer 0]: share of query tokens whose top key token is themselves


@torch.no_grad()
def weight_circuits(model, circuit: Circuit) -> WeightCircuits:
    """Full OV circuit, positional QK pattern and K-composition virtual weights of `circuit` (Elhage et al. 2021)."""
    w = head_scores.head_weights(model)
    (l0, h0), (l1, h1) = circuit.previous_token_head, circuit.induction_head
    heads = range(model.cfg.n_heads)
    ov = [head_scores.full_ov_circuit(w, l1, h) for h in heads]
    pos = [head_scores.positional_qk_pattern(model, l0, h) for h in heads]
    kc = [head_scores.k_composition_circuit(w, (l0, h), (l1, h1)) for h in heads]
    top = head_scores.diagonal_top1
    return WeightCircuits(ov[h1], pos[h0], kc[h0], torch.tensor([top(m) for m in ov]),
                          torch.tensor([top(m, -1) for m in pos]), torch.tensor([top(m) for m in kc]))


def plot_weight_circuits(wc: WeightCircuits, circuit: Circuit):
    """Three matrices that should look like (shifted) identities if the circuit is an induction circuit."""
    import matplotlib.pyplot as plt

    (l0, h0), (l1, h1) = circuit.previous_token_head, circuit.induction_head
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    panels = [(wc.full_ov, f"full OV circuit of L{l1}H{h1}\n$W_E W_{{OV}} W_U$", "logit of output token", "attended token"),
              (wc.positional, f"positional QK pattern of L{l0}H{h0}\nsoftmax($W_{{pos}} W_{{QK}} W_{{pos}}^T$)",
               "key position", "query position"),
              (wc.k_circuit, f"K-composition L{l0}H{h0} -> L{l1}H{h1}\n$W_E W_{{QK}} (W_E W_{{OV}})^T$",
               "token moved into the key by L" + f"{l0}H{h0}", "query token")]
    for k, (ax, (m, title, xl, yl)) in enumerate(zip(axes, panels)):
        m = m.float() if k == 1 else m.float() - m.float().mean(-1, keepdim=True)  # OV/K rows: relative to their mean
        lim = 1.0 if k == 1 else float(m.abs().quantile(0.99))
        im = ax.imshow(m, cmap="Blues" if k == 1 else "RdBu_r", vmin=0 if k == 1 else -lim, vmax=lim)
        ax.set(title=title, xlabel=xl, ylabel=yl)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return finish(fig)


# --------------------------------------------------------------------------------------
# Hooks, written out (what `ablation_experiment` does inside the engine)
# --------------------------------------------------------------------------------------


def mean_ablation_hook(z: torch.Tensor, hook: Any, head: int, mean_z: torch.Tensor) -> torch.Tensor:
    """A hook on ``hook_z``: a new tensor whose `head` output is its mean ``mean_z[:, head]`` ([pos, head, d_head])."""
    out = z.clone()
    out[:, :, head] = mean_z[:, head]
    return out


def restore_keys_hook(k: torch.Tensor, hook: Any, head: int, clean_k: torch.Tensor, n_heads: int) -> torch.Tensor:
    """A hook on ``hook_k``: a new tensor whose keys for query head `head` are the clean run's.

    ``k`` is ``[batch, pos, n_kv_heads, d_head]``; with grouped-query attention, query head h reads
    key/value head ``h // (n_heads // n_kv_heads)``.
    """
    out = k.clone()
    kv = head // (n_heads // k.shape[2])
    out[:, :, kv] = clean_k[:, :, kv]
    return out


@torch.no_grad()
def induction_score_with_hooks(model, tokens: torch.Tensor, half_len: int, head: tuple[int, int],
                               fwd_hooks: list) -> float:
    """Induction score of `head` in one run with `fwd_hooks` (``[(hook name, fn)]``) applied."""
    layer, h = head
    seen: dict[str, torch.Tensor] = {}

    def keep(pattern, hook):
        seen["p"] = pattern[:, h].detach().clone()

    model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks) + [(hook_name(layer, "pattern"), keep)])
    return head_scores.induction_score(seen["p"], half_len).mean().item()


__all__ = [
    "TaskConfig", "make_batch", "split_loss", "RunConfig", "Run", "probe_tokens", "train_induction",
    "PhaseChange", "phase_change", "Circuit", "find_circuit", "ablation_experiment", "WeightCircuits",
    "weight_circuits", "plot_weight_circuits", "mean_ablation_hook", "restore_keys_hook", "induction_score_with_hooks",
]


# --------------------------------------------------------------------------------------
# Figures and explorers
# --------------------------------------------------------------------------------------



def describe_example(tokens: torch.Tensor, repeated: torch.Tensor) -> str:
    """One task sequence as text: the predictable (repeated) tokens are bracketed."""
    marks = ["  "] + ["[]" if r else "  " for r in repeated.tolist()]
    return " ".join(f"[{t}]" if m == "[]" else str(t) for t, m in zip(tokens.tolist(), marks))


def plot_runs(runs: list[Run], title: str = "Three runs, one task family"):
    """Repeated-token loss, first-occurrence loss and head scores of several runs, side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for run in runs:
        h = run.history
        line, = axes[0].plot(h.steps, h["loss_repeated"], label=run.config.label)
        axes[1].plot(h.steps, h["loss_first"], color=line.get_color(), label=run.config.label)
        axes[2].plot(h.steps, h["induction"], color=line.get_color(), label=f"{run.config.label}: induction")
        axes[2].plot(h.steps, h["previous_token"], color=line.get_color(), ls=":",
                     label=f"{run.config.label}: previous-token")
    axes[0].set_title("loss on repeated tokens\n(each run on its own task)", fontsize=10)
    axes[1].set_title("loss on first-occurrence tokens", fontsize=10)
    axes[2].set_title("best head scores on repeated random tokens", fontsize=10)
    for a in axes:
        a.set_xlabel("step")
        a.legend(fontsize=7)
    axes[0].set_ylabel("nats")
    fig.suptitle(title)
    fig.tight_layout()
    return finish(fig)


def plot_snapshot(run: Run, index: int, heads: list[tuple[int, int]] | None = None):
    """The training-step scrubber's view: the loss curve with a marker, and attention patterns
    of `heads` (default: every head) on the probe sequence at snapshot `index`."""
    import matplotlib.pyplot as plt

    index = int(np.clip(index, 0, len(run.snapshot_steps) - 1))
    step = run.snapshot_steps[index]
    heads = heads or [(l, h) for l in range(run.config.n_layers) for h in range(run.config.n_heads)]
    fig, axes = plt.subplots(1, 1 + len(heads), figsize=(3.3 * (1 + len(heads)), 3.3))
    h = run.history
    axes[0].plot(h.steps, h["loss_repeated"], label="repeated")
    axes[0].plot(h.steps, h["loss_first"], label="first occurrence")
    axes[0].axvline(step, color="k", lw=1)
    axes[0].set_title(f"step {step}", fontsize=10)
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=7)
    L = run.config.probe_half_len
    for ax, (l, hd) in zip(axes[1:], heads):
        pat = run.snapshots[index, l, hd].float()
        ax.imshow(pat, cmap="Blues", vmin=0, vmax=1)
        prev = head_scores.previous_token_score(pat).item()
        ind = head_scores.induction_score(pat, L).item()
        ax.set_title(f"L{l}H{hd}: prev {prev:.2f}, ind {ind:.2f}", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.tight_layout()
    return finish(fig)


def plot_head(pattern: torch.Tensor, labels: list[str], scores: head_scores.HeadScores, layer: int, head: int,
              title: str = ""):
    """One head: its attention on a repeated sequence, and its three scores next to the model's best."""
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    a0.imshow(pattern.float(), cmap="Blues", vmin=0, vmax=1)
    n = len(labels)
    step = max(1, n // 24)
    a0.set_xticks(range(0, n, step))
    a0.set_xticklabels(labels[::step], rotation=90, fontsize=6)
    a0.set_yticks(range(0, n, step))
    a0.set_yticklabels(labels[::step], fontsize=6)
    a0.set_xlabel("key (attended to)")
    a0.set_ylabel("query")
    a0.set_title(f"{title} L{layer}H{head}: attention on a repeated sequence", fontsize=9)
    names = ["previous_token", "induction", "duplicate_token"]
    this = [float(getattr(scores, k)[layer, head]) for k in names]
    best = [float(getattr(scores, k).max()) for k in names]
    x = np.arange(3)
    a1.bar(x - 0.2, this, 0.4, label=f"L{layer}H{head}")
    a1.bar(x + 0.2, best, 0.4, label="best head in the model", alpha=0.5)
    a1.axhline(scores.chance, color="grey", ls="--", lw=0.8, label="uniform attention")
    a1.set_xticks(x)
    a1.set_xticklabels(["previous\ntoken", "induction", "duplicate\ntoken"], fontsize=8)
    a1.set_ylim(0, 1)
    a1.legend(fontsize=7)
    a1.set_title("scores (mean attention to the target key)", fontsize=9)
    fig.tight_layout()
    return finish(fig)


# --------------------------------------------------------------------------------------
# Heads of any model, for the explorer (the pretrained-model part lives in `induction_lm`)
# --------------------------------------------------------------------------------------


@torch.no_grad()
def all_patterns(model, tokens: torch.Tensor) -> torch.Tensor:
    """Every head's attention on one sequence: ``[n_layers, n_heads, q, k]`` (float16 to stay small)."""
    if tokens.ndim == 1:
        tokens = tokens[None]
    return torch.stack([p[0] for p in _patterns(model, tokens[:1])]).half()


def token_labels(model, tokens: torch.Tensor) -> list[str]:
    """Readable labels for a 1-D token sequence (ids for toy models without a tokenizer)."""
    if getattr(model, "tokenizer", None) is None:
        return [str(int(t)) for t in tokens]
    return [model.tokenizer.decode([int(t)]).replace("\n", "\\n") for t in tokens]


def plot_score_maps(scores: head_scores.HeadScores, title: str = "", names=("previous_token", "induction", "duplicate_token")):
    """One layer x head heatmap per score, on a shared 0-1 colour scale."""
    import matplotlib.pyplot as plt

    n_layers, n_heads = scores.induction.shape
    fig, axes = plt.subplots(1, len(names), figsize=(min(4 + 0.5 * n_heads, 6) * len(names) * 0.75,
                                                     min(1.6 + 0.18 * n_layers, 7)), squeeze=False)
    for ax, name in zip(axes[0], names):
        s = getattr(scores, name).numpy()
        im = ax.imshow(s, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_title(name.replace("_", "-") + " score", fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(0, n_layers, max(1, n_layers // 10)))
        if s.size <= 16:
            for (i, j), v in np.ndenumerate(s):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w" if v < 0.6 else "k")
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=11)
    return finish(fig)


@torch.no_grad()
def run_report(runs: list[Run], task: TaskConfig | None = None) -> list[dict[str, float | str]]:
    """For each run: final repeated-token loss on its own task and on the variable-length task
    (`task`, default `TaskConfig()`), and its best induction / previous-token scores on the probe."""
    task = task or TaskConfig()
    tokens, rep = make_batch(task, 256, torch.Generator().manual_seed(4321))
    rows = []
    for run in runs:
        s = run.scores()
        prev = s.previous_token[:-1] if run.config.n_layers > 1 else s.previous_token
        rows.append({
            "run": run.config.label,
            "own task": run.history.last("loss_repeated"),
            "variable-length task": split_loss(run.model(tokens), tokens, rep)[0],
            "best induction": float(s.induction[-1].max()),
            "best previous-token": float(prev.max()),
        })
    return rows


def format_report(rows: list[dict]) -> str:
    """The rows of `run_report` as a fixed-width table (2 decimals)."""
    keys = list(rows[0])
    head = f"{keys[0]:<22}" + "".join(f"{k:>22}" for k in keys[1:])
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r[keys[0]]:<22}" + "".join(f"{r[k]:>22.2f}" for k in keys[1:]))
    return "\n".join(lines)


@dataclass
class HeadExplorerData:
    """Precomputed patterns and scores, per model name, for the head explorer."""

    entries: dict[str, tuple[torch.Tensor, list[str], head_scores.HeadScores]] = field(default_factory=dict)

    def add(self, name: str, model, tokens: torch.Tensor, scores: head_scores.HeadScores) -> None:
        """Store every head's attention on the 1-D repeated sequence `tokens`, and the model's scores."""
        self.entries[name] = (all_patterns(model, tokens), token_labels(model, tokens), scores)

    def view(self, model: str, layer: int, head: int):
        """The figure for one head (layer and head are clipped to the model's size)."""
        pats, labels, scores = self.entries[model]
        layer = int(min(layer, pats.shape[0] - 1))
        head = int(min(head, pats.shape[1] - 1))
        return plot_head(pats[layer, head], labels, scores, layer, head, title=model)
