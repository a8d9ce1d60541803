"""Tests for notebook 02: the induction task, the head scores, the toy runs, and LM scoring."""
from __future__ import annotations

import math

import pytest
import torch

import functools

from mi_tutor import induction, induction_lm
from mi_tutor.lab import scores


@pytest.fixture(autouse=True)
def _one_thread():
    """Train single-threaded, as the notebook does (`setup()` pins torch to one thread): the toy
    model's matmuls are too small for a thread pool, which only adds overhead on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the task

@pytest.mark.parametrize("random_start", [False, True])
def test_make_batch_repeats_a_segment_and_marks_only_its_predictable_tokens(random_start):
    task = induction.TaskConfig(n_ctx=40, d_vocab=32, min_len=5, max_len=15, random_start=random_start)
    toks, rep = induction.make_batch(task, 64, torch.Generator().manual_seed(0))
    assert toks.shape == (64, 40) and rep.shape == (64, 39)
    lengths, starts = set(), set()
    for b in range(64):
        idx = rep[b].nonzero().flatten()
        L = len(idx) + 1  # the second copy's first token is not predictable
        s = int(idx[0]) - L  # position idx[0] predicts token s + L + 1
        assert torch.equal(idx, torch.arange(s + L, s + 2 * L - 1))
        assert torch.equal(toks[b, s: s + L], toks[b, s + L: s + 2 * L])
        assert len(set(toks[b, s: s + L].tolist())) == L  # distinct tokens in a segment
        lengths.add(L)
        starts.add(s)
    assert len(lengths) > 3, "segment lengths must vary (no fixed positional offset)"
    assert (len(starts) > 3) == random_start


def test_fixed_task_is_two_halves():
    task = induction.TaskConfig(n_ctx=20, d_vocab=16, fixed=True)
    toks, rep = induction.make_batch(task, 8, torch.Generator().manual_seed(1))
    assert torch.equal(toks[:, :10], toks[:, 10:])
    assert rep[:, 10:19].all() and not rep[:, :10].any()


def test_task_config_rejects_segments_that_do_not_fit():
    with pytest.raises(ValueError, match="2\\*max_len"):
        induction.TaskConfig(n_ctx=20, min_len=4, max_len=12)


# ------------------------------------------------------------------ pattern scores

def _ideal_patterns(seq: int, half: int, start: int = 0) -> torch.Tensor:
    prev = torch.zeros(seq, seq)
    prev[0, 0] = 1
    for q in range(1, seq):
        prev[q, q - 1] = 1
    ind = torch.eye(seq)
    for q in range(start + half, start + 2 * half):
        ind[q] = 0
        ind[q, q - half + 1] = 1
    return torch.stack([prev, ind])


def test_pattern_scores_on_ideal_heads():
    pats = _ideal_patterns(13, 6, start=1)[None]  # [1, 2 heads, 13, 13]
    prev = scores.previous_token_score(pats)
    ind = scores.induction_score(pats, 6, start=1)
    dup = scores.duplicate_token_score(pats, 6, start=1)
    assert prev.shape == (1, 2)
    assert prev[0, 0] == pytest.approx(1.0) and ind[0, 1] == pytest.approx(1.0)
    assert ind[0, 0] == pytest.approx(0.0) and dup[0, 1] == pytest.approx(0.0)


def test_uniform_head_scores_about_chance():
    seq = 40
    uni = torch.tril(torch.ones(seq, seq))
    uni = uni / uni.sum(-1, keepdim=True)
    assert scores.induction_score(uni, 20).item() == pytest.approx(scores.chance_level(seq), rel=1e-5)


def test_pattern_scores_reject_bad_shapes():
    with pytest.raises(ValueError, match="query, key"):
        scores.previous_token_score(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="does not fit"):
        scores.induction_score(torch.zeros(10, 10), half_len=6)


# ------------------------------------------------------------------ weight scores

def test_ov_copying_score_identity_and_random():
    W_E = torch.randn(50, 16)
    W_U = W_E.T.clone()
    assert scores.ov_copying_score(W_E, torch.eye(16), W_U) > 0.9
    g = torch.Generator().manual_seed(0)
    assert scores.ov_copying_score(W_E, -torch.eye(16), W_U) == 0.0
    assert scores.ov_copying_score(W_E, torch.randn(16, 16, generator=g), torch.randn(16, 50, generator=g)) < 0.2
    with pytest.raises(ValueError, match="do not chain"):
        scores.ov_copying_score(W_E, torch.eye(8), W_U)


def test_k_composition_detects_aligned_heads_and_differs_from_q_composition():
    g = torch.Generator().manual_seed(0)
    d, r = 32, 4
    ov = torch.randn(d, r, generator=g) @ torch.randn(r, d, generator=g)
    aligned_qk = torch.randn(d, d, generator=g) @ ov  # its keys read exactly the subspace the head writes
    unrelated_qk = torch.randn(d, r, generator=g) @ torch.randn(r, d, generator=g)
    base = scores.composition_baseline(d, r, n_samples=30)
    assert scores.k_composition_score(ov, aligned_qk) > base + 0.1
    assert scores.k_composition_score(ov, unrelated_qk) < base + 0.15
    assert scores.k_composition_score(ov, aligned_qk) != pytest.approx(scores.q_composition_score(ov, aligned_qk))
    # scale-free
    assert scores.k_composition_score(3 * ov, 0.1 * aligned_qk) == pytest.approx(scores.k_composition_score(ov, aligned_qk),
                                                                                  rel=1e-5)


def test_icl_score_sign_convention():
    loss = torch.linspace(5, 1, 100)[None].repeat(2, 1)  # loss falls with context
    s = scores.in_context_learning_score(loss, early=10, late=90, halfwidth=3)
    assert s < 0 and s == pytest.approx(float(loss[0, 90] - loss[0, 10]), rel=1e-5)
    with pytest.raises(ValueError):
        scores.in_context_learning_score(loss, early=10, late=99, halfwidth=3)


# ------------------------------------------------------------------ circuits in the weights

def test_full_ov_and_k_composition_circuits_of_built_heads():
    """Hand-built weights: an identity OV copies, and a QK that matches the token the earlier head moved is diagonal."""
    d, vocab = 16, 16
    eye = torch.eye(d)
    w = scores.HeadWeights(W_Q=torch.stack([torch.stack([eye]), torch.stack([eye])]),
                           W_K=torch.stack([torch.stack([eye]), torch.stack([eye])]),
                           W_V=torch.stack([torch.stack([eye]), torch.stack([-eye])]),
                           W_O=torch.stack([torch.stack([eye]), torch.stack([eye])]), W_E=eye, W_U=eye)
    assert scores.diagonal_top1(scores.full_ov_circuit(w, 0, 0)) == 1.0
    assert scores.diagonal_top1(scores.full_ov_circuit(w, 1, 0)) == 0.0  # -identity: anti-copying
    kc = scores.k_composition_circuit(w, (0, 0), (1, 0))
    assert kc.shape == (vocab, vocab) and scores.diagonal_top1(kc) == 1.0
    with pytest.raises(ValueError, match="lower layer"):
        scores.k_composition_circuit(w, (1, 0), (0, 0))
    shifted = torch.eye(5).roll(-1, dims=1)  # row i peaks at column i-1 (a previous-token pattern)
    assert scores.diagonal_top1(shifted, -1) == 1.0 and scores.diagonal_top1(shifted, 0) == 0.0


def test_positional_qk_pattern_is_causal_and_refuses_rotary_models(smollm2):
    from mi_tutor.models import attn_only_model

    model = attn_only_model(n_layers=1, d_model=16, n_heads=2, d_vocab=8, n_ctx=10, seed=0)
    pat = scores.positional_qk_pattern(model, 0, 1)
    assert pat.shape == (10, 10)
    assert torch.allclose(pat.sum(-1), torch.ones(10)) and (pat.triu(1) == 0).all()
    with pytest.raises(ValueError, match="learned positional embeddings"):
        scores.positional_qk_pattern(smollm2, 0, 0)


def test_the_notebook_hooks_equal_the_engine_on_a_toy_model():
    from mi_tutor.lab import hooks, patching

    model = _perturbed_toy(2)
    tokens = scores.random_repeated_tokens(6, 8, 0, 24, seed=3)
    fake = induction.Circuit((0, 1), (1, 2), 0.0, 0.0, 0.0, torch.zeros(2, 4), torch.zeros(4, 4), 0.0, 0.0)
    engine = induction.ablation_experiment(model, fake, tokens, 8)
    mean_z = patching.ablation_values(model, tokens, "mean", tokens, layers=[0])[0][0]
    clean_k = hooks.activations(model, tokens, [hooks.hook_name(1, "k")])[hooks.hook_name(1, "k")]
    ablate = (hooks.hook_name(0, "z"), functools.partial(induction.mean_ablation_hook, head=1, mean_z=mean_z))
    restore = (hooks.hook_name(1, "k"), functools.partial(induction.restore_keys_hook, head=2, clean_k=clean_k, n_heads=4))
    for name, fwd in {"clean": [], "ablated": [ablate], "ablated + keys restored": [ablate, restore]}.items():
        assert induction.induction_score_with_hooks(model, tokens, 8, (1, 2), fwd) == pytest.approx(engine[name], abs=1e-5)
    assert engine["ablated"] != pytest.approx(engine["clean"], abs=1e-3)  # the ablation changed something


def test_restore_keys_hook_maps_query_heads_to_their_kv_group():
    k, clean = torch.zeros(1, 2, 3, 4), torch.ones(1, 2, 3, 4)
    out = induction.restore_keys_hook(k, None, head=5, clean_k=clean, n_heads=9)  # group of 3: kv head 1
    assert out[:, :, 1].eq(1).all() and out[:, :, [0, 2]].eq(0).all() and k.eq(0).all()


@pytest.mark.slow
def test_weight_circuits_of_the_notebook_run_show_the_circuit():
    run = induction.train_induction(induction.RunConfig(seed=0, n_steps=500), live=False, progress=False)
    circuit = induction.find_circuit(run.model, run.scores())
    wc = induction.weight_circuits(run.model, circuit)
    (_, h0), (_, h1) = circuit.previous_token_head, circuit.induction_head
    assert int(wc.k_top1.argmax()) == h0 and wc.k_top1[h0] > 0.5
    assert int(wc.previous_top1.argmax()) == h0
    assert wc.ov_top1[h1] > 10 / run.config.task.d_vocab
    assert induction.plot_weight_circuits(wc, circuit) is not None


# ------------------------------------------------------------------ the pretrained model: readings and ablation

def test_repeat_reading_windows():
    loss = torch.arange(9.0)[None].repeat(2, 1)  # column p predicts token p+1; BOS at 0, copies at 1-4 and 5-8
    r = induction_lm.repeat_reading(loss, torch.zeros_like(loss), half_len=4, start=1, vocab=100, onset=1)
    assert r.first == pytest.approx((1 + 2 + 3) / 3) and r.second == pytest.approx((5 + 6 + 7) / 3)
    assert r.second_onset == 5 and r.second_rest == pytest.approx(6.5) and r.uniform == pytest.approx(math.log(100))


def test_icl_per_row_averages_to_the_icl_score():
    loss = torch.rand(5, 60, generator=torch.Generator().manual_seed(0))
    rows = induction_lm.icl_per_row(loss, 10, 50, 3)
    assert rows.shape == (5,)
    assert rows.mean().item() == pytest.approx(scores.in_context_learning_score(loss, 10, 50, 3), abs=1e-6)


def test_control_heads_are_low_induction_seeded_and_distinct():
    ind = torch.arange(20.0).reshape(4, 5)
    a, b = induction_lm.control_heads(ind, 4, seed=0), induction_lm.control_heads(ind, 4, seed=0)
    assert a == b and len(set(a)) == 4 and all(float(ind[h]) < float(ind.median()) for h in a)


def test_ablating_smollm2_top_induction_heads_hurts_the_repeat_more_than_a_control(smollm2):
    s = scores.score_all_heads(smollm2, half_len=15, n_seqs=4, batch_size=4, seed=0)
    rep = induction_lm.repeated_tokens(smollm2, 8, 15, seed=1)
    text = induction_lm.text_windows(smollm2, n_ctx=48, max_windows=3)
    study = induction_lm.ablation_study(smollm2, {"top": s.top("induction", 5),
                                                  "control": induction_lm.control_heads(s.induction, 5)},
                                        rep, 15, text, early=5, late=40, halfwidth=2)
    assert set(study.second_copy) == {"clean", "top", "control"} and study.icl["top"].shape == (3,)
    assert study.change("top").low > study.change("control").high
    assert "bootstrap over 8 repeated sequences and 3 documents" in study.summary()


def test_loss_and_entropy_with_no_patch_equals_the_plain_loss(smollm2):
    rep = induction_lm.repeated_tokens(smollm2, 3, 6, seed=0)
    loss, ent = induction_lm.loss_and_entropy(smollm2, rep, batch_size=2)
    assert torch.allclose(loss, scores.per_token_loss(smollm2(rep), rep), atol=1e-4)
    assert (ent >= 0).all() and (ent <= math.log(smollm2.cfg.d_vocab) + 1e-3).all()


# ------------------------------------------------------------------ any architecture

@pytest.mark.parametrize("fixture", ["gpt2_arch", "smollm2"])
def test_score_all_heads_shapes_on_both_architectures(fixture, request):
    model = request.getfixturevalue(fixture)
    s = scores.score_all_heads(model, half_len=10, n_seqs=2, batch_size=2)
    shape = (model.cfg.n_layers, model.cfg.n_heads)
    assert s.induction.shape == shape and s.previous_token.shape == shape and s.duplicate_token.shape == shape
    assert s.start == 1  # BOS first
    assert ((s.induction >= 0) & (s.induction <= 1)).all()
    assert s.loss_by_position.shape == (2 * 10,)
    w = scores.head_weights(model)
    assert w.W_K.shape == w.W_Q.shape  # GQA expanded per query head on SmolLM2
    assert w.ov(0, 0).shape == (model.cfg.d_model, model.cfg.d_model)


def test_smollm2_has_strong_induction_heads_and_learns_the_repeat(smollm2):
    s = scores.score_all_heads(smollm2, half_len=20, n_seqs=4, batch_size=4)
    (l, h), = s.top("induction", 1)
    best = float(s.induction[l, h])
    assert best > 0.3, f"best induction score {best:.2f} at L{l}H{h}"
    first, second = s.first_vs_second_repeat_loss()
    assert second < 0.5 * first


def test_random_gpt2_has_no_induction_heads(gpt2_arch):
    s = scores.score_all_heads(gpt2_arch, half_len=10, n_seqs=2, batch_size=2)
    assert s.induction.max() < 0.3  # random weights: no prefix matching


# ------------------------------------------------------------------ the fast forward

def _perturbed_toy(n_layers: int, seed: int = 0):
    from mi_tutor.models import attn_only_model

    model = attn_only_model(n_layers=n_layers, d_model=32, n_heads=4, d_vocab=24, n_ctx=20, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move away from the initialisation so that every term matters (biases too)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_fast_forward_equals_the_bridge_forward_and_its_patterns(n_layers):
    model = _perturbed_toy(n_layers, seed=n_layers)
    tokens = torch.randint(0, 24, (5, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(tokens)
        logits, patterns = induction.fast_forward(model, tokens, return_patterns=True)
        reference = induction._patterns(model, tokens)
    assert logits.shape == expected.shape == (5, 17, 24)
    assert expected.abs().max() > 1.0  # not a trivial comparison of near-zero logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert len(patterns) == n_layers
    for ours, theirs in zip(patterns, reference):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_fast_forward_trains_the_bridge_parameters():
    model = _perturbed_toy(2)
    tokens = torch.randint(0, 24, (4, 20), generator=torch.Generator().manual_seed(1))
    induction.fast_forward(model, tokens).logsumexp(-1).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]


def test_fast_forward_rejects_what_it_does_not_compute():
    from mi_tutor.models import attn_only_model

    with pytest.raises(ValueError, match="LayerNorm"):
        induction.fast_forward(attn_only_model(n_layers=1, d_model=16, n_heads=2, d_vocab=8, n_ctx=8,
                                               normalization_type="LN"), torch.zeros(1, 4, dtype=torch.long))
    model = _perturbed_toy(1)
    with pytest.raises(ValueError, match="exceed the context"):
        induction.fast_forward(model, torch.zeros(1, 21, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, pos"):
        induction.fast_forward(model, torch.zeros(21, dtype=torch.long))
    with pytest.raises(ValueError, match="n_heads"):
        induction.fast_forward(induction.toy_params(model), torch.zeros(1, 4, dtype=torch.long))


# ------------------------------------------------------------------ toy runs

FAST = induction.RunConfig(n_steps=10, eval_every=5, batch_size=8, task=induction.TaskConfig(n_ctx=32, min_len=4, max_len=12),
                           probe_half_len=10)


def test_train_induction_records_history_and_snapshots():
    run = induction.train_induction(FAST, live=False, progress=False)
    assert run.history.steps == [0, 5, 10]
    for key in ("loss_repeated", "loss_first", "induction", "previous_token"):
        assert len(run.history[key]) == 3 and all(math.isfinite(v) for v in run.history[key])
    assert run.snapshots.shape == (3, 2, 4, 20, 20)
    assert run.snapshot_steps == [0, 5, 10]


def test_train_induction_is_reproducible():
    a = induction.train_induction(FAST, live=False, progress=False)
    b = induction.train_induction(FAST, live=False, progress=False)
    assert a.history["loss_repeated"] == b.history["loss_repeated"]


# ------------------------------------------------------------------ formation on other seeds (slow)

@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_induction_circuit_forms_for_other_seeds(seed):
    """The notebook uses seed 0; the phase change and the circuit must not depend on it.

    (With the earlier default lr 2e-2, seed 3 was still on the plateau after 400 steps.)"""
    run = induction.train_induction(induction.RunConfig(seed=seed), live=False, progress=False)
    pc = induction.phase_change(run.history)
    assert pc.plateau_end >= 3 * run.config.eval_every and pc.drop > 0.3, str(pc)
    assert pc.final_loss < 0.35 * pc.initial_loss, str(pc)
    scores = run.scores()
    circuit = induction.find_circuit(run.model, scores)
    chance = scores.chance
    assert circuit.induction_score > 4 * chance and circuit.previous_token_score > 4 * chance, circuit.summary()
    assert circuit.k_composition_of_pair > circuit.k_baseline + 0.05, circuit.summary()
    effects = induction.ablation_experiment(run.model, circuit, run.probe_tokens, run.config.probe_half_len)
    # Seed 0 (the notebook) collapses to ~0.15; with some seeds a second layer-0 head shares the
    # previous-token job, so ablating only the best one breaks the induction head partly (seed 1: 0.95 -> 0.54).
    assert effects["ablated"] < 0.75 * effects["clean"], effects
    assert effects["ablated + keys restored"] > 0.9 * effects["clean"], effects
    assert effects["ablated + queries restored"] < 0.75 * effects["clean"], effects


@pytest.mark.slow
def test_one_layer_model_stays_below_the_induction_circuit():
    run = induction.train_induction(induction.RunConfig(n_layers=1, seed=1), live=False, progress=False)
    scores = run.scores()
    assert float(scores.induction.max()) < 0.3
    assert run.history.last("loss_repeated") > 2.0  # copying seen tokens helps a little, induction would reach ~0.2


def test_mean_head_outputs_in_batches_equal_one_pass():
    from mi_tutor.lab import patching

    model = _perturbed_toy(2)
    tokens = scores.random_repeated_tokens(5, 6, 0, 24, seed=4)
    one = patching.ablation_values(model, tokens, "mean", tokens, layers=[0, 1])
    batched = induction_lm.mean_head_outputs(model, tokens, [0, 1], batch_size=2)
    assert all(torch.allclose(one[l], batched[l], atol=1e-6) for l in (0, 1)) and batched[0].shape == one[0].shape
