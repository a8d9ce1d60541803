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
           "Each prompt has its own IO and S token. Pick, for every row of the batch, that row's own two logits: "
           "index the batch axis and the vocabulary axis together, one index per row.",
           "Return correct minus wrong, IO minus S: one number per prompt. Sanity check: the shape is [batch], "
           "and it is positive where the model prefers the right name."],
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


# 2. the patching hook: one head, at one position or all -----------------------------------


def patch_head(z: torch.Tensor, z_source: torch.Tensor, head: int, pos: int | None = None) -> torch.Tensor:
    out = z.clone()
    if pos is None:
        out[:, :, head] = z_source[:, :, head]
    else:
        out[:, pos, head] = z_source[:, pos, head]
    return out


def _patch_cases(rng):
    cases = []
    for (b, p, h, d), pos in zip([(2, 7, 4, 3), (3, 8, 5, 2), (2, 9, 3, 4)], [None, -1, 2]):
        cases.append(((_t(rng, b, p, h, d), _t(rng, b, p, h, d), int(rng.integers(h))), {"pos": pos}))
    return cases


def _patch_axis1(z, zs, h, pos=None):
    out = z.clone()
    out[:, h] = zs[:, h]
    return out


def _patch_all_pos(z, zs, h, pos=None):
    return patch_head(z, zs, h, None)


def _patch_every_head(z, zs, h, pos=None):
    out = z.clone()
    if pos is None:
        return zs.clone()
    out[:, pos] = zs[:, pos]
    return out


register(Exercise(
    name="patch_head", notebook=NB, reference=patch_head, returns_copy=True, cases=_patch_cases,
    hints=["hook_z has shape [batch, pos, head, d_head]: find which axis holds the heads and which the positions.",
           "The hook's input belongs to the run, and the task asks for a new tensor: copy it before you write into it.",
           "pos=None means every position; an integer pos means that position only. Sanity check: every other head, "
           "and with pos given every other position, must equal the target."],
    mistakes=[
        Mistake("you indexed axis 1 (positions) instead of axis 2 (heads)", _patch_axis1),
        Mistake("you patched every position although `pos` names one: with pos given, replace out[:, pos, head] only",
                _patch_all_pos),
        Mistake("you replaced every head, not only the chosen one", _patch_every_head),
        Mistake("you returned the target unchanged (the patch was not applied)", lambda z, zs, h, pos=None: z.clone()),
    ],
))


# 3. the patching loop: a per-head map, with real hooks ------------------------------------


class PatchRun:
    """A model, clean and source prompts and a metric: `run(fwd_hooks)` = the mean metric of a hooked clean run.

    An exercise input: the check deep-copies inputs, and this object stands for the model, so it copies as itself.
    """

    def __init__(self, model, tokens: torch.Tensor, source_tokens: torch.Tensor, metric):
        self.model, self.tokens, self.source_tokens, self.metric = model, tokens, source_tokens, metric

    def __call__(self, fwd_hooks=()) -> float:
        with torch.no_grad():
            return float(self.metric(self.model.run_with_hooks(self.tokens, fwd_hooks=list(fwd_hooks))).float().mean())

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return f"PatchRun(tokens {tuple(self.tokens.shape)})"


def source_z(run: PatchRun, layers) -> dict[int, torch.Tensor]:
    """The source run's head outputs {layer: [batch, pos, head, d_head]}."""
    from ..lab.hooks import head_outputs

    return {l: v.clone() for l, v in head_outputs(run.model, run.source_tokens, list(layers)).items()}


def head_patching_map(run: PatchRun, z_source: dict, layers: list, n_heads: int, pos: int | None = None) -> torch.Tensor:
    """Reference: the engine (`lab.patching.patch_heads`), minus the clean metric, on the given layers."""
    from ..lab import patching

    table = patching.patch_heads(run.model, run.tokens, run.source_tokens, run.metric, layers=list(layers), pos=pos)
    return (table[list(layers)] - run()).float()


def _hook_loop(run, z_source, layers, n_heads, edit, subtract=True):
    from ..lab.hooks import hook_name

    clean = run() if subtract else 0.0
    out = torch.zeros(len(layers), n_heads)
    for i, l in enumerate(layers):
        for h in range(n_heads):
            def hook(z, hook, h=h, l=l):
                return edit(z.clone(), z_source[l], h)
            out[i, h] = run([(hook_name(l, "z"), hook)]) - clean
    return out


_TOY: dict = {}


def _toy():
    if not _TOY:
        from ..models import attn_only_model

        _TOY["m"] = attn_only_model(n_layers=2, d_model=16, n_heads=3, d_vocab=20, n_ctx=9, seed=3)
    return _TOY["m"]


def _metric(logits):
    return logits[:, -1, 0] - logits[:, -1, 1]


def _loop_cases(rng):
    model = _toy()
    cases = []
    for batch, seq, pos in [(3, 7, -1), (2, 8, None), (3, 9, 4)]:
        a = torch.tensor(rng.integers(0, 20, (batch, seq)))
        b = torch.tensor(rng.integers(0, 20, (batch, seq)))
        run = PatchRun(model, a, b, _metric)
        cases.append(((run, source_z(run, [0, 1]), [0, 1], 3), {"pos": pos}))
    return cases


def _loop_mistake(edit, subtract=True):
    def f(run, z_source, layers, n_heads, pos=None):
        return _hook_loop(run, z_source, layers, n_heads, lambda z, src, h: edit(z, src, h, pos), subtract)
    return f


def _right(z, src, h, pos):
    return patch_head(z, src, h, pos)


register(Exercise(
    name="head_patching_map", notebook=NB, reference=head_patching_map, cases=_loop_cases,
    hints=["For each layer L and head h: a hook on hook_name(L, 'z') returns a copy of z whose head h (axis 2) "
           "takes z_source[L]'s value, at position pos only if pos is given.",
           "run([(hook_name(L, 'z'), hook)]) runs the clean prompts with that hook; run() without hooks gives the clean "
           "metric. Each entry is patched minus clean.",
           "The answer is a float32 tensor of shape [len(layers), n_heads]: row i belongs to layers[i], column h to "
           "head h. Start it at zero and fill one entry per patched run."],
    mistakes=[
        Mistake("you returned the patched metric, not its CHANGE: subtract the clean metric run()",
                _loop_mistake(_right, subtract=False)),
        Mistake("you indexed axis 1 (positions) instead of axis 2 (heads) of z",
                _loop_mistake(lambda z, src, h, pos: _patch_axis1(z, src, h))),
        Mistake("you patched every position although `pos` names one",
                _loop_mistake(lambda z, src, h, pos: patch_head(z, src, h))),
        Mistake("you patched every head of the layer at once: patch one head per run",
                _loop_mistake(lambda z, src, h, pos: _patch_every_head(z, src, h, pos))),
    ],
))


# 4. one path-patching step ---------------------------------------------------------------


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


# 5. name-mover copy scores ------------------------------------------------------------------


def copy_score(resid: torch.Tensor, W_V: torch.Tensor, W_O: torch.Tensor, W_U: torch.Tensor, k: int) -> torch.Tensor:
    logits = torch.einsum("nd,hde,hem,mj->hnj", resid, W_V, W_O, W_U)  # [head, attended name, raised name]
    top = logits.topk(k, dim=-1).indices
    return (top == torch.arange(resid.shape[0])[:, None]).any(-1).float().mean(-1)


def _copy_cases(rng):
    cases = []
    for n, d, h, dh, k in [(8, 6, 3, 4, 2), (10, 8, 4, 3, 3), (7, 5, 2, 5, 2)]:
        resid = _t(rng, n, d)
        W_V, W_O = _t(rng, h, d, dh), _t(rng, h, dh, d)
        W_U = resid.T.clone() + 0.5 * _t(rng, d, n)  # names read back roughly where they were written
        cases.append(((resid, W_V, W_O, W_U, k), {}))
    return cases


def _copy_wrong_axis(resid, W_V, W_O, W_U, k):
    logits = torch.einsum("nd,hde,hem,mj->hnj", resid, W_V, W_O, W_U)
    top = logits.topk(k, dim=-2).indices  # [head, k, raised]: top attended names per raised name
    return (top == torch.arange(resid.shape[0])[None, :]).any(-2).float().mean(-1)


def _copy_top1(resid, W_V, W_O, W_U, k):
    return copy_score(resid, W_V, W_O, W_U, 1)


def _copy_no_wo(resid, W_V, W_O, W_U, k):
    logits = torch.einsum("nd,hde,hem,mj->hnj", resid, W_V, W_O, W_U).abs()
    top = logits.topk(k, dim=-1).indices
    return (top == torch.arange(resid.shape[0])[:, None]).any(-1).float().mean(-1)


def _copy_count(resid, W_V, W_O, W_U, k):
    return copy_score(resid, W_V, W_O, W_U, k) * resid.shape[0]


register(Exercise(
    name="copy_score", notebook=NB, reference=copy_score, cases=_copy_cases,
    hints=["A head attending to name i writes resid[i] @ W_V[h] @ W_O[h]; @ W_U turns that into a logit for every "
           "name: one einsum gives [head, attended name, raised name].",
           "For each attended name i, take the top k of ROW i (the names it raises, the last axis) and ask whether i "
           "itself is among them.",
           "Average that yes/no over the names: one float per head, between 0 and 1."],
    mistakes=[
        Mistake("you took the top k over the attended names (a column) instead of over the raised names (the row)",
                _copy_wrong_axis),
        Mistake("you used the top 1 (argmax) instead of the top k", _copy_top1),
        Mistake("you ranked the absolute values of the logits: a name pushed DOWN strongly is not copied", _copy_no_wo),
        Mistake("you returned the number of copied names, not the share (divide by the number of names)", _copy_count),
    ],
))
