"""Tests of the IOI dataset (mi_tutor.ioi) and notebook 03's circuit lesson (mi_tutor.ioi_circuit).

The instruments it uses (patching, path patching, DLA) are tested in tests/test_lab_*.py.
"""
from __future__ import annotations

import pytest
import torch

from mi_tutor import ioi, ioi_circuit as circuits
from mi_tutor.lab import hooks, readout


# --------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------


def test_dataset_is_aligned_seeded_and_has_abc_counterfactuals(smollm2):
    ds = ioi.make_ioi(smollm2, n=6, template=0, seed=3)
    again = ioi.make_ioi(smollm2, n=6, template=0, seed=3)
    other = ioi.make_ioi(smollm2, n=6, template=0, seed=4)
    assert ds.prompts == again.prompts and ds.prompts != other.prompts
    assert ds.tokens.shape == ds.abc_tokens.shape and ds.tokens.shape[0] == 6
    assert ds.order == ["BABA", "ABBA"] * 3
    for i in range(6):
        row = ds.tokens[i]
        assert row[ds.pos["IO"][i]] == ds.io[i]
        assert row[ds.pos["S1"][i]] == ds.s[i] == row[ds.pos["S2"][i]]
        assert (ds.pos["S1"][i] < ds.pos["IO"][i]) == (ds.order[i] == "BABA")
        abc_names = set(ds.names["ABC"][i])
        assert len(abc_names) == 3 and not abc_names & {ds.names["IO"][i], ds.names["S"][i]}
        # the ABC prompt differs from the IOI prompt only at the three name positions
        diff = (ds.tokens[i] != ds.abc_tokens[i]).nonzero().flatten().tolist()
        assert set(diff) <= {int(ds.pos[k][i]) for k in ("IO", "S1", "S2")}


def test_every_template_builds(smollm2):
    for t in range(len(ioi.TEMPLATES)):
        ds = ioi.make_ioi(smollm2, n=2, template=t, seed=0)
        assert ds.tokens.shape[1] == ds.abc_tokens.shape[1]


@pytest.mark.parametrize("template, words", [
    ("[S] and [IO] went out. [S] waved at", "space before"),
    ("Then, [IO] and [S] went home. [IO] thanked", "BABA template"),
    ("Then, [S] and [IO] met [NAME]. [S] waved at", "unknown placeholder"),
    ("Then, [S] and [IO] met. [S] waved at ", "end the template"),
])
def test_bad_templates_are_explained(template, words):
    with pytest.raises(ioi.IOIError, match=words):
        ioi.check_template(template)


def test_multi_token_names_are_filtered_with_a_clear_error(smollm2):
    kept = ioi.single_token_words(smollm2, ["Mary", "Bartholomew", "John"])
    assert kept == ["Mary", "John"]
    with pytest.raises(ioi.IOIError, match="single tokens"):
        ioi.make_ioi(smollm2, n=2, names=["Mary", "John", "Bartholomew", "Maximiliana"])


def test_metric_and_behaviour_agree(smollm2):
    ds = ioi.make_ioi(smollm2, n=4, seed=0)
    logits = smollm2(ds.tokens)
    beh = ioi.behaviour(smollm2, ds, logits)
    ld = hooks.logit_diff(logits, ds.io, ds.s)
    assert torch.allclose(beh.logit_diffs, ld)
    assert beh.frac_io_beats_s == float((ld > 0).float().mean())
    assert "paper (GPT-2 small)" in beh.table("m") and "3.56" in beh.table("m")
    # the repeated-batch form used by the engine
    assert torch.allclose(ds.metric(logits.repeat(2, 1, 1)), ld.repeat(2))


@pytest.mark.parametrize("text, words", [
    ("When Anna and Peter went to the park, Lucy gave a ball to", "3 different names"),
    ("When Anna went to the park, Anna gave a ball to", "two\\s+people|1 name"),
    ("When Anna and Peter went to the park, Peter gave a ball to Anna", "stop right before the answer"),
    ("When Anna and Peter went to the park, they gave a ball to", "mentioned twice"),
    ("", "type a sentence"),
])
def test_sentence_validation_explains_what_is_wrong(smollm2, text, words):
    with pytest.raises(ioi.IOIError, match=words):
        ioi.parse_ioi_sentence(smollm2, text)


def test_sentence_parsing_finds_io_and_s(smollm2):
    p = ioi.parse_ioi_sentence(smollm2, "When Anna and Peter went to the park, Peter gave a ball to")
    assert (p.io_name, p.s_name) == ("Anna", "Peter")
    assert p.tokens[0, p.pos["IO"]] == p.io and p.tokens[0, p.pos["S2"]] == p.s


def _pair(model, n=2):
    return ioi.make_ioi(model, n=n, seed=1)


# --------------------------------------------------------------------------------------
# DLA, classification, validation
# --------------------------------------------------------------------------------------


def test_classification_follows_the_criteria():
    L, H = 6, 4
    z = torch.zeros(L, H)
    dla, dla_io, dla_s = z.clone(), z.clone(), z.clone()
    dla[5, 1], dla_io[5, 1], dla_s[5, 1] = 1.0, 0.9, -0.1      # raises IO: name mover
    dla[5, 2], dla_io[5, 2], dla_s[5, 2] = 0.8, 0.1, -0.7      # lowers S: not a name mover
    dla[5, 3], dla_io[5, 3], dla_s[5, 3] = -0.5, -0.5, 0.0     # negative name mover
    attn_io, attn_s2 = z.clone(), z.clone()
    attn_io[5, 1], attn_s2[5, 2] = 0.7, 0.6
    pp_q = torch.full((L, H), float("nan"))
    pp_q[3, 0], pp_q[3, 1] = -0.4, -0.01
    pp_v = torch.full((L, H), float("nan"))
    pp_v[1, 0], pp_v[2, 2] = -0.3, -0.2
    ind, dup, prev = z.clone(), z.clone(), z.clone()
    ind[1, 0], dup[2, 2], prev[0, 3] = 0.5, 0.6, 0.8
    gain = z.clone()
    gain[4, 0] = 0.5
    attn_io[4, 0] = 0.3
    ev = circuits.Evidence(dla=dla, dla_io=dla_io, dla_s=dla_s, attn_io=attn_io, attn_s2=attn_s2, patch=z,
                           clean_ld=2.0, pp_q=pp_q, pp_v=pp_v, induction=ind, duplicate=dup, prev_token=prev,
                           backup_gain=gain)
    c = circuits.classify_heads(ev)
    assert c["name mover"] == [(5, 1)]
    assert c["negative name mover"] == [(5, 3)]
    assert c["S-inhibition"] == [(3, 0)]
    assert c["induction"] == [(1, 0)] and c["duplicate token"] == [(2, 2)]
    assert c["previous token"] == [(0, 3)]
    assert c["backup name mover"] == [(4, 0)]
    assert c[circuits.EXTRA_CLASS] == [(5, 2)]
    assert circuits.head_class(c, (3, 0)) == "S-inhibition"
    assert (4, 0) not in circuits.circuit_heads(c) and (4, 0) in circuits.circuit_heads(c, include_backup=True)


def test_faithfulness_and_knockout_bounds(gpt2_arch):
    model = gpt2_arch
    ds = _pair(model, 4)
    n, h = model.cfg.n_layers, model.cfg.n_heads
    everything = [(l, k) for l in range(n) for k in range(h)]
    full = circuits.faithfulness(model, ds, everything)
    assert abs(full.ratio - 1) < 1e-4 and abs(full.normalised - 1) < 1e-4
    none = circuits.faithfulness(model, ds, [])
    assert abs(none.circuit_ld - none.empty_ld) < 1e-4
    ko = circuits.knockout(model, ds, [(n - 1, 0)])
    assert torch.isnan(ko.gain[n - 1, 0]) and ko.ld_before != ko.ld_after


def test_plots_and_explorer_views_render(gpt2_arch):
    import matplotlib.pyplot as plt

    model = gpt2_arch
    ds = _pair(model, 2)
    d = readout.direct_logit_attribution(model, ds.tokens, ds.io, ds.s)
    pats = readout.attention_patterns(model, ds.tokens)
    a_io = readout.attention_to(pats, ds.pos["END"], ds.pos["IO"])
    assert a_io.shape == (model.cfg.n_layers, model.cfg.n_heads) and (a_io >= 0).all() and (a_io <= 1).all()
    classes = {"name mover": [(1, 0)], "S-inhibition": [(0, 1)]}
    an = circuits.Analysis(model, ds, pats, d, torch.zeros(2, 4), classes, a_io, a_io)
    figs = [circuits.plot_dla(d), circuits.plot_circuit(classes, 2), circuits.inspect_head(an, "L1H0", 1),
            circuits.prompt_report(an, "When Anna and Peter went to the park, Peter gave a ball to"),
            circuits.prompt_report(an, "no names here")]
    assert "Not an IOI sentence" in [t.get_text() for t in figs[-1].axes[0].texts][0]
    for f in figs:
        plt.close(f)
    with pytest.raises(ValueError, match="could not read any head"):
        circuits.inspect_head(an, "one", 0)


# --------------------------------------------------------------------------------------
# sentences that start with a name; bad template indices
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", range(len(ioi.TEMPLATES)))
@pytest.mark.parametrize("order", ["BABA", "ABBA"])
def test_every_shipped_template_parses_back_to_its_io_and_s(smollm2, t, order):
    ds = ioi.make_ioi(smollm2, n=2, template=t, seed=5)
    i = 0 if order == "BABA" else 1
    p = ioi.parse_ioi_sentence(smollm2, ds.prompts[i])
    assert (p.io_name, p.s_name) == (ds.names["IO"][i], ds.names["S"][i])
    assert p.pos == {k: int(v[i]) for k, v in ds.pos.items()}


def test_the_docstring_example_with_a_sentence_initial_name_parses(smollm2):
    p = ioi.parse_ioi_sentence(smollm2, "Then, Mary and John went to the store. John gave a drink to")
    assert (p.io_name, p.s_name) == ("Mary", "John")
    # a capitalised sentence-initial word that is not a name is still ignored
    p = ioi.parse_ioi_sentence(smollm2, "Then, Mary and John went to the store. Later John gave a drink to")
    assert (p.io_name, p.s_name) == ("Mary", "John")


@pytest.mark.parametrize("template", [99, -7, 2.5])
def test_a_bad_template_index_says_what_is_valid(smollm2, template):
    with pytest.raises(ioi.IOIError, match="template"):
        ioi.make_ioi(smollm2, n=2, template=template)


# --------------------------------------------------------------------------------------
# notebook 03's pooled evidence (mi_tutor.ioi_evidence)
# --------------------------------------------------------------------------------------


def test_pooled_evidence_matches_each_template_run(smollm2):
    from mi_tutor import ioi_evidence as E

    dss = [ioi.make_ioi(smollm2, n=2, template=t, seed=t) for t in (0, 5)]
    P = E.pool(smollm2, dss)
    assert P.dla.shape[0] == 4 and P.template.tolist() == [0, 0, 1, 1]
    for t, ds in enumerate(dss):
        d = readout.direct_logit_attribution(smollm2, ds.tokens, ds.io, ds.s)
        assert torch.allclose(P.ld[P.template == t], ds.metric(smollm2(ds.tokens)), atol=1e-4)
        assert torch.allclose(P.dla[P.template == t], d.per_prompt_heads, atol=1e-5)
    dla = P.as_dla()
    assert abs(dla.total - dla.logit_diff) < 1e-3 * max(1.0, abs(dla.logit_diff))
    assert "Friends" in P.template_table()


def test_agreement_counts_sign_flips_and_overlap():
    from mi_tutor import ioi_evidence as E

    exact = torch.zeros(3, 4)
    exact[0, 0], exact[1, 1], exact[2, 2] = -3.0, -2.0, 1.0
    approx = exact.clone()
    approx[1, 1] = 0.5  # wrong sign on the second-largest effect
    a = E.agreement(exact, approx, k=3)
    assert a.large == [(0, 0), (1, 1), (2, 2)] and a.flipped == [(1, 1)]
    assert a.overlap == 1.0 and a.pearson < 1.0


def test_copy_scores_agree_with_the_exercise_reference_without_norms(smollm2):
    """On a model, the library's copy score equals the exercise's formula applied to the normed residual."""
    from mi_tutor import ioi_evidence as E
    from mi_tutor.exercises.nb03 import copy_score

    ids = E.name_ids(smollm2)[:20]
    got = E.copy_scores(smollm2, ids, k=3)
    ov = readout.effective_ov(smollm2, ids)
    top = ov.topk(3, dim=-1).indices
    want = (top == torch.arange(20)[:, None]).any(-1).float().mean(-1)
    assert torch.equal(got, want) and got.shape == (smollm2.cfg.n_layers, smollm2.cfg.n_heads)
    # the exercise's formula on random weights: a head whose OV is the identity copies every name
    g = torch.Generator().manual_seed(0)
    resid = torch.linalg.qr(torch.randn(5, 5, generator=g))[0]  # orthonormal: each name is its own row's maximum
    W_V = torch.eye(5)[None].repeat(2, 1, 1)
    W_O = torch.stack([torch.eye(5), -torch.eye(5)])
    assert copy_score(resid, W_V, W_O, resid.T, 1).tolist() == [1.0, 0.0]


def test_completeness_knockouts_equal_direct_ablations(smollm2):
    from mi_tutor import ioi_evidence as E
    from mi_tutor.lab import patching

    ds = ioi.make_ioi(smollm2, n=2, seed=2)
    n = smollm2.cfg.n_layers
    classes = {"a": [(n - 1, 0)], "b": [(n - 2, 1), (n - 1, 2)]}
    circuit = [(n - 1, 0), (n - 2, 1), (n - 1, 2), (n - 3, 4)]
    got = E.knockout_classes(smollm2, [ds], classes, circuit)
    means = patching.ablation_values(smollm2, ds.tokens, "mean", reference_tokens=ds.abc_tokens)
    every = hooks.all_heads(smollm2)
    run = lambda hs: float(ds.metric(patching.run_patched(smollm2, ds.tokens, patching.heads_replaced(hs, means))).mean())
    outside = [h for h in every if h not in circuit]
    assert got["(nothing)"][1] == pytest.approx(float(ds.metric(smollm2(ds.tokens)).mean()), abs=1e-4)
    assert got["(nothing)"][0] == pytest.approx(run(outside), abs=1e-4)
    assert got["b"][0] == pytest.approx(run(outside + classes["b"]), abs=1e-4)
    assert got["b"][1] == pytest.approx(run(classes["b"]), abs=1e-4)
