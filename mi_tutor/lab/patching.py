"""The patching engine: replace activations, measure what changes. One engine for every experiment.

Every causal experiment in the course is "run the model on the same prompts many times, each
copy with some activations replaced, and read a metric":

- **activation patching**: a head's output (or the residual stream at one position) takes its
  value on a *source* run (`patch_heads`, `patch_heads_by_position`, `patch_residual`);
  clean into corrupted is denoising (is it sufficient?), corrupted into clean is noising
  (is it necessary?);
- **ablation**: a head's output becomes zero, its mean over a reference distribution, or its
  value on another prompt (`ablation_values`, `ablate_heads`; any values: `replace_heads`);
- **path patching** (Wang et al. 2022, arXiv 2211.00593): a sender's effect that reaches the
  receivers' queries, keys or values only (`path_patch`), with the other heads frozen or not;
- **attribution patching** (Nanda 2023): the first-order estimate from one backward pass
  (`attribution_patch_heads`).

A replacement is a `Patch`; a *copy* is a list of patches applied together. `run_copies`
runs the unpatched prompts and every copy in ONE forward pass whose batch grows: a patch at
layer L changes nothing below L, so a copy's rows are created at its first patched block from
the unpatched rows. Patching all 270 heads of SmolLM2 costs about half of 30 batched passes,
and far less than TransformerLens's one forward per patch (`mi_tutor.lab.reference` holds that
loop, the engine's independent oracle in the tests). Only the last position is unembedded.
`run_patched` applies one copy to an ordinary run (hooks for `run_with_hooks`/DLA).

On a bias-free HF Llama (SmolLM2) head-output patches run on `fast_llama`, the same growing
batch in plain torch that also shares the positions no patch changes (tested equal).

Conventions: prompts are aligned (one template, same length); `metric(logits) -> [batch]`
reads position -1 (see `mi_tutor.lab.hooks`); the instruments return means over prompts.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import torch

from .. import validate as V
from . import fast_llama
from .hooks import (HEAD_SITES, RESID_SITES, Head, Metric, check_tokens, declared_logits, head_outputs, hook_name,
                    kv_index, scored)

Kind = Literal["zero", "mean", "resample"]
KINDS = ("zero", "mean", "resample")
STREAM_SITES = RESID_SITES + ("attn_out", "mlp_out")  # no head axis: [batch, pos, d_model]
PATCH_SITES = HEAD_SITES + STREAM_SITES


@dataclass
class Patch:
    """Replace an activation at one hook site by `value` (at every position, or at one).

    Args:
        layer: the block.
        head: the query-head index at a head site (``"z"``, ``"q"``, ``"k"``, ``"v"``); None at a
            stream site (``"resid_pre/mid/post"``, ``"attn_out"``, ``"mlp_out"``). For ``k``/``v`` on
            a grouped-query model the patch hits the shared kv head `kv_index(model, head)`,
            i.e. every query head of that group.
        value: the full site activation of a source run (``[batch, pos, heads_at_site, d_head]``
            or ``[batch, pos, d_model]``); only the patched head and position are read.
        site: the hook site (`mi_tutor.lab.hooks.hook_name`).
        pos: a position index (negative counts from the end), or None for all positions.
    """

    layer: int
    head: int | None
    value: torch.Tensor
    site: str = "z"
    pos: int | None = None

    def __post_init__(self) -> None:
        if self.site not in PATCH_SITES:
            raise ValueError(f"a patch site must be one of {PATCH_SITES}, got {self.site!r}")
        if (self.head is None) != (self.site in STREAM_SITES):
            raise ValueError(f"site {self.site!r} needs {'no head (None)' if self.site in STREAM_SITES else 'a head index'}")


def apply_patch(model, act: torch.Tensor, patch: Patch, rows: slice = slice(None)) -> None:
    """Write `patch` into `act` (the activation at its hook) for the rows `rows`, in place."""
    where = slice(None) if patch.pos is None else patch.pos
    src = patch.value
    if patch.site in STREAM_SITES:
        act[rows, where] = src[:, where]
        return
    h = kv_index(model, patch.head) if patch.site in ("k", "v") else patch.head
    act[rows, where, h] = src[:, where, h]


def patch_hooks(model, patches: Sequence[Patch]) -> list[tuple[str, Callable]]:
    """Forward hooks that apply all `patches` to an ordinary run (values shaped like that run)."""
    by_name: dict[str, list[Patch]] = {}
    for p in patches:
        by_name.setdefault(hook_name(p.layer, p.site), []).append(p)

    def make(ps):
        def hook(act, hook):
            act = act.clone()
            for p in ps:
                apply_patch(model, act, p)
            return act
        return hook

    return [(n, make(ps)) for n, ps in by_name.items()]


def heads_replaced(heads: Sequence[Head], values: dict[int, torch.Tensor], pos: int | None = None) -> list[Patch]:
    """One copy that replaces the outputs of all `heads` by `values` ({layer: hook_z shaped})."""
    return [Patch(int(l), int(h), values[int(l)], pos=pos) for l, h in heads]


@torch.no_grad()
def run_patched(model, tokens: torch.Tensor, patches: Sequence[Patch]) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` of one run with all `patches` applied (e.g. a circuit's complement ablated)."""
    check_tokens(tokens)
    return model.run_with_hooks(tokens, fwd_hooks=patch_hooks(model, patches))


class _Stop(Exception):
    pass


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
    """Run the prompts once unpatched and once per copy (each copy a list of `Patch`es), in one pass.

    Args:
        copies: copy i applies all its patches; an empty list is a plain (unpatched) copy.
        freeze: path-patching mode: in every copy, every head output (hook_z) at layers from
            the copy's first patch onwards is reset to the unpatched run's value, except the
            heads the copy patches at site "z". Only the patched heads' *direct* paths then
            change the residual stream (MLPs still recompute).
        capture: hook names to record (e.g. ``hook_name(9, "q")``).
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
    row_of = {}  # copy index -> row block (1-based; block 0 = unpatched)
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

    edits: dict[str, list[tuple[int, Patch]]] = {}  # hook name -> (row block, patch)
    for i, c in enumerate(copies):
        for p in c:
            edits.setdefault(hook_name(p.layer, p.site), []).append((row_of[i], p))

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
                apply_patch(model, act, p, slice(k * batch, (k + 1) * batch))
            return act
        return hook

    captured: dict[str, torch.Tensor] = {}

    def cap_hook(name):
        def hook(act, hook):
            captured[name] = act.detach().clone()
            return act
        return hook

    start = min(first, default=n_layers)
    fwd = []
    for l in range(n_layers):
        for site in PATCH_SITES:
            name = hook_name(l, site)
            if name in edits or (freeze and site == "z" and l >= start):
                fwd.append((name, site_hook(name, l, site)))
    fwd += [(n, cap_hook(n)) for n in capture]

    handles = []
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
        return x[[0] + [row_of[i] for i in range(len(copies))]]  # row blocks back into copy order

    out_logits = unstack(logits) if logits is not None else None
    return out_logits, {n: unstack(v) for n, v in captured.items()}


def copy_scores(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """Mean metric per copy: logits ``[copies, batch, pos, vocab] -> [copies]``."""
    return torch.stack([scored(metric, l).mean() for l in logits])


def _chunks(items: list, rows_per_copy: int, max_rows: int) -> Iterable[list]:
    per = max(1, max_rows // max(1, rows_per_copy))
    for i in range(0, len(items), per):
        yield items[i:i + per]


def copies_runner(model, tokens: torch.Tensor, fast: bool | None = None,
                  logit_ids: torch.Tensor | None = None) -> Callable:
    """copies -> last-position logits ``[1 + n, batch, 1, vocab]``, on the fastest exact backend.

    `fast_llama` serves head-output patches on a bias-free HF Llama (``fast=None`` chooses,
    ``fast=False`` forces the hook engine); everything else runs on `run_copies`. With
    `logit_ids` (a metric's `hooks.declared_logits`) `fast_llama` computes only those logits
    of the copies and leaves the rest NaN (score them with `hooks.scored`, which refuses a misread).
    """
    use_fast = fast_llama.supports(model) if fast is None else fast
    runner = fast_llama.LlamaRunner(model) if use_fast else None
    base: dict = {}

    def run(copies):
        if runner is not None and all(p.site == "z" for c in copies for p in c):
            if not base:
                base.update(runner.run(tokens))
            return runner.replace_heads(tokens, copies, base, logit_ids)[:, :, None]
        return run_copies(model, tokens, copies)[0]
    return run


# --------------------------------------------------------------------------------------
# Heads, one at a time
# --------------------------------------------------------------------------------------


def replace_heads(
    model,
    tokens: torch.Tensor,
    values: dict[int, torch.Tensor],
    metric: Metric,
    heads: Sequence[Head] | None = None,
    pos: int | None = None,
    max_rows: int = 128,
    fast: bool | None = None,
    per_prompt: bool = False,
) -> torch.Tensor:
    """Metric with ONE head's output at a time replaced by `values`: ``[n_layers, n_heads]`` (NaN elsewhere).

    Args:
        values: ``{layer: [batch, pos, head, d_head]}`` (`ablation_values`, or `head_outputs` of
            a source run for activation patching).
        heads: the heads to replace one by one (default every head of the layers in `values`).
        pos: replace only at this position (e.g. -1), or at every position (None).
        per_prompt: return the metric per prompt, ``[batch, n_layers, n_heads]`` (its mean over
            prompts is the default result), for a bootstrap over prompts.
    """
    V.tokens(model, tokens)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        heads = [(l, h) for l in sorted(values) for h in range(n_heads)]
    V.heads(model, heads)
    batch = tokens.shape[0]
    for l in {l for l, _ in heads}:
        if l not in values:
            raise ValueError(f"no replacement values for layer {l}")
        if values[l].shape[0] != batch:
            raise ValueError(f"values for layer {l} have batch {values[l].shape[0]}, prompts have {batch}")
    if pos is not None:
        pos = pos % tokens.shape[1]
    run = copies_runner(model, tokens, fast, declared_logits(metric))
    out = torch.full((batch, n_layers, n_heads), float("nan"))
    for chunk in _chunks(list(heads), batch, max_rows):
        logits = run([[Patch(l, h, values[l], pos=pos)] for l, h in chunk])[1:]
        for (l, h), lg in zip(chunk, logits):
            out[:, l, h] = scored(metric, lg)
    return out if per_prompt else out.mean(0)


def patch_heads(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    layers: Sequence[int] | None = None,
    pos: int | None = None,
    max_rows: int = 128,
    fast: bool | None = None,
    heads: Sequence[Head] | None = None,
    per_prompt: bool = False,
) -> torch.Tensor:
    """Activation patching of every head's output (hook_z), source into target: ``[n_layers, n_heads]``.

    Denoising (source = clean, target = corrupted) asks whether a head is *sufficient* to
    restore behaviour; noising (source = corrupted, target = clean) whether it is *necessary*.
    Equal to TransformerLens's one-forward-per-head loop (tested), in a few batched passes.
    `heads` restricts the patches (default: every head of `layers`); `per_prompt` returns
    ``[batch, n_layers, n_heads]`` (NaN where not patched), as `replace_heads` does.
    """
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    if heads is None:
        V.layers(model, layers)
        layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
        heads = [(l, h) for l in layers for h in range(model.cfg.n_heads)]
    V.heads(model, heads)
    heads = [tuple(h) for h in heads]
    src = _source_heads(model, source_tokens, sorted({l for l, _ in heads}), fast)
    return replace_heads(model, target_tokens, src, metric, heads=heads, pos=pos, max_rows=max_rows, fast=fast,
                         per_prompt=per_prompt)


def patch_heads_per_prompt(model, target_tokens: torch.Tensor, source_tokens: torch.Tensor, metric: Metric,
                           **kwargs) -> torch.Tensor:
    """`patch_heads(..., per_prompt=True)`: ``[batch, n_layers, n_heads]``, for a bootstrap over prompts."""
    return patch_heads(model, target_tokens, source_tokens, metric, per_prompt=True, **kwargs)


def _source_heads(model, source_tokens: torch.Tensor, layers: Sequence[int], fast: bool | None) -> dict[int, torch.Tensor]:
    if fast_llama.supports(model) if fast is None else fast:
        z = fast_llama.LlamaRunner(model).run(source_tokens)["z"]
        return {l: z[l] for l in layers}
    return head_outputs(model, source_tokens, layers)


def patch_heads_by_position(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    heads: Sequence[Head],
    max_rows: int = 128,
    fast: bool | None = None,
) -> torch.Tensor:
    """Patch each listed head at one position at a time: ``[len(heads), pos]``."""
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    V.heads(model, heads)
    n_pos = target_tokens.shape[1]
    src = _source_heads(model, source_tokens, sorted({l for l, _ in heads}), fast)
    run = copies_runner(model, target_tokens, fast, declared_logits(metric))
    jobs = [(i, l, h, p) for i, (l, h) in enumerate(heads) for p in range(n_pos)]
    out = torch.full((len(heads), n_pos), float("nan"))
    for chunk in _chunks(jobs, target_tokens.shape[0], max_rows):
        logits = run([[Patch(l, h, src[l], pos=p)] for _, l, h, p in chunk])
        for (i, _, _, p), v in zip(chunk, copy_scores(metric, logits)[1:]):
            out[i, p] = v
    return out


@torch.no_grad()
def patch_residual(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    site: str = "resid_pre",
    max_rows: int = 128,
) -> torch.Tensor:
    """The residual stream (entering each layer, by default) patched at one position at a time: ``[n_layers, pos]``.

    Rows and columns not requested are NaN.
    """
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    V.layers(model, layers)
    V.choice(site, RESID_SITES, "residual site")
    n_layers, n_pos = model.cfg.n_layers, target_tokens.shape[1]
    layers = list(range(n_layers)) if layers is None else list(layers)
    positions = list(range(n_pos)) if positions is None else list(positions)
    names = [hook_name(l, site) for l in layers]
    wanted = set(names)
    _, cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in wanted)
    out = torch.full((n_layers, n_pos), float("nan"))
    jobs = [(l, p) for l in layers for p in positions]
    for chunk in _chunks(jobs, target_tokens.shape[0], max_rows):
        logits, _ = run_copies(model, target_tokens, [[Patch(l, None, cache[hook_name(l, site)], site, p)] for l, p in chunk])
        for (l, p), v in zip(chunk, copy_scores(metric, logits)[1:]):
            out[l, p] = v
    return out


# --------------------------------------------------------------------------------------
# Ablation
# --------------------------------------------------------------------------------------


def ablation_values(
    model,
    tokens: torch.Tensor,
    kind: Kind,
    reference_tokens: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """What each head's output is replaced with under an ablation, shaped like hook_z of `tokens`.

    - "zero": zeros (off-distribution: the network never sees a zero head output).
    - "mean": the mean of hook_z over `reference_tokens` (per position; same length as `tokens`).
    - "resample": hook_z of `reference_tokens` itself, prompt by prompt (pass the counterfactual
      prompts aligned with `tokens`); if the batch sizes differ, a seeded random draw.
    """
    V.choice(kind, KINDS, "ablation kind")
    V.tokens(model, tokens)
    V.layers(model, layers)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    if kind == "zero":
        shape = head_outputs(model, tokens[:1], layers)
        return {l: torch.zeros((tokens.shape[0],) + tuple(shape[l].shape[1:])) for l in layers}
    if reference_tokens is None:
        raise ValueError(f"{kind} ablation needs reference_tokens (the distribution to take values from)")
    check_tokens(reference_tokens, "reference_tokens")
    if reference_tokens.shape[1] != tokens.shape[1]:
        raise ValueError(f"reference prompts have {reference_tokens.shape[1]} tokens but the prompts have "
                         f"{tokens.shape[1]}: mean/resample ablation needs aligned positions (same template)")
    ref = head_outputs(model, reference_tokens, layers)
    if kind == "mean":
        return {l: ref[l].mean(0, keepdim=True).expand(tokens.shape[0], *ref[l].shape[1:]).clone() for l in layers}
    if reference_tokens.shape[0] == tokens.shape[0]:
        return ref
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, reference_tokens.shape[0], (tokens.shape[0],), generator=g)
    return {l: ref[l][idx] for l in layers}


def ablate_heads(
    model,
    tokens: torch.Tensor,
    metric: Metric,
    kind: Kind = "mean",
    reference_tokens: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    **kwargs,
) -> torch.Tensor:
    """Metric with each head ablated in turn, ``[n_layers, n_heads]`` (see `ablation_values`)."""
    V.choice(kind, KINDS, "ablation kind")
    V.tokens(model, tokens)
    values = ablation_values(model, tokens, kind, reference_tokens, layers=layers)
    return replace_heads(model, tokens, values, metric, **kwargs)


# --------------------------------------------------------------------------------------
# Path patching
# --------------------------------------------------------------------------------------


def _receivers(model, receivers, site: str) -> list[tuple[int, int | None, str]]:
    out = []
    for r in receivers:
        if not isinstance(r, (tuple, list)) or len(r) not in (2, 3):
            raise V.InstrumentError(f"a receiver is (layer, head) or (layer, head, site), not {r!r}")
        l, h, st = (r[0], r[1], r[2]) if len(r) == 3 else (r[0], r[1], site)
        if st not in ("q", "k", "v") + RESID_SITES:
            raise V.InstrumentError(f"path patching reaches a receiver's 'q', 'k', 'v' or a residual site, not {st!r}")
        if st in RESID_SITES:
            V.layers(model, [l], "receivers")
            out.append((int(l), None, st))
        else:
            V.heads(model, [(l, h)], "receivers")
            out.append((int(l), int(h), st))
    return out


def path_patch(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor | None,
    metric: Metric,
    senders: Sequence[Head],
    receivers: Sequence,
    site: str = "q",
    receiver_pos: int | None = None,
    freeze: bool = True,
    sender_values: dict[int, torch.Tensor] | None = None,
    max_rows: int = 128,
) -> torch.Tensor:
    """Path patching (Wang et al. 2022): each sender's effect that flows through the receivers' inputs.

    For every sender head, two steps, both on the target prompts:

    1. run with the sender's output taken from the source run (or from `sender_values`, e.g.
       its mean: an ablation) and, with ``freeze=True``, every other head frozen at its
       target-run value (MLPs recompute); record what the receivers now see at their site;
    2. run the plain target prompts with only the receivers' sites replaced by what step 1
       recorded (at `receiver_pos`, or all positions), and measure `metric`.

    With ``freeze=False`` step 1 lets every path from the sender to the receivers change
    (through intermediate heads too): "what reaches the receivers' queries", not only the direct edge.

    Args:
        receivers: (layer, head) pairs read at `site`, or (layer, head, site) triples to mix
            sites; a residual site takes head None, e.g. ``(20, None, "resid_mid")``: the whole residual stream
            there is replaced (not only what the MLP reads), so later layers see it too.

    Returns:
        metric per sender, ``[len(senders)]`` (compare with the unpatched target's metric).
    """
    V.tokens(model, target_tokens, "target_tokens")
    if sender_values is None:
        V.same_shape(target_tokens, source_tokens)
        V.tokens(model, source_tokens, "source_tokens")
    V.heads(model, senders, "senders")
    rec = _receivers(model, receivers, site)
    if not rec:
        raise ValueError("path_patch needs at least one receiver")
    top = max(l for l, _, _ in rec)
    bad = [x for x in senders if x[0] >= top]
    if bad:
        raise ValueError(f"senders {bad} are not below the top receiver layer ({top}): "
                         "a head can only send to later layers")
    src = sender_values if sender_values is not None else head_outputs(model, source_tokens, sorted({l for l, _ in senders}))
    names = sorted({hook_name(l, st) for l, _, st in rec})
    out = []
    for chunk in _chunks(list(senders), target_tokens.shape[0], max_rows):
        _, cap = run_copies(model, target_tokens, [[Patch(l, h, src[l])] for l, h in chunk], freeze=freeze,
                            capture=names, stop_after_layer=top)
        copies = [[Patch(l, h, cap[hook_name(l, st)][i + 1], site=st, pos=receiver_pos) for l, h, st in rec]
                  for i in range(len(chunk))]
        logits, _ = run_copies(model, target_tokens, copies)
        out.append(copy_scores(metric, logits)[1:])
    return torch.cat(out)


def path_patch_table(model, target_tokens, source_tokens, metric, receivers: Sequence, site: str = "q",
                     receiver_pos: int | None = None, senders: Sequence[Head] | None = None) -> torch.Tensor:
    """`path_patch` for every head below the top receiver (or the given senders): ``[n_layers, n_heads]``, NaN elsewhere."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    rec = _receivers(model, receivers, site)
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
# Attribution patching
# --------------------------------------------------------------------------------------


def head_output_grads(model, tokens: torch.Tensor, metric: Metric
                      ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor]:
    """One forward and one backward pass: each layer's hook_z ``[batch, pos, head, d_head]``, its gradient
    ``d metric_b / d z_b`` (prompts do not interact) and the metric per prompt ``[batch]``.

    The shared first step of every attribution (linear) estimate of a head replacement.
    """
    store: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(z, hook):
            z.retain_grad()
            store[layer] = z
            return z
        return hook

    def seed_graph(x, hook):  # parameters may be frozen: start the autograd graph here
        return x if x.requires_grad else x.detach().requires_grad_(True)

    hooks = [("hook_embed", seed_graph)] + [(hook_name(l, "z"), keep(l)) for l in range(model.cfg.n_layers)]
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        m = metric(logits).float()
        m.sum().backward()
    if any(store[l].grad is None for l in store):
        raise RuntimeError("no gradient reached the head outputs: does the model have a 'hook_embed' hook?")
    model.zero_grad(set_to_none=True)
    return {l: z.detach() for l, z in store.items()}, {l: z.grad for l, z in store.items()}, m.detach()


def attribution_patch_heads(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    per_position: bool = False,
    per_prompt: bool = False,
) -> torch.Tensor:
    """Attribution patching (Nanda 2023): a first-order estimate of `patch_heads`.

    Two forward passes and one backward pass: the estimated change in the metric when head
    (L, h) on the target run takes its source-run value is
    ``sum_{pos, d} (z_source - z_target) * d metric / d z_target``.

    Returns:
        The estimated *change* in the metric, ``[n_layers, n_heads]`` (``[n_layers, n_heads, pos]`` with
        `per_position`; ``[batch, n_layers, n_heads]`` with `per_prompt`). Add the target run's metric to compare.
    """
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    source = head_outputs(model, source_tokens)
    z, grad, _ = head_output_grads(model, target_tokens, metric)
    est = []
    for l in range(model.cfg.n_layers):
        contrib = ((source[l] - z[l]) * grad[l]).sum(-1)  # [batch, pos, head]: prompts do not interact
        est.append(contrib.sum(1) if per_prompt else contrib.mean(0).T if per_position else contrib.mean(0).sum(0))
    return torch.stack(est, 1 if per_prompt else 0).detach()


__all__ = [
    "Kind", "KINDS", "STREAM_SITES", "Patch", "apply_patch", "patch_hooks", "heads_replaced", "run_patched", "run_copies",
    "copy_scores", "copies_runner", "replace_heads", "patch_heads", "patch_heads_per_prompt", "patch_heads_by_position",
    "patch_residual", "ablation_values", "ablate_heads", "path_patch", "path_patch_table", "head_output_grads",
    "attribution_patch_heads",
]

