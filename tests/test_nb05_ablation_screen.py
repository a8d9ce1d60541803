"""Tests of mi_tutor.ablation_screen (notebook 05's all-heads sweeps on many prompts) on a tiny toy model."""
from __future__ import annotations

import pytest
import torch

from mi_tutor import ablation as A
from mi_tutor import ablation_screen as S
from mi_tutor import ablation_views as views
from mi_tutor.lab import hooks
from mi_tutor.lab.patching import attribution_patch_heads
from mi_tutor.models import ToyConfig, build_toy


@pytest.fixture(scope="module")
def toy():
    return build_toy(ToyConfig(d_model=32, d_head=8, n_layers=3, n_ctx=16, n_heads=4, d_vocab=40, d_mlp=64,
                               normalization_type="LN", seed=3))


def _task(seed: int, batch: int = 4, pos: int = 6) -> A.Task:
    g = torch.Generator().manual_seed(seed)
    return A.Task("toy", torch.randint(1, 40, (batch, pos), generator=g), torch.randint(1, 40, (batch, pos), generator=g),
                  torch.randint(1, 40, (batch,), generator=g), torch.randint(1, 40, (batch,), generator=g))


def test_resample_screen_is_attribution_patching(toy):
    task = _task(0)
    vals = S.task_values_shared(toy, task, A.KINDS)
    est, clean, far = S.attribution_drops(toy, task, vals)
    ref = -attribution_patch_heads(toy, task.tokens, task.counterfactual, task.metric, per_prompt=True)
    assert torch.allclose(est["resample"], ref, atol=1e-5)
    assert torch.allclose(clean, task.metric(toy(task.tokens)), atol=1e-5)
    assert far["zero"].shape == (3, 4) and torch.allclose(far["zero"], torch.ones(3, 4))  # zero moves z by its own size


def test_screen_in_chunks_of_prompts_equals_one_pass(toy):
    task = _task(4, batch=5)
    vals = S.task_values_shared(toy, task, A.KINDS)
    whole, clean, far = S.attribution_drops(toy, task, vals, max_tokens=1000)
    parts, clean2, far2 = S.attribution_drops(toy, task, vals, max_tokens=12)  # 2 prompts of 6 tokens per pass
    assert all(torch.allclose(whole[k], parts[k], atol=1e-6) for k in A.KINDS)
    assert torch.allclose(clean, clean2) and all(torch.allclose(far[k], far2[k]) for k in A.KINDS)
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        S.attribution_drops(toy, task, vals, max_tokens=0)


def test_shared_values_equal_task_values(toy):
    task = _task(1)
    shared = S.task_values_shared(toy, task, A.KINDS)
    for k in A.KINDS:
        ref = A.task_values(toy, task, k)
        assert all(torch.allclose(shared[k][l], ref[l], atol=1e-6) for l in ref)


def test_evidence_is_exact_where_measured_and_the_screen_elsewhere(toy):
    tasks = [_task(2), _task(3, pos=5)]  # two "templates" of different lengths
    ev = S.task_evidence(toy, "toy", tasks, k_exact=2, k_far=1, n_random=3)
    assert len(ev) == 8 and ev.groups.tolist() == [0] * 4 + [1] * 4
    measured = ev.measured_heads("zero")
    assert set(ev.random_heads) <= set(measured) and len(measured) < 12
    for k in A.KINDS:
        assert set(hooks.top_heads(ev.table(k), 2)) <= set(measured)
        for i, t in enumerate(tasks):
            s = A.sweep(toy, t.tokens, A.task_values(toy, t, k), t.metric, measured)
            rows = slice(4 * i, 4 * i + 4)
            for j, h in enumerate(measured):
                assert torch.allclose(ev.exact[k][rows, h[0], h[1]], s.per_prompt[j], atol=1e-4)
        unmeasured = ~ev.measured(k)
        assert torch.equal(ev.per_prompt(k)[:, unmeasured], ev.screen[k][:, unmeasured])
    new = ev.ensure_exact(toy, [h for h in hooks.all_heads(toy) if h not in measured][:1])
    assert len(new) == 1 and bool(ev.measured("mean")[new[0]])
    sw = ev.as_sweep("resample")
    assert torch.allclose(sw.table(3, 4), ev.table("resample"))


def test_rank_and_correlation_intervals_contain_their_values(toy):
    ev = S.task_evidence(toy, "toy", [_task(4, batch=6)], k_exact=3, n_random=3)
    h = hooks.top_heads(ev.table("resample"), 1)[0]
    r = ev.rank("resample", h)
    assert r.value == 1 and r.low <= r.value <= r.high
    rho = ev.spearman("zero", "resample")
    assert -1 <= rho.low <= rho.value <= rho.high <= 1
    assert ev.spearman("mean", "mean").value == pytest.approx(1.0)


def test_split_successor_partitions_by_category():
    class P:  # a stand-in with the fields of ordinal.SuccessorPrompts
        def __init__(self, tokens, corrupt, target, target_index, category, text):
            self.tokens, self.corrupt, self.target = tokens, corrupt, target
            self.target_index, self.category, self.text = target_index, category, text
    n = 10
    cat = torch.tensor([0] * 6 + [1] * 4)
    p = P(torch.arange(n)[:, None].repeat(1, 3), torch.zeros(n, 3, dtype=torch.long), torch.arange(n), torch.arange(n),
          cat, [str(i) for i in range(n)])
    a, b = S.split_successor(p, 2)
    assert a.category.tolist() == [0, 0, 1, 1] and len(b.text) == 6
    assert sorted(a.target.tolist() + b.target.tolist()) == list(range(n))
    with pytest.raises(ValueError):
        S.split_successor(p, 0)


def test_pair_reading_names_one_or_two_negative_heads():
    pairs = A.Pairs([(1, 0), (2, 0), (3, 0)], torch.tensor([0.3, -1.0, -0.8]), torch.tensor(
        [[float("nan"), 0.2, 0.0], [0.2, float("nan"), -0.6], [0.0, -0.6, float("nan")]]))
    lines = views.pair_reading(pairs, torch.arange(1, 13).reshape(4, 3), 12, k=2)
    assert "L2H0 + L3H0" in lines[0] and "two negative heads" in lines[0]
    assert "L1H0 + L2H0" in lines[1] and "L2H0 is a negative head" in lines[1] and "what L1H0 writes" in lines[1]
    tiny = A.Pairs([(1, 0), (2, 0)], torch.tensor([-0.01, -1.0]), torch.tensor([[float("nan"), -0.5], [-0.5, float("nan")]]))
    line = views.pair_reading(tiny, torch.arange(1, 13).reshape(4, 3), 12, k=1)[0]
    assert "L2H0 is a negative head" in line and "two negative" not in line


def test_entropy_reading_branches_on_the_base_rate(toy):
    ev = S.task_evidence(toy, "toy", [_task(5)], k_exact=2, n_random=3)
    ev.entropy_change["zero"] = torch.full((3, 4), -1.0)
    for h in hooks.top_heads(ev.table("zero"), 2):
        ev.entropy_change["zero"][h] = 1.0
    ev.random_heads = [h for h in ev.random_heads if h not in hooks.top_heads(ev.table("zero"), 2)]
    assert "more often than random heads" in views.entropy_reading(ev, "zero", k=2)
    ev.entropy_change["zero"] = torch.full((3, 4), 1.0)
    assert "about the base rate" in views.entropy_reading(ev, "zero", k=2)
