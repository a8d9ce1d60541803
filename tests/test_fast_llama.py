"""The plain-torch Llama backend (mi_tutor.lab.fast_llama) gives the bridge's numbers.

Every check compares against the bridge itself: its forward, its hooks (`run_copies`) or
TransformerLens's one-head-at-a-time patching loop (`mi_tutor.lab.reference`).
"""
from __future__ import annotations

import pytest
import torch

from mi_tutor import ioi
from mi_tutor.lab import fast_llama, hooks, patching, reference
from mi_tutor.lab.hooks import head_outputs
from mi_tutor.lab.patching import Patch


@pytest.fixture(scope="module")
def ds(smollm2):
    return ioi.make_ioi(smollm2, n=2, seed=1)


def test_unpatched_forward_equals_the_bridge(smollm2, ds):
    runner = fast_llama.LlamaRunner(smollm2)
    out = runner.run(ds.tokens)
    with torch.no_grad():
        want = smollm2(ds.tokens)[:, -1]
    assert torch.allclose(out["logits"], want, atol=1e-3, rtol=1e-4)
    assert out["logits"].argmax(-1).tolist() == want.argmax(-1).tolist()
    # the recorded head outputs are the bridge's hook_z
    z = head_outputs(smollm2, ds.tokens, [3])[3]
    assert torch.allclose(out["z"][3], z, atol=1e-4)


def test_patch_heads_matches_the_hook_engine_and_one_at_a_time(smollm2, ds):
    n = smollm2.cfg.n_layers
    layers = [0, n // 2, n - 1]
    fast = patching.patch_heads(smollm2, ds.tokens, ds.abc_tokens, ds.metric, layers=layers, max_rows=10)
    hooks = patching.patch_heads(smollm2, ds.tokens, ds.abc_tokens, ds.metric, layers=layers, max_rows=10, fast=False)
    heads = [(l, h) for l in layers for h in range(smollm2.cfg.n_heads)]
    slow = reference.tl_patch_heads(smollm2, ds.tokens, ds.abc_tokens, ds.metric, heads).reshape(len(layers), -1)
    assert torch.allclose(fast[layers], hooks[layers], atol=1e-4)
    assert torch.allclose(fast[layers], slow, atol=1e-4)
    assert (fast[layers] - fast[layers].mean()).abs().max() > 1e-2  # the patches did something


def test_copies_share_the_unchanged_prefix(smollm2, ds):
    """ABC prompts differ from IOI prompts first at a name: copies skip the positions before it."""
    runner = fast_llama.LlamaRunner(smollm2)
    src = runner.run(ds.abc_tokens)["z"]
    runner.replace_heads(ds.tokens, [[Patch(2, 1, src[2])]])
    first_diff = int((ds.tokens != ds.abc_tokens).any(0).nonzero()[0])
    assert runner.last_start == first_diff > 0
    # a value that differs everywhere (zero ablation) leaves nothing to share
    runner.replace_heads(ds.tokens, [[Patch(2, 1, torch.zeros_like(src[2]))]])
    assert runner.last_start == 0


def test_groups_and_single_positions_match_run_copies(smollm2, ds):
    n = smollm2.cfg.n_layers
    values = patching.ablation_values(smollm2, ds.tokens, "mean", ds.abc_tokens, layers=[1, n - 2])
    copies = [[Patch(1, 3, values[1])],
              [Patch(1, 0, values[1]), Patch(n - 2, 5, values[n - 2])],  # a group across layers
              [Patch(n - 2, 2, values[n - 2], pos=int(ds.pos["S2"][0]))],  # one position
              []]  # an unpatched copy
    runner = fast_llama.LlamaRunner(smollm2)
    got = runner.replace_heads(ds.tokens, copies)
    want, _ = patching.run_copies(smollm2, ds.tokens, copies)
    assert got.shape == (5, 2, smollm2.cfg.d_vocab)
    assert torch.allclose(got, want[:, :, -1], atol=1e-3, rtol=1e-4)
    assert torch.allclose(got[4], got[0], atol=1e-4)  # the empty copy is the unpatched run


def test_bad_requests_are_explained(smollm2, gpt2_arch, ds):
    assert fast_llama.supports(smollm2) and not fast_llama.supports(gpt2_arch)
    with pytest.raises(ValueError, match="run_copies"):
        fast_llama.LlamaRunner(gpt2_arch)
    runner = fast_llama.LlamaRunner(smollm2)
    z = runner.run(ds.tokens)["z"][0]
    with pytest.raises(ValueError, match="site 'z'"):
        runner.replace_heads(ds.tokens, [[Patch(0, 0, z, site="q")]])
    with pytest.raises(ValueError, match="outside this model"):
        runner.replace_heads(ds.tokens, [[Patch(0, 99, z)]])
    with pytest.raises(ValueError, match="the prompts are"):
        runner.replace_heads(ds.tokens, [[Patch(0, 0, z[:1])]])
    with pytest.raises(ValueError, match="batch, pos"):
        runner.run(ds.tokens[0])


def test_a_declared_metric_gets_only_its_logits_and_the_same_effects(smollm2, ds):
    """`hooks.declare_logits`: the engine unembeds the declared ids only (bitwise the full
    product's columns) and the sweep's effects are bitwise those of the undeclared metric."""
    n = smollm2.cfg.n_layers
    undeclared = ds._logit_diff
    assert hooks.declared_logits(undeclared) is None and hooks.declared_logits(ds.metric) is not None
    full = patching.patch_heads(smollm2, ds.tokens, ds.abc_tokens, undeclared, layers=[1, n - 1], per_prompt=True)
    cut = patching.patch_heads(smollm2, ds.tokens, ds.abc_tokens, ds.metric, layers=[1, n - 1], per_prompt=True)
    assert torch.equal(full.isnan(), cut.isnan()) and torch.equal(full.nan_to_num(), cut.nan_to_num())
    runner = fast_llama.LlamaRunner(smollm2)
    src = runner.run(ds.abc_tokens)["z"]
    copies = [[Patch(1, 2, src[1])], [Patch(n - 1, 4, src[n - 1])]]
    ids = hooks.declared_logits(ds.metric)
    want = runner.replace_heads(ds.tokens, copies)
    got = runner.replace_heads(ds.tokens, copies, logit_ids=ids)
    assert torch.equal(got[:, :, ids], want[:, :, ids])
    others = torch.ones(smollm2.cfg.d_vocab, dtype=torch.bool)
    others[ids] = False
    assert got[1:, :, others].isnan().all() and not got[0].isnan().any()  # the unpatched run stays whole


def test_a_metric_that_reads_an_undeclared_logit_is_refused(smollm2, ds):
    io, s = ds.io, ds.s
    undeclared_id = torch.full_like(s, int(torch.cat([io, s]).max()) + 1)
    liar = hooks.declare_logits(lambda lg: hooks.logit_diff(lg, io, undeclared_id), torch.cat([io, s]))
    with pytest.raises(ValueError, match="did not declare"):
        patching.patch_heads(smollm2, ds.tokens, ds.abc_tokens, liar, layers=[2])
    honest = hooks.logit_diff_metric(io, s)
    assert torch.equal(hooks.declared_logits(honest), torch.cat([io, s]).unique())
    got = patching.patch_heads(smollm2, ds.tokens, ds.abc_tokens, honest, layers=[2])
    assert torch.equal(got[2], patching.patch_heads(smollm2, ds.tokens, ds.abc_tokens, ds.metric, layers=[2])[2])
    with pytest.raises(ValueError, match="non-negative token ids"):
        hooks.declare_logits(honest, [])
    with pytest.raises(ValueError, match="token ids in 0.."):
        zeros = torch.zeros(*ds.tokens.shape, smollm2.cfg.n_heads, smollm2.cfg.d_head)
        fast_llama.LlamaRunner(smollm2).replace_heads(ds.tokens, [[Patch(2, 0, zeros)]],
                                                      logit_ids=torch.tensor([smollm2.cfg.d_vocab]))
