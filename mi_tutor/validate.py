"""Checking the instruments' arguments before any forward pass, with one line that says what to do.

Called at the top of the public functions of `mi_tutor.lab` (patching, readout, hooks). Every problem
raises `InstrumentError` (a ValueError, so existing ``except ValueError`` code still works),
naming the argument and the valid range.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


class InstrumentError(ValueError):
    """An instrument was called with an argument it cannot use; the message names it and its valid range."""


def _n(model: Any, attr: str) -> int | None:
    value = getattr(getattr(model, "cfg", None), attr, None)
    return int(value) if isinstance(value, int) else None


def tokens(model: Any, t: Any, name: str = "tokens") -> None:
    """`t` must be an integer tensor [batch, pos] with batch, pos >= 1 and ids inside the vocabulary."""
    if not isinstance(t, torch.Tensor):
        raise InstrumentError(f"{name} must be a torch tensor of token ids [batch, pos], not a {type(t).__name__}: "
                              f"use model.to_tokens(prompts)")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InstrumentError(f"{name} must be an integer tensor of token ids, not {t.dtype}: use "
                              f"model.to_tokens(prompts) (or {name}.long() if they are whole numbers)")
    if t.ndim != 2:
        raise InstrumentError(f"{name} must be 2-D [batch, pos], got shape {tuple(t.shape)}: "
                              f"add a batch axis with {name}[None] or use model.to_tokens(prompts)")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InstrumentError(f"{name} has shape {tuple(t.shape)}: it needs at least one prompt and one token")
    vocab = _n(model, "d_vocab")
    if vocab is not None and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise InstrumentError(f"{name} has ids from {int(t.min())} to {int(t.max())}; the model's vocabulary is 0..{vocab - 1}")


def same_shape(a: torch.Tensor, b: Any, names: tuple[str, str] = ("target_tokens", "source_tokens")) -> None:
    """Two token tensors must align position by position (same template)."""
    if not isinstance(b, torch.Tensor) or tuple(a.shape) != tuple(b.shape):
        raise InstrumentError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(getattr(b, 'shape', ()))} must have "
                              f"the same shape [batch, pos]: prompts built from one template, aligned position by position")


def _as_index(x: Any, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, torch.Tensor)) and not hasattr(x, "__index__"):
        raise InstrumentError(f"{what} must be an integer, not {x!r}")
    try:
        return int(x.__index__() if not isinstance(x, torch.Tensor) else x.item())
    except Exception:
        raise InstrumentError(f"{what} must be an integer, not {x!r}") from None


def layers(model: Any, ls: Iterable[Any] | None, name: str = "layers") -> None:
    """Every layer must be an integer in 0..n_layers-1 (None means all)."""
    if ls is None:
        return
    n = _n(model, "n_layers")
    for l in ls:
        i = _as_index(l, f"a layer in {name}")
        if n is not None and not 0 <= i < n:
            raise InstrumentError(f"layer {i} in {name} is out of range: this model has layers 0..{n - 1}")


def heads(model: Any, hs: Sequence[Any], name: str = "heads") -> None:
    """Every head must be a (layer, head) pair inside the model."""
    n_l, n_h = _n(model, "n_layers"), _n(model, "n_heads")
    for pair in hs:
        if not isinstance(pair, (tuple, list)) or len(pair) < 2:
            raise InstrumentError(f"each entry of {name} must be a (layer, head) pair, not {pair!r}")
        l, h = _as_index(pair[0], f"the layer of {pair!r}"), _as_index(pair[1], f"the head of {pair!r}")
        if n_l is not None and not 0 <= l < n_l:
            raise InstrumentError(f"layer {l} of head {tuple(pair)} is out of range: this model has layers 0..{n_l - 1}")
        if n_h is not None and not 0 <= h < n_h:
            raise InstrumentError(f"head {h} of {tuple(pair)} is out of range: this model has heads 0..{n_h - 1}")


def choice(value: Any, allowed: Sequence[str], name: str) -> None:
    """`value` must be one of `allowed`."""
    if value not in allowed:
        raise InstrumentError(f"unknown {name} {value!r}; use one of: {', '.join(repr(a) for a in allowed)}")


def answers(model: Any, t: torch.Tensor, **ids: Any) -> None:
    """Answer-token tensors (e.g. io, s): integer, one per prompt, inside the vocabulary."""
    batch = t.shape[0]
    vocab = _n(model, "d_vocab")
    for name, x in ids.items():
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool:
            raise InstrumentError(f"{name} must be an integer tensor of token ids [batch], not {type(x).__name__}"
                                  f"{' ' + str(x.dtype) if isinstance(x, torch.Tensor) else ''}")
        if tuple(x.shape) != (batch,):
            raise InstrumentError(f"{name} has shape {tuple(x.shape)}; it needs one token id per prompt: ({batch},)")
        if vocab is not None and x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab):
            raise InstrumentError(f"{name} has ids outside the vocabulary 0..{vocab - 1}")
