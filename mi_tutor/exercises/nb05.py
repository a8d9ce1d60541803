"""Exercise checks for notebook 05 (the ablation critique)."""
from __future__ import annotations

import numpy as np
import torch

from .. import ablation as A
from .. import ablation_evidence as EV
from ..lab import scores
from .core import Exercise, Mistake, register

NB = "05_ablation_critique"


def _t(rng: np.random.Generator, *shape, scale: float = 1.0) -> torch.Tensor:
    return torch.tensor(rng.normal(size=shape) * scale, dtype=torch.float32)


# ---- resample ablation ----------------------------------------------------------------------

def _resample_case(rng: np.random.Generator, b: int, p: int, h: int, d: int):
    z = _t(rng, b, p, h, d)
    perm = torch.tensor(rng.permutation(b))
    while (perm == torch.arange(b)).any():
        perm = torch.tensor(rng.permutation(b))
    return (z, int(rng.integers(h)), perm), {}


def _resample_all_heads(z, head, perm):
    return z[perm].clone()


def _resample_positions(z, head, perm):
    out = z.clone()
    out[:, :, head] = z.roll(1, 1)[:, :, head]
    return out


def _resample_inverse(z, head, perm):
    out = z.clone()
    out[perm, :, head] = z[:, :, head]
    return out


register(Exercise(
    name="resample_ablate_head",
    notebook=NB,
    reference=A.resample_head,
    returns_copy=True,
    cases=lambda rng: [_resample_case(rng, 4, 5, 3, 2), _resample_case(rng, 6, 3, 4, 3), _resample_case(rng, 3, 7, 2, 4)],
    hints=[
        "Prompt i takes the head's output of prompt perm[i]: index the BATCH axis (axis 0) with perm.",
        "Only one head changes: clone z, then overwrite out[:, :, head] with z[perm][:, :, head].",
    ],
    mistakes=[
        Mistake("you resampled every head (the whole activation), not just the one head", _resample_all_heads),
        Mistake("you permuted the position axis instead of the prompt (batch) axis", _resample_positions),
        Mistake("you scattered with perm (out[perm] = z) instead of gathering (out = z[perm])", _resample_inverse),
    ],
))


# ---- KL on control text ---------------------------------------------------------------------

def _kl_case(rng: np.random.Generator, b: int, p: int, v: int):
    clean = _t(rng, b, p, v, scale=2.0)
    return (clean, clean + _t(rng, b, p, v, scale=rng.uniform(0.3, 1.5))), {}


def _kl_reversed(clean, ablated):
    return A.kl_div(ablated, clean).mean()


def _kl_raw_logits(clean, ablated):
    p = clean.softmax(-1)
    return (p * (clean - ablated)).sum(-1).mean()


def _kl_batchmean(clean, ablated):
    return torch.nn.functional.kl_div(ablated.log_softmax(-1), clean.log_softmax(-1), log_target=True,
                                      reduction="batchmean")


def _kl_mean_over_vocab(clean, ablated):
    p, q = clean.log_softmax(-1), ablated.log_softmax(-1)
    return (p.exp() * (p - q)).mean(-1).mean()


register(Exercise(
    name="control_kl",
    notebook=NB,
    reference=A.control_kl,
    cases=lambda rng: [_kl_case(rng, 2, 3, 7), _kl_case(rng, 1, 5, 11), _kl_case(rng, 3, 2, 5)],
    hints=[
        "Turn both logit tensors into log-probabilities with log_softmax(-1) first.",
        "KL(P || Q) = sum over the vocabulary of p * (log p - log q), with P the CLEAN model; then average over "
        "prompts and positions.",
    ],
    mistakes=[
        Mistake("you computed KL(ablated || clean): the clean model must be the reference distribution P", _kl_reversed),
        Mistake("you used the raw logits as log-probabilities (no log_softmax), so a constant shift changes the answer",
                _kl_raw_logits),
        Mistake("you averaged over the vocabulary instead of summing over it", _kl_mean_over_vocab),
        Mistake("you used F.kl_div(..., reduction='batchmean'): it divides by the batch size only, so positions are "
                "summed; average over prompts AND positions", _kl_batchmean),
    ],
))


# ---- direct vs total effect -----------------------------------------------------------------

def _split_case(rng: np.random.Generator, L: int, H: int):
    dc = _t(rng, L, H)
    da = dc + _t(rng, L, H, scale=0.3)
    head = (int(rng.integers(L)), int(rng.integers(H)))
    da[head] = dc[head] - float(rng.uniform(0.5, 2.0))
    ld_c = float(rng.uniform(2, 4))
    return (ld_c, ld_c - float(rng.uniform(0.2, 1.5)), dc, da, head), {}


def _split_sign(ld_clean, ld_ablated, dla_clean, dla_ablated, head):
    r = A.split_total_effect(ld_clean, ld_ablated, dla_clean, dla_ablated, head)
    return torch.tensor([r[0], r[1], r[0] - r[1]])


def _split_ablated_only(ld_clean, ld_ablated, dla_clean, dla_ablated, head):
    total = float(ld_clean) - float(ld_ablated)
    direct = float(dla_clean[head])
    return torch.tensor([total, direct, direct - total])


register(Exercise(
    name="split_total_effect",
    notebook=NB,
    reference=A.split_total_effect,
    cases=lambda rng: [_split_case(rng, 3, 4), _split_case(rng, 5, 2), _split_case(rng, 2, 6)],
    hints=[
        "Total effect: how much the logit difference fell, ld_clean - ld_ablated.",
        "Direct effect: how much the head's OWN direct term fell, dla_clean[head] - dla_ablated[head] (an ablated "
        "head still writes something).",
        "Compensation is what the rest of the network gave back: direct - total (positive = self-repair).",
    ],
    mistakes=[
        Mistake("you flipped the sign of the compensation (total - direct): self-repair should come out positive", _split_sign),
        Mistake("you took the head's clean DLA as its direct effect, forgetting that the ablated head still writes "
                "its replacement value", _split_ablated_only),
    ],
))


# ---- an observational method: natural covariation -------------------------------------------

def _cov_case(rng: np.random.Generator, b: int, L: int, H: int):
    target = _t(rng, b, scale=2.0) + 3
    per = _t(rng, b, L, H) + target[:, None, None] * torch.tensor(rng.uniform(-1, 1, size=(1, L, H)), dtype=torch.float32)
    return (per * float(rng.uniform(0.5, 3)), target), {}


def _cov_unnormalised(per_prompt, target):
    x = per_prompt - per_prompt.mean(0)
    y = target - target.mean()
    return (x * y[:, None, None]).mean(0)


def _cov_mixed_conventions(per_prompt, target):
    x = per_prompt - per_prompt.mean(0)
    y = target - target.mean()
    return (x * y[:, None, None]).mean(0) / (per_prompt.std(0) * target.std())


def _cov_uncentred(per_prompt, target):
    num = (per_prompt * target[:, None, None]).sum(0)
    return num / (per_prompt.pow(2).sum(0).sqrt() * target.pow(2).sum().sqrt())


register(Exercise(
    name="covariation_scores",
    notebook=NB,
    reference=scores.covariation,
    cases=lambda rng: [_cov_case(rng, 12, 2, 3), _cov_case(rng, 20, 3, 2), _cov_case(rng, 8, 1, 4)],
    hints=[
        "Centre both: subtract the mean over prompts (axis 0) from per_prompt and from target.",
        "Pearson correlation = sum(x * y) / (sqrt(sum x^2) * sqrt(sum y^2)), all sums over prompts; broadcast y as "
        "y[:, None, None].",
    ],
    mistakes=[
        Mistake("you returned the covariance: without dividing by both standard deviations the score depends on the head's scale",
                _cov_unnormalised),
        Mistake("you forgot to centre (subtract the means over prompts): that is a cosine similarity, not a correlation",
                _cov_uncentred),
        Mistake("you mixed conventions: a covariance averaged over n with unbiased (n - 1) standard deviations; "
                "use the same n for both, or sum(x * y) / sqrt(sum x^2 * sum y^2)", _cov_mixed_conventions),
    ],
))


# ---- the direct effect with the final-norm scale frozen -------------------------------------

def _frozen_case(rng: np.random.Generator, b: int, d: int):
    oc, oa = _t(rng, b, d), _t(rng, b, d, scale=0.5)
    sc = torch.tensor(rng.uniform(0.5, 2.0, size=b), dtype=torch.float32)
    sa = sc * torch.tensor(rng.uniform(0.6, 0.9, size=b), dtype=torch.float32)  # ablation shrinks the residual
    return (oc, oa, sc, sa, _t(rng, b, d)), {}


def _frozen_per_run(out_clean, out_ablated, scale_clean, scale_ablated, direction):
    return (out_clean / scale_clean[:, None] * direction).sum(-1) - (out_ablated / scale_ablated[:, None] * direction).sum(-1)


def _frozen_no_scale(out_clean, out_ablated, scale_clean, scale_ablated, direction):
    return ((out_clean - out_ablated) * direction).sum(-1)


def _frozen_times_scale(out_clean, out_ablated, scale_clean, scale_ablated, direction):
    return ((out_clean - out_ablated) * direction).sum(-1) * scale_clean


def _frozen_sign(out_clean, out_ablated, scale_clean, scale_ablated, direction):
    return ((out_ablated - out_clean) * direction).sum(-1) / scale_clean


register(Exercise(
    name="frozen_direct_effect",
    notebook=NB,
    reference=EV.frozen_direct_effect,
    cases=lambda rng: [_frozen_case(rng, 3, 5), _frozen_case(rng, 5, 4), _frozen_case(rng, 2, 7)],
    hints=[
        "The direct effect is how much the head's own term in the logit difference fell: (out_clean - out_ablated) "
        "read along `direction`, summed over d_model.",
        "Freeze the norm: divide BOTH runs' terms by the CLEAN scale (scale_clean[:, None]); scale_ablated is what "
        "the frozen reading leaves out on purpose.",
    ],
    mistakes=[
        Mistake("you read each run with its own final-norm scale: the change of the scale (a response of the rest of "
                "the network) then leaks into the head's direct effect; divide both by scale_clean", _frozen_per_run),
        Mistake("you forgot the final norm's scale: the logits see the residual divided by it", _frozen_no_scale),
        Mistake("you multiplied by the scale; the norm divides the residual by it", _frozen_times_scale),
        Mistake("you flipped the sign: the direct effect is clean minus ablated (positive = the head helped)", _frozen_sign),
    ],
))
