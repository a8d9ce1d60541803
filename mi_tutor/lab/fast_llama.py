"""A plain-torch forward of Llama-family models, built for one job: many head replacements at once.

Activation patching asks the same question hundreds of times: "run the prompts again with
head (L, h)'s output replaced; what is the metric now?" `patching.run_copies` answers it
through the bridge's hooks. This module answers the common special case (each copy
replaces one head's output ``z`` at one layer, with a given value) with less arithmetic,
on the bridge's own weights:

1. **Shared layers.** A copy that changes layer L runs only layers L.. (as in `run_copies`).
2. **Shared prefix.** Every position before the first one a replacement actually changes
   (the first differing name, in IOI) is identical in every copy, by causality. Copies
   compute only the later positions and attend to the unpatched run's keys and values for
   the prefix. "Actually changes" is decided by exact comparison of the values, so this
   skips only replacements that would write back the number already there.
3. **Last position only in the last layer**, and only the last position is unembedded:
   the metrics read the final token. A metric that declares the logits it reads
   (`hooks.declare_logits`, e.g. a logit difference) gets only those columns of the
   vocabulary (bitwise the full product's; the rest are NaN).
4. **Fused attention** (`scaled_dot_product_attention`), where the bridge runs HF's eager
   attention to expose every pattern.

SmolLM2 (and any HF Llama without biases) qualifies; `supports(model)` says whether a model
does. GPT-2 and the toy models keep using the hook engine. Results agree with the bridge's
forward to float32 rounding (tested against TransformerLens's patching loop).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..env import reuse_freed_memory


def _weight(module) -> torch.Tensor:
    """The tensor a bridge component (or a plain module) multiplies by."""
    return getattr(module, "original_component", module).weight


def supports(model) -> bool:
    """True for a bridge around an HF Llama model without biases or rope scaling (e.g. SmolLM2)."""
    hf = getattr(model, "original_model", None)
    cfg = getattr(hf, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return (not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
            and getattr(cfg, "pretraining_tp", 1) == 1 and rope.get("rope_type", "default") == "default"
            and getattr(cfg, "hidden_act", "silu") == "silu")


@dataclass
class _Layer:
    ln1: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    ln2: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


class LlamaRunner:
    """The bridge's Llama weights, read once, and a forward that replaces head outputs.

    Args:
        model: a `TransformerBridge` for which `supports(model)` is True.
    """

    def __init__(self, model):
        if not supports(model):
            raise ValueError("fast_llama needs a bridge around an HF Llama model without biases "
                             "(e.g. SmolLM2); use mi_tutor.lab.patching.run_copies for other models")
        hf = model.original_model
        cfg = hf.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.embed = _weight(model.embed)
        self.unembed = _weight(model.unembed)
        self.final_norm = _weight(model.ln_final)
        self.layers = [
            _Layer(_weight(b.ln1), _weight(b.attn.q), _weight(b.attn.k), _weight(b.attn.v), _weight(b.attn.o),
                   _weight(b.ln2), _weight(b.mlp.gate), _weight(b.mlp.__getattr__("in")), _weight(b.mlp.out))
            for b in model.blocks
        ]
        self._rotary = hf.model.rotary_emb
        self.last_start: int | None = None

    # -- pieces ------------------------------------------------------------------------

    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _rope(self, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(n_pos)[None]
        cos, sin = self._rotary(self.embed[:1][None].expand(1, n_pos, -1), pos)
        return cos[0], sin[0]  # [pos, d_head]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def _attend(self, lw: _Layer, x: torch.Tensor, cos, sin, past_k=None, past_v=None, last_only=False):
        """Attention of rows ``x [n, s, d]`` whose positions follow ``past_k/past_v [n|1, kv, p, dh]``.

        Returns z ``[n, s', heads, d_head]`` (s' = 1 if last_only) and this block's k, v.
        """
        n, s, _ = x.shape
        h = self._norm(x, lw.ln1)
        k = self._rotate((h @ lw.k.T).view(n, s, self.n_kv, self.d_head).transpose(1, 2), cos, sin)
        v = (h @ lw.v.T).view(n, s, self.n_kv, self.d_head).transpose(1, 2)
        hq, cq, sq = (h[:, -1:], cos[-1:], sin[-1:]) if last_only else (h, cos, sin)
        q = self._rotate((hq @ lw.q.T).view(n, hq.shape[1], self.n_heads, self.d_head).transpose(1, 2), cq, sq)
        kk, vv = k, v
        p = 0
        if past_k is not None:
            p = past_k.shape[2]
            kk = torch.cat([past_k.expand(n, -1, -1, -1), k], 2)
            vv = torch.cat([past_v.expand(n, -1, -1, -1), v], 2)
        # query i (absolute position p + i) sees keys 0 .. p + i
        qpos = torch.arange(p + s - q.shape[2], p + s)
        mask = torch.arange(p + s)[None] <= qpos[:, None]
        z = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
        return z.transpose(1, 2), k, v

    def _finish_block(self, lw: _Layer, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Residual after attention output ``z [n, s, heads, dh]`` and the MLP."""
        x = x + z.reshape(*z.shape[:2], -1) @ lw.o.T
        h = self._norm(x, lw.ln2)
        gate = F.silu(h @ lw.gate.T, inplace=True)  # in place: the same numbers, one block of memory fewer
        return x + gate.mul_(h @ lw.up.T) @ lw.down.T

    def _readout(self, x_last: torch.Tensor, logit_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[n, vocab]``; with `logit_ids`, only those columns (bitwise the full product's), the rest NaN."""
        h = self._norm(x_last, self.final_norm)
        if logit_ids is None:
            return h @ self.unembed.T
        out = h.new_full((h.shape[0], self.unembed.shape[0]), float("nan"))
        out[:, logit_ids] = h @ self.unembed[logit_ids].T
        return out

    # -- runs ----------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, tokens: torch.Tensor) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """The unpatched forward: logits at the last position, and per layer the residual
        entering it ``[batch, pos, d]``, z ``[batch, pos, heads, dh]`` and k, v ``[batch, kv, pos, dh]``."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
        with reuse_freed_memory():
            return self._run(tokens)

    def _run(self, tokens: torch.Tensor) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        cos, sin = self._rope(tokens.shape[1])
        x = self.embed[tokens]
        out: dict[str, list] = {"resid": [], "z": [], "k": [], "v": []}
        for lw in self.layers:
            out["resid"].append(x)
            z, k, v = self._attend(lw, x, cos, sin)
            out["z"].append(z)
            out["k"].append(k)
            out["v"].append(v)
            x = self._finish_block(lw, x, z)
        out["logits"] = self._readout(x[:, -1])
        return out

    @torch.no_grad()
    def replace_heads(self, tokens: torch.Tensor, copies: Sequence[Sequence], base: dict | None = None,
                      logit_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last-position logits of the unpatched run and of each copy: ``[1 + n_copies, batch, vocab]``.

        Args:
            tokens: ``[batch, pos]``.
            copies: copy i is a list of replacements, each with ``.layer``, ``.head``,
                ``.value`` and ``.pos`` (e.g. `mi_tutor.lab.patching.Patch` at site "z"): head
                ``(layer, head)``'s output z becomes ``value[:, :, head]`` (value
                ``[batch, pos, heads, d_head]``) at position ``pos``, or everywhere if pos is None.
            base: `run(tokens)`, if already computed.
            logit_ids: unembed only these vocabulary ids for the copies (a metric's declared
                reads, `mi_tutor.lab.hooks.declare_logits`); their other logits are NaN.
        """
        with reuse_freed_memory():
            return self._replace_heads(tokens, copies, base, logit_ids)

    def _replace_heads(self, tokens: torch.Tensor, copies: Sequence[Sequence], base: dict | None,
                       logit_ids: torch.Tensor | None) -> torch.Tensor:
        base = self.run(tokens) if base is None else base
        if not copies:
            return base["logits"][None]
        batch, n_pos = tokens.shape
        n_layers = len(self.layers)
        vocab = self.unembed.shape[0]
        if logit_ids is not None and (logit_ids.ndim != 1 or not len(logit_ids) or int(logit_ids.min()) < 0
                                      or int(logit_ids.max()) >= vocab):
            raise ValueError(f"logit_ids must be a non-empty list of token ids in 0..{vocab - 1}")
        for c in copies:
            for r in c:
                if getattr(r, "site", "z") != "z":
                    raise ValueError(f"fast_llama replaces head outputs (site 'z') only, got site {r.site!r}")
                if not 0 <= r.layer < n_layers or not 0 <= r.head < self.n_heads:
                    raise ValueError(f"head ({r.layer}, {r.head}) is outside this model ({n_layers} layers, "
                                     f"{self.n_heads} heads)")
                if tuple(r.value.shape[:2]) != (batch, n_pos):
                    raise ValueError(f"value for head ({r.layer}, {r.head}) has shape {tuple(r.value.shape)}; "
                                     f"the prompts are [{batch}, {n_pos}]")
        # the first position any replacement really changes (exact comparison with the unpatched z)
        start = n_pos - 1
        for c in copies:
            for r in c:
                diff = (r.value[:, :, r.head] != base["z"][r.layer][:, :, r.head]).any(-1).any(0)  # [pos]
                if r.pos is not None:
                    diff = diff & (torch.arange(n_pos) == r.pos % n_pos)
                hit = diff.nonzero()
                if len(hit):
                    start = min(start, int(hit[0]))
        self.last_start = start  # for reports: copies computed positions start.. only
        cos, sin = self._rope(n_pos)
        cos, sin = cos[start:], sin[start:]
        first = [min((r.layer for r in c), default=n_layers - 1) for c in copies]
        order = sorted(range(len(copies)), key=lambda i: first[i])
        block = {i: b for b, i in enumerate(order)}  # copy -> row block (rows block*batch .. +batch)
        x = None  # the copies' residual stream at positions start.., [n_blocks * batch, s, d]
        n_born = 0
        for l, lw in enumerate(self.layers):
            born = [i for i in order[n_born:] if first[i] == l]
            if born:
                fresh = base["resid"][l][:, start:].repeat(len(born), 1, 1)
                x = fresh if x is None else torch.cat([x, fresh], 0)
                n_born += len(born)
            if x is None:
                continue
            last = l == n_layers - 1
            reps = x.shape[0] // batch
            past_k = base["k"][l][:, :, :start].repeat(reps, 1, 1, 1)
            past_v = base["v"][l][:, :, :start].repeat(reps, 1, 1, 1)
            z, _, _ = self._attend(lw, x, cos, sin, past_k, past_v, last_only=last)
            offset = n_pos - z.shape[1]  # absolute position of z[:, 0]
            for i in order[:n_born]:
                rows = slice(block[i] * batch, (block[i] + 1) * batch)
                for r in copies[i]:
                    if r.layer != l:
                        continue
                    if r.pos is None:
                        z[rows, :, r.head] = r.value[:, offset:, r.head]
                    elif r.pos % n_pos >= offset:
                        z[rows, r.pos % n_pos - offset, r.head] = r.value[:, r.pos, r.head]
            x = self._finish_block(lw, x[:, -1:] if last else x, z)
        out = self._readout(x[:, -1], logit_ids).view(len(copies), batch, -1)[[block[i] for i in range(len(copies))]]
        return torch.cat([base["logits"][None], out], 0)
