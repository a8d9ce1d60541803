"""One way to say "replace this activation with that", batched for a CPU.

Every causal experiment in the course is a replacement of some activation by another
value and a measurement of what changes:

- **ablation** replaces a head's output with zero, its mean over a reference distribution,
  or its value on another input (resample);
- **activation patching** replaces it with its value on a *source* run (clean into
  corrupted = denoising; corrupted into clean = noising);
- **attribution patching** approximates patching to first order with one backward pass:
  effect ~ (z_source - z_target) . d metric / d z_target.

A head's output is ``blocks.L.attn.hook_z`` (shape [batch, pos, head, d_head], per query
head also on GQA models such as SmolLM2), so the same code runs on GPT-2, SmolLM2 and the
toy models.

Speed. TransformerLens's `patching` module runs one forward pass per patch. Here each
layer's heads are patched in ONE forward pass: the batch is repeated once per head and copy
``h`` has head ``h`` replaced. On SmolLM2 that is 30 forward passes instead of 270.

All functions take a `metric(logits) -> Tensor[batch]`: a per-prompt score such as
`logit_diff`. They return the mean over prompts.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch

from . import validate as V

Metric = Callable[[torch.Tensor], torch.Tensor]


def z_name(layer: int) -> str:
    """Hook name of head outputs (before W_O) in `layer`."""
    return f"blocks.{layer}.attn.hook_z"


def resid_name(layer: int) -> str:
    """Hook name of the residual stream entering `layer`."""
    return f"blocks.{layer}.hook_resid_pre"


def _check_tokens(tokens: torch.Tensor, name: str = "tokens") -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int64, torch.int32):
        raise ValueError(f"{name} must be an integer tensor [batch, pos]; got "
                         f"{getattr(tokens, 'shape', type(tokens))} {getattr(tokens, 'dtype', '')}. Use "
                         f"model.to_tokens(prompts).")


def logit_diff(logits: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor, pos: int | torch.Tensor = -1) -> torch.Tensor:
    """Per-prompt logit difference correct - wrong at position `pos` (an int or one index per prompt).

    Args:
        logits: [batch, pos, vocab].
        correct, wrong: [batch] token ids.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be [batch, pos, vocab], got shape {tuple(logits.shape)}")
    V.answers(None, logits, correct=correct, wrong=wrong)
    b = torch.arange(logits.shape[0])
    pos_idx = pos if isinstance(pos, torch.Tensor) else torch.full((logits.shape[0],), pos)
    last = logits[b, pos_idx]
    return last[b, correct] - last[b, wrong]


@torch.no_grad()
def head_outputs(model, tokens: torch.Tensor, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """hook_z of the given layers (default all): {layer: [batch, pos, head, d_head]}."""
    V.tokens(model, tokens)
    V.layers(model, layers)
    _check_tokens(tokens)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    names = {z_name(l) for l in layers}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {l: cache[z_name(l)].clone() for l in layers}


def ablation_values(
    model,
    tokens: torch.Tensor,
    kind: Literal["zero", "mean", "resample"],
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
    V.choice(kind, ("zero", "mean", "resample"), "ablation kind")
    V.tokens(model, tokens)
    V.layers(model, layers)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    shape_src = head_outputs(model, tokens[:1], layers)
    if kind == "zero":
        return {l: torch.zeros((tokens.shape[0],) + tuple(shape_src[l].shape[1:])) for l in layers}
    if reference_tokens is None:
        raise ValueError(f"{kind} ablation needs reference_tokens (the distribution to take values from)")
    _check_tokens(reference_tokens, "reference_tokens")
    if reference_tokens.shape[1] != tokens.shape[1]:
        raise ValueError(f"reference prompts have {reference_tokens.shape[1]} tokens but the prompts have "
                         f"{tokens.shape[1]}: mean/resample ablation needs aligned positions (same template)")
    ref = head_outputs(model, reference_tokens, layers)
    if kind == "mean":
        return {l: ref[l].mean(0, keepdim=True).expand(tokens.shape[0], *ref[l].shape[1:]).clone() for l in layers}
    if kind == "resample":
        if reference_tokens.shape[0] == tokens.shape[0]:
            return ref
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, reference_tokens.shape[0], (tokens.shape[0],), generator=g)
        return {l: ref[l][idx] for l in layers}
    raise ValueError(f"unknown ablation kind {kind!r}; use 'zero', 'mean' or 'resample'")


@torch.no_grad()
def replace_each_head(
    model,
    tokens: torch.Tensor,
    values: dict[int, torch.Tensor],
    metric: Metric,
    layers: Sequence[int] | None = None,
    positions: torch.Tensor | None = None,
    max_batch: int = 256,
) -> torch.Tensor:
    """Metric after replacing ONE head's output at a time by `values` (mean over prompts).

    One forward pass per layer (chunked to `max_batch` rows): the prompts are repeated once
    per head, and copy h has head h replaced.

    Args:
        values: {layer: [batch, pos, head, d_head]} replacement values (see `ablation_values`,
            or `head_outputs` of a source run for activation patching).
        positions: optional bool mask [pos] or [batch, pos]: replace only there.

    Returns:
        [n_layers, n_heads]; rows of layers not requested are NaN.
    """
    V.tokens(model, tokens)
    V.layers(model, layers)
    _check_tokens(tokens)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    layers = list(range(n_layers)) if layers is None else list(layers)
    batch = tokens.shape[0]
    out = torch.full((n_layers, n_heads), float("nan"))
    heads_per_chunk = max(1, max_batch // batch)
    for layer in layers:
        v = values[layer]
        if v.shape[0] != batch:
            raise ValueError(f"values for layer {layer} have batch {v.shape[0]}, prompts have {batch}")
        for h0 in range(0, n_heads, heads_per_chunk):
            heads = list(range(h0, min(n_heads, h0 + heads_per_chunk)))
            rep = tokens.repeat(len(heads), 1)

            def hook(z, hook, heads=heads, v=v):
                z = z.clone()
                for i, h in enumerate(heads):
                    rows = slice(i * batch, (i + 1) * batch)
                    if positions is None:
                        z[rows, :, h] = v[:, :, h]
                    else:
                        mask = positions if positions.ndim == 2 else positions[None].expand(batch, -1)
                        z[rows, :, h] = torch.where(mask[..., None], v[:, :, h], z[rows, :, h])
                return z

            logits = model.run_with_hooks(rep, fwd_hooks=[(z_name(layer), hook)])
            scores = metric_repeated(metric, logits, len(heads), batch)
            out[layer, heads] = scores
    return out


def metric_repeated(metric: Metric, logits: torch.Tensor, copies: int, batch: int) -> torch.Tensor:
    """Apply a per-prompt metric to `copies` stacked copies of a batch; mean per copy."""
    vals = []
    for i in range(copies):
        vals.append(metric(logits[i * batch:(i + 1) * batch]).float().mean())
    return torch.stack(vals)


def ablate_each_head(
    model,
    tokens: torch.Tensor,
    metric: Metric,
    kind: Literal["zero", "mean", "resample"] = "mean",
    reference_tokens: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """Metric with each head ablated in turn ([n_layers, n_heads]); see `ablation_values`."""
    V.choice(kind, ("zero", "mean", "resample"), "ablation kind")
    V.tokens(model, tokens)
    values = ablation_values(model, tokens, kind, reference_tokens, layers=kwargs.get("layers"))
    return replace_each_head(model, tokens, values, metric, **kwargs)


def patch_each_head(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    **kwargs,
) -> torch.Tensor:
    """Activation patching: run on `target_tokens` with one head's output taken from `source_tokens`.

    Denoising (source = clean, target = corrupted) asks whether a head is *sufficient* to
    restore behaviour; noising (source = corrupted, target = clean) whether it is *necessary*.
    """
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    V.layers(model, kwargs.get("layers"))
    if source_tokens.shape != target_tokens.shape:
        raise ValueError(f"source and target prompts must align: {tuple(source_tokens.shape)} vs {tuple(target_tokens.shape)}")
    values = head_outputs(model, source_tokens, kwargs.get("layers"))
    return replace_each_head(model, target_tokens, values, metric, **kwargs)


@torch.no_grad()
def patch_residual(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    layers: Sequence[int] | None = None,
    max_batch: int = 256,
) -> torch.Tensor:
    """Patch the residual stream entering each layer at each position: [n_layers, pos].

    One forward pass per layer (chunked): copy p has position p replaced by the source run's value.
    """
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    V.layers(model, layers)
    _check_tokens(target_tokens)
    if source_tokens.shape != target_tokens.shape:
        raise ValueError("source and target prompts must have the same shape (same template)")
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    batch, n_pos = target_tokens.shape
    names = {resid_name(l) for l in layers}
    _, cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in names)
    out = torch.full((n_layers, n_pos), float("nan"))
    per_chunk = max(1, max_batch // batch)
    for layer in layers:
        src = cache[resid_name(layer)]
        for p0 in range(0, n_pos, per_chunk):
            ps = list(range(p0, min(n_pos, p0 + per_chunk)))
            rep = target_tokens.repeat(len(ps), 1)

            def hook(resid, hook, ps=ps, src=src):
                resid = resid.clone()
                for i, p in enumerate(ps):
                    resid[i * batch:(i + 1) * batch, p] = src[:, p]
                return resid

            logits = model.run_with_hooks(rep, fwd_hooks=[(resid_name(layer), hook)])
            out[layer, ps] = metric_repeated(metric, logits, len(ps), batch)
    return out


def attribution_patch_heads(
    model,
    target_tokens: torch.Tensor,
    source_tokens: torch.Tensor,
    metric: Metric,
    per_position: bool = False,
) -> torch.Tensor:
    """Attribution patching (Nanda 2023): a first-order estimate of `patch_each_head`.

    Two forward passes and one backward pass: the estimated change in the metric when head
    (L, h) on the target run takes its source-run value is
    ``sum_{pos, d} (z_source - z_target) * d metric / d z_target``.

    Returns:
        The estimated *change* in the metric, [n_layers, n_heads] (or [n_layers, n_heads, pos]
        with `per_position`). Add the target run's metric to compare with `patch_each_head`.
    """
    V.tokens(model, target_tokens, "target_tokens")
    V.same_shape(target_tokens, source_tokens)
    V.tokens(model, source_tokens, "source_tokens")
    _check_tokens(target_tokens)
    source = head_outputs(model, source_tokens)
    store: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(z, hook):
            z.retain_grad()
            store[layer] = z
            return z
        return hook

    def seed_graph(x, hook):  # parameters may be frozen: start the autograd graph here
        return x if x.requires_grad else x.detach().requires_grad_(True)

    hooks = [("hook_embed", seed_graph)] + [(z_name(l), keep(l)) for l in range(model.cfg.n_layers)]
    with torch.enable_grad():
        logits = model.run_with_hooks(target_tokens, fwd_hooks=hooks)
        metric(logits).float().sum().backward()  # d m_b / d z_b for each prompt b
    if any(store[l].grad is None for l in store):
        raise RuntimeError("no gradient reached the head outputs: does the model have a 'hook_embed' hook?")
    est = []
    for l in range(model.cfg.n_layers):
        z = store[l]
        contrib = ((source[l] - z.detach()) * z.grad).sum(-1)  # [batch, pos, head]
        contrib = contrib.mean(0)  # mean over prompts -> [pos, head]
        est.append(contrib.T if per_position else contrib.sum(0))
    model.zero_grad(set_to_none=True)
    return torch.stack(est).detach()


def heads_replaced_hooks(
    heads: Sequence[tuple[int, int]],
    values: dict[int, torch.Tensor],
    pos: int | None = None,
) -> list[tuple[str, Callable]]:
    """Forward hooks that replace SEVERAL heads' outputs at once by `values` (hook_z shaped).

    Args:
        heads: (layer, head) pairs.
        values: {layer: [batch, pos, head, d_head]}; rows beyond the run's batch are ignored.
        pos: replace only this position (e.g. -1), or every position (None).
    """
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    where = slice(None) if pos is None else pos

    def make(layer, hs):
        def hook(z, hook):
            z = z.clone()
            z[:, where, hs] = values[layer][: z.shape[0], where, hs]
            return z
        return hook

    return [(z_name(l), make(l, hs)) for l, hs in by_layer.items()]


@torch.no_grad()
def run_with_heads_replaced(
    model,
    tokens: torch.Tensor,
    heads: Sequence[tuple[int, int]],
    values: dict[int, torch.Tensor],
) -> torch.Tensor:
    """Logits with SEVERAL heads replaced at once (e.g. a whole circuit's complement)."""
    _check_tokens(tokens)
    return model.run_with_hooks(tokens, fwd_hooks=heads_replaced_hooks(heads, values))


def rank_heads(scores: torch.Tensor, k: int = 10, largest: bool = True) -> list[tuple[int, int, float]]:
    """The top-k (layer, head, score) of a [n_layers, n_heads] score table (NaNs ignored)."""
    flat = scores.flatten().clone()
    flat[torch.isnan(flat)] = -float("inf") if largest else float("inf")
    idx = flat.topk(min(k, flat.numel()), largest=largest).indices
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads, float(scores.flatten()[i])) for i in idx]


__all__ = [
    "z_name", "resid_name", "logit_diff", "head_outputs", "ablation_values", "replace_each_head",
    "ablate_each_head", "patch_each_head", "patch_residual", "attribution_patch_heads",
    "run_with_heads_replaced", "heads_replaced_hooks", "rank_heads", "metric_repeated",
]
