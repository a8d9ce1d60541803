"""Grokking modular addition: data, a fast trainer, checkpoints and runs (notebook 01).

The model is the 1-layer ReLU transformer of Nanda et al. (2023), built by
`mi_tutor.models.modular_addition_model` as a TransformerLens `TransformerBridge`. Its
weights live in the bridge, so every TransformerLens tool works on the trained model.

Why training is fast here: the loss reads only the logits at the last position ("="). So
`fast_logits` computes the query, the MLP and the unembedding only there (keys and values
still use all three positions). That is the same function as the model's own forward at
the last position (`tests/test_nb01_grokking.py` checks it), at a fraction of the cost.

The analysis of a trained model (Fourier basis, key frequencies, progress measures) is in
`mi_tutor.fourier`; it takes a model or a state dict, so it runs unchanged on the live run
and on the paper-scale checkpoints in ``mi_tutor/data/grokking/``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from .env import available_cores, one_thread
from .models import modular_addition_model
from .training import History, LivePlot, train

#: Where the paper-scale run's artefacts ship (made by scripts/train_grokking_paper.py).
DATA_DIR = Path(__file__).resolve().parent / "data" / "grokking"

#: State-dict keys of the native bridge (see /work/shared/TL4.md); `unembed.bias` is a zero buffer.
KEYS = {
    "W_E": "embed.weight", "W_pos": "pos_embed.weight",
    "q": "blocks.0.attn.q.weight", "k": "blocks.0.attn.k.weight", "v": "blocks.0.attn.v.weight",
    "o": "blocks.0.attn.o.weight", "in": "blocks.0.mlp.in.weight", "b_in": "blocks.0.mlp.in.bias",
    "out": "blocks.0.mlp.out.weight", "b_out": "blocks.0.mlp.out.bias", "U": "unembed.weight",
}
#: Biases the paper's model does not have: kept at zero (frozen) during training.
FROZEN_BIASES = ("blocks.0.attn.q.bias", "blocks.0.attn.k.bias", "blocks.0.attn.v.bias", "blocks.0.attn.o.bias")


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def all_pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every input "a b =" as tokens ``[p*p, 3]`` (row ``a*p + b``) and its label ``(a+b) % p``."""
    if p < 2:
        raise ValueError(f"p must be at least 2, got {p}")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return tokens, (a + b) % p


def make_split(p: int, frac_train: float, seed: int = 0, kind: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
    """Split the p*p pairs into train and test indices (rows of `all_pairs`).

    Args:
        kind: ``"random"`` shuffles all ordered pairs (the paper's split). ``"symmetric"``
            shuffles unordered pairs {a, b}, so (a, b) and (b, a) always land on the same side
            and no test pair has its swapped twin in the training set.

    Returns:
        (train_idx, test_idx), each sorted.
    """
    if not 0.0 < frac_train < 1.0:
        raise ValueError(f"frac_train must be between 0 and 1 (exclusive), got {frac_train}")
    gen = torch.Generator().manual_seed(seed)
    n = p * p
    if kind == "random":
        perm = torch.randperm(n, generator=gen)
        cut = int(round(frac_train * n))
        train_idx, test_idx = perm[:cut], perm[cut:]
    elif kind == "symmetric":
        a = torch.arange(p).repeat_interleave(p)
        b = torch.arange(p).repeat(p)
        group = torch.minimum(a, b) * p + torch.maximum(a, b)  # id of the unordered pair
        groups = torch.unique(group)
        perm = groups[torch.randperm(len(groups), generator=gen)]
        sizes = torch.where((perm // p) == (perm % p), 1, 2)  # diagonal pairs have no twin
        n_train_groups = int(torch.searchsorted(torch.cumsum(sizes, 0), torch.tensor(frac_train * n)).item())
        in_train = torch.isin(group, perm[:n_train_groups])
        train_idx, test_idx = torch.nonzero(in_train).flatten(), torch.nonzero(~in_train).flatten()
    else:
        raise ValueError(f"kind must be 'random' or 'symmetric', got {kind!r}")
    return train_idx.sort().values, test_idx.sort().values


def twin_index(idx: torch.Tensor, p: int) -> torch.Tensor:
    """Row of the swapped pair (b, a) for each row `idx` of (a, b)."""
    return (idx % p) * p + idx // p


def twin_in_train(test_idx: torch.Tensor, train_idx: torch.Tensor, p: int) -> torch.Tensor:
    """Boolean mask over `test_idx`: is the pair's swapped twin (b, a) in the training set?"""
    return torch.isin(twin_index(test_idx, p), train_idx)


# --------------------------------------------------------------------------------------
# The model and its fast last-position forward
# --------------------------------------------------------------------------------------


def params_of(model_or_state: Any) -> Mapping[str, torch.Tensor]:
    """The bridge's state dict (live Parameters when given a model, so gradients flow into it)."""
    if isinstance(model_or_state, Mapping):
        return model_or_state
    return model_or_state.state_dict(keep_vars=True)


def n_heads_of(model_or_state: Any, n_heads: int | None = None) -> int:
    """Number of attention heads: given, else the model's config, else 4 (the paper's model)."""
    if n_heads is not None:
        return n_heads
    cfg = getattr(model_or_state, "cfg", None)
    return int(cfg.n_heads) if cfg is not None else 4




class _ThreadInvariantLinear(torch.autograd.Function):
    """``x @ w.T`` whose weight gradient ``g.T @ x`` is reduced on one thread.

    That product sums over the batch. On two threads MKL may split that sum between them
    (measured on an Intel Xeon: weight gradients off by 1e-10 after one step, losses off in
    the fourth digit after 40), so the training run would depend on its thread count. The
    forward and the input gradient split over the batch rows, which leaves every sum whole,
    so they keep both threads.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        return x @ w.T

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        grad_x = g @ w if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            with one_thread():
                grad_w = g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        return grad_x, grad_w


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T``; while training `w`, with a weight gradient that does not depend on the thread count."""
    if torch.is_grad_enabled() and w.requires_grad:
        return _ThreadInvariantLinear.apply(x, w)
    return x @ w.T


def fast_forward(model_or_state: Any, tokens: torch.Tensor, n_heads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and MLP activations at the last position only.

    The same computation as the bridge's forward at position -1 (no LayerNorm, causal
    attention over the 3 positions, ReLU MLP), organised for speed:

    - the loss reads only the last position, so the query, the MLP and the unembedding
      are computed there alone;
    - the input at each position is one of only ``d_vocab`` tokens, so queries, keys and
      values are computed once per (position, token) in small tables
      and then gathered per example, instead of once per example.

    Args:
        model_or_state: the bridge (trains its Parameters) or a state dict (analysis).
        tokens: ``[batch, 3]`` token ids "a b =".
        n_heads: defaults to the model's own, or 4 (the paper's) for a state dict.

    Returns:
        (logits ``[batch, p]``, neuron activations ``[batch, d_mlp]``).
    """
    if tokens.ndim != 2 or tokens.shape[1] != 3:
        raise ValueError(f"tokens must have shape [batch, 3] ('a b ='), got {tuple(tokens.shape)}")
    n_heads = n_heads_of(model_or_state, n_heads)
    s = params_of(model_or_state)
    d_model = s[KEYS["W_E"]].shape[1]
    d_head = d_model // n_heads
    zero = torch.zeros(())

    def bias(name: str) -> torch.Tensor:
        return s.get(name.replace("weight", "bias"), zero)

    # x[i, t] = embedding of token t at position i: [3, d_vocab, d_model]
    x = s[KEYS["W_E"]][None] + s[KEYS["W_pos"]][:, None]
    q_tab = (_linear(x[2], s[KEYS["q"]]) + bias(KEYS["q"])).view(-1, n_heads, d_head)  # [V, H, dh]
    k_tab = (_linear(x, s[KEYS["k"]]) + bias(KEYS["k"])).view(3, -1, n_heads, d_head)  # [3, V, H, dh]
    v_tab = (_linear(x, s[KEYS["v"]]) + bias(KEYS["v"])).view(3, -1, n_heads, d_head)
    q = q_tab[tokens[:, 2]]  # [b, H, dh]
    k = torch.stack([k_tab[i, tokens[:, i]] for i in range(3)], dim=1)  # [b, 3, H, dh]
    # Broadcast-and-sum rather than einsum: einsum turns these into thousands of tiny batched
    # matmuls whose backward is 5x slower on a CPU.
    pattern = ((q[:, None] * k).sum(-1) / math.sqrt(d_head)).softmax(1)  # [b, 3, H]
    z = sum(pattern[:, i, :, None] * v_tab[i, tokens[:, i]] for i in range(3))  # [b, H, dh]
    attn_out = _linear(z.reshape(len(tokens), -1), s[KEYS["o"]])
    resid = x[2, tokens[:, 2]] + attn_out + bias(KEYS["o"])
    acts = torch.relu(_linear(resid, s[KEYS["in"]]) + s[KEYS["b_in"]])
    resid = resid + _linear(acts, s[KEYS["out"]]) + s[KEYS["b_out"]]
    logits = _linear(resid, s[KEYS["U"]]) + s.get("unembed.bias", zero)
    return logits, acts


def fast_logits(model_or_state: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Logits at the "=" position, ``[batch, p]`` (see `fast_forward`)."""
    return fast_forward(model_or_state, tokens)[0]


def forward_all(model_or_state: Any, tokens: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """`fast_forward` without gradients, `chunk` inputs at a time: (logits, activations).

    All 12,769 pairs at once need ~100 MB of temporaries; chunks of 4,096 need a third.
    """
    with torch.no_grad():
        parts = [fast_forward(model_or_state, tokens[i:i + chunk]) for i in range(0, len(tokens), chunk)]
    return torch.cat([lg for lg, _ in parts]), torch.cat([a for _, a in parts])


def model_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """The bridge's own forward, read at the last position: ``[batch, p]``."""
    return model(tokens)[:, -1]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of last-position logits (float64 log-softmax: losses reach 1e-7)."""
    return F.cross_entropy(logits.double(), labels)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@dataclass
class GrokConfig:
    """A grokking run. Defaults: the notebook's fast live setting (see the notebook for why)."""

    p: int = 113
    frac_train: float = 0.4
    lr: float = 3e-3
    weight_decay: float = 2.0
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    n_steps: int = 1500
    seed: int = 0  # model initialisation
    data_seed: int = 0  # train/test split
    split: str = "random"
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    eval_every: int = 10
    checkpoint_every: int = 50
    stop_test_acc: float | None = None  # stop early once test acc >= this ...
    stop_after: int = 0  # ... plus this many more steps (weight decay keeps cleaning up)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


PAPER = GrokConfig(p=113, frac_train=0.3, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98), warmup_steps=10,
                   n_steps=40_000, eval_every=100, checkpoint_every=100)
"""The paper's setting (Nanda et al. 2023): 30% train, lr 1e-3, wd 1.0, 40k full-batch epochs."""


@dataclass
class GrokRun:
    """A finished (or loaded) run: the model, what was recorded, and checkpoints by step."""

    cfg: GrokConfig
    model: Any
    history: History
    checkpoints: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    train_idx: torch.Tensor | None = None
    test_idx: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def p(self) -> int:
        return self.cfg.p

    @property
    def steps(self) -> list[int]:
        return sorted(self.checkpoints)

    def state_at(self, step: int) -> dict[str, torch.Tensor]:
        """The checkpoint nearest to `step` (float32)."""
        nearest = min(self.checkpoints, key=lambda s: abs(s - step))
        return {k: v.float() for k, v in self.checkpoints[nearest].items()}


def snapshot(model, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A detached copy of the model's weights (what a checkpoint stores)."""
    return {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()}


def make_optimizer(model, cfg: GrokConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with the paper's linear warm-up; attention biases stay frozen at zero."""
    params = []
    for name, prm in model.state_dict(keep_vars=True).items():
        if not isinstance(prm, torch.nn.Parameter):
            continue
        if name in FROZEN_BIASES:
            prm.requires_grad_(False)
        else:
            params.append(prm)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / max(cfg.warmup_steps, 1), 1.0))
    return opt, sched


def evaluate(model_or_state: Any, tokens: torch.Tensor, labels: torch.Tensor, train_idx: torch.Tensor,
             test_idx: torch.Tensor) -> dict[str, float]:
    """Train/test loss and accuracy from one (chunked) forward over all pairs.

    Only the logits are kept (the chunks of `forward_all`, without its 26 MB of activations):
    this runs at every evaluation of a training run, where those activations raised its peak memory.
    """
    with torch.no_grad():
        logits = torch.cat([fast_logits(model_or_state, tokens[i:i + 4096]) for i in range(0, len(tokens), 4096)])
    out = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        out[f"{split}_loss"] = float(loss_fn(logits[idx], labels[idx]))
        out[f"{split}_acc"] = float((logits[idx].argmax(-1) == labels[idx]).float().mean())
    return out


def train_grokking(
    cfg: GrokConfig | None = None,
    live: bool = True,
    progress: bool = True,
    on_checkpoint: Callable[[int, Any], None] | None = None,
    keep_checkpoints: bool = True,
    desc: str | None = None,
    max_seconds: float | None = None,
    threads: int | None = None,
) -> GrokRun:
    """Train the modular-addition transformer full-batch and record everything.

    Args:
        cfg: the run's settings (`GrokConfig`; default: `GrokConfig()`, the live setting).
        live: redraw a loss/accuracy figure in the notebook while training.
        progress: show a tqdm progress bar.
        on_checkpoint: called as ``on_checkpoint(step, model)`` at every checkpoint (scripts
            use it to write files).
        keep_checkpoints: keep every checkpoint in memory (0.9 MB each in float32).
        max_seconds: stop at the first evaluation after this much wall time (long scripts).
        threads: torch threads for this run (restored afterwards). Default: the cores this
            process can get now, at most two (`env.available_cores`: quota, affinity and the
            load of other processes). The choice changes the speed, not the run: under MKL's
            STRICT reproducible branch (`env.MKL_KERNELS`) the products do not depend on the
            thread count, and deterministic kernels cover the rest (tested: one and two
            threads give bitwise the same weights).

    Returns:
        A `GrokRun` whose model is the trained bridge (eval mode).
    """
    cfg = GrokConfig() if cfg is None else cfg
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads or available_cores(limit=2))
    # deterministic kernels: without them two runs on two threads already differed (and
    # differed from one thread) at step 20 (measured)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(cfg, live, progress, on_checkpoint, keep_checkpoints, desc, max_seconds)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=True)


def _sum_of_squares(model: torch.nn.Module) -> float:
    """Sum of squared weights, reduced on one thread: a two-thread reduction splits the sum
    differently on some CPUs (measured on an AMD EPYC: 984.99798 vs 984.99792 at step 20),
    and the run's numbers must not depend on its thread count."""
    with one_thread():
        return float(sum((prm.detach() ** 2).sum() for prm in model.parameters()))


def _train(cfg: GrokConfig, live: bool, progress: bool, on_checkpoint, keep_checkpoints: bool, desc: str | None,
           max_seconds: float | None) -> GrokRun:
    torch.manual_seed(cfg.seed)
    model = modular_addition_model(p=cfg.p, d_model=cfg.d_model, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, seed=cfg.seed)
    model.train()
    tokens, labels = all_pairs(cfg.p)
    train_idx, test_idx = make_split(cfg.p, cfg.frac_train, cfg.data_seed, cfg.split)
    train_tokens, train_labels = tokens[train_idx], labels[train_idx]
    opt, sched = make_optimizer(model, cfg)
    checkpoints: dict[int, dict[str, torch.Tensor]] = {}

    def step_fn(step: int) -> float:
        opt.zero_grad(set_to_none=True)
        # float64 log-softmax, as in the paper's code: in float32 the correct class's
        # probability rounds to 1 once the loss nears 1e-7, and its gradient vanishes
        loss = loss_fn(fast_logits(model, train_tokens), train_labels)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    def eval_fn(step: int) -> dict[str, float]:
        if step % cfg.checkpoint_every == 0 or step == cfg.n_steps:
            if keep_checkpoints:
                checkpoints[step] = snapshot(model)
            if on_checkpoint is not None:
                on_checkpoint(step, model)
        values = evaluate(model, tokens, labels, train_idx, test_idx)
        values["weight_norm"] = _sum_of_squares(model)
        return values

    stop_state: dict[str, int | None] = {"at": None}

    t_start = time.perf_counter()

    def stop_when(h: History) -> bool:
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds and h.steps[-1] % cfg.checkpoint_every == 0:
            return True
        if cfg.stop_test_acc is None:
            return False
        if stop_state["at"] is None and h.last("test_acc") >= cfg.stop_test_acc:
            stop_state["at"] = h.steps[-1]
        return stop_state["at"] is not None and h.steps[-1] >= stop_state["at"] + cfg.stop_after

    plot = LivePlot([["train_loss", "test_loss"], ["train_acc", "test_acc"]], logy=[True, False],
                    title=f"p={cfg.p}, {cfg.frac_train:.0%} train, wd={cfg.weight_decay}") if live else None
    history = train(step_fn, cfg.n_steps, eval_fn=eval_fn, eval_every=cfg.eval_every, live=plot,
                    live_every=max(cfg.eval_every * 10, 100), stop_when=stop_when, progress=progress,
                    desc=desc or f"grokking p={cfg.p}")
    last = history.steps[-1]
    if keep_checkpoints and last not in checkpoints:
        checkpoints[last] = snapshot(model)
    if plot is not None:
        plot.close(history)
    model.eval()
    return GrokRun(cfg, model, history, checkpoints, train_idx, test_idx)


def load_model_from_state(state: Mapping[str, torch.Tensor], cfg: GrokConfig):
    """A bridge holding the weights of `state` (e.g. a shipped checkpoint), in eval mode."""
    model = modular_addition_model(p=cfg.p, d_model=cfg.d_model, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, seed=cfg.seed)
    full = model.state_dict()
    full.update({k: v.float() for k, v in state.items()})
    model.load_state_dict(full)
    model.eval()
    return model


def grok_step(history: History, threshold: float = 0.95) -> int | None:
    """First recorded step at which test accuracy reached `threshold` (None if never)."""
    return history.first_step_where("test_acc", lambda v: v >= threshold)


def memorised_step(history: History, threshold: float = 0.99) -> int | None:
    """First recorded step at which train accuracy reached `threshold`."""
    return history.first_step_where("train_acc", lambda v: v >= threshold)


__all__ = [
    "DATA_DIR", "KEYS", "all_pairs", "make_split", "twin_index", "twin_in_train", "fast_forward", "forward_all", "fast_logits",
    "model_logits", "loss_fn", "GrokConfig", "PAPER", "GrokRun", "snapshot", "make_optimizer", "evaluate",
    "train_grokking", "load_model_from_state", "grok_step", "memorised_step",
]


# --------------------------------------------------------------------------------------
# The shipped paper-scale run
# --------------------------------------------------------------------------------------


def load_paper_run(directory: Path | None = None) -> GrokRun:
    """The paper-scale run made by ``scripts/train_grokking_paper.py`` (a few shipped checkpoints).

    Returns a `GrokRun` whose `history` holds the script's metrics at every 100 steps
    (losses, accuracies and the progress measures), whose `checkpoints` are the shipped
    float16 weights, and whose `model` is a bridge holding the last checkpoint. `extra`
    is the script's JSON (key frequencies, phases, what was run).
    """
    from safetensors.torch import load_file

    directory = Path(directory or DATA_DIR)
    meta_path = directory / "paper_run.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"No paper-scale run at {directory}. Make it with: python scripts/train_grokking_paper.py all")
    meta = json.loads(meta_path.read_text())
    cfg_d = dict(meta["config"])
    cfg_d["betas"] = tuple(cfg_d["betas"])
    cfg = GrokConfig(**cfg_d)
    flat = load_file(str(directory / "paper_checkpoints.safetensors"))
    checkpoints: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        step, name = key.split("/", 1)
        checkpoints.setdefault(int(step.split("_")[1]), {})[name] = value.float()
    history = History(steps=list(meta["steps"]),
                      metrics={k: [math.nan if v is None else float(v) for v in vals]
                               for k, vals in meta["metrics"].items()},
                      seconds=float((meta.get("run") or {}).get("seconds", 0.0)))
    model = load_model_from_state(checkpoints[max(checkpoints)], cfg)
    train_idx, test_idx = make_split(cfg.p, cfg.frac_train, cfg.data_seed, cfg.split)
    return GrokRun(cfg, model, history, checkpoints, train_idx, test_idx, extra=meta)


# --------------------------------------------------------------------------------------
# The commutativity trap
# --------------------------------------------------------------------------------------


@torch.no_grad()
def twin_accuracy(model_or_state: Any, run: GrokRun) -> dict[str, float]:
    """Test accuracy split by whether the swapped twin (b, a) of a test pair is in the training set."""
    tokens, labels = all_pairs(run.p)
    correct = (fast_logits(model_or_state, tokens[run.test_idx]).argmax(-1) == labels[run.test_idx]).float()
    twin = twin_in_train(run.test_idx, run.train_idx, run.p)
    return {
        "test_acc": float(correct.mean()),
        "frac_test_with_twin_in_train": float(twin.float().mean()),
        "acc_twin_in_train": float(correct[twin].mean()) if twin.any() else math.nan,
        "acc_twin_not_in_train": float(correct[~twin].mean()) if (~twin).any() else math.nan,
    }


__all__ += ["load_paper_run", "twin_accuracy"]


# --------------------------------------------------------------------------------------
# Printing settings and comparisons with the paper
# --------------------------------------------------------------------------------------

#: The paper's phase edges (Nanda et al. 2023, main run), in epochs = full-batch steps.
PAPER_PHASES = {"memorisation_end": 1400, "cleanup_start": 9400, "cleanup_end": 14000}
#: The paper's main-run key frequencies (Nanda et al. 2023).
PAPER_KEY_FREQS = [14, 35, 41, 42, 52]


def print_settings(cfg: GrokConfig, paper: GrokConfig = PAPER) -> None:
    """A table of the run's settings beside the paper's; differences are marked."""
    rows = [("p", "p"), ("train fraction", "frac_train"), ("learning rate", "lr"), ("weight decay", "weight_decay"),
            ("betas", "betas"), ("warm-up steps", "warmup_steps"), ("split", "split"), ("d_model", "d_model"),
            ("heads", "n_heads"), ("d_mlp", "d_mlp"), ("max steps", "n_steps")]
    print(f"{'setting':16s} {'this run':>12s} {'paper':>12s}")
    for label, attr in rows:
        mine, theirs = getattr(cfg, attr), getattr(paper, attr)
        mark = "" if mine == theirs else "  <- differs"
        print(f"{label:16s} {str(mine):>12s} {str(theirs):>12s}{mark}")


def metrics_at(history: History, steps: list[int]) -> dict[str, list[float]]:
    """The history's metrics at the given recorded steps."""
    idx = [history.steps.index(s) for s in steps]
    return {k: [v[i] for i in idx] for k, v in history.metrics.items()}


def describe_paper_run(run: GrokRun) -> str:
    """What the shipped paper-scale run is: settings, how far it trained, how long it took."""
    info = run.extra.get("run") or {}
    h = run.history
    cfg = run.cfg
    lines = [
        f"paper setting: p={cfg.p}, {cfg.frac_train:.0%} train, AdamW lr {cfg.lr:g}, wd {cfg.weight_decay:g}, "
        f"betas {tuple(cfg.betas)}, warm-up {cfg.warmup_steps}, full batch, seeds {cfg.seed}/{cfg.data_seed}",
        f"trained {h.steps[-1]} of the paper's 40,000 steps"
        + (f" in {info.get('seconds', 0) / 60:.0f} min on {info.get('machine', 'a CPU')}" if info else ""),
        f"final: train acc {h.last('train_acc'):.3f}, test acc {h.last('test_acc'):.3f}, "
        f"test loss {h.last('test_loss'):.3g}",
        f"shipped checkpoints at steps {run.steps}",
    ]
    if info.get("loss_dtype"):
        lines.append(f"training loss computed in {info['loss_dtype']}")
    return "\n".join(lines)


def print_paper_comparison(run: GrokRun) -> None:
    """Key frequencies and phase edges of the shipped run beside the paper's main run."""
    meta = run.extra
    phases = meta.get("phases", {})
    fmt = lambda v: "not reached" if v is None else str(v)  # noqa: E731
    print(f"{'':22s} {'this repo (CPU run)':>22s} {'paper (main run)':>18s}")
    print(f"{'key frequencies':22s} {str(meta.get('key_freqs') or 'none yet'):>22s} {str(PAPER_KEY_FREQS):>18s}")
    for name, label in (("memorisation_end", "memorisation ends"), ("cleanup_start", "cleanup starts"),
                        ("cleanup_end", "cleanup ends")):
        print(f"{label:22s} {fmt(phases.get(name)):>22s} {PAPER_PHASES[name]:>18d}")
    print(f"{'steps trained':22s} {run.history.steps[-1]:>22d} {40000:>18d}")


__all__ += ["PAPER_PHASES", "PAPER_KEY_FREQS", "print_settings", "metrics_at", "describe_paper_run",
            "print_paper_comparison"]
