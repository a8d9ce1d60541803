"""Reading the residual stream: the norm, direct logit attribution, the logit lens, attention, effective OV.

Everything a model writes reaches the logits through the final norm and the unembedding. The
norm divides each residual vector by its own size, so it is not linear; every readout here
reads that scale from the run it explains and then holds it fixed (TransformerLens's
"frozen LayerNorm scale"), which makes the readout linear and its parts exact:

- `direct_logit_attribution`: each head's, each MLP's and the embeddings' share of a logit
  difference, adding up to it;
- `logit_lens`: the logit difference read early, after each layer (nostalgebraist 2020);
- `effective_ov`: what a head writes, read through the norms, restricted to some tokens
  (Gould et al. 2023's "effective OV circuit");
- `attention_patterns`, `attention_to`: where heads look; `entropy`, `kl_div`: comparing outputs.

`Norm` is the one description of a norm layer (LayerNorm, RMSNorm or none) used by all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .. import validate as V
from .hooks import expand_kv, hook_name

# --------------------------------------------------------------------------------------
# The norm
# --------------------------------------------------------------------------------------


@dataclass
class Norm:
    """A norm layer as a fixed function: ``x -> (x - mean if centred) / rms(x) * weight + bias``.

    ``kind`` None is the identity (models without norms).
    """

    kind: str | None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    eps: float = 1e-5

    @property
    def centred(self) -> bool:
        return bool(self.kind and self.kind.startswith("LN"))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The divisor the norm applies to each vector, ``[..., 1]`` (1 without a norm)."""
        if self.kind is None:
            return torch.ones_like(x[..., :1])
        xc = x - x.mean(-1, keepdim=True) if self.centred else x
        return (xc.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind is None:
            return x
        xc = x - x.mean(-1, keepdim=True) if self.centred else x
        x = xc / self.scale(x)
        if self.weight is not None:
            x = x * self.weight
        return x + self.bias if self.bias is not None else x


def norm_of(model, module=None) -> Norm:
    """The `Norm` of a bridge norm layer (default the final norm ``model.ln_final``; or e.g. ``model.blocks[L].ln1``)."""
    kind = getattr(model.cfg, "normalization_type", None)
    module = getattr(model, "ln_final", None) if module is None else module
    if kind is None or module is None:
        return Norm(None)
    mod = getattr(module, "original_component", module)
    eps = float(getattr(mod, "variance_epsilon", getattr(mod, "eps", getattr(model.cfg, "eps", 1e-5))))
    if kind.endswith("Pre"):  # weights folded into the next layer
        return Norm(kind, eps=eps)
    w, b = getattr(mod, "weight", None), getattr(mod, "bias", None)
    return Norm(kind, None if w is None else w.detach(), None if b is None else b.detach(), eps)


def apply_final_norm(model, x: torch.Tensor) -> torch.Tensor:
    """The model's final norm applied to residual vectors ``[..., d_model]``, each as a fixed function of itself."""
    return norm_of(model)(x)


# --------------------------------------------------------------------------------------
# Direct logit attribution
# --------------------------------------------------------------------------------------


@dataclass
class DLA:
    """Direct logit attribution of the logit difference at the final position (means over prompts).

    `heads` [n_layers, n_heads]; `attn` [n_layers] (a layer's heads + its output bias);
    `mlp` [n_layers]; `rest` (embeddings and the final norm's bias); `total` = sum of all
    parts, equal to `logit_diff` (the model's mean IO - S) up to float error;
    `per_prompt_heads` [batch, n_layers, n_heads]; `heads_io` / `heads_s`: each head's direct
    effect on the IO logit and on the S logit separately (``heads = heads_io - heads_s``), which
    tells a head that *raises IO* from one that *lowers S*.
    """

    heads: torch.Tensor
    attn: torch.Tensor
    mlp: torch.Tensor
    rest: float
    total: float
    logit_diff: float
    per_prompt_heads: torch.Tensor
    heads_io: torch.Tensor | None = None
    heads_s: torch.Tensor | None = None


@torch.no_grad()
def direct_logit_attribution(model, tokens: torch.Tensor, io: torch.Tensor, s: torch.Tensor,
                             fwd_hooks: Sequence = (), max_prompts: int | None = None) -> DLA:
    """Exact DLA of (IO - S) at the last position; pass `fwd_hooks` (e.g. `patching.patch_hooks`) to attribute a patched run.

    The final norm's scale is read from this run and frozen, which makes the readout linear,
    so every part's share is exact and the parts add up to the logit difference.
    (TransformerLens's `enable_compatibility_mode` gives the same numbers by folding the norm
    into the weights, but it needs ~1.5 GB of extra memory on SmolLM2.) A head's part is
    ``z[-1, h] @ W_O[h]`` read out through the norm.

    `max_prompts` runs the prompts that many at a time (the cache grows with the batch, about
    11 MB per 16-token prompt on SmolLM2); the result is the same.
    """
    V.tokens(model, tokens)
    V.answers(model, tokens, io=io, s=s)
    if max_prompts is not None and max_prompts < 1:
        raise ValueError(f"max_prompts must be at least 1, got {max_prompts}")
    step = len(tokens) if max_prompts is None else max_prompts
    parts = [_dla_per_prompt(model, tokens[i:i + step], io[i:i + step], s[i:i + step], fwd_hooks)
             for i in range(0, len(tokens), step)]
    pp = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return DLA(heads=pp["heads"].mean(0), attn=pp["attn"].mean(0), mlp=pp["mlp"].mean(0), rest=float(pp["rest"].mean()),
               total=float(pp["total"].mean()), logit_diff=float(pp["ld"].mean()), per_prompt_heads=pp["heads"],
               heads_io=pp["heads_io"].mean(0), heads_s=pp["heads_s"].mean(0))


def _dla_per_prompt(model, tokens: torch.Tensor, io: torch.Tensor, s: torch.Tensor, fwd_hooks: Sequence
                    ) -> dict[str, torch.Tensor]:
    """`direct_logit_attribution`'s parts per prompt (one batched run)."""
    n_layers = model.cfg.n_layers
    names = {"hook_embed", "hook_pos_embed"} | {hook_name(l, site) for l in range(n_layers)
                                                 for site in ("z", "attn_out", "mlp_out")}
    names.add(hook_name(n_layers - 1, "resid_post"))
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    b = torch.arange(tokens.shape[0])
    ld = logits[b, -1, io] - logits[b, -1, s]
    norm = norm_of(model)
    scale = norm.scale(cache[hook_name(n_layers - 1, "resid_post")][:, -1])  # [batch, 1]
    w = norm.weight if norm.weight is not None else 1.0
    W_U = model.W_U
    direction = (W_U[:, io] - W_U[:, s]).T * w  # [batch, d]

    def read(part: torch.Tensor, direction: torch.Tensor = direction) -> torch.Tensor:  # [batch, ..., d] -> [batch, ...]
        if norm.centred:
            part = part - part.mean(-1, keepdim=True)
        sc = scale.reshape(scale.shape[0], *([1] * (part.ndim - 2)), 1)
        d = direction.reshape(direction.shape[0], *([1] * (part.ndim - 2)), -1)
        return (part / sc * d).sum(-1)

    W_O = model.W_O  # [n_layers, n_heads, d_head, d_model]; read once (it is recomputed per access)
    outs = [torch.einsum("bhd,hdm->bhm", cache[hook_name(l, "z")][:, -1], W_O[l]) for l in range(n_layers)]
    heads = torch.stack([read(o) for o in outs], 1)  # [batch, n_layers, n_heads]
    heads_io = torch.stack([read(o, W_U[:, io].T * w) for o in outs], 1)
    heads_s = torch.stack([read(o, W_U[:, s].T * w) for o in outs], 1)
    attn = torch.stack([read(cache[hook_name(l, "attn_out")][:, -1]) for l in range(n_layers)], 1)
    mlp = (torch.stack([read(cache[hook_name(l, "mlp_out")][:, -1]) for l in range(n_layers)], 1)
           if hook_name(0, "mlp_out") in cache.cache_dict else torch.zeros_like(attn))
    rest = read(cache["hook_embed"][:, -1])
    if "hook_pos_embed" in cache.cache_dict:
        rest = rest + read(cache["hook_pos_embed"][:, -1])
    if norm.bias is not None:
        rest = rest + ((W_U[:, io] - W_U[:, s]).T * norm.bias).sum(-1)
    total = attn.sum(1) + mlp.sum(1) + rest
    return {"heads": heads, "heads_io": heads_io, "heads_s": heads_s, "attn": attn, "mlp": mlp, "rest": rest,
            "total": total, "ld": ld}


# --------------------------------------------------------------------------------------
# The logit lens
# --------------------------------------------------------------------------------------


@torch.no_grad()
def final_residuals(model, tokens: torch.Tensor) -> torch.Tensor:
    """Residual stream at the final position after each layer: ``[n_layers + 1, batch, d_model]`` (index 0 = embeddings)."""
    n = model.cfg.n_layers
    names = [hook_name(0, "resid_pre")] + [hook_name(l, "resid_post") for l in range(n)]
    wanted = set(names)
    _, cache = model.run_with_cache(tokens, names_filter=lambda s: s in wanted)
    return torch.stack([cache[name][:, -1] for name in names])


@torch.no_grad()
def logit_lens(model, resid: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Logit difference answer - wrong read early from the final-position residual stream after each
    layer (final norm + unembedding applied early): ``[n_layers + 1]`` (index 0 = embeddings).

    `resid` comes from `final_residuals`; the last entry equals the model's logit difference.
    """
    if resid.ndim != 3 or resid.shape[1] != answer.shape[0]:
        raise ValueError("resid must be [n_layers + 1, batch, d_model] with one answer per prompt")
    x = apply_final_norm(model, resid)  # [n+1, batch, d]
    direction = (model.W_U[:, answer] - model.W_U[:, wrong]).T  # [batch, d]
    ld = (x * direction).sum(-1)
    b_U = getattr(model, "b_U", None)
    if b_U is not None:
        ld = ld + (b_U[answer] - b_U[wrong])
    return ld.mean(1)


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------


@torch.no_grad()
def attention_patterns(model, tokens: torch.Tensor) -> torch.Tensor:
    """All attention patterns: ``[n_layers, batch, head, q, k]``."""
    names = [hook_name(l, "pattern") for l in range(model.cfg.n_layers)]
    wanted = set(names)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return torch.stack([cache[n] for n in names])


def attention_to(patterns: dict[int, torch.Tensor] | torch.Tensor, query_pos: torch.Tensor,
                 key_pos: torch.Tensor) -> torch.Tensor:
    """Mean attention from `query_pos` to `key_pos` (one index per prompt), per head: ``[n_layers, n_heads]``.

    `patterns`: ``{layer: [batch, head, q, k]}`` or a stacked tensor ``[n_layers, batch, head, q, k]``.
    """
    if isinstance(patterns, dict):
        patterns = torch.stack([patterns[l] for l in sorted(patterns)])
    b = torch.arange(patterns.shape[1])
    # advanced indices separated by slices go first: [batch, n_layers, head]
    return patterns[:, b, :, query_pos, key_pos].mean(0)


# --------------------------------------------------------------------------------------
# Effective OV circuits
# --------------------------------------------------------------------------------------


@torch.no_grad()
def resid_after_layer0(model, ids: torch.Tensor) -> torch.Tensor:
    """The residual stream after layer 0 for each token on its own (``[n, d_model]``).

    Each token is a one-token sequence (no BOS), so layer 0's attention can only attend to
    the token itself: this is "embedding, then the first attention + MLP layer" (Gould et
    al. use embedding -> MLP0; Ameisen & Batson the residual after layer 0's MLP).
    """
    name = hook_name(0, "resid_post")
    _, cache = model.run_with_cache(ids[:, None], names_filter=lambda n: n == name)
    return cache[name][:, 0].clone()


@torch.no_grad()
def effective_ov(model, ids: torch.Tensor, resid: torch.Tensor | None = None) -> torch.Tensor:
    """Effective OV circuit of every head, restricted to the tokens `ids`: ``[n_layers, n_heads, n, n]``.

    ``out[L, h, i, j]`` = unembed(norm_final(OV_{L,h}(norm1_L(resid0(ids[i])))))[ids[j]]: how
    strongly head (L, h), attending to token i, raises token j. Works with LayerNorm, RMSNorm
    or none, and with grouped-query attention. Value biases are left out.
    """
    if ids.ndim != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    resid = resid_after_layer0(model, ids) if resid is None else resid
    cfg = model.cfg
    W_V, W_O, W_U = model.W_V.detach(), model.W_O.detach(), model.W_U.detach()  # recomputed per access: read once
    W_V = expand_kv(W_V, cfg.n_heads)
    W_U = W_U[:, ids]
    out = torch.empty(cfg.n_layers, cfg.n_heads, len(ids), len(ids))
    final = norm_of(model)
    for L in range(cfg.n_layers):
        x = norm_of(model, getattr(model.blocks[L], "ln1", None))(resid)
        v = torch.einsum("nd,hde->hne", x, W_V[L])
        o = torch.einsum("hne,hed->hnd", v, W_O[L])
        out[L] = final(o) @ W_U
    return out


# --------------------------------------------------------------------------------------
# Comparing output distributions
# --------------------------------------------------------------------------------------


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) over the last axis."""
    lp = logits.float().log_softmax(-1)
    return -(lp.exp() * lp).sum(-1)


def kl_div(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || other) in nats over the last axis (the clean model is the reference)."""
    p = clean_logits.float().log_softmax(-1)
    q = other_logits.float().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


# --------------------------------------------------------------------------------------
# The full-vocabulary logit lens (notebook 08)
# --------------------------------------------------------------------------------------


@torch.no_grad()
def residuals_at(model, tokens: torch.Tensor, pos: torch.Tensor | int = -1, batch_size: int | None = None) -> torch.Tensor:
    """Residual stream at one position per prompt after each layer: ``[n_layers + 1, batch, d_model]``.

    Index 0 is the embeddings (``resid_pre`` of block 0), index ``l + 1`` the output of block ``l``.
    `pos` is an int or one index per prompt (e.g. the last real token of right-padded prompts).
    `batch_size` runs the prompts in chunks (the logits of a large batch take most of the memory).
    """
    check_pos = torch.full((tokens.shape[0],), pos) if isinstance(pos, int) else pos
    if batch_size is not None and tokens.shape[0] > batch_size:
        return torch.cat([residuals_at(model, tokens[i:i + batch_size], check_pos[i:i + batch_size])
                          for i in range(0, tokens.shape[0], batch_size)], 1)
    n = model.cfg.n_layers
    names = [hook_name(0, "resid_pre")] + [hook_name(l, "resid_post") for l in range(n)]
    wanted = set(names)
    _, cache = model.run_with_cache(tokens, names_filter=lambda s: s in wanted)
    b = torch.arange(tokens.shape[0])
    return torch.stack([cache[name][b, check_pos] for name in names])


@torch.no_grad()
def lens_logits(model, resid: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logit lens: ``unembed(final_norm(resid))`` for residual vectors ``[..., d_model]`` -> ``[..., d_vocab]``.

    Each vector is normalised by its own size (the norm is applied, not frozen), so on the
    last layer's residual this equals the model's own logits.
    """
    logits = apply_final_norm(model, resid.float()) @ model.W_U
    b_U = getattr(model, "b_U", None)
    return logits + b_U if b_U is not None else logits


__all__ = [
    "Norm", "norm_of", "apply_final_norm", "DLA", "direct_logit_attribution", "final_residuals", "logit_lens",
    "attention_patterns", "attention_to", "resid_after_layer0", "effective_ov", "entropy", "kl_div",
    "residuals_at", "lens_logits",
]
