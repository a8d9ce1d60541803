"""Tests of mi_tutor.ordinal and mi_tutor.successor (notebook 04)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_tutor import ordinal as O
from mi_tutor import successor as S
from mi_tutor.lab import hooks, scores
from mi_tutor.lab.patching import Patch, ablation_values, patch_heads, patch_hooks, run_patched


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
    kinds = set()
    for bi, pi in zip(b.tolist(), p.tolist()):
        row = X[bi].tolist()
        if row[pi] == 1:  # a list comma: the item before it
            item = row[pi - 1]
            kinds.add("list")
        else:  # an "after" query: the item right after the last marker before "="
            assert row[pi] == task.query
            marker = max(i for i in range(pi) if row[i] == task.after)
            assert pi - marker in (2, 4, 6), "the marked item sits 2, 4 or 6 tokens before '='"
            item = row[marker + 1]
            kinds.add("query")
        assert succ_tok[item] == row[pi + 1]
    assert kinds == {"list", "query"}
    assert task.vocab[task.after] == "after" and task.vocab[task.query] == "="


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


def test_recovery():
    s = torch.tensor([[0.0, 5.0], [4.0, 1.0]])
    assert S.recovery(s, [(0, 1), (1, 0)]) == 1.0
    assert S.recovery(s, [(0, 1), (1, 1)]) == 0.5


@pytest.mark.slow
def test_trained_toy_plants_a_router_that_weights_miss_and_ablation_finds(task):
    from mi_tutor import successor_toy as T

    model, hist, test = S.train_toy(task, steps=400, progress=False, seed=0)
    assert min(S.toy_accuracies(model, task, *test).values()) > 0.95
    norms = S.head_group_norms(model, 0)
    assert int((norms > 0.1 * norms.max()).sum()) == 1, f"the penalty should leave one live layer-0 head: {norms}"
    pr = T.marker_prompts(task, 48)
    carriers, rates = S.minimal_flip_set(model, pr, threshold=0.8)
    assert rates[-1] >= 0.8 and all(l == 1 for l, _ in carriers), carriers
    routers, _ = T.minimal_routing_set(model, pr)
    assert routers == [(0, int(norms.argmax()))], routers
    m = S.four_methods(model, task.otok, pr, n_components=6)
    r = {k: scores.ranks(v)[routers[0]] for k, v in m.scores.items()}
    assert r["ablation"] == 1 and r["weights"] > len(carriers) + 1, r
    routes = T.marker_routes(model, pr, routers[0])["answer moves to the twin's"]
    assert routes["only later heads' keys"] >= 0.8 and routes["only later heads' queries"] < 0.2, routes


# ---- successor_toy: marker prompts, routing truth, routes ------------------------------------

from mi_tutor import successor_toy as T  # noqa: E402


def test_marker_prompts_and_their_twins(task):
    pr = T.marker_prompts(task, n=12, seed=1)
    ot = task.otok
    pos = {int(t): i for i, t in enumerate(ot.ids)}
    assert pr.tokens.shape == pr.corrupt.shape == (12, 8)
    assert (pr.tokens[:, -1] == task.query).all() and (pr.tokens[:, 0] == 0).all()
    for row, twin, tgt, ttgt, mp in zip(pr.tokens, pr.corrupt, pr.target, pr.twin_target, pr.marked_pos):
        assert int((row == task.after).sum()) == 1 and int((twin == task.after).sum()) == 1
        assert torch.equal(row[2::2], twin[2::2]), "the twin keeps the items"
        assert int(row[mp - 1]) == task.after and int(twin[mp - 1]) != task.after
        assert int(ot.ids[ot.successor[pos[int(row[mp])]]]) == int(tgt) != int(ttgt)
    assert sorted(pr.marked_pos.tolist()) == sorted([2, 4, 6] * 4), "every slot is marked equally often"
    with pytest.raises(ValueError, match="at least 1"):
        T.marker_prompts(task, n=0)


def test_routing_flip_rates_patch_every_position_but_the_last(toy, task):
    pr = T.marker_prompts(task, n=6)
    sets = [[(0, 1)], [(0, 0), (1, 2)]]
    got = T.routing_flip_rates(toy, pr, sets)
    src, own = hooks.head_outputs(toy, pr.corrupt), hooks.head_outputs(toy, pr.tokens)
    for hs, rate in zip(sets, got):
        patches = [Patch(l, h, torch.cat([src[l][:, :-1], own[l][:, -1:]], 1)) for l, h in hs]
        want = (run_patched(toy, pr.tokens, patches)[:, -1].argmax(-1) == pr.twin_target).float().mean()
        assert rate == pytest.approx(float(want))
    # at '=' the heads keep their own values: the last layer's heads then change nothing
    assert T.routing_flip_rates(toy, pr, [[(1, h) for h in range(4)]])[0] == pytest.approx(
        float((toy(pr.tokens)[:, -1].argmax(-1) == pr.twin_target).float().mean()))


def test_ablation_break_rates_count_changed_answers(toy, task):
    pr = T.marker_prompts(task, n=6)
    got = T.ablation_break_rates(toy, pr)
    mean = ablation_values(toy, pr.tokens, "mean", pr.tokens)
    for head in [(0, 2), (1, 1)]:
        lg = run_patched(toy, pr.tokens, [Patch(*head, mean[head[0]])])
        assert float(got[head]) == pytest.approx(float((lg[:, -1].argmax(-1) != pr.target).float().mean()))


def test_marker_routes_and_composition_table_shapes_and_bad_senders(toy, task):
    pr = T.marker_prompts(task, n=6)
    routes = T.marker_routes(toy, pr, (0, 1))
    assert list(routes.index) == ["total (sender patched everywhere)", "only later heads' keys",
                                  "only later heads' queries", "only later heads' values"]
    assert ((routes.iloc[:, 0] >= 0) & (routes.iloc[:, 0] <= 1)).all()
    comp, base = T.composition_table(toy, (0, 1))
    assert comp.shape == (4, 3) and 0 < base < 1 and ((comp.values >= 0) & (comp.values <= 1)).all()
    for fn in (T.marker_routes, T.composition_table):
        args = (toy, pr, (1, 0)) if fn is T.marker_routes else (toy, (1, 0))
        with pytest.raises(ValueError, match="last layer"):
            fn(*args)


def test_minimal_routing_set_is_empty_when_nothing_routes(toy, task):
    pr = T.marker_prompts(task, n=6)
    pr.twin_target = torch.full_like(pr.twin_target, -1)  # an answer no head can move the model to
    heads, rates = T.minimal_routing_set(toy, pr)
    assert heads == [] and rates and rates[-1] < 0.8


def test_recovery_sentences_read_the_numbers():
    lines = T.recovery_sentences({"weights": 0.75, "ablation": 1.0, "ICA": 0.5}, 0.5,
                                 {"weights": [8], "ablation": [1], "ICA": [7]}, 4)
    assert "weights, ablation" in lines[0] and "at or below it: ICA" in lines[0]
    assert "top 4: ablation" in lines[1] and "missed by: weights, ICA" in lines[1]
    assert lines[2] == "highest recovery 1.00: ablation"
    tie = T.recovery_sentences({"a": 1.0, "b": 1.0}, 0.5, {"a": [], "b": []}, 2)
    assert len(tie) == 2 and tie[-1].endswith("(a tie)")


def test_train_toy_rejects_a_negative_penalty(task):
    with pytest.raises(ValueError, match="sparsity"):
        S.train_toy(task, steps=1, sparsity=-1.0, progress=False)


# ---- successor_sources: recipes, nulls, sources of disagreement, routes ----------------------------

from mi_tutor import successor_sources as SS  # noqa: E402
from mi_tutor.lab import readout  # noqa: E402


def test_effective_ov_head_equals_the_library_table_on_smollm2(smollm2):
    ot = O.ordinal_tokens(smollm2)
    resid = readout.resid_after_layer0(smollm2, ot.ids)
    table = readout.effective_ov(smollm2, ot.ids, resid)
    L, h = 7, 4
    kv = hooks.kv_index(smollm2, h)
    norm_in, norm_f = readout.norm_of(smollm2, smollm2.blocks[L].ln1), readout.norm_of(smollm2)
    assert norm_in.kind and not norm_in.centred, "SmolLM2 uses RMSNorm"
    w_in = norm_in.weight
    got = SS.effective_ov_head(resid, w_in, smollm2.W_V[L, kv].detach(), smollm2.W_O[L, h].detach(), norm_f.weight,
                               smollm2.W_U[:, ot.ids].detach())
    assert torch.allclose(got, table[L, h], rtol=1e-3, atol=1e-3)


def test_mlp0_recipe_is_the_residual_with_layer0_attention_removed(smollm2):
    ot = O.ordinal_tokens(smollm2)
    ids = ot.ids[:6]
    got = SS.effective_embeddings(smollm2, ids, "MLP0 of the embedding")
    zeros = torch.zeros_like(hooks.head_outputs(smollm2, ids[:, None], [0])[0])
    name = hooks.hook_name(0, "resid_post")
    store = {}
    fwd = patch_hooks(smollm2, [Patch(0, h, zeros) for h in range(smollm2.cfg.n_heads)])
    fwd.append((name, lambda act, hook: store.setdefault("x", act.detach().clone())))
    with torch.no_grad():
        smollm2.run_with_hooks(ids[:, None], fwd_hooks=fwd)
    assert torch.allclose(got, store["x"][:, 0], atol=1e-4)  # SmolLM2 has no attention bias: zero z = zero attn_out
    pos0 = SS.effective_embeddings(smollm2, ids, "position 0, no BOS")
    after = SS.effective_embeddings(smollm2, ids, "after BOS")
    assert not torch.allclose(pos0, after) and not torch.allclose(pos0, got)
    with pytest.raises(ValueError, match="recipe must be one of"):
        SS.effective_embeddings(smollm2, ids, "mlp0")


def test_shuffle_within_category_keeps_blocks_and_diagonal_but_not_succession(task):
    ot = task.otok
    n = len(ot)
    t = S.templates(ot)
    base = torch.tensor(t["succession"] * 3 + t["category"] + 2 * t["copying"], dtype=torch.float32)
    eff = base.expand(2, 3, n, n).clone()
    sh = SS.shuffle_within_category(eff, ot, seed=0)
    cat, diag = torch.tensor(t["category"]).bool(), torch.eye(n, dtype=torch.bool)
    for l in range(2):
        for h in range(3):
            x = sh[l, h]
            assert torch.equal(torch.diagonal(x), torch.diagonal(base))
            assert (x[~cat] == 0).all() and torch.equal(x.sum(), base.sum())
    assert not torch.equal(sh[0, 0], sh[0, 1]), "each head gets its own permutation"
    assert (sh[:, :, ~diag] != base[~diag]).any()


def test_per_prompt_effects_average_to_the_batched_sweeps(toy, task):
    pr = task.prompts()
    eff = SS.per_prompt_effects(toy, pr)
    assert eff["mean ablation (exact)"].shape == (len(pr), 2, 4)
    assert torch.allclose(eff["mean ablation (exact)"].mean(0), S.ablation_effects(toy, pr), atol=1e-4)
    assert torch.allclose(eff["attribution (corrupt)"].mean(0), S.attribution_effects(toy, pr), atol=1e-4)
    metric = hooks.logprob_metric(pr.target)
    exact = metric(toy(pr.tokens)).mean() - patch_heads(toy, pr.tokens, pr.corrupt, metric)
    assert torch.allclose(eff["corrupt patching (exact)"].mean(0), exact, atol=1e-4)
    table = SS.disagreement_sources({k: eff["mean ablation (exact)"] for k in eff}, k=3, n_boot=20)
    assert table.loc["baseline: mean vs corrupt", "Spearman"] == 1.0
    assert table.loc["both: mean ablation vs attribution", "top-3 overlap"] == 1.0


def test_attention_to_item_reads_final_query_to_last_item(toy, task):
    pr = task.prompts()
    att = SS.attention_to_item(toy, pr)
    pats = readout.attention_patterns(toy, pr.tokens)
    assert torch.allclose(att[1, 2], pats[1, :, 2, -1, -2].mean())


def test_sender_routes_total_is_the_ablation_and_last_layer_has_no_head_routes(toy, task):
    pr = task.prompts()
    abl = S.ablation_effects(toy, pr)
    r0 = SS.sender_routes(toy, pr, (0, 1))
    assert r0["total"] == pytest.approx(float(abl[0, 1]), abs=1e-4)
    r1 = SS.sender_routes(toy, pr, (1, 2))
    assert r1["total"] == pytest.approx(float(abl[1, 2]), abs=1e-4)
    assert r1["all later heads' queries"] == 0 and r1["all later heads' keys/values"] == 0
    # a last-layer sender reaches only its own MLP and the final residual: the routes add up to near the total
    assert all(np.isfinite(v) for v in r0.values())
    assert r1["sum of routes"] == pytest.approx(r1["direct (final residual)"] + r1["all MLPs from the sender's layer on"])


def test_sender_routes_on_gqa_smollm2(smollm2):
    ot = O.ordinal_tokens(smollm2)
    pr = O.successor_prompts(smollm2, ot, n_items=2, per_category=1)
    r = SS.sender_routes(smollm2, pr, (1, 8))
    metric = hooks.logprob_metric(pr.target)
    vals = ablation_values(smollm2, pr.tokens, "mean", reference_tokens=pr.tokens, layers=[1])
    with torch.no_grad():
        total = float(metric(smollm2(pr.tokens)).mean() - metric(run_patched(smollm2, pr.tokens, [Patch(1, 8, vals[1])])).mean())
    assert r["total"] == pytest.approx(total, abs=1e-4)
    assert all(np.isfinite(v) for v in r.values())


# ---- decision rules and intervals read by the notebook's prose --------------------------------

def test_succession_component_needs_to_beat_the_null_and_match_succession_best():
    corr = np.array([[0.12, 0.09, 0.38],    # beats the null on succession, but a category component
                     [0.05, 0.60, 0.10]])
    k, p, why = SS.succession_component(corr, np.array([0.08, 0.10, 0.09]))
    assert k is None and "category" in why and p == pytest.approx(1 / 4)
    corr[1] = [0.30, 0.10, 0.20]            # a clean succession component
    k, p, why = SS.succession_component(corr, np.array([0.08, 0.10, 0.31]))
    assert k is None and "no component" in why and p == pytest.approx(2 / 4)
    k, _, _ = SS.succession_component(corr, np.array([0.08, 0.10, 0.09]))
    assert k == 1
    with pytest.raises(ValueError, match="at least one run"):
        SS.succession_component(corr, np.array([]))


def test_disagreement_verdict_branches_on_the_intervals():
    import pandas as pd

    table = pd.DataFrame({"Spearman": [0.26, 0.87, 0.18, 0.88, 0.67],
                          "Spearman 95%": ["[0.12, 0.49]", "[0.82, 0.94]", "[0.07, 0.48]", "[0.75, 0.96]", "[0.41, 0.84]"],
                          "top-10 overlap": [0.6, 0.7, 0.4, 0.79, 0.67],
                          "top-10 95%": ["[0.30, 0.70]", "[0.50, 0.90]", "[0.30, 0.60]", "[0.50, 0.90]", "[0.50, 0.90]"]},
                         index=["baseline: mean vs corrupt", "linearisation: exact vs attribution",
                                "both: mean ablation vs attribution", "prompt noise: mean ablation", "prompt noise: attribution"])
    sp, ov, noise = SS.disagreement_verdict(table, k=10)
    assert "the baseline changes the ranking more, and the intervals do not overlap" in sp
    assert "intervals overlap" in ov and "cannot tell" in ov
    assert "no lower than" in noise and "within prompt noise" in noise


def test_route_table_means_and_intervals(toy, task):
    pr = task.prompts()
    pp = SS.sender_routes(toy, pr, (0, 1), per_prompt=True)
    means = SS.sender_routes(toy, pr, (0, 1))
    assert all(v.shape == (len(pr),) for v in pp.values())
    assert all(float(pp[k].mean()) == pytest.approx(means[k], abs=1e-6) for k in means)
    t = SS.route_table(pp, n_boot=50)
    assert (t["low"] <= t["drop in log p(successor)"] + 1e-3).all() and (t["drop in log p(successor)"] <= t["high"] + 1e-3).all()
    assert t.loc["total", "share of total"] == pytest.approx(1.0)


def test_best_smaller_set_tries_every_set_one_head_smaller(toy, task):
    pr = T.marker_prompts(task, n=12, seed=1)
    assert T.best_smaller_set(toy, pr, [(1, 0)]) == ([], 0.0)
    best, rate = T.best_smaller_set(toy, pr, [(1, 0), (1, 1)])
    singles = S.flip_rates_of_sets(toy, pr, [[(l, h)] for l in range(2) for h in range(4)])
    assert len(best) == 1 and rate == pytest.approx(max(singles))
    _, r_route = T.best_smaller_set(toy, pr, [(0, 0), (0, 1)], routing=True)
    assert r_route == pytest.approx(max(T.routing_flip_rates(toy, pr, [[(l, h)] for l in range(2) for h in range(4)])))
    with pytest.raises(ValueError, match="chosen is empty"):
        T.best_smaller_set(toy, pr, [])
