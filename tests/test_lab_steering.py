"""The instruments notebook 08 added: the full-vocabulary logit lens, residuals at a position, and steering hooks.

Each is checked against an independent computation: the model's own logits, a plain cache,
and a steering hook written by hand with the bridge's hook API.
"""
from __future__ import annotations

import pytest
import torch

from mi_tutor.lab import hooks, readout


@pytest.mark.parametrize("arch", ["gpt2_arch", "smollm2"])
def test_the_lens_at_the_last_layer_is_the_models_logits(arch, request):
    model = request.getfixturevalue(arch)
    tokens = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(0))
    last = torch.tensor([5, 3])
    resid = readout.residuals_at(model, tokens, last)
    assert resid.shape == (model.cfg.n_layers + 1, 2, model.cfg.d_model)
    with torch.no_grad():
        logits = model(tokens)[torch.arange(2), last]
    assert torch.allclose(readout.lens_logits(model, resid[-1]), logits, atol=1e-3)
    # an early layer is not the output: the lens is a different readout there
    assert not torch.allclose(readout.lens_logits(model, resid[1]), logits, atol=1e-1)


def test_residuals_at_reads_the_cache_at_each_prompts_position(smollm2):
    tokens = torch.randint(3, 200, (3, 5), generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([4, 0, 2])
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(tokens)
    got = readout.residuals_at(smollm2, tokens, pos)
    for b in range(3):
        assert torch.allclose(got[0, b], cache[hooks.hook_name(0, "resid_pre")][b, pos[b]])
        assert torch.allclose(got[7, b], cache[hooks.hook_name(6, "resid_post")][b, pos[b]])


def test_residuals_at_in_chunks_equals_one_batch(smollm2):
    tokens = torch.randint(3, 200, (5, 4), generator=torch.Generator().manual_seed(5))
    pos = torch.tensor([3, 1, 2, 0, 3])
    assert torch.allclose(readout.residuals_at(smollm2, tokens, pos, batch_size=2),
                          readout.residuals_at(smollm2, tokens, pos), atol=1e-4)


def test_the_lens_forgetting_the_norm_would_differ(smollm2):
    x = torch.randn(4, smollm2.cfg.d_model, generator=torch.Generator().manual_seed(2)) * 50
    raw = x @ smollm2.W_U
    assert not torch.allclose(readout.lens_logits(smollm2, x), raw, atol=1.0)


def test_add_vector_adds_from_start_and_leaves_its_input_alone():
    resid = torch.randn(2, 5, 4)
    before = resid.clone()
    v = torch.tensor([1.0, -2.0, 0.5, 3.0])
    out = hooks.add_vector(resid, v, start=2)
    assert torch.equal(resid, before)
    assert torch.equal(out[:, :2], resid[:, :2]) and torch.allclose(out[:, 2:], resid[:, 2:] + v)


def test_steering_hooks_equal_a_hand_written_hook(smollm2):
    tokens = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(3))
    v = torch.randn(smollm2.cfg.d_model, generator=torch.Generator().manual_seed(4)) * 20

    def by_hand(resid, hook):
        return resid + v

    with torch.no_grad():
        clean = smollm2(tokens)
        ref = smollm2.run_with_hooks(tokens, fwd_hooks=[("blocks.10.hook_resid_post", by_hand)])
        with smollm2.hooks(fwd_hooks=hooks.steering_hooks(10, v)):
            got = smollm2(tokens)
    assert torch.allclose(got, ref, atol=1e-4)
    assert (got - clean).abs().max() > 0.1  # the vector changed the output


def test_steering_writes_only_to_the_residual_stream():
    with pytest.raises(ValueError, match="residual stream"):
        hooks.steering_hooks(3, torch.zeros(4), site="z")
