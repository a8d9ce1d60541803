"""Tests of mi_tutor.ordinal and mi_tutor.successor (notebook 04)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_tutor import ordinal as O
from mi_tutor import successor as S
from mi_tutor.lab import hooks, scores
from mi_tutor.lab.patching import Patch, ablation_values, patch_heads, run_patched


@pytest.fixture(scope="module")
def task():
    return S.ToyTask()


@pytest.fixture(scope="module")
def toy(task):
    """An UNTRAINED toy model: enough to test that the methods compute what they claim."""
    return S.toy_model(task, seed=3)


# ---- ordinal dataset ------------------------------------------------------------------------

def test_ordinal_tokens_smollm2_filters_to_single_tokens(smollm2):
    ot = O.ordinal_tokens(smollm2)
    for i, form in zip(ot.ids.tolist(), ot.forms):
        assert smollm2.to_tokens(form, prepend_bos=False)[0].tolist() == [i]
    assert "days" in ot.category_names and "months" in ot.category_names
    # SmolLM2 splits multi-digit numbers into digits: "10".."20" must be dropped, and 9 has no successor
    labels = [ot.labels[i] for i in ot.in_category("numbers")]
    assert labels == [str(d) for d in range(10)]
    nine = ot.labels.index("9")
    assert int(ot.successor[nine]) == -1
    monday = ot.labels.index("Monday")
    assert ot.labels[int(ot.successor[monday])] == "Tuesday"
    assert "dropped" in ot.report()
    assert 0 < ot.chance() < 0.5


def test_gap_in_a_category_breaks_succession():
    class FakeModel:  # "C" is not a single token
        def to_tokens(self, s, prepend_bos=False):
            vocab = {" A": 5, " B": 6, " D": 8, " E": 9, "": None}
            return torch.tensor([[vocab[s]]]) if vocab.get(s) is not None else torch.tensor([[1, 2]])
    ot = O.ordinal_tokens(FakeModel(), {"letters": ["A", "B", "C", "D", "E"]})
    assert ot.labels == ["A", "B", "D", "E"]
    assert ot.successor.tolist() == [1, -1, 3, -1]
    assert ot.dropped == {"letters": ["C"]}


def test_successor_prompts_are_aligned_and_corruptions_have_no_succession(smollm2):
    ot = O.ordinal_tokens(smollm2)
    pr = O.successor_prompts(smollm2, ot, n_items=2, per_category=3)
    assert pr.tokens.shape == pr.corrupt.shape and pr.tokens.shape[1] == 5
    comma = smollm2.to_single_token(",")
    assert (pr.tokens[:, 2::2] == comma).all() and (pr.corrupt[:, 2::2] == comma).all()
    pos = {int(t): i for i, t in enumerate(ot.ids)}
    for row, bad, tgt in zip(pr.tokens, pr.corrupt, pr.target_index):
        a, b = pos[int(row[1])], pos[int(row[3])]
        assert int(ot.successor[a]) == b and int(ot.successor[b]) == int(tgt)
        x, y = pos[int(bad[1])], pos[int(bad[3])]
        assert int(ot.successor[x]) != y and int(ot.successor[y]) != int(tgt)
    text = smollm2.to_tokens(pr.text[0])[0]
    assert text.tolist() == pr.tokens[0].tolist(), "token-built prompts must match their text"


def test_toy_task_mask_marks_real_successors(task):
    X, M = task.sample(50, seed=0)
    assert M.any()
    succ_tok = {int(task.otok.ids[i]): int(task.otok.ids[j]) for i, j in enumerate(task.otok.successor.tolist()) if j >= 0}
    b, p = torch.nonzero(M[:, :-1], as_tuple=True)
    for bi, pi in zip(b.tolist(), p.tolist()):
        assert X[bi, pi] == 1  # a comma
        assert succ_tok[int(X[bi, pi - 1])] == int(X[bi, pi + 1])


# ---- method 1: weights ------------------------------------------------------------------------

def test_successor_score_by_hand():
    cat = torch.tensor([0, 0, 0, 1, 1])
    succ = torch.tensor([1, 2, -1, 4, -1])
    logits = torch.zeros(5, 5)
    logits[0, 1] = 1     # right
    logits[1, 0] = 1     # wrong
    logits[3, 4] = 1     # right
    logits[3, 0] = 5     # other category: ignored
    assert S.successor_score(logits, cat, succ) == pytest.approx(2 / 3)


# ---- method 2: ICA --------------------------------------------------------------------------

def test_ica_finds_a_planted_succession_component(task):
    ot = task.otok
    n = len(ot)
    rng = np.random.default_rng(0)
    T = S.templates(ot)
    L, H = 3, 4
    eff = torch.tensor(rng.normal(size=(L, H, n, n)) * 0.3, dtype=torch.float32)
    planted = [(2, 1), (1, 3)]
    for l, h in planted:
        eff[l, h] += 4 * torch.tensor(T["succession"], dtype=torch.float32)
    eff[0, 0] += 4 * torch.eye(n)
    ica = S.run_ica(eff, ot, n_components=4, seed=0)
    assert "succession" in ica.labels
    top2 = set(hooks.top_heads(ica.scores_for("succession"), 2))
    assert top2 == set(planted)


# ---- method 3 and 4 ---------------------------------------------------------------------------

def test_ablation_effects_are_the_drop_under_mean_ablation(toy, task):
    pr = task.prompts()
    fast = S.ablation_effects(toy, pr)
    metric = hooks.logprob_metric(pr.target)
    base = metric(toy(pr.tokens)).mean()
    mean = ablation_values(toy, pr.tokens, "mean", pr.tokens)
    for head in [(0, 0), (1, 3)]:
        with torch.no_grad():
            one = base - metric(run_patched(toy, pr.tokens, [Patch(*head, mean[head[0]])])).mean()
        assert torch.allclose(fast[head], one, atol=1e-4)


def test_ablation_effects_on_gpt2_architecture(gpt2_arch):
    toks = torch.randint(100, 5000, (4, 6), generator=torch.Generator().manual_seed(0))
    pr = O.SuccessorPrompts(toks, toks.flip(0), torch.randint(100, 5000, (4,)), torch.zeros(4, dtype=torch.long),
                            torch.zeros(4, dtype=torch.long), ["x"] * 4)
    fast = S.ablation_effects(gpt2_arch, pr)
    metric = hooks.logprob_metric(pr.target)
    mean = ablation_values(gpt2_arch, toks, "mean", toks)
    with torch.no_grad():
        base = metric(gpt2_arch(toks)).mean()
        for head in [(0, 2), (1, 1)]:
            one = base - metric(run_patched(gpt2_arch, toks, [Patch(*head, mean[head[0]])])).mean()
            assert torch.allclose(fast[head], one, atol=1e-3)


def test_attribution_tracks_real_patching_on_a_toy(toy, task):
    pr = task.prompts()
    est = S.attribution_effects(toy, pr)
    metric = hooks.logprob_metric(pr.target)
    base = metric(toy(pr.tokens)).mean()
    real = base - patch_heads(toy, pr.tokens, pr.corrupt, metric)
    assert scores.spearman(est, real) > 0.5


def test_mean_ablate_head_touches_one_head_only():
    z = torch.randn(2, 3, 4, 5)
    m = torch.randn(3, 4, 5)
    out = S.mean_ablate_head(z, 2, m)
    assert torch.equal(out[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]])
    assert torch.equal(out[:, :, 2], m[None, :, 2].expand(2, 3, 5))
    assert not torch.equal(z[:, :, 2], out[:, :, 2])


# ---- comparison ---------------------------------------------------------------------------------

def test_disagreements_between_methods():
    a = torch.tensor([[3.0, 2.0], [1.0, 0.0]])
    scores = {"weights": a, "ICA": a, "ablation": -a, "attribution": a}
    hl = S.high_ablation_low_weight(scores, top=1, low=2)
    assert hl == [(1, 1)]
    rows = S.disagreements(scores, top=1, low=2)
    assert any(r["head"] == "L1H1" and r["high in"] == "ablation" and r["rank (low)"] == 4 for r in rows)
    assert all(r["rank (high)"] <= 1 and r["rank (low)"] > 2 for r in rows)


def test_path_patch_total_equals_ablation(toy, task):
    pr = task.prompts()
    abl = S.ablation_effects(toy, pr)
    eff = S.path_patch_effects(toy, pr, sender=(0, 1), receivers=[(1, 0), (1, 2)])
    assert eff["total"] == pytest.approx(float(abl[0, 1]), abs=1e-4)
    assert set(eff) >= {"via receivers' queries", "via receivers' keys+values", "via later MLPs", "direct"}


def test_recovery():
    s = torch.tensor([[0.0, 5.0], [4.0, 1.0]])
    assert S.recovery(s, [(0, 1), (1, 0)]) == 1.0
    assert S.recovery(s, [(0, 1), (1, 1)]) == 0.5


@pytest.mark.slow
def test_trained_toy_localises_succession_and_methods_see_it(task):
    model, hist, _ = S.train_toy(task, steps=400, progress=False, seed=0)
    assert hist.last("successor_acc") > 0.95
    pr = task.prompts()
    truth, rates = S.minimal_flip_set(model, pr, threshold=0.8)
    assert rates[-1] >= 0.8
    assert all(l == model.cfg.n_layers - 1 for l, _ in truth), f"succession should live in the last layer: {truth}"
    assert S.recovery(S.ablation_effects(model, pr), truth) >= 2 / 3


def test_path_patch_on_a_gqa_model(smollm2):
    ot = O.ordinal_tokens(smollm2)
    pr = O.successor_prompts(smollm2, ot, n_items=2, per_category=1)
    sender = (2, 4)
    eff = S.path_patch_effects(smollm2, pr, sender, receivers=[(5, 7), (6, 1)])
    metric = hooks.logprob_metric(pr.target)
    vals = ablation_values(smollm2, pr.tokens, "mean", reference_tokens=pr.tokens, layers=[2])
    with torch.no_grad():
        ablated = run_patched(smollm2, pr.tokens, [Patch(*sender, vals[2])])
    total = float(metric(smollm2(pr.tokens)).mean() - metric(ablated).mean())
    assert eff["total"] == pytest.approx(total, abs=1e-4)
    assert all(np.isfinite(v) for v in eff.values())
