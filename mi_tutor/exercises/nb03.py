"""Exercise checks for notebook 03 (indirect object identification)."""
from __future__ import annotations

import numpy as np
import torch

from .core import Exercise, Mistake, register

NB = "03_ioi"


def _t(rng: np.random.Generator, *shape) -> torch.Tensor:
    return torch.tensor(rng.normal(size=shape), dtype=torch.float32)


# 1. the logit difference -----------------------------------------------------------------


def logit_difference(logits: torch.Tensor, io: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    b = torch.arange(logits.shape[0])
    return logits[b, -1, io] - logits[b, -1, s]


def _ld_cases(rng):
    cases = []
    for b, pos, v in [(3, 5, 11), (4, 7, 20), (2, 3, 9)]:
        io = torch.tensor(rng.choice(v, b))
        s = (io + torch.tensor(rng.integers(1, v, b))) % v
        cases.append(((_t(rng, b, pos, v), io, s), {}))
    return cases


register(Exercise(
    name="logit_difference", notebook=NB, reference=logit_difference, cases=_ld_cases,
    hints=["Read the logits at the LAST position: that is where the model predicts the next word.",
           "Index one row per prompt: logits[torch.arange(batch), -1, io] gives [batch].",
           "Return correct minus wrong: IO minus S, one number per prompt."],
    mistakes=[
        Mistake("you computed S - IO: the sign is flipped (IO is the correct answer)",
                lambda lg, io, s: -logit_difference(lg, io, s)),
        Mistake("you read the logits at the first position instead of the last",
                lambda lg, io, s: lg[torch.arange(lg.shape[0]), 0, io] - lg[torch.arange(lg.shape[0]), 0, s]),
        Mistake("you compared probabilities (after softmax), not logits",
                lambda lg, io, s: logit_difference(lg.softmax(-1), io, s)),
        Mistake("you took the mean over prompts: return one value per prompt",
                lambda lg, io, s: logit_difference(lg, io, s).mean()),
        Mistake("you indexed logits[:, -1, io] with the whole io vector, which pairs every prompt with every answer "
                "([batch, batch]); pair prompt b with its own answer: logits[torch.arange(batch), -1, io]",
                lambda lg, io, s: lg[:, -1, io] - lg[:, -1, s]),
    ],
))


# 2. the patching hook --------------------------------------------------------------------


def patch_head(z: torch.Tensor, z_source: torch.Tensor, head: int) -> torch.Tensor:
    out = z.clone()
    out[:, :, head] = z_source[:, :, head]
    return out


def _patch_cases(rng):
    return [((_t(rng, b, p, h, d), _t(rng, b, p, h, d), int(rng.integers(h))), {})
            for b, p, h, d in [(2, 5, 4, 3), (3, 6, 6, 2), (1, 7, 3, 4)]]


register(Exercise(
    name="patch_head", notebook=NB, reference=patch_head, returns_copy=True, cases=_patch_cases,
    hints=["hook_z has shape [batch, pos, head, d_head]: the head is axis 2, not axis 1.",
           "Clone first (out = z.clone()), then replace out[:, :, head] with the source's values.",
           "Leave every other head as it was in the target run."],
    mistakes=[
        Mistake("you indexed axis 1 (positions) instead of axis 2 (heads)",
                lambda z, zs, h: torch.cat([z[:, :h], zs[:, h:h + 1], z[:, h + 1:]], 1)),
        Mistake("you replaced every head, not only the chosen one", lambda z, zs, h: zs.clone()),
        Mistake("you returned the target unchanged (the patch was not applied)", lambda z, zs, h: z.clone()),
    ],
))


# 3. one path-patching step ---------------------------------------------------------------


def path_patched_query(resid: torch.Tensor, z_target: torch.Tensor, z_source: torch.Tensor,
                       W_O: torch.Tensor, W_Q: torch.Tensor, sender: int) -> torch.Tensor:
    delta = (z_source[:, :, sender] - z_target[:, :, sender]) @ W_O[sender]
    return (resid + delta) @ W_Q


def _pp_cases(rng):
    cases = []
    for b, p, h, dh, d in [(2, 4, 3, 2, 6), (3, 5, 4, 3, 8), (1, 6, 2, 4, 5)]:
        cases.append(((_t(rng, b, p, d), _t(rng, b, p, h, dh), _t(rng, b, p, h, dh), _t(rng, h, dh, d),
                       _t(rng, d, dh), int(rng.integers(h))), {}))
    return cases


def _all_heads(resid, zt, zs, W_O, W_Q, sender):
    delta = torch.einsum("bphd,hdm->bpm", zs - zt, W_O)
    return (resid + delta) @ W_Q


register(Exercise(
    name="path_patched_query", notebook=NB, reference=path_patched_query, cases=_pp_cases,
    hints=["The sender's output reaches the receiver through the residual stream: its contribution is z[:, :, sender] "
           "@ W_O[sender].",
           "Patching changes the residual stream by the DIFFERENCE source - target of that contribution.",
           "Add the difference to the target residual stream, then multiply by the receiver's W_Q."],
    mistakes=[
        Mistake("you added the source output without removing the target's: use the difference (source - target)",
                lambda r, zt, zs, W_O, W_Q, s: (r + zs[:, :, s] @ W_O[s]) @ W_Q),
        Mistake("you changed every head's path: path patching moves only the sender's contribution",
                _all_heads),
        Mistake("you returned the receiver's original query: the sender's change never reached the residual stream",
                lambda r, zt, zs, W_O, W_Q, s: r @ W_Q),
        Mistake("you subtracted the wrong way round (target - source): the patch moves the source value in",
                lambda r, zt, zs, W_O, W_Q, s: (r + (zt[:, :, s] - zs[:, :, s]) @ W_O[s]) @ W_Q),
    ],
))


# 4. faithfulness: keep the circuit, mean-ablate the rest ---------------------------------


def keep_circuit_heads(z: torch.Tensor, abc_mean: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    out = z.clone()
    out[:, :, ~keep] = abc_mean[None, :, ~keep].expand(z.shape[0], -1, -1, -1)
    return out


def _keep_cases(rng):
    cases = []
    for b, p, h, d in [(2, 5, 4, 3), (3, 4, 6, 2), (2, 6, 5, 2)]:
        keep = torch.tensor(rng.random(h) < 0.5)
        keep[0], keep[-1] = True, False
        cases.append(((_t(rng, b, p, h, d), _t(rng, p, h, d), keep), {}))
    return cases


register(Exercise(
    name="keep_circuit_heads", notebook=NB, reference=keep_circuit_heads, returns_copy=True, cases=_keep_cases,
    hints=["Heads IN the circuit keep their own output; only the others are replaced.",
           "The ABC mean is per position ([pos, head, d_head]): broadcast it over the batch, not over positions.",
           "out = z.clone(); out[:, :, ~keep] = abc_mean[None, :, ~keep]"],
    mistakes=[
        Mistake("you ablated the circuit's heads and kept the others: the mask is inverted",
                lambda z, m, k: keep_circuit_heads(z, m, ~k)),
        Mistake("you averaged the ABC mean over positions too: the paper's mean is per position",
                lambda z, m, k: keep_circuit_heads(z, m.mean(0, keepdim=True).expand_as(m), k)),
        Mistake("you replaced the other heads with zeros (zero ablation), not with the ABC mean",
                lambda z, m, k: keep_circuit_heads(z, torch.zeros_like(m), k)),
    ],
))


# 5. which name does a head look at? ------------------------------------------------------


def io_minus_s_attention(pattern: torch.Tensor, io_pos: torch.Tensor, s2_pos: torch.Tensor) -> torch.Tensor:
    b = torch.arange(pattern.shape[0])
    end = pattern[:, :, -1, :]  # [batch, head, key]
    return (end[b, :, io_pos] - end[b, :, s2_pos]).mean(0)


def _attn_cases(rng):
    cases = []
    for b, h, p in [(3, 4, 7), (4, 2, 9), (2, 5, 6)]:
        pat = torch.tensor(rng.random((b, h, p, p)), dtype=torch.float32).tril()
        pat = pat / pat.sum(-1, keepdim=True)
        io = torch.tensor(rng.integers(1, p - 2, b))
        s2 = (io + torch.tensor(rng.integers(1, p - 2, b))) % (p - 1)
        s2 = torch.where(s2 == io, (s2 + 1) % (p - 1), s2)
        cases.append(((pat, io, s2), {}))
    return cases


def _attn_edge_cases():
    """A non-causal pattern (every key has weight), so reading a column instead of a row shows."""
    rng = np.random.default_rng(7)
    pat = torch.tensor(rng.random((3, 2, 6, 6)), dtype=torch.float32)
    pat = pat / pat.sum(-1, keepdim=True)
    return [((pat, torch.tensor([1, 2, 0]), torch.tensor([3, 0, 4])), {})]


register(Exercise(
    name="io_minus_s_attention", notebook=NB, reference=io_minus_s_attention, cases=_attn_cases,
    edge_cases=_attn_edge_cases,
    hints=["The query is the final token: pattern[:, :, -1, :] is [batch, head, key].",
           "Each prompt has its own positions: index the key axis with io_pos[b] for prompt b.",
           "Subtract the attention to S2 from the attention to IO and average over prompts: [head]."],
    mistakes=[
        Mistake("you swapped query and key: read the row of the final token (query = -1), not its column",
                lambda pat, io, s2: (pat[torch.arange(pat.shape[0]), :, io, -1] - pat[torch.arange(pat.shape[0]), :, s2,
                                                                                      -1]).mean(0)),
        Mistake("you used the first prompt's positions for every prompt",
                lambda pat, io, s2: io_minus_s_attention(pat, io[:1].expand_as(io), s2[:1].expand_as(s2))),
        Mistake("you indexed the key axis with the whole io_pos vector, so every prompt is read at every prompt's "
                "position; index prompt b with io_pos[b] (end[torch.arange(batch), :, io_pos])",
                lambda pat, io, s2: (pat[:, :, -1, io] - pat[:, :, -1, s2]).mean(0)),
        Mistake("you computed S2 minus IO: the sign is flipped",
                lambda pat, io, s2: -io_minus_s_attention(pat, io, s2)),
    ],
))
