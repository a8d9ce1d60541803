"""Notebook 08's lesson module (mi_tutor.representations): the lens, the probes, the control task, steering."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_tutor import representations as rep
from mi_tutor.lab import hooks, readout


def test_the_rms_lens_equals_the_models_final_norm_and_unembedding(smollm2):
    x = torch.randn(5, smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 30
    norm = readout.norm_of(smollm2)
    got = rep.rms_lens(x, norm.weight, smollm2.W_U, norm.eps)
    assert torch.allclose(got, readout.lens_logits(smollm2, x), atol=1e-3)


def test_encode_pads_right_and_points_at_the_last_real_token(smollm2):
    tokens, last = rep.encode(smollm2, ["The cat", "The dogs near the old houses"])
    assert tokens.shape[0] == 2 and int(last[1]) == tokens.shape[1] - 1 and int(last[0]) < int(last[1])
    assert torch.equal(tokens[0, : last[0] + 1], smollm2.to_tokens("The cat")[0])


def test_the_lens_run_is_exact_at_the_last_layer_and_finds_an_easy_answer(smollm2):
    run = rep.lens_run(smollm2, ["The capital of France is", "One, two, three, four,"], [" Paris", " five"], k=5)
    assert run.max_gap < 1e-3
    assert run.ranks.shape == (smollm2.cfg.n_layers + 1, 2) and run.top_ids.shape[-1] == 5
    assert bool(run.correct.all()) and (run.first_top_layer() > 0).all()
    assert torch.allclose(run.kl[-1], torch.zeros(2), atol=1e-4)


def test_first_top_layer_requires_the_answer_to_stay_on_top():
    ranks = torch.tensor([[0, 3], [2, 0], [0, 1], [0, 0]])  # prompt 0 tops at 0, drops, tops again from 2
    run = rep.LensRun(["a", "b"], ["x", "y"], torch.zeros(2), ranks, torch.zeros(4, 2, 1, dtype=torch.long),
                      torch.zeros(4, 2, 1), torch.zeros(4, 2), torch.zeros(2), torch.zeros(2), 0.0)
    assert run.first_top_layer().tolist() == [2, 3]


def test_the_agreement_set_is_balanced_and_its_attractor_is_independent_of_the_label(smollm2):
    ds = rep.agreement_set(smollm2)
    assert len(ds) == 2 * len(rep.data()["subjects"]) * rep.data()["templates_per_subject"]
    assert float(ds.plural.float().mean()) == 0.5
    assert abs(float((ds.plural == ds.attractor_plural).float().mean()) - 0.5) < 0.1
    assert all(p.startswith("The ") for p in ds.prompts) and ds.are != ds.is_


def test_every_template_is_used_equally_and_each_noun_in_both_numbers(smollm2):
    ds = rep.agreement_set(smollm2)
    d = rep.data()
    per = d["templates_per_subject"]
    assert (torch.bincount(ds.noun) == 2 * per).all()
    assert all(int(ds.plural[ds.noun == k].sum()) == per for k in range(len(d["subjects"])))
    stems = [t.split("{a}")[0].split("{s}")[1] for t in d["templates"]]  # " near the", " by the old", ...
    uses = [sum(p.split(" ", 2)[2].startswith(st.strip() + " ") for p in ds.prompts) for st in stems]
    assert len(set(uses)) == 1, f"templates used unequally: {uses}"


def test_the_noun_split_holds_out_whole_nouns_and_is_seeded():
    noun = torch.arange(12).repeat_interleave(6)
    train, test = rep.noun_split(noun, 1 / 3, seed=0)
    assert not set(noun[train].tolist()) & set(noun[test].tolist())
    assert len(torch.unique(noun[test])) == 4 and len(train) + len(test) == len(noun)
    assert torch.equal(rep.noun_split(noun, 1 / 3, seed=0)[1], test)
    assert not torch.equal(rep.noun_split(noun, 1 / 3, seed=1)[1], test)
    with pytest.raises(ValueError, match="at least 4 nouns"):
        rep.noun_split(torch.tensor([0, 0, 1, 1]))


def test_per_group_mean_averages_within_each_noun():
    correct = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    group = torch.tensor([5, 5, 2, 2, 9, 9])
    assert torch.allclose(rep.per_group_mean(correct, group), torch.tensor([[1.0, 0.5, 0.0]]))


def test_sweep_table_prints_one_row_per_probe_labels_and_split():
    x, y = _separable(n=60, d=4)
    acts = torch.stack([torch.randn_like(x), x])
    a = rep.probe_sweep(acts, {"task": y, "control": 1 - y}, *rep.split(60, 0.3, seed=0))
    b = rep.probe_sweep(acts, {"task": y}, *rep.split(60, 0.3, seed=1))
    lines = rep.sweep_table({"one": a, "two": b}).splitlines()
    assert len(lines) == 1 + 4 + 2 and lines[0].split()[-2:] == ["0", "1"]


def test_control_labels_are_one_random_label_per_word_type():
    words = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 5])
    c = rep.control_labels(words, seed=3)
    for w in range(6):
        assert len(set(c[words == w].tolist())) == 1
    assert set(c.tolist()) == {0, 1}


def _separable(n=200, d=6, seed=0):
    g = np.random.default_rng(seed)
    y = torch.tensor(g.integers(0, 2, n))
    x = torch.tensor(g.normal(size=(n, d)), dtype=torch.float32) + 3 * y[:, None] * torch.tensor([1.0] + [0] * (d - 1)) + 5
    return x, y


def test_the_mean_difference_probe_separates_a_shifted_class_and_not_random_labels():
    x, y = _separable()
    assert rep.mean_difference_accuracy(x[:150], y[:150], x[150:], y[150:]) > 0.85
    noise = torch.tensor(np.random.default_rng(1).integers(0, 2, 200))
    s = rep.selectivity(x[:150], y[:150], noise[:150], x[150:], y[150:], noise[150:])
    assert s > 0.25


def test_the_probe_direction_is_the_decision_function_in_raw_coordinates():
    x, y = _separable(seed=2)
    probe = rep.logistic_probe(x, y)
    w = rep.probe_direction(probe)
    dec = torch.tensor(probe.decision_function(x.double().numpy()), dtype=torch.float32)
    # decision = x @ w + const: differences between rows match
    assert torch.allclose((x @ w) - (x @ w)[0], dec - dec[0], atol=1e-3)


def test_probe_sweep_scores_every_requested_layer():
    x, y = _separable(n=120, d=4)
    acts = torch.stack([torch.randn_like(x), x])  # layer 0 noise, layer 1 informative
    train, test = rep.split(120, 0.3, seed=0)
    sweep = rep.probe_sweep(acts, {"task": y}, train, test)
    assert sweep.layers == [0, 1] and sweep.best_layer("logistic") == 1
    assert float(sweep.acc[("mean difference", "task")][1]) > 0.9 > float(sweep.acc[("mean difference", "task")][0])
    assert sweep.directions[("logistic", "task")].shape == (2, 4)


def test_steer_adds_the_unit_direction_everywhere_without_touching_its_input():
    resid = torch.randn(2, 3, 4)
    before = resid.clone()
    d = torch.tensor([3.0, 0.0, 4.0, 0.0])
    out = rep.steer(resid, d, 2.0)
    assert torch.equal(resid, before)
    assert torch.allclose(out, hooks.add_vector(resid, 2.0 * d / 5.0))


def test_coefficient_zero_is_the_clean_run_and_costs_no_kl(smollm2):
    ds = rep.agreement_set(smollm2)
    tok, last = ds.tokens[:4], ds.last[:4]
    metric = lambda lg: rep.agreement_logit_diff(lg, ds)  # noqa: E731
    v = torch.randn(smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 40
    r = rep.dose_response(smollm2, tok, last, 20, v, [0.0, 1.0], metric)
    assert torch.allclose(r[0], metric(rep.last_logits(smollm2, tok, last)), atol=1e-4)
    assert not torch.allclose(r[1], r[0], atol=1e-3)
    ctrl = rep.control_tokens(smollm2, rows=2, length=12)
    kl = rep.side_effect_kl(smollm2, ctrl, 20, v, [0.0, 1.0])
    assert float(kl[0]) < 1e-5 < float(kl[1])


def test_control_tokens_say_when_the_text_is_too_short(smollm2):
    with pytest.raises(ValueError, match="control text"):
        rep.control_tokens(smollm2, rows=50, length=100)


def test_batched_steering_equals_a_steering_hook_run_one_at_a_time(smollm2):
    ds = rep.agreement_set(smollm2)
    tok, last = ds.tokens[:3], ds.last[:3]
    metric = lambda lg: rep.agreement_logit_diff(lg, ds)  # noqa: E731
    g = torch.Generator().manual_seed(1)
    dirs = {"a": torch.randn(smollm2.cfg.d_model, generator=g) * 30, "b": torch.randn(smollm2.cfg.d_model, generator=g) * 30}
    got = rep.dose_responses(smollm2, tok, last, 27, dirs, [-1.0, 0.0, 2.0], metric)
    for k, v in dirs.items():
        for row, c in zip(got[k], [-1.0, 0.0, 2.0]):
            want = metric(rep.last_logits(smollm2, tok, last, hooks.steering_hooks(27, c * v) if c else []))
            assert torch.allclose(row, want, atol=1e-3)
    by_layer = rep.steering_by_layer(smollm2, tok, last, torch.stack([dirs["a"], dirs["b"]]), [3, 27], metric)
    clean = metric(rep.last_logits(smollm2, tok, last))
    want = metric(rep.last_logits(smollm2, tok, last, hooks.steering_hooks(3, dirs["a"]))) - clean
    assert torch.allclose(by_layer[0], want, atol=1e-3)
    with pytest.raises(ValueError, match="one block per vector"):
        rep.steered_final_residuals(smollm2, tok, [3], torch.zeros(2, smollm2.cfg.d_model))


def test_the_translator_reports_the_constant_floor_and_beats_the_lens_midway(smollm2):
    ctrl = rep.control_tokens(smollm2, rows=2, length=16)
    tk = rep.translator_kl(smollm2, ctrl, layers=[0, 15, smollm2.cfg.n_layers])
    assert tk["constant"].shape == (1,) and float(tk["constant"]) > 0
    assert float(tk["translator"][1]) < float(tk["logit lens"][1])
    assert float(tk["logit lens"][-1]) < 1e-4


def test_the_translator_does_not_amplify_last_bit_differences(smollm2, monkeypatch):
    # Another CPU's BLAS changes the residuals in their last bits; the fitted translator's KL must not move with them
    # (in float32 the normal equations turned such differences into 0.04 nats).
    ctrl = rep.control_tokens(smollm2, rows=4, length=24)
    layers = [21, 24, 27]
    base = rep.translator_kl(smollm2, ctrl, layers=layers)["translator"]
    real = hooks.activations
    g = torch.Generator().manual_seed(0)

    def jittered(*args, **kwargs):
        return {k: v * (1 + 2e-7 * torch.randn(v.shape, generator=g)) for k, v in real(*args, **kwargs).items()}

    monkeypatch.setattr(rep.hooks, "activations", jittered)
    moved = rep.translator_kl(smollm2, ctrl, layers=layers)["translator"]
    assert (moved - base).abs().max() < 2e-3, (base, moved)


def test_value_range_collapses_a_constant_row():
    assert rep.value_range(torch.tensor([1.0, 0.999, 1.0])) == "1.00"
    assert rep.value_range(torch.tensor([0.38, 0.53, 0.5])) == "0.38-0.53"
