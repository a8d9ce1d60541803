"""The readouts (mi_tutor.lab.readout): the one norm, exact DLA, the logit lens, effective OV, attention, KL.

Each is checked against the bridge's own computation: its norm modules, its logits, its
factored OV matrices, or a hand-written einsum.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_tutor import ioi, ordinal
from mi_tutor.lab import readout as R
from mi_tutor.lab.hooks import hook_name
from mi_tutor.models import attn_only_model


@pytest.fixture(scope="module")
def toy():
    return attn_only_model(n_layers=2, d_model=32, n_heads=4, d_vocab=30, n_ctx=12, seed=0)


@pytest.mark.parametrize("arch", ["gpt2_arch", "smollm2"])
def test_the_norm_equals_the_bridge_modules(arch, request):
    model = request.getfixturevalue(arch)
    x = torch.randn(3, 4, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(R.norm_of(model, model.blocks[0].ln1)(x), model.blocks[0].ln1(x), atol=1e-4)
        assert torch.allclose(R.apply_final_norm(model, x), model.ln_final(x), atol=1e-4)
    assert R.norm_of(model).centred == (arch == "gpt2_arch")  # LayerNorm centres, RMSNorm does not


def test_a_model_without_norms_reads_out_unchanged(toy):
    x = torch.randn(2, 32)
    assert R.norm_of(toy).kind is None and torch.equal(R.apply_final_norm(toy, x), x)


@pytest.mark.parametrize("arch", ["gpt2_arch", "smollm2"])
def test_dla_parts_add_up_to_the_logit_difference(arch, request):
    model = request.getfixturevalue(arch)
    ds = ioi.make_ioi(model, n=3, seed=1)
    d = R.direct_logit_attribution(model, ds.tokens, ds.io, ds.s)
    assert abs(d.total - d.logit_diff) < 1e-3 * max(1.0, abs(d.logit_diff))
    assert torch.allclose(d.heads, d.heads_io - d.heads_s, atol=1e-4)
    assert d.heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    # a layer's attention part is its heads plus the output bias (none on SmolLM2)
    if arch == "smollm2":
        assert torch.allclose(d.attn, d.heads.sum(1), atol=1e-3)


def test_logit_lens_ends_at_the_model_logit_difference(gpt2_arch):
    ds = ioi.make_ioi(gpt2_arch, n=3, seed=2)
    resid = R.final_residuals(gpt2_arch, ds.tokens)
    lens = R.logit_lens(gpt2_arch, resid, ds.io, ds.s)
    with torch.no_grad():
        ld = float(ds.metric(gpt2_arch(ds.tokens)).mean())
    assert lens.shape == (gpt2_arch.cfg.n_layers + 1,) and float(lens[-1]) == pytest.approx(ld, abs=1e-3)
    with pytest.raises(ValueError):
        R.logit_lens(gpt2_arch, resid[0], ds.io, ds.s)


def test_effective_ov_of_a_norm_free_model_is_the_linear_map(toy):
    ids = torch.arange(7)
    eff = R.effective_ov(toy, ids)
    r = R.resid_after_layer0(toy, ids)
    manual = r @ toy.W_V[1, 2] @ toy.W_O[1, 2] @ toy.W_U[:, ids]
    assert torch.allclose(eff[1, 2], manual, atol=1e-4)
    _, cache = toy.run_with_cache(ids[:, None])  # a lone token: layer 0 attends only to itself
    assert torch.allclose(r, cache[hook_name(0, "resid_post")][:, 0])
    with pytest.raises(ValueError, match="1-D"):
        R.effective_ov(toy, torch.tensor([[2, 3]]))


def test_effective_ov_on_gqa_matches_the_factored_ov(smollm2):
    ids = ordinal.ordinal_tokens(smollm2).ids[:6]
    r = R.resid_after_layer0(smollm2, ids)
    eff = R.effective_ov(smollm2, ids, resid=r)
    layer, head = smollm2.cfg.n_layers // 2, 7  # head 7 reads kv head 2 on SmolLM2
    with torch.no_grad():
        x = smollm2.blocks[layer].ln1(r)
        ov = smollm2.OV[layer, head]
        o = smollm2.ln_final((x @ ov.A) @ ov.B)
    assert torch.allclose(eff[layer, head], o @ smollm2.W_U[:, ids], atol=1e-3)


def test_attention_to_reads_one_query_key_pair_per_prompt(gpt2_arch):
    ds = ioi.make_ioi(gpt2_arch, n=2, seed=3)
    pats = R.attention_patterns(gpt2_arch, ds.tokens)
    a = R.attention_to(pats, ds.pos["END"], ds.pos["IO"])
    want = torch.stack([pats[:, b, :, ds.pos["END"][b], ds.pos["IO"][b]] for b in range(2)]).mean(0)
    assert torch.allclose(a, want) and ((a >= 0) & (a <= 1)).all()


def test_kl_and_entropy_basics():
    x = torch.randn(2, 3, 5)
    assert R.kl_div(x, x).abs().max() < 1e-6
    assert R.kl_div(x, x + 7.0).abs().max() < 1e-5  # a constant shift of the logits changes nothing
    assert (R.kl_div(x, torch.randn(2, 3, 5)) > 0).all()
    assert R.entropy(torch.zeros(4)).item() == pytest.approx(np.log(4), abs=1e-6)
