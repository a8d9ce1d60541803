"""TransformerLens's own patching loop: the engine's independent oracle, and the speed comparison.

`transformer_lens.patching.generic_activation_patch` runs one forward pass per patch. It is
slow, and it is not ours: that makes it the right reference for `mi_tutor.lab.patching`. The
tests check the engine against it to 1e-4 on the toy models, SmolLM2 and a random GPT-2;
`compare_patching_speed` times both on the same heads.
"""
from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from . import fast_llama
from .hooks import Head, Metric, hook_name
from .patching import patch_heads


def _tl_patch(model, target_tokens, source_tokens, metric: Metric, site: str, setter_name: str, index: list[tuple]):
    import pandas as pd
    from transformer_lens import patching

    layers = {i[0] for i in index}
    names = {hook_name(l, site) for l in layers}
    _, src_cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in names)
    columns = ["layer", "head"] if setter_name == "layer_head_vector_patch_setter" else ["layer", "pos"]
    df = pd.DataFrame(index, columns=columns)
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = patching.generic_activation_patch(model, target_tokens, src_cache, lambda lg: metric(lg).float().mean(),
                                                getattr(patching, setter_name), site, index_df=df)
    return torch.as_tensor(out).flatten()


def tl_patch_heads(model, target_tokens, source_tokens, metric: Metric, heads: Sequence[Head]) -> torch.Tensor:
    """TransformerLens's loop (one forward per head) patching hook_z of each head in `heads`: ``[len(heads)]``."""
    return _tl_patch(model, target_tokens, source_tokens, metric, "z", "layer_head_vector_patch_setter",
                     [tuple(h) for h in heads])


def tl_patch_residual(model, target_tokens, source_tokens, metric: Metric, cells: Sequence[tuple[int, int]]) -> torch.Tensor:
    """TransformerLens's loop patching the residual stream entering (layer, pos) for each cell: ``[len(cells)]``."""
    return _tl_patch(model, target_tokens, source_tokens, metric, "resid_pre", "layer_pos_patch_setter",
                     [tuple(c) for c in cells])


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


def compare_patching_speed(model, target_tokens, source_tokens, metric: Metric,
                           tl_layers: Sequence[int] = (0,)) -> tuple[SpeedReport, torch.Tensor]:
    """Time `patch_heads` on every head and the TL loop on the heads of `tl_layers`; check they agree.

    Returns the report and the engine's ``[n_layers, n_heads]`` table (reuse it: it is the result).
    """
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


__all__ = ["tl_patch_heads", "tl_patch_residual", "SpeedReport", "compare_patching_speed"]
