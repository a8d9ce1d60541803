"""Finding a circuit in a real language model: patching engine, DLA, path patching, classes.

The methods of Wang et al. 2022 ("Interpretability in the Wild: a Circuit for Indirect
Object Identification in GPT-2 small", arXiv 2211.00593), written for any
`TransformerBridge` the course loads (GPT-2 small, SmolLM2-135M, toy GPT-2s).

**The engine: one forward pass, a growing batch.** Every experiment here is "run the
model on the same prompts many times, each copy with a different activation replaced".
A replacement at layer L cannot change anything below L, so all copies share layers
0..L-1 with the unpatched run. `run_copies` exploits that: the batch starts with the
prompts alone and, at the first block a copy needs, the unpatched rows are duplicated for
that copy. Patching every head of a 30-layer model is then ONE forward pass whose cost is
sum over layers of (heads x layers above), about half of 30 separate batched passes and
far less than TransformerLens's one forward per patch. Only the last position is
unembedded (IOI metrics read the final token), which saves the 49k-way unembedding at
every other position. The result equals patching one head at a time (tested).

`patch_heads` and `patch_heads_by_position` go further on SmolLM2 (any bias-free HF
Llama): `mi_tutor.fast_llama` runs the same growing batch in plain torch on the bridge's
weights, also sharing the positions no patch changes and computing only the last position
in the final layer (tested equal to the hook engine and to one-at-a-time patching).

Conventions: prompts are aligned (one template, same length); `metric(logits)` returns one
score per prompt from logits ``[batch, pos, vocab]`` at position -1 (see `mi_tutor.ioi`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import fast_llama
from . import validate as V
from .interventions import head_outputs, heads_replaced_hooks, z_name

Metric = Callable[[torch.Tensor], torch.Tensor]
Head = tuple[int, int]

SITES = ("z", "q", "k", "v")


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


@dataclass
class Patch:
    """Replace one head's activation at one hook site by `value` (all positions, or one).

    Args:
        layer, head: the query-head index. For ``k``/``v`` on a grouped-query model
            (SmolLM2: 3 key/value heads for 9 query heads) the patch hits the shared kv head
            ``head // (n_heads // n_kv_heads)``, i.e. every query head of that group.
        site: "z" (head output before W_O), "q", "k" or "v".
        value: the full site activation of a source run, ``[batch, pos, heads_at_site, d_head]``.
        pos: a position index, or None for all positions.
    """

    layer: int
    head: int
    value: torch.Tensor
    site: str = "z"
    pos: int | None = None


class _Stop(Exception):
    pass


def _hook_name(layer: int, site: str) -> str:
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    return z_name(layer) if site == "z" else f"blocks.{layer}.attn.hook_{site}"


def kv_index(model, head: int) -> int:
    """The key/value head a query head reads (itself on models without grouped-query attention)."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    return head // (model.cfg.n_heads // n_kv)


def _rep_rows(x, batch: int, times: int):
    """Repeat every tensor whose first dimension is `batch` `times` times (recursively)."""
    if isinstance(x, torch.Tensor) and x.ndim > 0 and x.shape[0] == batch and times > 1:
        return x.repeat(times, *([1] * (x.ndim - 1)))
    if isinstance(x, tuple):
        return tuple(_rep_rows(y, batch, times) for y in x)
    if isinstance(x, list):
        return [_rep_rows(y, batch, times) for y in x]
    if isinstance(x, dict):
        return {k: _rep_rows(v, batch, times) for k, v in x.items()}
    return x


@torch.no_grad()
def run_copies(
    model,
    tokens: torch.Tensor,
    copies: Sequence[Sequence[Patch]],
    freeze: bool = False,
    capture: Sequence[str] = (),
    stop_after_layer: int | None = None,
    last_only: bool = True,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Run the prompts once unpatched and once per copy (each copy a list of `Patch`es).

    Args:
        copies: copy i applies all its patches; an empty list is a plain (unpatched) copy.
        freeze: path-patching mode: in every copy, every head output (hook_z) at layers from
            the copy's first patch onwards is reset to the unpatched run's value, except the
            heads the copy patches at site "z". Only the patched heads' *direct* paths then
            change the residual stream (MLPs still recompute).
        capture: hook names to record (e.g. ``blocks.9.attn.hook_q``).
        stop_after_layer: skip the blocks after this one (logits are then None).
        last_only: unembed only the final position (logits ``[..., 1, vocab]``).

    Returns:
        logits ``[1 + n_copies, batch, pos, vocab]`` (row 0 = unpatched) or None, and
        ``{name: [1 + n_copies, batch, ...]}`` of captured activations (copies created after
        the hook's layer hold the unpatched value).
    """
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    n_layers = model.cfg.n_layers
    batch = tokens.shape[0]
    for c in copies:
        for p in c:
            if not 0 <= p.layer < n_layers:
                raise ValueError(f"patch layer {p.layer} out of range [0, {n_layers})")
            if p.value.shape[0] != batch:
                raise ValueError(f"patch value has batch {p.value.shape[0]}, prompts have {batch}")
    first = [min((p.layer for p in c), default=0) for c in copies]
    order = sorted(range(len(copies)), key=lambda i: first[i])  # rows are created in layer order
    row_of = {}  # copy index -> block index (1-based; block 0 = unpatched)
    born_at: dict[int, list[int]] = {}
    for k, i in enumerate(order, start=1):
        row_of[i] = k
        born_at.setdefault(first[i], []).append(i)
    state = {"rows": 1}  # number of row blocks currently in the batch

    def block_pre(layer):
        def pre(module, args, kwargs):
            new = len(born_at.get(layer, []))
            if stop_after_layer is not None and layer > stop_after_layer:
                raise _Stop()
            if new:
                def grow(h):
                    return torch.cat([h] + [h[:batch]] * new, 0)
                if args and isinstance(args[0], torch.Tensor):
                    args = (grow(args[0]),) + tuple(args[1:])
                elif "hidden_states" in kwargs:
                    kwargs = dict(kwargs, hidden_states=grow(kwargs["hidden_states"]))
                state["rows"] += new
            return _rep_rows(args, batch, state["rows"]), _rep_rows(kwargs, batch, state["rows"])
        return pre

    def attn_pre(module, args, kwargs):
        return _rep_rows(args, batch, state["rows"]), _rep_rows(kwargs, batch, state["rows"])

    # site hooks: per hook name, a list of (row block, patch)
    edits: dict[str, list[tuple[int, Patch]]] = {}
    for i, c in enumerate(copies):
        for p in c:
            edits.setdefault(_hook_name(p.layer, p.site), []).append((row_of[i], p))

    def site_hook(name, layer, site):
        todo = edits.get(name, [])

        def hook(act, hook):
            act = act.clone()
            if freeze and site == "z":
                for i, c in enumerate(copies):
                    k = row_of[i]
                    if k >= state["rows"] or first[i] > layer:
                        continue
                    keep = [p.head for p in c if p.site == "z" and p.layer == layer]
                    rows = slice(k * batch, (k + 1) * batch)
                    others = [h for h in range(act.shape[2]) if h not in keep]
                    act[rows, :, others] = act[:batch, :, others]
            for k, p in todo:
                rows = slice(k * batch, (k + 1) * batch)
                h = kv_index(model, p.head) if site in ("k", "v") else p.head
                if p.pos is None:
                    act[rows, :, h] = p.value[:, :, h]
                else:
                    act[rows, p.pos, h] = p.value[:, p.pos, h]
            return act
        return hook

    captured: dict[str, list[torch.Tensor]] = {}

    def cap_hook(name):
        def hook(act, hook):
            captured[name] = act.detach().clone()
            return act
        return hook

    fwd = []
    for l in range(n_layers):
        for site in SITES:
            name = _hook_name(l, site)
            if name in edits or (freeze and site == "z" and l >= min(first, default=n_layers)):
                fwd.append((name, site_hook(name, l, site)))
    fwd += [(n, cap_hook(n)) for n in capture]

    handles = []
    start = min(first, default=n_layers)
    for l in range(start, n_layers):
        handles.append(model.blocks[l].register_forward_pre_hook(block_pre(l), with_kwargs=True))
        handles.append(model.blocks[l].attn.register_forward_pre_hook(attn_pre, with_kwargs=True))
    if stop_after_layer is not None and start > stop_after_layer + 1 and stop_after_layer + 1 < n_layers:
        def stop(module, args, kwargs):
            raise _Stop()
        handles.append(model.blocks[stop_after_layer + 1].register_forward_pre_hook(stop, with_kwargs=True))
    if last_only:
        handles.append(model.unembed.register_forward_pre_hook(
            lambda m, args, kwargs: ((args[0][:, -1:],) + tuple(args[1:]), kwargs) if args else
            (args, dict(kwargs, hidden_states=kwargs["hidden_states"][:, -1:])), with_kwargs=True))
    n_rows = 1 + len(copies)
    logits = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits = model.run_with_hooks(tokens, fwd_hooks=fwd)
    except _Stop:
        logits = None
    finally:
        for h in handles:
            h.remove()

    def unstack(x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0] // batch
        x = x.reshape(rows, batch, *x.shape[1:])
        if rows < n_rows:  # copies born later than this hook: they equal the unpatched run
            x = torch.cat([x, x[:1].expand(n_rows - rows, *x.shape[1:])], 0)
        # reorder row blocks into copy order
        idx = [0] + [row_of[i] for i in range(len(copies))]
        return x[idx]

    out_logits = unstack(logits) if logits is not None else None
    return out_logits, {n: unstack(v) for n, v in captured.items()}


def _scores(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """Mean metric per copy: logits [copies, batch, pos, vocab] -> [copies]."""
    return torch.stack([metric(l).float().mean() for l in logits])


def _chunks(items: list, rows_per_copy: int, max_rows: int) -> Iterable[list]:
    per = max(1, max_rows // max(1, rows_per_copy))
    for i in range(0, len(items), per):
        yield items[i:i + per]


def _head_engine(model, target_tokens: torch.Tensor, source_tokens: torch.Tensor | None, layers, fast: bool | None):
    """(source head outputs by layer, copies -> logits [1 + n, batch, 1, vocab]) for the fastest exact engine.

    SmolLM2 (any bias-free HF Llama) runs on `fast_llama.LlamaRunner`; other models on `run_copies`.
    """
    use_fast = fast_llama.supports(model) if fast is None else fast
    if use_fast:
        runner = fast_llama.LlamaRunner(model)
        src = runner.run(source_tokens)["z"] if source_tokens is not None else None
        base = runner.run(target_tokens)
        return src, lambda copies: runner.replace_heads(target_tokens, copies, base)[:, :, None]
    src = head_outputs(model, source_tokens, layers) if source_tokens is not None else None
    return src, lambda copies: run_copies(model, target_tokens, copies)[0]


def patch_heads(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    layers: Sequence[int] | None = None,
    max_rows: int = 128,
    fast: bool | None = None,
) -> torch.Tensor:
    """Activation patching of every head's output (hook_z), source into target: [n_layers, n_heads].

    Same numbers as `mi_tutor.interventions.patch_each_head` (one head at a time, all
    positions), computed in a few batched forward passes: on SmolLM2 by `fast_llama`
    (``fast=None`` chooses; ``fast=False`` forces the hook engine `run_copies`).
    """
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    V.layers(model, layers)
    if source_tokens.shape != target_tokens.shape:
        raise ValueError(f"source and target prompts must align: {tuple(source_tokens.shape)} vs {tuple(target_tokens.shape)}")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layers = list(range(n_layers)) if layers is None else list(layers)
    src, run = _head_engine(model, target_tokens, source_tokens, layers, fast)
    heads = [(l, h) for l in layers for h in range(n_heads)]
    out = torch.full((n_layers, n_heads), float("nan"))
    for chunk in _chunks(heads, target_tokens.shape[0], max_rows):
        s = _scores(metric, run([[Patch(l, h, src[l])] for l, h in chunk]))[1:]
        for (l, h), v in zip(chunk, s):
            out[l, h] = v
    return out


def patch_heads_by_position(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    heads: Sequence[Head],
    max_rows: int = 128,
    fast: bool | None = None,
) -> torch.Tensor:
    """Patch each listed head at one position at a time: [len(heads), pos]."""
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    V.heads(model, heads)
    n_pos = target_tokens.shape[1]
    layers = sorted({l for l, _ in heads})
    src, run = _head_engine(model, target_tokens, source_tokens, layers, fast)
    jobs = [(i, l, h, p) for i, (l, h) in enumerate(heads) for p in range(n_pos)]
    out = torch.full((len(heads), n_pos), float("nan"))
    for chunk in _chunks(jobs, target_tokens.shape[0], max_rows):
        logits = run([[Patch(l, h, src[l], pos=p)] for _, l, h, p in chunk])
        for (i, _, _, p), v in zip(chunk, _scores(metric, logits)[1:]):
            out[i, p] = v
    return out


@torch.no_grad()
def patch_residual_fast(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    max_rows: int = 128,
) -> torch.Tensor:
    """Residual stream (entering each layer) patched at one position at a time: [n_layers, pos].

    Same numbers as `mi_tutor.interventions.patch_residual`; rows/columns not requested are NaN.
    """
    n_layers, n_pos = model.cfg.n_layers, target_tokens.shape[1]
    layers = list(range(n_layers)) if layers is None else list(layers)
    positions = list(range(n_pos)) if positions is None else list(positions)
    names = {f"blocks.{l}.hook_resid_pre" for l in layers}
    _, cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in names)
    batch = target_tokens.shape[0]
    out = torch.full((n_layers, n_pos), float("nan"))
    jobs = [(l, p) for l in layers for p in positions]
    for chunk in _chunks(jobs, batch, max_rows):
        # a copy is born at its layer; its resid_pre row gets the source value at one position
        born: dict[int, list[int]] = {}
        for k, (l, _p) in enumerate(chunk):
            born.setdefault(l, []).append(k)
        order = sorted(range(len(chunk)), key=lambda k: chunk[k][0])
        row_of = {k: r for r, k in enumerate(order, start=1)}
        state = {"rows": 1}
        handles = []

        # the hooks run and are removed inside this iteration; the defaults bind its values
        def block_pre(layer, born=born, row_of=row_of, chunk=chunk, state=state):
            def pre(module, args, kwargs):
                new = born.get(layer, [])
                hs = args[0] if args else kwargs["hidden_states"]
                if new:
                    extra = []
                    for k in sorted(new, key=lambda k: row_of[k]):
                        row = hs[:batch].clone()
                        row[:, chunk[k][1]] = cache[f"blocks.{layer}.hook_resid_pre"][:, chunk[k][1]]
                        extra.append(row)
                    hs = torch.cat([hs] + extra, 0)
                    state["rows"] += len(new)
                if args:
                    args = (hs,) + tuple(args[1:])
                else:
                    kwargs = dict(kwargs, hidden_states=hs)
                return _rep_rows(args, batch, state["rows"]), _rep_rows(kwargs, batch, state["rows"])
            return pre

        def attn_pre(module, args, kwargs, state=state):
            return _rep_rows(args, batch, state["rows"]), _rep_rows(kwargs, batch, state["rows"])

        for l in range(min(born), n_layers):
            handles.append(model.blocks[l].register_forward_pre_hook(block_pre(l), with_kwargs=True))
            handles.append(model.blocks[l].attn.register_forward_pre_hook(attn_pre, with_kwargs=True))
        handles.append(model.unembed.register_forward_pre_hook(
            lambda m, a, kw: ((a[0][:, -1:],) + tuple(a[1:]), kw) if a else (a, dict(kw, hidden_states=kw["hidden_states"][:,
                                                                                                                           -1:])),
            with_kwargs=True))
        try:
            logits = model(target_tokens)
        finally:
            for h in handles:
                h.remove()
        logits = logits.reshape(-1, batch, *logits.shape[1:])
        for k, (l, p) in enumerate(chunk):
            out[l, p] = metric(logits[row_of[k]]).float().mean()
    return out


# --------------------------------------------------------------------------------------
# Path patching
# --------------------------------------------------------------------------------------


def _receivers(receivers, site: str) -> list[tuple[int, int, str]]:
    out = []
    for r in receivers:
        l, h, st = (r[0], r[1], r[2]) if len(r) == 3 else (r[0], r[1], site)
        if st not in ("q", "k", "v"):
            raise ValueError(f"path patching reaches a receiver's 'q', 'k' or 'v', not {st!r}")
        out.append((int(l), int(h), st))
    return out


def path_patch(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    senders: Sequence[Head],
    receivers: Sequence,
    site: str = "q",
    receiver_pos: int | None = None,
    max_rows: int = 128,
) -> torch.Tensor:
    """Path patching (Wang et al. 2022): each sender's effect that flows through the receivers' inputs.

    For every sender head, two steps, both on the target prompts:

    1. run with the sender's output taken from the source run and every other head frozen at
       its target-run value; record what the receivers now see at their site (queries,
       keys or values; MLPs recompute);
    2. run the plain target prompts with only the receivers' sites replaced by what step 1
       recorded (at `receiver_pos`, or all positions), and measure `metric`.

    Args:
        receivers: (layer, head) pairs read at `site`, or (layer, head, site) triples to mix
            sites (e.g. some heads' keys and other heads' values).

    All senders are done together with the growing-batch engine (two passes per chunk).

    Returns:
        metric per sender, [len(senders)] (compare with the unpatched target's metric).
    """
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    V.heads(model, senders, "senders")
    V.heads(model, receivers, "receivers")
    rec = _receivers(receivers, site)
    if not rec:
        raise ValueError("path_patch needs at least one receiver head")
    top = max(l for l, _, _ in rec)
    bad = [x for x in senders if x[0] >= top]
    if bad:
        raise ValueError(f"senders {bad} are not below the top receiver layer ({top}): "
                         "a head can only send to later layers")
    src = head_outputs(model, source_tokens, sorted({l for l, _ in senders}))
    names = sorted({_hook_name(l, st) for l, _, st in rec})
    out = []
    for chunk in _chunks(list(senders), target_tokens.shape[0], max_rows):
        _, cap = run_copies(model, target_tokens, [[Patch(l, h, src[l])] for l, h in chunk], freeze=True,
                            capture=names, stop_after_layer=top)
        copies = [[Patch(l, h, cap[_hook_name(l, st)][i + 1], site=st, pos=receiver_pos) for l, h, st in rec]
                  for i in range(len(chunk))]
        logits, _ = run_copies(model, target_tokens, copies)
        out.append(_scores(metric, logits)[1:])
    return torch.cat(out)


def path_patch_table(model, target_tokens, source_tokens, metric, receivers: Sequence, site: str = "q",
                     receiver_pos: int | None = None, senders: Sequence[Head] | None = None) -> torch.Tensor:
    """`path_patch` for every head below the top receiver (or the given senders): [n_layers, n_heads], NaN elsewhere."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    rec = _receivers(receivers, site)
    top = max(l for l, _, _ in rec)
    rec_heads = {(l, h) for l, h, _ in rec}
    if senders is None:
        senders = [(l, h) for l in range(top) for h in range(n_heads)]
    senders = [x for x in senders if x[0] < top and tuple(x) not in rec_heads]
    table = torch.full((n_layers, n_heads), float("nan"))
    if senders:
        vals = path_patch(model, target_tokens, source_tokens, metric, senders, rec, site, receiver_pos)
        for (l, h), v in zip(senders, vals):
            table[l, h] = v
    return table


# --------------------------------------------------------------------------------------
# Direct logit attribution (exact) and attention summaries
# --------------------------------------------------------------------------------------


def _final_norm(model):
    """(weight, bias or None, eps, centred?) of the final norm (RMSNorm or LayerNorm)."""
    mod = getattr(model.ln_final, "original_component", model.ln_final)
    w = mod.weight.detach()
    b = getattr(mod, "bias", None)
    eps = float(getattr(mod, "variance_epsilon", getattr(mod, "eps", 1e-5)))
    centred = "layernorm" in type(mod).__name__.lower() or b is not None
    return w, (b.detach() if b is not None else None), eps, centred


def apply_final_norm(model, x: torch.Tensor) -> torch.Tensor:
    """The model's final norm (RMSNorm or LayerNorm) applied to residual vectors ``[..., d_model]``
    as a fixed function of each vector (the logit lens reads layers through it)."""
    w, b, eps, centred = _final_norm(model)
    if centred:
        x = x - x.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w
    return x + b if b is not None else x


@dataclass
class DLA:
    """Direct logit attribution of the logit difference at the final position (means over prompts).

    `heads` [n_layers, n_heads]; `attn` [n_layers] (a layer's heads + its output bias);
    `mlp` [n_layers]; `rest` (embeddings and the final norm's bias); `total` = sum of all
    parts, equal to `logit_diff` (the model's mean IO - S) up to float error;
    `per_prompt_heads` [batch, n_layers, n_heads]; `heads_io` / `heads_s`: each head's direct
    effect on the IO logit and on the S logit separately (``heads = heads_io - heads_s``), which
    tells a head that *raises IO* from one that *lowers S*.
    """

    heads: torch.Tensor
    attn: torch.Tensor
    mlp: torch.Tensor
    rest: float
    total: float
    logit_diff: float
    per_prompt_heads: torch.Tensor
    heads_io: torch.Tensor | None = None
    heads_s: torch.Tensor | None = None


@torch.no_grad()
def direct_logit_attribution(model, tokens: torch.Tensor, io: torch.Tensor, s: torch.Tensor,
                             fwd_hooks: Sequence = ()) -> DLA:
    """Exact DLA of (IO - S) at the last position; pass `fwd_hooks` to attribute an ablated run.

    The final norm divides the residual stream by its own size; that scale is read from this
    run and frozen, which makes the readout linear, so every part's share is exact and the
    parts add up to the logit difference. (TransformerLens's `enable_compatibility_mode`
    gives the same numbers by folding the norm into the weights, but it needs ~1.5 GB of
    extra memory on SmolLM2.) A head's part is ``z[-1, h] @ W_O[h]`` read out through the norm.
    """
    V.tokens(model, tokens)
    V.answers(model, tokens, io=io, s=s)
    n_layers = model.cfg.n_layers
    names = {"hook_embed", "hook_pos_embed"} | {f"blocks.{l}.{n}" for l in range(n_layers)
                                                 for n in ("attn.hook_z", "hook_attn_out", "hook_mlp_out")}
    names.add(f"blocks.{n_layers - 1}.hook_resid_post")
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    b = torch.arange(tokens.shape[0])
    ld = logits[b, -1, io] - logits[b, -1, s]
    w, bias, eps, centred = _final_norm(model)
    x = cache[f"blocks.{n_layers - 1}.hook_resid_post"][:, -1]
    xc = x - x.mean(-1, keepdim=True) if centred else x
    scale = (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # [batch, 1]
    W_U = model.W_U
    direction = (W_U[:, io] - W_U[:, s]).T * w  # [batch, d]

    def read(part: torch.Tensor, direction: torch.Tensor = direction) -> torch.Tensor:  # [batch, ..., d] -> [batch, ...]
        if centred:
            part = part - part.mean(-1, keepdim=True)
        sc = scale.reshape(scale.shape[0], *([1] * (part.ndim - 2)), 1)
        d = direction.reshape(direction.shape[0], *([1] * (part.ndim - 2)), -1)
        return (part / sc * d).sum(-1)

    W_O = model.W_O  # [n_layers, n_heads, d_head, d_model]; read once (it is recomputed per access)
    outs = [torch.einsum("bhd,hdm->bhm", cache[f"blocks.{l}.attn.hook_z"][:, -1], W_O[l]) for l in range(n_layers)]
    heads = torch.stack([read(o) for o in outs], 1)  # [batch, n_layers, n_heads]
    heads_io = torch.stack([read(o, W_U[:, io].T * w) for o in outs], 1)
    heads_s = torch.stack([read(o, W_U[:, s].T * w) for o in outs], 1)
    attn = torch.stack([read(cache[f"blocks.{l}.hook_attn_out"][:, -1]) for l in range(n_layers)], 1)
    mlp = torch.stack([read(cache[f"blocks.{l}.hook_mlp_out"][:, -1]) for l in range(n_layers)], 1)
    rest = read(cache["hook_embed"][:, -1])
    if "hook_pos_embed" in cache.cache_dict:
        rest = rest + read(cache["hook_pos_embed"][:, -1])
    if bias is not None:
        rest = rest + ((W_U[:, io] - W_U[:, s]).T * bias).sum(-1)
    total = attn.sum(1) + mlp.sum(1) + rest
    return DLA(heads=heads.mean(0), attn=attn.mean(0), mlp=mlp.mean(0), rest=float(rest.mean()),
               total=float(total.mean()), logit_diff=float(ld.mean()), per_prompt_heads=heads,
               heads_io=heads_io.mean(0), heads_s=heads_s.mean(0))


def attention_to(patterns: dict[int, torch.Tensor] | torch.Tensor, query_pos: torch.Tensor,
                 key_pos: torch.Tensor) -> torch.Tensor:
    """Mean attention from `query_pos` to `key_pos` (one index per prompt), per head: [n_layers, n_heads].

    `patterns`: {layer: [batch, head, q, k]} or a stacked tensor [n_layers, batch, head, q, k].
    """
    if isinstance(patterns, dict):
        patterns = torch.stack([patterns[l] for l in sorted(patterns)])
    b = torch.arange(patterns.shape[1])
    # advanced indices separated by slices go first: [batch, n_layers, head]
    return patterns[:, b, :, query_pos, key_pos].mean(0)


def attention_patterns(model, tokens: torch.Tensor) -> torch.Tensor:
    """All attention patterns: [n_layers, batch, head, q, k]."""
    names = {f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(model.cfg.n_layers)])


# --------------------------------------------------------------------------------------
# Classification into the paper's classes
# --------------------------------------------------------------------------------------

#: The paper's classes (Wang et al. 2022), in the order information flows, and their colours.
CLASSES = {
    "previous token": "#8c564b",
    "duplicate token": "#9467bd",
    "induction": "#e377c2",
    "S-inhibition": "#ff7f0e",
    "name mover": "#2ca02c",
    "negative name mover": "#d62728",
    "backup name mover": "#17becf",
}
#: Heads found by the criteria that fit none of the paper's classes.
EXTRA_CLASS = "direct, attends to S (not a paper class)"

#: The paper's GPT-2 small heads per class (Wang et al. 2022), quoted for comparison only.
PAPER_GPT2_HEADS = {
    "name mover": ["9.9", "9.6", "10.0"],
    "negative name mover": ["10.7", "11.10"],
    "S-inhibition": ["7.3", "7.9", "8.6", "8.10"],
    "induction": ["5.5", "6.9", "(fuzzy 5.8, 5.9)"],
    "duplicate token": ["0.1", "3.0", "(fuzzy 0.10)"],
    "previous token": ["2.2", "4.11"],
    "backup name mover": ["9.0", "9.7", "10.1", "10.2", "10.6", "10.10", "11.2", "11.9"],
}


@dataclass
class Evidence:
    """Per-head measurements ([n_layers, n_heads] each; NaN = not measured) used to classify heads.

    dla: direct logit attribution of IO - S. attn_io / attn_s2: attention END -> IO / END -> S2.
    patch: change in logit difference when the head's output is patched from ABC.
    pp_q: change through the name movers' queries (path patching); pp_v: through the
    S-inhibition heads' values. induction: attention S2 -> S1+1; duplicate: S2 -> S1;
    prev_token: S1+1 -> S1. backup_gain: rise in DLA when the name movers are knocked out.
    clean_ld: the model's mean logit difference (thresholds are fractions of it).
    """

    dla: torch.Tensor
    attn_io: torch.Tensor
    attn_s2: torch.Tensor
    patch: torch.Tensor
    induction: torch.Tensor
    duplicate: torch.Tensor
    prev_token: torch.Tensor
    clean_ld: float
    dla_io: torch.Tensor | None = None
    dla_s: torch.Tensor | None = None
    pp_q: torch.Tensor | None = None
    pp_v: torch.Tensor | None = None
    backup_gain: torch.Tensor | None = None


def _top(score: torch.Tensor, mask: torch.Tensor, k: int, largest: bool = True) -> list[Head]:
    s = score.clone().float()
    s[~mask | torch.isnan(s)] = -float("inf") if largest else float("inf")
    order = s.flatten().argsort(descending=largest)
    out = []
    for i in order[:k].tolist():
        if torch.isfinite(s.flatten()[i]):
            out.append((i // s.shape[1], i % s.shape[1]))
    return out


def name_mover_candidates(dla: torch.Tensor, dla_io: torch.Tensor | None, dla_s: torch.Tensor | None, clean_ld: float,
                          frac: float = 0.1, k: int = 4) -> tuple[list[Head], list[Head]]:
    """(name movers, negative name movers), from what the heads WRITE (not where they look).

    Name mover: DLA >= `frac` x LD, mostly by raising the IO logit (dla_io >= -dla_s).
    Negative name mover: DLA <= -`frac` x LD, mostly by lowering the IO logit (-dla_io >= dla_s).
    (With dla_io/dla_s None, only the DLA threshold is used.) Where they attend is then a test.
    """
    thr = frac * abs(clean_ld)
    if dla_io is not None and dla_s is not None:
        raises_io, lowers_io = dla_io >= -dla_s, -dla_io >= dla_s
    else:
        raises_io = lowers_io = torch.ones_like(dla, dtype=torch.bool)
    return (_top(dla, (dla >= thr) & raises_io, k), _top(dla, (dla <= -thr) & lowers_io, k, largest=False))


def answer_heads(dla: torch.Tensor, clean_ld: float, frac: float = 0.1, k: int = 8) -> list[Head]:
    """The heads that write the answer: |DLA| >= `frac` x LD (at most `k`, largest first)."""
    return _top(dla.abs(), dla.abs() >= frac * abs(clean_ld), k)


def classify_heads(ev: Evidence, frac: float = 0.1, path_frac: float = 0.05, k: int = 4,
                   prev_min: float = 0.3) -> dict[str, list[Head]]:
    """Assign heads to the paper's classes by computed criteria (each class at most `k` heads).

    - name mover: DLA >= `frac` x LD, mostly by raising the IO logit (`name_mover_candidates`);
    - negative name mover: DLA <= -`frac` x LD, mostly by lowering the IO logit;
    - S-inhibition: path patching through the queries of the heads that write the answer
      (`pp_q`) lowers LD by >= `path_frac` x LD;
    - induction / duplicate token: not S-inhibition; path patching through the S-inhibition
      heads' values and the answer heads' keys (`pp_v`) lowers LD by >= `path_frac` x LD, and
      the head attends S2 -> S1+1 (induction) more / less than S2 -> S1 (duplicate token);
    - previous token: below the first induction (or duplicate) head, attention
      S1+1 -> S1 >= `prev_min`;
    - backup name mover: not a (negative) name mover, attends IO more than S2, and its DLA rises by
      >= `frac` x LD when the name movers are knocked out;
    - `EXTRA_CLASS`: DLA >= `frac` x LD, not a name mover, and attends S2 more than IO (it
      lowers S rather than raising IO; no paper class).
    """
    L = abs(ev.clean_ld)
    out: dict[str, list[Head]] = {c: [] for c in CLASSES}
    out["name mover"], out["negative name mover"] = name_mover_candidates(ev.dla, ev.dla_io, ev.dla_s, ev.clean_ld, frac, k)
    if ev.pp_q is not None:
        out["S-inhibition"] = _top(ev.pp_q, ev.pp_q <= -path_frac * L, k, largest=False)
    if ev.pp_v is not None:
        strong = ev.pp_v <= -path_frac * L
        for h in out["S-inhibition"]:
            strong[h] = False
        out["induction"] = _top(ev.pp_v, strong & (ev.induction > ev.duplicate), k, largest=False)
        out["duplicate token"] = _top(ev.pp_v, strong & (ev.duplicate >= ev.induction), k, largest=False)
    upstream = out["induction"] or out["duplicate token"]
    if upstream:
        first = min(l for l, _ in upstream)
        layer_ok = torch.arange(ev.dla.shape[0])[:, None].expand_as(ev.dla) < first
        out["previous token"] = _top(ev.prev_token, layer_ok & (ev.prev_token >= prev_min), min(k, 3))
    if ev.backup_gain is not None:
        nm = set(out["name mover"]) | set(out["negative name mover"])
        mask = (ev.backup_gain >= frac * L) & (ev.attn_io > ev.attn_s2)
        out["backup name mover"] = [h for h in _top(ev.backup_gain, mask, k + len(nm)) if h not in nm][:k]
    taken = {h for hs in out.values() for h in hs}
    extra = [h for h in _top(ev.dla, (ev.dla >= frac * L) & (ev.attn_s2 >= ev.attn_io), k) if h not in taken]
    if extra:
        out[EXTRA_CLASS] = extra
    return out


def circuit_heads(classes: dict[str, list[Head]], include_backup: bool = False) -> list[Head]:
    """All heads of the classes (backup name movers only if asked), deduplicated, sorted."""
    hs = {h for c, heads in classes.items() if include_backup or c != "backup name mover" for h in heads}
    return sorted(hs)


def head_class(classes: dict[str, list[Head]], head: Head) -> str:
    """The class(es) of `head`, or "-"."""
    names = [c for c, hs in classes.items() if tuple(head) in hs]
    return ", ".join(names) if names else "-"


# --------------------------------------------------------------------------------------
# Validation: faithfulness and knockouts (mean ablation over the ABC distribution)
# --------------------------------------------------------------------------------------


def _abc_means(model, ds) -> dict[int, torch.Tensor]:
    from .interventions import ablation_values

    return ablation_values(model, ds.tokens, "mean", reference_tokens=ds.abc_tokens)


@dataclass
class Faithfulness:
    """Mean logit differences: full model, circuit only (rest mean-ablated), nothing (all ablated)."""

    model_ld: float
    circuit_ld: float
    empty_ld: float
    n_heads: int

    @property
    def ratio(self) -> float:
        """circuit / model, the paper's measure (87% for GPT-2 small)."""
        return self.circuit_ld / self.model_ld

    @property
    def normalised(self) -> float:
        """(circuit - empty) / (model - empty): share of what the heads add that the circuit keeps."""
        return (self.circuit_ld - self.empty_ld) / (self.model_ld - self.empty_ld)


@torch.no_grad()
def faithfulness(model, ds, circuit: Sequence[Head], means: dict[int, torch.Tensor] | None = None) -> Faithfulness:
    """Mean-ablate every head outside `circuit` (ABC means per position) and compare logit differences."""
    means = _abc_means(model, ds) if means is None else means
    all_heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    circuit = {tuple(h) for h in circuit}
    outside = [h for h in all_heads if h not in circuit]
    model_ld = float(ds.metric(model(ds.tokens)).mean())
    with model.hooks(fwd_hooks=heads_replaced_hooks(outside, means)):
        circuit_ld = float(ds.metric(model(ds.tokens)).mean())
    with model.hooks(fwd_hooks=heads_replaced_hooks(all_heads, means)):
        empty_ld = float(ds.metric(model(ds.tokens)).mean())
    return Faithfulness(model_ld, circuit_ld, empty_ld, len(circuit))


@dataclass
class Knockout:
    """What happens when `heads` are mean-ablated: logit difference and every head's new DLA."""

    heads: list[Head]
    ld_before: float
    ld_after: float
    dla_before: torch.Tensor
    dla_after: torch.Tensor

    @property
    def kept(self) -> float:
        return self.ld_after / self.ld_before

    @property
    def gain(self) -> torch.Tensor:
        """Rise of each head's DLA after the knockout ([n_layers, n_heads]; knocked-out heads NaN)."""
        g = self.dla_after - self.dla_before
        for l, h in self.heads:
            g[l, h] = float("nan")
        return g


def knockout(model, ds, heads: Sequence[Head], dla_before: torch.Tensor | None = None,
             means: dict[int, torch.Tensor] | None = None) -> Knockout:
    """Mean-ablate `heads` (e.g. the name movers) and re-measure LD and DLA (backup behaviour)."""
    means = _abc_means(model, ds) if means is None else means
    before = direct_logit_attribution(model, ds.tokens, ds.io, ds.s) if dla_before is None else None
    after = direct_logit_attribution(model, ds.tokens, ds.io, ds.s, fwd_hooks=heads_replaced_hooks(heads, means))
    dla_b = before.heads if before is not None else dla_before
    ld_b = before.logit_diff if before is not None else float(ds.metric(model(ds.tokens)).mean())
    return Knockout(list(heads), ld_b, after.logit_diff, dla_b, after.heads)


# --------------------------------------------------------------------------------------
# Speed: the growing-batch engine against TransformerLens's one-forward-per-patch loop
# --------------------------------------------------------------------------------------


@dataclass
class SpeedReport:
    """Timings of per-head patching (seconds); the TL loop is timed on `tl_heads` heads and extrapolated."""

    engine_s: float
    tl_s_measured: float
    tl_heads: int
    n_heads_total: int
    max_abs_diff: float
    engine: str = "growing-batch engine"

    @property
    def tl_s_extrapolated(self) -> float:
        return self.tl_s_measured * self.n_heads_total / self.tl_heads

    @property
    def speedup(self) -> float:
        return self.tl_s_extrapolated / self.engine_s

    def __str__(self) -> str:
        return (f"TransformerLens loop: {self.tl_s_measured:.1f} s for {self.tl_heads} heads -> "
                f"~{self.tl_s_extrapolated:.0f} s for all {self.n_heads_total} (extrapolated)\n"
                f"{self.engine}: {self.engine_s:.1f} s for all {self.n_heads_total} heads\n"
                f"speed-up ~{self.speedup:.0f}x; largest difference on the timed heads {self.max_abs_diff:.1e}")


def tl_patch_heads(model, target_tokens, source_tokens, metric: Metric, heads: Sequence[Head]) -> torch.Tensor:
    """`transformer_lens.patching` (one forward per patched head) on a subset of heads: [len(heads)]."""
    import contextlib
    import io as _io

    import pandas as pd
    from transformer_lens import patching

    names = {z_name(l) for l, _ in heads}
    _, src_cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in names)
    df = pd.DataFrame(list(heads), columns=["layer", "head"])
    with contextlib.redirect_stderr(_io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = patching.generic_activation_patch(model, target_tokens, src_cache, lambda lg: metric(lg).float().mean(),
                                                patching.layer_head_vector_patch_setter, "z", index_df=df)
    return torch.as_tensor(out).flatten()


def compare_patching_speed(model, target_tokens, source_tokens, metric: Metric,
                           tl_layers: Sequence[int] = (0,)) -> tuple[SpeedReport, torch.Tensor]:
    """Time `patch_heads` on every head and the TL loop on the heads of `tl_layers`; check they agree.

    Returns the report and the engine's [n_layers, n_heads] table (reuse it: it is the result).
    """
    import time

    n_heads = model.cfg.n_heads
    t0 = time.perf_counter()
    table = patch_heads(model, target_tokens, source_tokens, metric)
    engine = time.perf_counter() - t0
    heads = [(l, h) for l in tl_layers for h in range(n_heads)]
    t0 = time.perf_counter()
    tl = tl_patch_heads(model, target_tokens, source_tokens, metric, heads)
    tl_time = time.perf_counter() - t0
    diff = max(abs(float(tl[i]) - float(table[l, h])) for i, (l, h) in enumerate(heads))
    name = "fast Llama engine (fast_llama)" if fast_llama.supports(model) else "growing-batch engine (run_copies)"
    return SpeedReport(engine, tl_time, len(heads), model.cfg.n_layers * n_heads, diff, name), table


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


def head_label(head: Head) -> str:
    return f"{head[0]}.{head[1]}"


def plot_dla(dla: DLA, title: str = ""):
    """Left: each layer's attention and MLP share of the logit difference. Right: every head's."""
    import matplotlib.pyplot as plt

    from .plots import layer_head_heatmap

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    n = len(dla.attn)
    x = np.arange(n)
    axes[0].bar(x - 0.2, dla.attn.numpy(), 0.4, label="attention (all heads)", color="tab:blue")
    axes[0].bar(x + 0.2, dla.mlp.numpy(), 0.4, label="MLP", color="tab:gray")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("layer")
    axes[0].set_ylabel("direct effect on logit diff (IO - S)")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"by layer (parts sum to {dla.total:.2f}; the model's logit diff is {dla.logit_diff:.2f})", fontsize=9)
    layer_head_heatmap(dla.heads, title="by head", ax=axes[1])
    fig.suptitle(title or "Direct logit attribution at the final token", fontsize=11)
    fig.tight_layout()
    return fig


def plot_io_vs_s_attention(heads: Sequence[Head], attn_io: torch.Tensor, attn_s2: torch.Tensor, dla: torch.Tensor):
    """Bars: attention from END to IO and to S2 for `heads` (labelled with their DLA)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(heads) + 1.5), 3.2))
    x = np.arange(len(heads))
    ax.bar(x - 0.2, [float(attn_io[l, h]) for l, h in heads], 0.4, label="END -> IO", color="tab:green")
    ax.bar(x + 0.2, [float(attn_s2[l, h]) for l, h in heads], 0.4, label="END -> S2", color="tab:red")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{head_label(h)}\nDLA {float(dla[h]):+.2f}" for h in heads], fontsize=8)
    ax.set_ylabel("attention weight")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Where the heads with the largest direct effect look from the final token", fontsize=10)
    fig.tight_layout()
    return fig


def plot_patching(exact: torch.Tensor, approx: torch.Tensor, title: str = ""):
    """Exact per-head patching next to attribution patching, and their scatter."""
    import matplotlib.pyplot as plt

    from .plots import layer_head_heatmap

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    layer_head_heatmap(exact, title="exact patching (ABC -> IOI): change in LD", ax=axes[0])
    layer_head_heatmap(approx, title="attribution patching estimate", ax=axes[1])
    e, a = exact.flatten().numpy(), approx.flatten().numpy()
    axes[2].scatter(e, a, s=8, alpha=0.6)
    lim = [min(e.min(), a.min()), max(e.max(), a.max())]
    axes[2].plot(lim, lim, "k--", lw=0.7)
    r = np.corrcoef(e, a)[0, 1]
    axes[2].set_xlabel("exact")
    axes[2].set_ylabel("attribution estimate")
    axes[2].set_title(f"agreement: r = {r:.2f}", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_circuit(classes: dict[str, list[Head]], n_layers: int, title: str = ""):
    """The circuit as a diagram: heads placed by layer, coloured by class, arrows along the paper's flow."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    lanes = [c for c in list(CLASSES) + [EXTRA_CLASS] if classes.get(c)]
    flow = [("previous token", "induction"), ("induction", "S-inhibition"), ("duplicate token", "S-inhibition"),
            ("S-inhibition", "name mover"), ("S-inhibition", "negative name mover"), ("S-inhibition", "backup name mover"),
            ("S-inhibition", EXTRA_CLASS)]
    fig, ax = plt.subplots(figsize=(12, 0.8 * len(lanes) + 1.8))
    pos: dict[tuple[str, Head], tuple[float, float]] = {}
    for y, c in enumerate(reversed(lanes)):
        heads = sorted(classes[c])
        for l, h in heads:
            same = [x for x in heads if x[0] == l]  # heads of one layer: stacked side by side, staggered
            k = same.index((l, h))
            xy = (l + 0.9 * (k - (len(same) - 1) / 2), y + (0.18 if k % 2 else -0.18) * (len(same) > 1))
            pos[(c, (l, h))] = xy
            ax.scatter(*xy, s=430, color=CLASSES.get(c, "#7f7f7f"), zorder=3, edgecolor="k", lw=0.5)
            ax.text(*xy, head_label((l, h)), ha="center", va="center", fontsize=6.5, color="white", zorder=4, weight="bold")
    for a, b in flow:
        for (ca, ha), pa in pos.items():
            if ca != a:
                continue
            for (cb, hb), pb in pos.items():
                if cb == b and hb[0] > ha[0]:
                    ax.add_patch(FancyArrowPatch(pa, pb, arrowstyle="-|>", mutation_scale=8, color="0.6", lw=0.6,
                                                 shrinkA=11, shrinkB=11, zorder=1))
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels(list(reversed(lanes)), fontsize=9)
    ax.set_xlim(-1.5, n_layers + 0.8)
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlabel("layer")
    ax.grid(axis="x", alpha=0.2)
    ax.set_title(title or "The circuit found in this model (arrows: the paper's flow of information)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_resid_patching(table: torch.Tensor, tokens: Sequence[str], layers: Sequence[int], positions: Sequence[int]):
    """Heatmap of residual-stream patching [layers x positions] (the patched layers/positions only)."""
    from .plots import heatmap

    sub = table[list(layers)][:, list(positions)]
    return heatmap(sub, xlabels=[f"{p}:{tokens[p]}" for p in positions], ylabels=[str(l) for l in layers],
                   xlabel="position patched", ylabel="layer (residual stream entering it)",
                   title="Patching the residual stream from ABC into IOI: change in logit diff",
                   figsize=(1.2 + 0.75 * len(positions), 1.0 + 0.32 * len(layers)), annotate=True)


# --------------------------------------------------------------------------------------
# Explorers: a head inspector and a prompt editor
# --------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """Everything the explorers show, computed once (the explorers only plot)."""

    model: object
    ds: object
    patterns: torch.Tensor  # [n_layers, batch, head, q, k]
    dla: DLA
    patch: torch.Tensor  # exact patching change in LD [n_layers, n_heads]
    classes: dict[str, list[Head]]
    attn_io: torch.Tensor
    attn_s2: torch.Tensor

    def head_options(self) -> list[tuple[str, str]]:
        """Dropdown options: classified heads first, then all others."""
        n_layers, n_heads = self.dla.heads.shape
        classified = [h for hs in self.classes.values() for h in hs]
        rest = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in classified]
        return [(f"{head_label(h)} ({head_class(self.classes, h)})", head_label(h)) for h in classified + rest]


def inspect_head(analysis: Analysis, head: str, prompt: int = 0):
    """One head: its attention on a prompt, its direct effect, its patching effect and its class."""
    import matplotlib.pyplot as plt

    try:
        l, h = (int(x) for x in str(head).split("."))
    except ValueError:
        raise ValueError(f"head must look like 'layer.head', e.g. '9.9', got {head!r}") from None
    ds = analysis.ds
    toks = analysis.model.to_str_tokens(ds.tokens[prompt])
    pat = analysis.patterns[l, prompt, h].numpy()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.4, 1]})
    ax.imshow(pat, cmap="Blues", vmin=0, vmax=1)
    labels = [t.replace("\n", "\\n") for t in toks]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    for name, color in (("IO", "tab:green"), ("S1", "tab:red"), ("S2", "tab:red")):
        ax.get_xticklabels()[int(ds.pos[name][prompt])].set_color(color)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(f"head {l}.{h}: attention on prompt {prompt}", fontsize=10)
    ax2.axis("off")
    rows = [
        ("class", head_class(analysis.classes, (l, h))),
        ("direct logit attribution", f"{float(analysis.dla.heads[l, h]):+.3f}"),
        ("patching ABC -> IOI (change in LD)", f"{float(analysis.patch[l, h]):+.3f}"),
        ("attention END -> IO (mean)", f"{float(analysis.attn_io[l, h]):.2f}"),
        ("attention END -> S2 (mean)", f"{float(analysis.attn_s2[l, h]):.2f}"),
        ("this prompt: END -> IO / S2", f"{pat[-1, int(ds.pos['IO'][prompt])]:.2f} / {pat[-1, int(ds.pos['S2'][prompt])]:.2f}"),
    ]
    for i, (k, v) in enumerate(rows):
        ax2.text(0, 0.9 - 0.13 * i, k, fontsize=9, color="0.35", transform=ax2.transAxes)
        ax2.text(0, 0.84 - 0.13 * i, v, fontsize=11, transform=ax2.transAxes)
    ax2.text(0, 0.05, ds.prompts[prompt], fontsize=8, style="italic", transform=ax2.transAxes, wrap=True)
    fig.tight_layout()
    return fig


def prompt_report(analysis: Analysis, text: str, top: int = 8):
    """Type an IOI sentence: its logit difference and the top heads' direct contributions.

    A sentence that is not IOI-shaped gets a figure that says what is wrong (no exception).
    """
    import matplotlib.pyplot as plt

    from .ioi import IOIError, parse_ioi_sentence

    model = analysis.model
    try:
        p = parse_ioi_sentence(model, text)
    except IOIError as e:
        fig, ax = plt.subplots(figsize=(9, 1.8))
        ax.axis("off")
        ax.text(0, 0.75, "Not an IOI sentence:", fontsize=11, weight="bold", color="tab:red", transform=ax.transAxes)
        ax.text(0, 0.35, str(e), fontsize=9, wrap=True, transform=ax.transAxes)
        return fig
    d = direct_logit_attribution(model, p.tokens, torch.tensor([p.io]), torch.tensor([p.s]))
    flat = d.heads.flatten()
    idx = flat.abs().argsort(descending=True)[:top].tolist()
    n_heads = d.heads.shape[1]
    heads = [(i // n_heads, i % n_heads) for i in idx]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    vals = [float(d.heads[hd]) for hd in heads]
    colors = [CLASSES.get(head_class(analysis.classes, hd).split(",")[0], "#7f7f7f") for hd in heads]
    ax.bar(range(len(heads)), vals, color=colors)
    ax.set_xticks(range(len(heads)))
    ax.set_xticklabels([f"{head_label(hd)}\n{head_class(analysis.classes, hd)}" for hd in heads], fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("direct effect on IO - S")
    verdict = "prefers IO" if d.logit_diff > 0 else "prefers S"
    ax.set_title(f"IO ={p.io_name!r}, S ={p.s_name!r}: logit diff {d.logit_diff:+.2f} ({verdict})", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = [
    "Patch", "run_copies", "patch_heads", "patch_heads_by_position", "patch_residual_fast", "path_patch",
    "path_patch_table", "DLA", "direct_logit_attribution", "attention_to", "attention_patterns", "CLASSES",
    "EXTRA_CLASS", "PAPER_GPT2_HEADS", "Evidence", "classify_heads", "answer_heads", "name_mover_candidates", "circuit_heads",
    "head_class", "Faithfulness", "faithfulness", "Knockout", "knockout", "SpeedReport", "tl_patch_heads",
    "compare_patching_speed", "plot_dla", "plot_io_vs_s_attention", "plot_patching", "plot_circuit",
    "plot_resid_patching", "Analysis", "inspect_head", "prompt_report", "kv_index", "head_label",
]
