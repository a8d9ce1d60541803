"""Rank statistics and the shared head vocabulary (mi_tutor.lab.scores, mi_tutor.lab.hooks)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_tutor.lab import hooks, scores


def test_ranks_spearman_and_top_k_overlap():
    a = torch.tensor([[3.0, 1.0], [2.0, 0.0]])
    assert scores.ranks(a).tolist() == [[1, 3], [2, 4]]
    assert scores.spearman(a, a) == pytest.approx(1.0) and scores.spearman(a, -a) == pytest.approx(-1.0)
    assert scores.top_k_overlap(a, a, 2) == 1.0 and scores.top_k_overlap(a, -a, 2) == 0.0
    b = torch.tensor([[3.0, 0.0], [1.0, 2.0]])
    assert scores.top_k_overlap(a, b, 2) == 0.5
    table = scores.rank_correlations({"a": a, "b": -a})
    assert table.loc["a", "b"] == pytest.approx(-1.0)
    assert scores.overlaps({"a": a, "b": b}, k=2).loc["a", "b"] == 0.5
    assert set(scores.rank_table({"a": a, "b": b}, top=1).index) == {"L0H0"}


def test_spearman_equals_numpy_on_random_tables():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    rx, ry = x.flatten().argsort().argsort(), y.flatten().argsort().argsort()
    assert scores.spearman(torch.tensor(x), torch.tensor(y)) == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-9)


def test_covariation_is_pearson():
    rng = np.random.default_rng(0)
    per = torch.tensor(rng.normal(size=(10, 2, 3)), dtype=torch.float32)
    y = torch.tensor(rng.normal(size=10), dtype=torch.float32)
    got = scores.covariation(per, y)
    for l in range(2):
        for h in range(3):
            assert float(got[l, h]) == pytest.approx(np.corrcoef(per[:, l, h].numpy(), y.numpy())[0, 1], abs=1e-5)
    with pytest.raises(ValueError):
        scores.covariation(per[:2], y[:2])


def test_bootstrap_is_seeded_and_covers_the_mean():
    x = torch.tensor(np.random.default_rng(1).normal(2.0, 1.0, size=200), dtype=torch.float32)
    ci = scores.bootstrap(x, n=300, seed=0)
    assert ci.low < float(x.mean()) < ci.high and ci.low < 2.0 < ci.high and ci.value == pytest.approx(float(x.mean()))
    assert str(ci) == str(scores.bootstrap(x, n=300, seed=0))  # the same draws on every run
    narrow = scores.bootstrap(x.repeat(16), n=300, seed=0)
    assert narrow.high - narrow.low < ci.high - ci.low  # more prompts, a tighter interval
    with pytest.raises(ValueError, match="at least 2"):
        scores.bootstrap(x[:1])


def test_head_vocabulary():
    assert hooks.hook_name(3, "z") == "blocks.3.attn.hook_z" and hooks.hook_name(0, "resid_pre") == "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match="site"):
        hooks.hook_name(0, "resid")
    s = torch.tensor([[0.1, float("nan")], [0.5, -0.2]])
    assert hooks.top_heads(s, 3) == [(1, 0), (0, 0), (1, 1)]  # NaN never chosen
    assert hooks.top_heads(s, 1, largest=False) == [(1, 1)]
    assert hooks.head_label((9, 6)) == "L9H6"
    assert hooks.parse_heads(hooks.head_label((20, 1)) + ", 25.4", 30, 9) == [(20, 1), (25, 4)]
    with pytest.raises(ValueError, match="could not read"):
        hooks.parse_heads("everything", 30, 9)
    with pytest.raises(ValueError, match="no such head"):
        hooks.parse_heads("L40H1", 30, 9)
    assert hooks.expand_kv(torch.arange(3.0)[None], 9).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]]


def test_gqa_map(smollm2):
    assert hooks.n_kv_heads(smollm2) == 3 and hooks.kv_index(smollm2, 8) == 2 and hooks.kv_index(smollm2, 0) == 0


def test_logit_diff_and_logprob_metric():
    logits = torch.zeros(2, 3, 4)
    logits[0, -1, 1] = 2.0
    logits[1, -1, 2] = -1.0
    assert torch.equal(hooks.logit_diff(logits, torch.tensor([1, 2]), torch.tensor([0, 0])), torch.tensor([2.0, -1.0]))
    lp = hooks.logprob_metric(torch.tensor([1, 2]))(logits)
    assert torch.allclose(lp, logits[:, -1].log_softmax(-1)[[0, 1], [1, 2]])
