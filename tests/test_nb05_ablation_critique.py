"""Tests of mi_tutor.ablation (notebook 05) on tiny toy models, plus a few on SmolLM2."""
from __future__ import annotations

import pytest
import torch

from mi_tutor import ablation as A
from mi_tutor import ablation_views as views
from mi_tutor.lab import hooks, readout
from mi_tutor.lab.hooks import head_outputs
from mi_tutor.lab.patching import heads_replaced, patch_hooks
from mi_tutor.models import ToyConfig, attn_only_model, build_toy


@pytest.fixture(scope="module")
def toy():
    """A tiny untrained transformer WITH MLPs and LayerNorm (what DLA and self-repair need)."""
    return build_toy(ToyConfig(d_model=32, d_head=8, n_layers=2, n_ctx=16, n_heads=4, d_vocab=40, d_mlp=64,
                               normalization_type="LN", seed=1))


@pytest.fixture(scope="module")
def attn_toy():
    return attn_only_model(n_layers=2, d_model=32, n_heads=4, d_vocab=40, n_ctx=16, seed=2)


@pytest.fixture(scope="module")
def task(toy):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 40, (3, 6), generator=g)
    cf = torch.randint(1, 40, (3, 6), generator=g)
    return A.Task("toy", tokens, cf, torch.tensor([3, 5, 7]), torch.tensor([4, 6, 8]))


@torch.no_grad()
def _metric_with(model, task, heads, values):
    """The reference, written by hand: plain hooks that overwrite the heads' z."""
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)

    def make(l, hs):
        def hook(z, hook):
            z = z.clone()
            z[:, :, hs] = values[l][:, :, hs]
            return z
        return hook
    fwd = [(hooks.hook_name(l, "z"), make(l, hs)) for l, hs in by_layer.items()]
    return float(task.metric(model.run_with_hooks(task.tokens, fwd_hooks=fwd)).mean())


@torch.no_grad()
def _clean(model, task):
    return float(task.metric(model(task.tokens)).mean())


def test_task_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="aligned"):
        A.Task("x", torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="one token id per prompt"):
        A.Task("x", torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), torch.zeros(3), torch.zeros(3))


@pytest.mark.parametrize("kind", A.KINDS)
def test_sweep_equals_one_head_at_a_time(toy, task, kind):
    values = A.task_values(toy, task, kind)
    res = A.sweep(toy, task.tokens, values, task.metric, max_rows=8)  # small chunks: several forward passes
    clean = _clean(toy, task)
    assert res.clean == pytest.approx(clean, abs=1e-5)
    table = res.table(2, 4)
    for l, h in [(0, 0), (0, 3), (1, 2)]:
        want = clean - _metric_with(toy, task, [(l, h)], values)
        assert float(table[l, h]) == pytest.approx(want, abs=1e-4)
    assert (res.kl >= -1e-6).all() and res.kl.max() > 0


def test_sweep_of_a_group_replaces_all_its_heads(toy, task):
    values = A.task_values(toy, task, "zero")
    res = A.sweep(toy, task.tokens, values, task.metric, heads=[[(0, 1), (1, 3)]])
    clean = _clean(toy, task)
    assert float(res.drop[0]) == pytest.approx(clean - _metric_with(toy, task, [(0, 1), (1, 3)], values), abs=1e-4)


def test_resample_with_the_clean_run_changes_nothing(toy, task):
    same = head_outputs(toy, task.tokens)
    res = A.sweep(toy, task.tokens, same, task.metric)
    assert res.drop.abs().max() < 1e-4 and res.kl.abs().max() < 1e-5


def test_control_damage_is_zero_for_identity_and_positive_otherwise(toy):
    ctrl = torch.randint(1, 40, (2, 8), generator=torch.Generator().manual_seed(2))
    d = A.control_damage(toy, ctrl, "zero", [(0, 0), (1, 1)], max_rows=4)
    assert d.kl.shape == (2,) and (d.kl > 0).all()
    with pytest.raises(ValueError, match="2 rows"):
        A.control_values(toy, ctrl[:1], "resample")
    vals = A.control_values(toy, ctrl, "resample")
    z = head_outputs(toy, ctrl)
    assert torch.equal(vals[0][0], z[0][1]) and torch.equal(vals[0][1], z[0][0])


def test_control_kl_is_the_mean_kl_over_prompts_and_positions():
    x = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    assert float(A.control_kl(x, x * 2)) == pytest.approx(float(readout.kl_div(x, x * 2).mean()))


def test_damage_report_shortlists_and_flags(toy, task):
    sweeps = {"toy": A.task_sweeps(toy, task, max_rows=16)}
    ctrl = torch.randint(1, 40, (2, 8), generator=torch.Generator().manual_seed(5))
    rep = A.damage_report(toy, sweeps, ctrl, k_short=2, k_flag=2)
    tops = {h for s in sweeps["toy"].values() for h in hooks.top_heads(s.table(2, 4), 2)}
    assert set(rep.shortlist) == tops and rep.labels == [hooks.head_label(h) for h in rep.shortlist]
    for row in rep.rows:  # every flagged entry has at least as much control KL as task KL
        assert row["control KL"] >= row["task KL"] - 1e-3
    assert list(rep.table().columns) == ["task", "ablation", "head", "task drop", "task KL", "control KL"]


def test_damage_flags_picks_top_heads_with_more_control_than_task_kl():
    drop = torch.tensor([3.0, 2.0, 1.0, 0.1])
    task_kl = torch.tensor([0.5, 0.1, 0.2, 0.0])
    ctrl_kl = torch.tensor([0.1, 0.3, 0.3, 9.0])
    assert A.damage_flags(drop, task_kl, ctrl_kl, k=3) == [1, 2]  # head 3 is not in the top 3


def test_self_repair_adds_up_exactly(toy, task):
    values = A.task_values(toy, task, "zero")
    r = A.self_repair(toy, task, [(0, 2)], values)
    # total = direct - compensation by construction, and compensation = sum of every other part's rise
    assert r.total == pytest.approx(r.direct - r.compensation, abs=1e-6)
    assert sum(r.by_part.values()) == pytest.approx(r.compensation, abs=1e-3)
    assert r.total == pytest.approx(r.ld_clean - _metric_with(toy, task, [(0, 2)], values), abs=1e-4)
    assert hooks.head_label((0, 2)) not in r.by_part
    with pytest.raises(ValueError):
        A.self_repair(toy, task, [], values)


def test_sweep_on_an_attention_only_model(attn_toy):
    t = A.Task("a", torch.randint(1, 40, (2, 5), generator=torch.Generator().manual_seed(1)),
               torch.randint(1, 40, (2, 5), generator=torch.Generator().manual_seed(2)), torch.tensor([1,
                                                                                                       2]), torch.tensor([3, 4]))
    res = A.sweep(attn_toy, t.tokens, A.task_values(attn_toy, t, "zero"), t.metric)
    assert res.drop.shape == (8,) and torch.isfinite(res.drop).all()


def test_split_total_effect_matches_self_repair(toy, task):
    values = A.task_values(toy, task, "resample")
    c = readout.direct_logit_attribution(toy, task.tokens, task.answer, task.wrong)
    a = readout.direct_logit_attribution(toy, task.tokens, task.answer, task.wrong,
                                         fwd_hooks=patch_hooks(toy, heads_replaced([(1, 3)], values)))
    r = A.self_repair(toy, task, [(1, 3)], values, c)
    s = A.split_total_effect(c.logit_diff, a.logit_diff, c.heads, a.heads, (1, 3))
    assert torch.allclose(s, torch.tensor([r.total, r.direct, r.compensation]), atol=1e-5)


def test_pair_interactions_are_pair_minus_singles(toy, task):
    values = A.task_values(toy, task, "zero")
    heads = [(0, 0), (0, 1), (1, 2)]
    p = A.pair_interactions(toy, task, heads, values)
    clean = _clean(toy, task)
    want = clean - _metric_with(toy, task, [(0, 1), (1, 2)], values)
    assert float(p.pair[1, 2]) == pytest.approx(want, abs=1e-4)
    assert float(p.interaction[1, 2]) == pytest.approx(want - float(p.single[1]) - float(p.single[2]), abs=1e-4)
    assert len(p.strongest(5)) == 3
    with pytest.raises(ValueError):
        A.pair_interactions(toy, task, heads[:1], values)


def test_noising_denoising_signs_and_scale(toy, task):
    nd = A.noising_denoising(toy, task, [(0, 0), (1, 1)])
    gap = nd.clean - nd.corrupt
    clean_z = head_outputs(toy, task.tokens)
    with toy.hooks(fwd_hooks=patch_hooks(toy, heads_replaced([(1, 1)], clean_z))), torch.no_grad():
        denoised = float(task.metric(toy(task.counterfactual)).mean())
    assert float(nd.sufficiency[1]) == pytest.approx((denoised - nd.corrupt) / gap, abs=1e-4)


def test_probe_finds_a_planted_direction_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    noise = torch.randn(40, 16, generator=g)
    signal = noise.clone()
    signal[:, 0] += 4 * (labels.float() * 2 - 1)
    acc = A.probe_layers(torch.stack([noise, signal]), labels)
    assert acc[1] > 0.9 and acc[0] < 0.8
    with pytest.raises(ValueError, match="two classes"):
        A.probe_layers(torch.stack([noise]), torch.zeros(40, dtype=torch.long))


def test_scrub_keeping_every_head_keeps_everything(toy, task):
    s = A.scrub(toy, task, hooks.all_heads(toy), n_random=1)
    assert s.kept == pytest.approx(1.0, abs=1e-5)
    few = A.scrub(toy, task, [(0, 1)], n_random=3, max_rows=4)   # one copy per pass: the same numbers
    many = A.scrub(toy, task, [(0, 1)], n_random=3, max_rows=64)
    assert few.scrubbed == pytest.approx(many.scrubbed, abs=1e-5) and few.random_kept == pytest.approx(many.random_kept, abs=1e-5)
    with pytest.raises(ValueError, match="max_rows must be at least 1"):
        A.scrub(toy, task, [(0, 1)], max_rows=0)
    d = A.derangement(5, seed=3)
    assert sorted(d.tolist()) == list(range(5)) and not (d == torch.arange(5)).any()
    with pytest.raises(ValueError):
        A.derangement(1)


def test_verdict_flips():
    a = torch.tensor([[3.0, 1.0], [2.0, 0.0]])
    flips = A.verdict_flips({"x": a, "y": -a}, top=1, low=3)
    assert {f["head"] for f in flips} == {hooks.head_label((0, 0)), hooks.head_label((1, 1))}


def test_resample_head_only_touches_one_head():
    z = torch.randn(3, 4, 2, 5)
    perm = torch.tensor([2, 0, 1])
    out = A.resample_head(z, 1, perm)
    assert torch.equal(out[:, :, 0], z[:, :, 0]) and torch.equal(out[0, :, 1], z[2, :, 1])


def test_a_verdict_row_without_its_columns_is_refused():
    with pytest.raises(ValueError, match="lacks"):
        views._verdict_frame([{"method": "x"}])


def test_lab_runs_and_caches(toy, task):
    ctrl = torch.randint(1, 40, (2, 8), generator=torch.Generator().manual_seed(4))
    lab = views.Lab(toy, {"toy": task}, ctrl)
    r = lab.run("toy", [(0, 1)], "zero")
    assert r is lab.run("toy", [(0, 1)], "zero")
    assert r.control_kl > 0 and r.task_kl >= 0
    fig = views.plot_lab(lab, "toy", "L0H1, L1H2", "mean")
    assert len(fig.axes) >= 3
    with pytest.raises(ValueError, match="unknown task"):
        lab.run("nope", [(0, 1)], "zero")


def test_control_tokens_and_successor_task_on_smollm2(smollm2):
    from mi_tutor import ordinal

    ctrl = A.control_tokens(smollm2, rows=2, length=20)
    assert ctrl.shape == (2, 20) and (ctrl[:, 0] == ctrl[0, 0]).all() and not torch.equal(ctrl[0, 1:], ctrl[1, 1:])
    otok = ordinal.ordinal_tokens(smollm2)
    sp = A.subset_successor(ordinal.successor_prompts(smollm2, otok, n_items=2, per_category=1), ["days"], otok)
    t = A.successor_task(sp)
    assert len(t) == 1 and smollm2.to_string(t.wrong) == " Tuesday" and smollm2.to_string(t.answer) == " Wednesday"
    with pytest.raises(ValueError, match="no prompt"):
        A.subset_successor(sp, ["planets"], otok)


def test_mean_reference_is_used_by_mean_ablation_only(toy, task):
    ref = torch.randint(1, 40, (5, 6), generator=torch.Generator().manual_seed(7))
    t2 = A.Task("toy", task.tokens, task.counterfactual, task.answer, task.wrong, ref)
    mean = A.task_values(toy, t2, "mean")
    assert torch.allclose(mean[0][0], head_outputs(toy, ref)[0].mean(0), atol=1e-6)
    assert torch.equal(A.task_values(toy, t2, "resample")[1], head_outputs(toy, task.counterfactual)[1])
    with pytest.raises(ValueError, match="same length"):
        A.Task("toy", task.tokens, task.counterfactual, task.answer, task.wrong, ref[:, :4])
    with pytest.raises(ValueError, match="unknown ablation kind"):
        A.task_values(toy, t2, "gaussian")


def test_sweep_on_smollm2_uses_the_fast_backend_and_equals_the_hook_engine(smollm2, monkeypatch):
    from mi_tutor import ioi
    from mi_tutor.lab import patching

    t = A.ioi_task(ioi.make_ioi(smollm2, n=2, seed=0))
    vals = A.task_values(smollm2, t, "resample")
    heads = [(0, 1), (12, 3), (29, 8)]
    fast = A.sweep(smollm2, t.tokens, vals, t.metric, heads)
    monkeypatch.setattr(A, "copies_runner", lambda model, tokens: patching.copies_runner(model, tokens, fast=False))
    hooks_only = A.sweep(smollm2, t.tokens, vals, t.metric, heads)
    for what in ("drop", "kl", "entropy_change"):
        assert torch.allclose(getattr(fast, what), getattr(hooks_only, what), atol=1e-4), what


# ---- the evidence layer: bootstrap over prompts, interchange flip, frozen-scale split ----------------------------

from mi_tutor import ablation_evidence as EV  # noqa: E402


def test_sweep_keeps_per_prompt_drops_and_their_mean_is_the_drop(toy, task):
    s = A.sweep(toy, task.tokens, A.task_values(toy, task, "zero"), task.metric, max_rows=8)
    assert s.per_prompt.shape == (len(s.groups), len(task))
    assert torch.allclose(s.per_prompt.mean(1), s.drop, atol=1e-5)
    pp = EV.per_prompt_table(s, toy.cfg.n_layers, toy.cfg.n_heads)
    assert torch.allclose(pp.mean(0), s.table(toy.cfg.n_layers, toy.cfg.n_heads), atol=1e-5)
    iv = EV.rank_interval(pp, (0, 1), n=50)
    assert 1 <= iv.low <= iv.high <= toy.cfg.n_layers * toy.cfg.n_heads
    c = EV.spearman_interval(pp, pp, n=20)
    assert c.value == pytest.approx(1.0) and c.low == pytest.approx(1.0)


def test_interchange_flip_equals_hand_written_patching(toy, task):
    heads = [(0, 1), (1, 2)]
    z_b = head_outputs(toy, task.counterfactual)
    ans_a, ans_b = task.answer, task.wrong
    f = EV.interchange_flip(toy, task.tokens, task.counterfactual, ans_a, ans_b, heads, n_random=3, seed=1,
                            damage_values=A.task_values(toy, task, "zero"))
    flip_task = A.Task("flip", task.tokens, task.counterfactual, ans_a, ans_b)
    assert float(f.patched.mean()) == pytest.approx(_metric_with(toy, flip_task, heads, z_b), abs=1e-4)
    assert float(f.a.mean()) == pytest.approx(_clean(toy, flip_task), abs=1e-4)
    assert float(f.damaged.mean()) == pytest.approx(_metric_with(toy, flip_task, heads, A.task_values(toy, task, "zero")),
                                                    abs=1e-4)
    assert f.random.shape == (3, len(task))
    assert torch.allclose(f.moved(f.b), torch.ones(len(task)))
    # every head from B, and B = A: nothing moves
    same = EV.interchange_flip(toy, task.tokens, task.tokens, ans_a, ans_b, heads, n_random=1)
    assert torch.allclose(same.patched, same.a, atol=1e-5)
    with pytest.raises(ValueError, match="aligned"):
        EV.interchange_flip(toy, task.tokens, task.tokens[:, :-1], ans_a, ans_b, heads)


@torch.no_grad()
def test_frozen_split_is_exact_and_its_direct_effect_matches_a_hand_computation(toy, task):
    values = A.task_values(toy, task, "zero")
    h = (1, 2)
    f = EV.frozen_split(toy, task.tokens, task.answer, task.wrong, [h], values)
    assert f.total == pytest.approx(f.direct - f.norm_repair - f.other_repair, abs=1e-5)
    assert f.total == pytest.approx(_clean(toy, task) - _metric_with(toy, task, [h], values), abs=1e-4)
    # by hand: the head's output at the last position, centred (LayerNorm), divided by the CLEAN run's LN scale
    final = hooks.hook_name(toy.cfg.n_layers - 1, "resid_post")
    zname = hooks.hook_name(h[0], "z")
    _, cc = toy.run_with_cache(task.tokens, names_filter=lambda n: n in (final, zname))
    with toy.hooks(fwd_hooks=patch_hooks(toy, heads_replaced([h], values))):
        _, ca = toy.run_with_cache(task.tokens, names_filter=lambda n: n in (final, zname))
    W_O = toy.W_O[h[0], h[1]]
    out_c, out_a = cc[zname][:, -1, h[1]] @ W_O, ca[zname][:, -1, h[1]] @ W_O
    x = cc[final][:, -1]
    xc = x - x.mean(-1, keepdim=True)
    s_c = (xc.pow(2).mean(-1) + toy.cfg.eps).sqrt()
    w = readout.norm_of(toy).weight
    d = (toy.W_U[:, task.answer] - toy.W_U[:, task.wrong]).T * w
    diff = out_c - out_a
    direct = ((diff - diff.mean(-1, keepdim=True)) * d).sum(-1) / s_c
    assert f.direct == pytest.approx(float(direct.mean()), abs=1e-4)
    assert float(EV.frozen_direct_effect(out_c - out_c.mean(-1, keepdim=True), out_a - out_a.mean(-1, keepdim=True),
                                         s_c, s_c * 2, d).mean()) == pytest.approx(f.direct, abs=1e-4)


def test_readings_branch_on_the_values():
    pairs = A.Pairs([(1, 0), (2, 0), (3, 0)], torch.tensor([0.3, -1.0, 0.4]), torch.tensor(
        [[float("nan"), 0.0, 1.5], [0.0, float("nan"), -0.5], [1.5, -0.5, float("nan")]]))
    rank = torch.arange(1, 13).reshape(4, 3)
    lines = views.pair_reading(pairs, rank, 12, k=2)
    assert "OR-like" in lines[0] and "L1H0 + L3H0" in lines[0]
    assert "negative head" in lines[1] and "L2H0" in lines[1]
    over = A.Scrub(20, 4.0, 5.6, [1.0] * 20, 1.0)
    assert "FAILS" in views.scrub_reading(over) and "leaves out negative" in views.scrub_reading(over)
    good = A.Scrub(20, 4.0, 4.1, [1.0] * 20, 1.0)
    assert "passes" in views.scrub_reading(good)
    assert "inconclusive" in views.scrub_reading(A.Scrub(20, 4.0, 4.1, [4.2] * 20, 1.0))


# ---- sections 4-5 on many prompts: pooled over templates, with intervals ------------------------------------------


@pytest.fixture(scope="module")
def two_tasks(toy):
    """Two sub-tasks of different lengths (like two IOI templates)."""
    g = torch.Generator().manual_seed(3)
    out = []
    for n, pos in ((3, 6), (4, 7)):
        out.append(A.Task("toy", torch.randint(1, 40, (n, pos), generator=g), torch.randint(1, 40, (n, pos), generator=g),
                          torch.randint(1, 40, (n,), generator=g), torch.randint(1, 40, (n,), generator=g)))
    return out


@torch.no_grad()
def test_pooled_splits_are_exact_per_prompt_and_pool_the_templates(toy, two_tasks):
    values = [A.task_values(toy, t, "resample") for t in two_tasks]
    h = (1, 2)
    (f,) = EV.pooled_splits(toy, two_tasks, [h], values)
    pp = f.per_prompt
    assert pp["total"].shape == (7,) and f.part.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert torch.allclose(pp["total"], pp["direct"] - pp["norm"] - pp["heads"] - pp["rest"], atol=1e-5)
    # the pooled total is the mean over all 7 prompts of the hand-patched drop
    per = [_clean(toy, t) - _metric_with(toy, t, [h], v) for t, v in zip(two_tasks, values)]
    assert f.total == pytest.approx((3 * per[0] + 4 * per[1]) / 7, abs=1e-4)
    assert f.template_means("total") == pytest.approx(per, abs=1e-4)
    assert f.compensation == pytest.approx(float(f.values("compensation").mean()), abs=1e-5)
    iv = f.interval("compensation", n=100)
    assert iv.low <= iv.value <= iv.high
    assert "total" in EV.repair_reading(f) and "final-norm scale" in EV.frozen_reading(f)
    with pytest.raises(ValueError, match="unknown term"):
        f.values("bogus")
    with pytest.raises(ValueError, match="one set of replacement values per task"):
        EV.pooled_splits(toy, two_tasks, [h], values[:1])


@torch.no_grad()
def test_pooled_pairs_and_noising_match_one_template_at_a_time(toy, two_tasks):
    heads = [(0, 1), (1, 2), (1, 3)]
    values = [A.task_values(toy, t, "zero") for t in two_tasks]
    p = EV.pooled_pairs(toy, two_tasks, heads, values, max_rows=8)
    assert p.single_pp.shape == (3, 7) and p.pair_pp.shape == (3, 3, 7)
    ab = _clean(toy, two_tasks[1]) - _metric_with(toy, two_tasks[1], heads[:2], values[1])
    assert float(p.pair_pp[0, 1, 3:].mean()) == pytest.approx(ab, abs=1e-4)
    iv = EV.pair_intervals(p, heads[0], heads[1], n=100)
    inter = p.pair_pp[0, 1] - p.single_pp[0] - p.single_pp[1]
    assert iv["interaction"].value == pytest.approx(float(inter.mean()), abs=1e-5)
    assert iv["per_template"] == pytest.approx([float(inter[:3].mean()), float(inter[3:].mean())], abs=1e-5)
    lines = views.pair_reading(p, lambda h: 1, 8, k=2)
    assert len(lines) == 2 and all("per template" in x for x in lines)
    nd = EV.pooled_noising(toy, two_tasks, heads, max_rows=8)
    one = A.noising_denoising(toy, two_tasks[0], heads, max_rows=8)
    assert torch.allclose(nd.noise_pp[:, :3], one.noise_pp, atol=1e-5)
    gap = float((nd.clean_pp - nd.corrupt_pp).mean())
    assert torch.allclose(nd.necessity, nd.noise_pp.mean(-1) / gap, atol=1e-5)
    niv = EV.noising_intervals(nd, heads[1], n=100)
    assert niv["necessity"].value == pytest.approx(float(nd.necessity[1]), abs=1e-5)
    assert len(niv["per_template"]) == 2
    assert "necessity" in EV.noising_reading(nd, heads[1])
    with pytest.raises(ValueError, match="per-prompt"):
        EV.pool_pairs([A.Pairs(heads, p.single, p.pair)])


def test_readings_say_uncertain_when_the_interval_crosses_zero():
    heads = [(1, 0), (2, 0)]
    noisy = torch.tensor([[1.0, -1.0, 1.2, -0.9], [0.5, 0.4, 0.6, 0.5]])  # head 0: mean ~0, crosses zero
    pair_pp = torch.full((2, 2, 4), float("nan"))
    pair_pp[0, 1] = pair_pp[1, 0] = noisy[0] + noisy[1] + torch.tensor([1.0, -1.0, 1.0, -0.8])
    p = A.Pairs(heads, noisy.mean(-1), pair_pp.mean(-1), noisy, pair_pp, torch.tensor([0, 0, 1, 1]))
    assert "uncertain" in views.pair_reading(p, lambda h: 1, 12, k=1)[0]
    nd = A.NoiseDenoise(heads, torch.zeros(2), torch.zeros(2), 2.0, 0.0, noisy, noisy.flip(-1),
                        torch.full((4,), 2.0), torch.zeros(4), torch.tensor([0, 0, 1, 1]))
    assert "uncertain" in EV.noising_reading(nd, heads[0])
    with pytest.raises(ValueError, match="no 'bogus' values"):
        from mi_tutor.ablation_screen import TaskEvidence
        TaskEvidence("x", ("zero",), torch.zeros(2), torch.zeros(2), {}, {}, {}, {}, []).replacement_values("bogus")


def test_kl_entropy_one_copy_at_a_time_equals_the_whole_stack():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, 2, 11, generator=g)
    kl, ent = A.kl_entropy(logits)
    assert torch.allclose(kl, readout.kl_div(logits[:1], logits[1:]).mean((1, 2)), atol=1e-6)
    e = readout.entropy(logits).mean((1, 2))
    assert torch.allclose(ent, e[1:] - e[0], atol=1e-6)
    assert A.kl_entropy(logits[:1])[0].shape == (0,)


@torch.no_grad()
def test_noising_read_from_the_sweep_equals_running_it(toy, two_tasks):
    from mi_tutor.ablation_screen import task_evidence

    heads = [(0, 1), (1, 2)]
    evid = task_evidence(toy, "toy", two_tasks, k_exact=1, n_random=1, max_rows=16)
    fast = EV.pooled_noising(toy, two_tasks, heads, max_rows=8, evidence=evid)
    ref = EV.pooled_noising(toy, two_tasks, heads, max_rows=8)
    for a in ("necessity", "sufficiency", "noise_pp", "gain_pp", "clean_pp", "corrupt_pp"):
        assert torch.allclose(getattr(fast, a), getattr(ref, a), atol=1e-4), a
    with pytest.raises(ValueError, match="pass the evidence of these tasks"):
        EV.pooled_noising(toy, two_tasks[:1], heads, evidence=evid)


def test_dla_in_chunks_equals_one_pass(toy, two_tasks):
    t = two_tasks[1]
    chunked = readout.direct_logit_attribution(toy, t.tokens, t.answer, t.wrong, max_prompts=3)
    ref = readout.direct_logit_attribution(toy, t.tokens, t.answer, t.wrong)
    assert len(t.tokens) > 3  # so the chunks are really several
    assert torch.allclose(chunked.per_prompt_heads, ref.per_prompt_heads, atol=1e-5)
    for part in ("heads", "attn", "mlp", "heads_io", "heads_s"):
        assert torch.allclose(getattr(chunked, part), getattr(ref, part), atol=1e-5), part
    for part in ("logit_diff", "total", "rest"):
        assert getattr(chunked, part) == pytest.approx(getattr(ref, part), abs=1e-5), part
    with pytest.raises(ValueError, match="max_prompts must be at least 1"):
        readout.direct_logit_attribution(toy, t.tokens, t.answer, t.wrong, max_prompts=0)


def test_task_values_read_in_chunks_equal_the_engine_and_bad_chunks_are_refused(toy, task):
    from mi_tutor.lab.patching import ablation_values

    for kind in ("mean", "resample"):
        ref = ablation_values(toy, task.tokens, kind, reference_tokens=task.counterfactual)
        got = A.task_values(toy, task, kind)
        assert all(torch.allclose(got[l], ref[l], atol=1e-5) for l in ref), kind
    z = hooks.head_outputs(toy, task.tokens, max_prompts=1)
    assert all(torch.allclose(z[l], head_outputs(toy, task.tokens)[l], atol=1e-5) for l in z)
    with pytest.raises(ValueError, match="max_prompts must be at least 1"):
        hooks.head_outputs(toy, task.tokens, max_prompts=0)


def test_noise_level_terms_print_as_nothing_not_as_a_sign():
    # the heads after a last-layer head do not exist: their term is float noise, and must not read as repair
    from mi_tutor import ablation_evidence as ev
    from mi_tutor.lab.scores import Interval

    assert ev._f(-1e-7) == "+0.00" and ev._f(-0.02) == "-0.02"
    assert ev._word(Interval(1e-7, 2e-8, 3e-7)) == "nothing"
    assert ev._word(Interval(0.1, 0.05, 0.2)) == "repairs" and ev._word(Interval(-0.1, -0.2, -0.01)) == "worsens"
    assert ev._word(Interval(0.0, -0.1, 0.1)) == "uncertain"
    assert ev._iv(Interval(-1e-7, -3e-7, 2e-7)) == "+0.00 [+0.00, +0.00]"
