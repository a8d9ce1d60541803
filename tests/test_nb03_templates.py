"""Tests of notebook 03's per-prompt and per-template experiments (mi_tutor.ioi_templates) and the residual readout."""
from __future__ import annotations

import pytest
import torch

from mi_tutor import ioi, ioi_evidence as E, ioi_templates as T
from mi_tutor.lab import hooks, patching


@pytest.fixture(scope="module")
def two(smollm2):
    return [ioi.make_ioi(smollm2, n=4, template=t, seed=5 + t) for t in (0, 2)]


def test_path_patching_per_prompt_averages_to_the_engine(smollm2, two):
    ds = two[0]
    n = smollm2.cfg.n_layers
    senders, receivers = [(n - 8, 0), (n - 10, 2), (n - 12, 4)], [(n - 1, 1), (n - 6, 0)]
    per = T.path_patch_per_prompt(smollm2, ds, senders, receivers, "q")
    want = patching.path_patch(smollm2, ds.tokens, ds.abc_tokens, ds.metric, senders, receivers, "q")
    clean = float(ds.metric(smollm2(ds.tokens)).mean())
    assert per.shape == (len(ds), 3)
    torch.testing.assert_close(per.mean(0), want - clean, atol=1e-4, rtol=0)
    # mixed jobs in one run give the same numbers as separate runs
    vk = [(n - 7, 0, "v"), (n - 1, 1, "k")]
    both = T.path_jobs(smollm2, ds, [(senders[0], receivers), (senders[1], vk)])
    torch.testing.assert_close(both[:, 0], per[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(both[:, 1], T.path_patch_per_prompt(smollm2, ds, [senders[1]], vk)[:, 0], atol=1e-4, rtol=0)
    table = T.path_table_per_prompt(smollm2, ds, receivers, senders + [(n - 1, 1)])  # a receiver is not its own sender
    assert torch.isnan(table[:, n - 1, 1]).all() and torch.allclose(table[:, n - 8, 0], per[:, 0])


def test_path_patching_rejects_a_sender_above_its_receiver(smollm2, two):
    with pytest.raises(ioi.IOIError, match="below its top receiver"):
        T.path_patch_per_prompt(smollm2, two[0], [(20, 0)], [(10, 1)])
    with pytest.raises(ioi.IOIError, match="'q', 'k' or 'v'"):
        T.path_patch_per_prompt(smollm2, two[0], [(2, 0)], [(10, 1, "z")])


def test_validation_on_every_template_equals_direct_ablations(smollm2, two):
    n = smollm2.cfg.n_layers
    classes = {"a": [(n - 1, 0)], "b": [(n - 2, 1), (n - 1, 2)]}
    circuit = [(n - 1, 0), (n - 2, 1), (n - 1, 2), (n - 3, 4)]
    abc = T.abc_heads(smollm2, two)
    means = T.abc_means(smollm2, two, abc)
    ref = patching.ablation_values(smollm2, two[1].tokens, "mean", reference_tokens=two[1].abc_tokens)
    torch.testing.assert_close(means[1][5], ref[5], atol=1e-4, rtol=0)
    prev = [(10, 3)]
    v = T.validate_templates(smollm2, two, circuit, classes, means, abc=abc, prev_heads=prev, n_complete=2)
    every = hooks.all_heads(smollm2)
    outside = [h for h in every if h not in circuit]
    assert v.n_complete == 4 and v.complete_rows.tolist() == [True, True, False, False] * 2
    for t, ds in enumerate(two):
        k, mt = len(ds), means[t]
        run = lambda hs, d=ds, k=k, mt=mt: d.metric(patching.run_patched(
            smollm2, d.tokens, patching.heads_replaced(hs, {l: x[:k] for l, x in mt.items()}))).float()
        rows = v.template == t
        torch.testing.assert_close(v.model[rows], ds.metric(smollm2(ds.tokens)).float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(v.circuit[rows], run(outside), atol=1e-3, rtol=0)
        torch.testing.assert_close(v.empty[rows], run(every), atol=1e-3, rtol=0)
        sub = ds.subset([0, 1])
        sub_run = lambda hs, sub=sub, mt=mt: sub.metric(patching.run_patched(
            smollm2, sub.tokens, patching.heads_replaced(hs, {l: x[:2] for l, x in mt.items()}))).float()
        torch.testing.assert_close(v.without["b"][0][2 * t:2 * t + 2], sub_run(outside + classes["b"]), atol=1e-3, rtol=0)
        torch.testing.assert_close(v.without["b"][1][2 * t:2 * t + 2], sub_run(classes["b"]), atol=1e-3, rtol=0)
    # the previous-token test equals patching the head at S1+1 only (BABA and ABBA batched apart)
    at = E.patch_at(smollm2, [two[0]], "S1+1", prev)[:, 10, 3]
    order = [i for o in ("BABA", "ABBA") for i, x in enumerate(two[0].order) if x == o]
    torch.testing.assert_close(v.prev[(10, 3)][:4], at[torch.tensor(order).argsort()], atol=1e-3, rtol=0)
    assert v.faithfulness == pytest.approx(float(v.circuit.mean() / v.model.mean()))
    lo, hi = v.faithfulness_interval()
    assert lo <= v.faithfulness <= hi and v.faithfulness_t.shape == (2,)
    assert v.gap().shape == (2,)
    with pytest.raises(ioi.IOIError, match="abc_heads"):
        T.validate_templates(smollm2, two, circuit, classes, means, prev_heads=prev)


def test_knockout_on_every_template_matches_the_single_template_knockout(smollm2, two):
    from mi_tutor import ioi_circuit as circuits
    from mi_tutor.lab import readout

    heads = [(smollm2.cfg.n_layers - 1, 1), (smollm2.cfg.n_layers - 7, 0)]
    dlas = [readout.direct_logit_attribution(smollm2, d.tokens, d.io, d.s) for d in two]
    means = T.abc_means(smollm2, two)
    ko = T.knockout_templates(smollm2, two, heads, dlas, means)
    one = circuits.knockout(smollm2, two[1], heads, means=means[1])
    assert float(ko.knocked_t[1]) == pytest.approx(one.ld_after, abs=1e-4)
    assert float(ko.model_t[1]) == pytest.approx(one.ld_before, abs=1e-3)
    assert torch.isnan(ko.gain_t[:, heads[0][0], heads[0][1]]).all()
    g = torch.nan_to_num(one.gain)
    torch.testing.assert_close(torch.nan_to_num(ko.gain_t[1]), g, atol=1e-3, rtol=0)
    assert torch.allclose(ko.repair_t, ko.removed_t - (ko.model_t - ko.knocked_t))
    with pytest.raises(ioi.IOIError, match="at least one head"):
        T.knockout_templates(smollm2, two, [], dlas, means)


def test_class_support_applies_each_criterion_per_template():
    L, H = 3, 2
    z = lambda: torch.zeros(2, L, H)
    t = {k: z() for k in ("dla", "dla_io", "dla_s", "attn_io", "attn_s2", "induction", "duplicate", "prev_token")}
    t["pp_q"], t["pp_v"], t["prev_patch"] = z(), z(), torch.full((2, L, H), float("nan"))
    t["dla"][:, 2, 0] = torch.tensor([0.5, 0.05])     # name mover on template 0 only (threshold 0.1 x 2 = 0.2)
    t["dla_io"][:, 2, 0] = torch.tensor([0.6, 0.05])
    t["pp_q"][:, 1, 1] = torch.tensor([-0.2, -0.05])  # S-inhibition on template 0 only (threshold -0.1)
    t["pp_v"][:, 0, 1] = -0.5                           # induction needs induction > duplicate attention
    t["induction"][:, 0, 1] = torch.tensor([0.4, 0.1])
    t["duplicate"][:, 0, 1] = torch.tensor([0.1, 0.4])
    t["prev_token"][:, 0, 0] = 0.9                      # previous token: attention alone is not enough (patch unmeasured)
    classes = {"name mover": [(2, 0)], "S-inhibition": [(1, 1)], "induction": [(0, 1)], "previous token": [(0, 0)],
               "backup name mover": [(2, 1)]}
    sup = T.class_support(classes, 2.0, t)
    assert sup["name mover"][(2, 0)].tolist() == [True, False]
    assert sup["S-inhibition"][(1, 1)].tolist() == [True, False]
    assert sup["induction"][(0, 1)].tolist() == [True, False]
    assert sup["previous token"][(0, 0)].tolist() == [False, False]
    assert "backup name mover" not in sup
    assert T.support_counts(sup) == {(2, 0): 1, (1, 1): 1, (0, 1): 1, (0, 0): 0}
    text = T.support_table(sup)
    assert "L2H0" in text and "1/2" in text


def test_residual_cells_split_the_change_into_io_and_s_and_layer0_is_a_token_swap(smollm2, two):
    ds = two[0].subset([0])
    io_pos = int(ds.pos["IO"][0])
    (d_io, d_s), = E.resid_cells(smollm2, ds, [(0, io_pos)])
    clean = float(ds.metric(smollm2(ds.tokens)).mean())
    swapped = E.token_swapped_ld(smollm2, ds, io_pos)
    table = patching.patch_residual(smollm2, ds.tokens, ds.abc_tokens, ds.metric, [0], [io_pos])
    assert d_io - d_s == pytest.approx(float(table[0, io_pos]) - clean, abs=1e-3)
    assert swapped - clean == pytest.approx(d_io - d_s, abs=1e-3)
    assert d_io < 0  # the IO name is gone from the prompt


def test_pooled_projection_and_both_copy_scores_match_the_per_head_versions(smollm2, two):
    heads = [(smollm2.cfg.n_layers - 1, 1), (20, 0)]
    pooled = E.pool(smollm2, two)
    proj = E.ov_projection(smollm2, two[1], heads)
    rows = pooled.template == 1
    for l, h in heads:
        a, p = proj[(l, h)]
        torch.testing.assert_close(pooled.attn_io_pp[rows, l, h], a, atol=1e-5, rtol=0)
        torch.testing.assert_close(pooled.proj_pp[rows, l, h], p, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pooled.ld[rows], two[1].metric(smollm2(two[1].tokens)).float(), atol=1e-4, rtol=0)
    assert pooled.dla_io_t.shape == (2, smollm2.cfg.n_layers, smollm2.cfg.n_heads) and len(pooled.dlas) == 2
    ids = E.name_ids(smollm2)[:15]
    pos, neg = E.copy_scores_both(smollm2, ids, k=3)
    assert torch.equal(pos, E.copy_scores(smollm2, ids, k=3))
    assert torch.equal(neg, E.copy_scores(smollm2, ids, k=3, negative=True))
