"""The instruments: model-agnostic tools of the trade for any `TransformerBridge` (GPT-2, SmolLM2, the toys).

==============  =====================================================================
module          what it holds
==============  =====================================================================
`hooks`         hook names (`hook_name`), heads and labels (``L9H6``), the GQA map, metrics
`patching`      THE engine: activation, residual and path patching, ablation by kind,
                attribution patching (`fast_llama` is its fast backend on SmolLM2)
`readout`       the final norm, direct logit attribution, logit lens, attention, effective OV
`scores`        head scores (previous-token, induction, copying, composition) and rank statistics
`reference`     TransformerLens's own patching loop: the engine's oracle and speed comparison
==============  =====================================================================

Lessons import these (``from mi_tutor.lab import patching, readout``); the instruments never
import a lesson.
"""
from . import hooks, patching, readout, scores  # noqa: F401

__all__ = ["hooks", "patching", "readout", "scores"]
