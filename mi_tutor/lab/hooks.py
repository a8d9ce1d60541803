"""The vocabulary every instrument shares: hook names, heads, labels, metrics.

A `TransformerBridge` (TransformerLens 4) exposes the same hook names on GPT-2, SmolLM2 and
the course's toy models. `hook_name(layer, site)` is the one place those names are spelled:

======================  ==========================================  =============================
site                    hook                                        shape
======================  ==========================================  =============================
``"z"``                 ``blocks.L.attn.hook_z``                    [batch, pos, head, d_head]
``"q"``                 ``blocks.L.attn.hook_q``                    [batch, pos, head, d_head]
``"k"``, ``"v"``        ``blocks.L.attn.hook_k`` / ``hook_v``       [batch, pos, kv_head, d_head]
``"pattern"``           ``blocks.L.attn.hook_pattern``              [batch, head, query, key]
``"resid_pre"``         ``blocks.L.hook_resid_pre``                 [batch, pos, d_model]
``"resid_mid"``         ``blocks.L.hook_resid_mid``                 [batch, pos, d_model]
``"resid_post"``        ``blocks.L.hook_resid_post``                [batch, pos, d_model]
``"attn_out"``          ``blocks.L.hook_attn_out``                  [batch, pos, d_model]
``"mlp_out"``           ``blocks.L.hook_mlp_out``                   [batch, pos, d_model]
======================  ==========================================  =============================

A head is a ``(layer, head)`` pair of query-head indices; on a grouped-query model (SmolLM2:
3 key/value heads shared by 9 query heads) `kv_index` gives the key/value head a query head
reads. Heads are written ``L9H9`` everywhere (`head_label`; `parse_heads` reads it back).

A metric is a function ``metric(logits [batch, pos, vocab]) -> [batch]``: one score per prompt,
read at the last position (`logit_diff`, `logprob_metric`). Instruments report the mean. A
metric that reads a few logits may say which (`declare_logits`, `logit_diff_metric`): the fast
patching engine then computes only those columns of the vocabulary.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from .. import validate as V

Metric = Callable[[torch.Tensor], torch.Tensor]
Head = tuple[int, int]

#: Sites indexed by head (the third axis of the activation).
HEAD_SITES = ("z", "q", "k", "v")
#: Sites of the residual stream (no head axis).
RESID_SITES = ("resid_pre", "resid_mid", "resid_post")
_OTHER_SITES = ("pattern", "attn_out", "mlp_out")
SITES = HEAD_SITES + RESID_SITES + _OTHER_SITES


def hook_name(layer: int, site: str) -> str:
    """The bridge's hook name for `site` in block `layer` (see the table above)."""
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if site in HEAD_SITES or site == "pattern":
        return f"blocks.{layer}.attn.hook_{site}"
    return f"blocks.{layer}.hook_{site}"


# --------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------


def n_kv_heads(model) -> int:
    """Key/value heads per layer (= query heads unless the model uses grouped-query attention)."""
    return getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads


def kv_index(model, head: int) -> int:
    """The key/value head that query head `head` reads (itself without grouped-query attention)."""
    return head // (model.cfg.n_heads // n_kv_heads(model))


def expand_kv(w: torch.Tensor, n_heads: int, dim: int = 1) -> torch.Tensor:
    """Repeat key/value heads along `dim` so that query head h gets kv head ``h // group``."""
    if w.shape[dim] == n_heads:
        return w
    if n_heads % w.shape[dim]:
        raise ValueError(f"cannot spread {w.shape[dim]} key/value heads over {n_heads} query heads")
    return w.repeat_interleave(n_heads // w.shape[dim], dim=dim)


def all_heads(model) -> list[Head]:
    """Every (layer, head) of `model`, layer by layer."""
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def top_heads(scores: torch.Tensor, k: int, largest: bool = True) -> list[Head]:
    """The `k` heads with the largest (or smallest) scores of a ``[n_layers, n_heads]`` table, best first.

    NaNs (heads not measured) are never chosen. Read a head's score as ``scores[head]``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be a [n_layers, n_heads] table, got shape {tuple(scores.shape)}")
    flat = scores.flatten().float().clone()
    valid = int((~torch.isnan(flat)).sum())
    flat[torch.isnan(flat)] = -float("inf") if largest else float("inf")
    idx = flat.topk(min(k, valid), largest=largest).indices
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in idx]


def head_label(head: Head) -> str:
    """``(9, 6) -> "L9H6"``: the one way heads are written in tables, figures and prose."""
    return f"L{int(head[0])}H{int(head[1])}"


def parse_heads(text: str, n_layers: int, n_heads: int) -> list[Head]:
    """``"L20H1, L25H4"`` (or the papers' ``"20.1 25.4"``) -> ``[(20, 1), (25, 4)]``; a clear error otherwise."""
    found = re.findall(r"L?(\d+)\s*[H.]\s*(\d+)", text or "")
    if not found:
        raise ValueError(f"could not read any head from {text!r}: write e.g. 'L20H1' or 'L20H1, L25H4'")
    heads = [(int(l), int(h)) for l, h in found]
    bad = [h for h in heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise ValueError(f"no such head {bad}: layers 0..{n_layers - 1}, heads 0..{n_heads - 1}")
    return heads


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


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


def declare_logits(metric: Metric, token_ids: torch.Tensor | Sequence[int]) -> Metric:
    """`metric`, declared to read the last-position logits of `token_ids` and no others.

    A patching engine may then unembed only those columns (`fast_llama` does: the full
    unembedding is 4% of SmolLM2's all-heads sweep) and leave the others NaN. A metric that
    reads an undeclared logit therefore gives NaN, and the patching functions refuse it.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if not len(ids) or int(ids.min()) < 0:
        raise ValueError("declare_logits needs one or more non-negative token ids")
    ids = ids.unique()

    def declared(logits: torch.Tensor) -> torch.Tensor:
        return metric(logits)
    declared.logit_ids = ids  # type: ignore[attr-defined]
    declared.__doc__ = metric.__doc__
    return declared


def declared_logits(metric: Metric) -> torch.Tensor | None:
    """The token ids `metric` declares it reads (`declare_logits`), or None: it may read any logit."""
    return getattr(metric, "logit_ids", None)


def scored(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """``metric(logits)`` as float, refusing the NaN a declared metric gives when it reads a logit
    it did not declare (an engine that honours `declare_logits` computed only the declared ones)."""
    values = metric(logits).float()
    if declared_logits(metric) is not None and bool(values.isnan().any()):
        raise ValueError("the metric read a logit it did not declare (hooks.declare_logits): declare every "
                         "token id it reads, or pass the metric undeclared")
    return values


def logit_diff_metric(correct: torch.Tensor, wrong: torch.Tensor) -> Metric:
    """metric(logits) = `logit_diff` correct - wrong at the last position, declaring the logits it reads."""
    return declare_logits(lambda logits: logit_diff(logits, correct, wrong), torch.cat([correct, wrong]))


def logprob_metric(target: torch.Tensor) -> Metric:
    """metric(logits) = log-probability of `target` [batch] at the last position, per prompt."""
    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = logits[:, -1].float().log_softmax(-1)
        return lp[torch.arange(lp.shape[0]), target[: lp.shape[0]]]
    return metric


# --------------------------------------------------------------------------------------
# Reading activations
# --------------------------------------------------------------------------------------


def check_tokens(tokens: torch.Tensor, name: str = "tokens") -> None:
    """One line that says what to pass, for anything that is not an integer ``[batch, pos]`` tensor."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int64, torch.int32):
        raise ValueError(f"{name} must be an integer tensor [batch, pos]; got "
                         f"{getattr(tokens, 'shape', type(tokens))} {getattr(tokens, 'dtype', '')}. Use "
                         f"model.to_tokens(prompts).")


class _Enough(Exception):
    """Raised by `activations` once every requested hook has fired (the rest of the forward is not needed)."""


def _last_block(names: Sequence[str]) -> int | None:
    """The deepest block a hook in `names` lives in, or None if one lives after the blocks (final norm, unembed)."""
    deepest = -1
    for n in names:
        m = re.match(r"blocks\.(\d+)\.", n)
        if m:
            deepest = max(deepest, int(m.group(1)))
        elif not n.startswith("hook_embed") and not n.startswith("hook_pos_embed"):
            return None
    return deepest


@torch.no_grad()
def activations(model, tokens: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """One plain forward pass recording the hooks `names`: ``{name: activation}``.

    The pass stops after the deepest block a requested hook lives in: the later blocks, the
    final norm and the unembedding (a fifth of SmolLM2's arithmetic on short prompts) are not
    run when nothing is read from them. The values are those of a full forward (tested).
    """
    wanted = set(names)
    store: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(act, hook):
            store[name] = act.detach().clone()
            return act
        return hook

    last = _last_block(names)
    after = None
    if last is not None:
        after = model.blocks[last + 1] if last + 1 < len(model.blocks) else getattr(model, "ln_final", None)
    handle = None
    if after is not None:
        def enough(module, args, kwargs):
            raise _Enough()
        handle = after.register_forward_pre_hook(enough, with_kwargs=True)
    try:
        model.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in wanted])
    except _Enough:
        pass
    except KeyError as e:
        raise ValueError(f"{e.args[0] if e.args else e} Spell hook names with hook_name(layer, site).") from None
    finally:
        if handle is not None:
            handle.remove()
    missing = wanted - set(store)
    if missing:
        raise ValueError(f"no hook named {sorted(missing)[0]!r} fired; spell hook names with hook_name(layer, site)")
    return {n: store[n] for n in names}


@torch.no_grad()
def head_outputs(model, tokens: torch.Tensor, layers: Sequence[int] | None = None,
                 max_prompts: int | None = None) -> dict[int, torch.Tensor]:
    """hook_z of the given layers (default all): ``{layer: [batch, pos, head, d_head]}``.

    `max_prompts`: run that many prompts per forward (the same values): a hooked forward's caches grow with the
    batch (~10 MB per 16-token prompt on SmolLM2), so a long batch would set a notebook's memory peak.
    """
    if max_prompts is not None:
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be at least 1, got {max_prompts}")
        parts = [head_outputs(model, tokens[i:i + max_prompts], layers) for i in range(0, tokens.shape[0], max_prompts)]
        return {l: torch.cat([p[l] for p in parts]) for l in parts[0]}
    V.tokens(model, tokens)
    V.layers(model, layers)
    check_tokens(tokens)
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    acts = activations(model, tokens, [hook_name(l, "z") for l in layers])
    return {l: acts[hook_name(l, "z")] for l in layers}


# --------------------------------------------------------------------------------------
# Writing to the residual stream: steering (notebook 08)
# --------------------------------------------------------------------------------------


def add_vector(resid: torch.Tensor, vector: torch.Tensor, start: int = 0) -> torch.Tensor:
    """``resid`` [batch, pos, d_model] with `vector` [d_model] added at every position from `start` on (a new tensor)."""
    out = resid.clone()
    out[:, start:] = out[:, start:] + vector.to(resid.dtype)
    return out


def steering_hooks(layer: int, vector: torch.Tensor, start: int = 0, site: str = "resid_post") -> list:
    """Forward hooks that add `vector` to the residual stream after block `layer` (ActAdd / CAA style).

    Use with ``model.hooks(fwd_hooks=steering_hooks(...))`` or ``run_with_hooks``. The hook
    returns a new tensor and leaves the activation it is given unchanged.
    """
    if site not in RESID_SITES:
        raise ValueError(f"steering writes to the residual stream: site must be one of {RESID_SITES}, got {site!r}")

    def hook(resid, hook=None):
        return add_vector(resid, vector, start)

    return [(hook_name(layer, site), hook)]


__all__ = [
    "Metric", "Head", "HEAD_SITES", "RESID_SITES", "SITES", "hook_name", "n_kv_heads", "kv_index", "expand_kv",
    "all_heads", "top_heads", "head_label", "parse_heads", "logit_diff", "declare_logits", "declared_logits", "scored",
    "logit_diff_metric", "logprob_metric", "check_tokens",
    "activations", "head_outputs", "add_vector", "steering_hooks",
]
