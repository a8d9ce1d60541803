"""The patching engine (mi_tutor.lab.patching) equals TransformerLens's own patching loop.

TransformerLens's `generic_activation_patch` (one forward per patch, `mi_tutor.lab.reference`)
is the independent oracle: the engine must equal it to 1e-4 on a toy attention-only model,
a random GPT-2 (LayerNorm, MLPs, learned positions) and SmolLM2 (RMSNorm, RoPE, grouped-query
attention; both the hook engine and the fast_llama backend). What TransformerLens has no loop
for (ablation values, groups, path patching) is checked against hand-written hooks.
"""
from __future__ import annotations

import pytest
import torch

from mi_tutor import ioi
from mi_tutor.lab import fast_llama, patching as P, reference
from mi_tutor.lab.hooks import head_outputs, hook_name
from mi_tutor.models import attn_only_model


@pytest.fixture(scope="module")
def toy():
    return attn_only_model(n_layers=2, d_model=32, n_heads=4, d_vocab=30, n_ctx=12, seed=0)


def _metric(logits):
    return logits[:, -1, 0] - logits[:, -1, 1]


def _toy_pair(seed=1, batch=3, pos=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 30, (batch, pos), generator=g), torch.randint(0, 30, (batch, pos), generator=g)


@pytest.fixture(scope="module")
def smol_ds(smollm2):
    return ioi.make_ioi(smollm2, n=2, seed=1)


@pytest.fixture(scope="module")
def gpt2_ds(gpt2_arch):
    return ioi.make_ioi(gpt2_arch, n=2, seed=1)


# --------------------------------------------------------------------------------------
# against TransformerLens's loop
# --------------------------------------------------------------------------------------


def test_head_patching_equals_transformer_lens_on_a_toy(toy):
    a, b = _toy_pair()
    heads = [(l, h) for l in range(2) for h in range(4)]
    want = reference.tl_patch_heads(toy, a, b, _metric, heads)
    got = P.patch_heads(toy, a, b, _metric, max_rows=7)  # chunked: 2 copies per pass
    assert torch.allclose(torch.stack([got[h] for h in heads]), want, atol=1e-4)
    assert (want - _metric(toy(a)).mean()).abs().max() > 1e-3  # the patches did something


def test_head_patching_equals_transformer_lens_on_gpt2_architecture(gpt2_arch, gpt2_ds):
    ds = gpt2_ds
    heads = [(l, h) for l in range(gpt2_arch.cfg.n_layers) for h in range(gpt2_arch.cfg.n_heads)]
    want = reference.tl_patch_heads(gpt2_arch, ds.tokens, ds.abc_tokens, ds.metric, heads)
    got = P.patch_heads(gpt2_arch, ds.tokens, ds.abc_tokens, ds.metric, max_rows=6)
    assert torch.allclose(torch.stack([got[h] for h in heads]), want, atol=1e-4)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_llama", "hooks"])
def test_head_patching_equals_transformer_lens_on_smollm2(smollm2, smol_ds, fast):
    ds, n = smol_ds, smollm2.cfg.n_layers
    layers = [0, n - 1]
    heads = [(l, h) for l in layers for h in range(smollm2.cfg.n_heads)]
    want = reference.tl_patch_heads(smollm2, ds.tokens, ds.abc_tokens, ds.metric, heads)
    got = P.patch_heads(smollm2, ds.tokens, ds.abc_tokens, ds.metric, layers=layers, max_rows=10, fast=fast)
    assert torch.allclose(torch.stack([got[h] for h in heads]), want, atol=1e-4)
    assert torch.isnan(got[1]).all()  # layers not asked for stay NaN


def test_residual_patching_equals_transformer_lens(toy, gpt2_arch, gpt2_ds, smollm2, smol_ds):
    a, b = _toy_pair(2)
    cells = [(l, p) for l in range(2) for p in range(8)]
    got = P.patch_residual(toy, a, b, _metric, max_rows=9)
    assert torch.allclose(torch.stack([got[c] for c in cells]), reference.tl_patch_residual(toy, a, b, _metric, cells),
                          atol=1e-4)
    for model, ds, layers in [(gpt2_arch, gpt2_ds, None), (smollm2, smol_ds, [2, 20])]:
        got = P.patch_residual(model, ds.tokens, ds.abc_tokens, ds.metric, layers=layers)
        cells = [(l, p) for l in (layers or range(model.cfg.n_layers)) for p in range(ds.tokens.shape[1])]
        want = reference.tl_patch_residual(model, ds.tokens, ds.abc_tokens, ds.metric, cells)
        assert torch.allclose(torch.stack([got[c] for c in cells]), want, atol=1e-4)


def test_the_speed_report_checks_agreement(gpt2_arch, gpt2_ds):
    ds = gpt2_ds
    rep, table = reference.compare_patching_speed(gpt2_arch, ds.tokens, ds.abc_tokens, ds.metric)
    assert rep.max_abs_diff < 1e-4 and rep.tl_heads == gpt2_arch.cfg.n_heads
    assert table.shape == (gpt2_arch.cfg.n_layers, gpt2_arch.cfg.n_heads) and "speed-up" in str(rep)


# --------------------------------------------------------------------------------------
# against hand-written hooks
# --------------------------------------------------------------------------------------


def _one_head(model, tokens, values, layer, head, pos=None):
    def hook(z, hook):
        z = z.clone()
        where = slice(None) if pos is None else pos
        z[:, where, head] = values[layer][:, where, head]
        return z
    with torch.no_grad():
        return _metric(model.run_with_hooks(tokens, fwd_hooks=[(hook_name(layer, "z"), hook)])).mean()


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_ablation_of_each_head_equals_single_ablations(toy, kind):
    tokens, ref = _toy_pair(3)
    batched = P.ablate_heads(toy, tokens, _metric, kind=kind, reference_tokens=None if kind == "zero" else ref, max_rows=5)
    values = P.ablation_values(toy, tokens, kind, None if kind == "zero" else ref)
    for layer in range(2):
        for head in range(4):
            assert torch.allclose(batched[layer, head], _one_head(toy, tokens, values, layer, head), atol=1e-5)


def test_mean_ablation_values_are_the_reference_mean_per_position(toy):
    tokens, ref = _toy_pair(4)
    values = P.ablation_values(toy, tokens, "mean", ref)
    z = head_outputs(toy, ref)
    assert torch.allclose(values[1][2], z[1].mean(0)) and values[1].shape == z[1].shape


def test_one_position_patching_agrees_across_backends(smollm2, smol_ds):
    ds, layer = smol_ds, 5
    src = head_outputs(smollm2, ds.abc_tokens, [layer])
    fast = P.replace_heads(smollm2, ds.tokens, src, ds.metric, heads=[(layer, 4)], pos=-1, fast=True)
    hooks = P.replace_heads(smollm2, ds.tokens, src, ds.metric, heads=[(layer, 4)], pos=-1, fast=False)
    p = ds.tokens.shape[1] - 1

    def hook(z, hook):
        z = z.clone()
        z[:, p, 4] = src[layer][:, p, 4]
        return z
    with torch.no_grad():
        want = ds.metric(smollm2.run_with_hooks(ds.tokens, fwd_hooks=[(hook_name(layer, "z"), hook)])).mean()
    assert abs(float(fast[layer, 4]) - float(want)) < 1e-4 and abs(float(hooks[layer, 4]) - float(want)) < 1e-4


def test_copies_with_groups_positions_and_residual_sites_equal_single_runs(gpt2_arch, gpt2_ds):
    ds, model = gpt2_ds, gpt2_arch
    vals = P.ablation_values(model, ds.tokens, "mean", ds.abc_tokens)
    _, cache = model.run_with_cache(ds.abc_tokens)
    copies = [[P.Patch(0, 1, vals[0]), P.Patch(1, 3, vals[1])],          # a group across layers
              [P.Patch(1, 2, vals[1], pos=int(ds.pos["S2"][0]))],        # one position
              [P.Patch(1, None, cache[hook_name(1, "resid_mid")], "resid_mid", pos=-1)],
              [P.Patch(0, 2, cache[hook_name(0, "k")], "k")],
              [P.Patch(0, None, cache[hook_name(0, "mlp_out")], "mlp_out"),
               P.Patch(1, None, cache[hook_name(1, "attn_out")], "attn_out")],
              []]
    logits, _ = P.run_copies(model, ds.tokens, copies)
    for i, c in enumerate(copies):
        want = P.run_patched(model, ds.tokens, c)[:, -1:]
        assert torch.allclose(logits[i + 1], want, atol=1e-4), i
    assert torch.allclose(logits[-1], logits[0], atol=1e-5)  # the empty copy is the unpatched run


def test_path_patching_equals_a_hand_written_two_step_run(gpt2_arch, gpt2_ds):
    """Sender L0H1 -> receiver L1H3's queries, with and without freezing the other heads."""
    model, ds = gpt2_arch, gpt2_ds
    sender, receiver = (0, 1), (1, 3)
    src = head_outputs(model, ds.abc_tokens, [0])[0]
    clean = head_outputs(model, ds.tokens)

    def two_step(freeze):
        store = {}

        def patch_sender(z, hook):
            z = z.clone()
            z[:, :, sender[1]] = src[:, :, sender[1]]
            return z

        def keep_q(q, hook):
            store["q"] = q.clone()
            return q
        hooks = [(hook_name(0, "z"), patch_sender), (hook_name(1, "q"), keep_q)]
        if freeze:
            hooks.insert(1, (hook_name(1, "z"), lambda z, hook: clean[1].clone()))
        with torch.no_grad():
            model.run_with_hooks(ds.tokens, fwd_hooks=hooks)

        def put_q(q, hook):
            q = q.clone()
            q[:, :, receiver[1]] = store["q"][:, :, receiver[1]]
            return q
        with torch.no_grad():
            return float(ds.metric(model.run_with_hooks(ds.tokens, fwd_hooks=[(hook_name(1, "q"), put_q)])).mean())

    for freeze in (True, False):
        got = P.path_patch(model, ds.tokens, ds.abc_tokens, ds.metric, [sender], [receiver], site="q", freeze=freeze)
        assert abs(float(got[0]) - two_step(freeze)) < 1e-4
    with pytest.raises(ValueError, match="later layers"):
        P.path_patch(model, ds.tokens, ds.abc_tokens, ds.metric, [(1, 0)], [receiver])


def test_path_patching_reaches_keys_values_and_residual_sites_on_gqa(smollm2, smol_ds):
    ds, n = smol_ds, smollm2.cfg.n_layers
    base = float(ds.metric(smollm2(ds.tokens)).mean())
    kv = P.path_patch(smollm2, ds.tokens, ds.abc_tokens, ds.metric, [(n - 4, 0)], [(n - 2, 1, "k"), (n - 2, 1, "v")])
    mlp = P.path_patch(smollm2, ds.tokens, ds.abc_tokens, ds.metric, [(n - 4, 0)], [(n - 2, None, "resid_mid")],
                       freeze=False)
    assert torch.isfinite(kv).all() and torch.isfinite(mlp).all() and abs(float(kv[0]) - base) > 0
    table = P.path_patch_table(smollm2, ds.tokens, ds.abc_tokens, ds.metric, [(n - 1, 0)], senders=[(n - 3, 2), (n - 1, 0)])
    assert torch.isfinite(table[n - 3, 2]) and torch.isnan(table[n - 1, 0])  # a receiver is not its own sender


# --------------------------------------------------------------------------------------
# attribution patching
# --------------------------------------------------------------------------------------


def test_attribution_patching_is_exact_for_the_last_layer_of_an_attention_only_model(toy):
    """In an attention-only model the last layer's head outputs enter the logits linearly."""
    a, b = _toy_pair(5, batch=2)
    est = P.attribution_patch_heads(toy, a, b, _metric)
    exact = P.patch_heads(toy, a, b, _metric) - _metric(toy(a)).mean()
    assert est.shape == (2, 4) and torch.allclose(est[1], exact[1], atol=1e-4)


def test_attribution_patching_works_with_frozen_parameters(smollm2, smol_ds):
    est = P.attribution_patch_heads(smollm2, smol_ds.tokens, smol_ds.abc_tokens, smol_ds.metric)
    assert est.shape == (30, 9) and torch.isfinite(est).all() and est.abs().sum() > 0


# --------------------------------------------------------------------------------------
# bad requests
# --------------------------------------------------------------------------------------


def test_bad_requests_are_explained(toy, gpt2_arch):
    a, b = _toy_pair(6)
    with pytest.raises(ValueError, match="aligned positions"):
        P.ablation_values(toy, a, "mean", a[:, :5])
    with pytest.raises(ValueError, match="needs reference_tokens"):
        P.ablation_values(toy, a, "resample")
    with pytest.raises(ValueError, match="ablation kind"):
        P.ablate_heads(toy, a, _metric, kind="half")
    with pytest.raises(ValueError, match="needs no head|needs a head"):
        P.Patch(0, None, torch.zeros(1), "z")
    with pytest.raises(ValueError, match="site"):
        P.Patch(0, 1, torch.zeros(1), "pattern")
    with pytest.raises(ValueError, match="receiver"):
        P.path_patch(toy, a, b, _metric, [(0, 0)], [(1, 0, "z")])
    with pytest.raises(ValueError, match="run_copies"):
        fast_llama.LlamaRunner(gpt2_arch)


# --------------------------------------------------------------------------------------
# per-prompt head patching (notebook 03's bootstrap)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False], ids=["fast_llama", "hooks"])
def test_per_prompt_head_patching_equals_transformer_lens_one_prompt_at_a_time(smollm2, smol_ds, fast):
    ds, n = smol_ds, smollm2.cfg.n_layers
    heads = [(n - 1, h) for h in range(smollm2.cfg.n_heads)] + [(0, 2)]
    got = P.patch_heads_per_prompt(smollm2, ds.tokens, ds.abc_tokens, ds.metric, heads=heads, pos=-1, max_rows=5, fast=fast)
    assert got.shape == (len(ds), n, smollm2.cfg.n_heads)
    for b in range(len(ds)):
        one = ds.subset([b])
        want = reference.tl_patch_heads(smollm2, one.tokens, one.abc_tokens, one.metric, heads) if b == 0 else \
            torch.stack([P.patch_heads(smollm2, one.tokens, one.abc_tokens, one.metric, pos=-1, layers=[0, n - 1])[h]
                         for h in heads])
        if b == 0:  # TL's loop patches every position: compare the all-position variant for prompt 0
            allpos = P.patch_heads_per_prompt(smollm2, ds.tokens, ds.abc_tokens, ds.metric, heads=heads, fast=fast)
            assert torch.allclose(torch.stack([allpos[0][h] for h in heads]), want, atol=1e-4)
        else:
            assert torch.allclose(torch.stack([got[b][h] for h in heads]), want, atol=1e-4)
    assert torch.isnan(got[:, 1]).all()
    mean = P.patch_heads(smollm2, ds.tokens, ds.abc_tokens, ds.metric, layers=[n - 1], pos=-1, fast=fast)
    assert torch.allclose(got[:, n - 1].mean(0), mean[n - 1], atol=1e-4)


def test_replace_heads_per_prompt_is_the_mean_result_unaveraged(gpt2_arch, gpt2_ds):
    ds = gpt2_ds
    vals = P.ablation_values(gpt2_arch, ds.tokens, "mean", ds.tokens)
    per = P.replace_heads(gpt2_arch, ds.tokens, vals, ds.metric, per_prompt=True)
    mean = P.replace_heads(gpt2_arch, ds.tokens, vals, ds.metric)
    assert per.shape == (ds.tokens.shape[0],) + tuple(mean.shape)
    assert torch.equal(per.mean(0), mean)
    small = P.replace_heads(gpt2_arch, ds.tokens, vals, ds.metric, per_prompt=True, max_rows=3)
    assert torch.allclose(small, per, atol=1e-5)  # chunking changes nothing but rounding
    first = ds.subset([0])
    one = P.replace_heads(gpt2_arch, first.tokens, {l: v[:1] for l, v in vals.items()}, first.metric, heads=[(1, 0)])
    assert torch.allclose(per[0, 1, 0], one[1, 0], atol=1e-5)  # prompts do not interact


def test_attribution_per_prompt_averages_to_the_mean_estimate(gpt2_arch, gpt2_ds):
    ds = gpt2_ds
    per = P.attribution_patch_heads(gpt2_arch, ds.tokens, ds.abc_tokens, ds.metric, per_prompt=True)
    mean = P.attribution_patch_heads(gpt2_arch, ds.tokens, ds.abc_tokens, ds.metric)
    assert per.shape == (ds.tokens.shape[0],) + tuple(mean.shape) and torch.allclose(per.mean(0), mean, atol=1e-5)
    from mi_tutor.lab.hooks import logit_diff

    def first(lg):  # the metric of the first prompt alone
        return logit_diff(lg, ds.io[:1], ds.s[:1])
    one = P.attribution_patch_heads(gpt2_arch, ds.tokens[:1], ds.abc_tokens[:1], first)
    assert torch.allclose(per[0], one, atol=1e-4)  # prompts do not interact


# --------------------------------------------------------------------------------------
# hooks.activations: one forward that stops once everything asked for has fired
# --------------------------------------------------------------------------------------


def test_activations_equal_a_full_cache_and_skip_what_nobody_reads(gpt2_arch, gpt2_ds):
    from mi_tutor.lab.hooks import activations, hook_name

    m, toks, last = gpt2_arch, gpt2_ds.tokens, gpt2_arch.cfg.n_layers - 1
    calls = []
    probe = m.ln_final.register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        for names, stops in (([hook_name(0, "z")], True), ([hook_name(last, "resid_post"), hook_name(0, "pattern")], True),
                             (["hook_embed", hook_name(last, "z")], True), (["ln_final.hook_normalized"], False)):
            calls.clear()
            _, cache = m.run_with_cache(toks, names_filter=lambda n, wanted=tuple(names): n in wanted)
            calls.clear()
            got = activations(m, toks, names)
            assert all(torch.equal(cache[n], got[n]) for n in names), names
            assert (not calls) == stops, names  # the final norm ran only when something after the blocks was asked for
    finally:
        probe.remove()
    assert sum(len(hp._forward_hooks) for hp in m.hook_dict.values()) == 0  # no hook left behind
    with pytest.raises(ValueError, match="hook_name"):
        activations(m, toks, ["blocks.0.attn.hook_zz"])


def test_head_output_grads_are_each_prompts_own_and_match_the_forward(gpt2_arch, gpt2_ds):
    ds = gpt2_ds
    z, grad, m = P.head_output_grads(gpt2_arch, ds.tokens, ds.metric)
    assert torch.allclose(m, ds.metric(gpt2_arch(ds.tokens)).float(), atol=1e-5)
    assert all(torch.equal(z[l], v) for l, v in head_outputs(gpt2_arch, ds.tokens).items())
    first = ds.subset([0])
    _, g0, _ = P.head_output_grads(gpt2_arch, first.tokens, first.metric)
    assert all(torch.allclose(grad[l][:1], g0[l], atol=1e-6) for l in g0)  # prompts do not interact
    assert all(p.grad is None for p in gpt2_arch.parameters())  # nothing left on the weights
