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
