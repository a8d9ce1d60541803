"""Unit tests of notebook 00's modules: mi_tutor.blackbox, mi_tutor.blackbox_attribution and mi_tutor.history."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mi_tutor import blackbox as bb
from mi_tutor import blackbox_attribution as attr
from mi_tutor import history


@pytest.fixture(scope="module")
def data():
    return bb.make_wage_data(n_train=300, n_test=300, seed=3)


@pytest.fixture(scope="module")
def model(data):
    return bb.fit_mlp(data, width=12, steps=400, seed=1)


# ------------------------------------------------------------------ data and the line

def test_wage_profile_rises_flattens_and_falls():
    ages = bb.age_grid(521)
    w = bb.wage_profile(ages)
    slope = np.gradient(w, ages)
    assert slope[ages < 25].min() > 1.5, "wages should rise fast for the young"
    assert np.abs(slope[(ages > 38) & (ages < 50)]).max() < 0.6, "wages should be nearly flat in mid-career"
    assert slope[ages > 62].max() < -0.3 and slope[ages > 62].mean() < -1.0, "wages should fall towards retirement"


def test_make_wage_data_is_seeded_and_in_range():
    a, b, c = bb.make_wage_data(seed=5), bb.make_wage_data(seed=5), bb.make_wage_data(seed=6)
    assert np.array_equal(a.age_train, b.age_train) and np.array_equal(a.wage_test, b.wage_test)
    assert not np.array_equal(a.age_train, c.age_train)
    assert a.age_train.min() >= bb.AGE_MIN and a.age_train.max() <= bb.AGE_MAX
    resid = a.wage_train - bb.wage_profile(a.age_train)
    assert abs(resid.std() - a.noise) < 0.5, "noise sd should match what was asked"
    with pytest.raises(ValueError, match="n_train"):
        bb.make_wage_data(n_train=1)


def test_least_squares_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    true = np.array([1.5, -2.0, 0.5, 3.0])
    y = true[0] + x @ true[1:]
    assert np.allclose(bb.least_squares(x, y), true)
    # 1-D input means one feature
    assert np.allclose(bb.least_squares(x[:, 0], true[0] + 2 * x[:, 0]), [true[0], 2.0])
    assert np.allclose(bb.predict_linear(true, x), y)


def test_least_squares_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="y must have shape"):
        bb.least_squares(np.zeros((5, 1)), np.zeros(4))
    with pytest.raises(ValueError, match="slopes"):
        bb.predict_linear(np.zeros(3), np.zeros((4, 1)))


def test_runs_test_separates_random_from_structured_residuals():
    rng = np.random.default_rng(1)
    runs, expected, z = bb.runs_test(rng.normal(size=400))
    assert abs(z) < 3
    structured = np.r_[np.ones(100), -np.ones(200), np.ones(100)]
    runs, expected, z = bb.runs_test(structured)
    assert runs == 3 and z < -15
    assert bb.runs_test(np.ones(10))[0] == 1


def test_line_residuals_are_structured_and_mlp_residuals_are_not(data, model):
    line = bb.least_squares(data.age_train, data.wage_train)
    line_rep = bb.residual_structure(data.age_test, data.wage_test - bb.predict_linear(line, data.age_test))
    mlp_rep = bb.residual_structure(data.age_test, data.wage_test - model.predict(data.age_test))
    assert line_rep.corr_with_age_squared < -0.6 and line_rep.runs_z < -8
    assert abs(mlp_rep.corr_with_age_squared) < 0.3 and mlp_rep.runs_z > -4
    assert "sign runs" in str(line_rep)


# ------------------------------------------------------------------ the MLP

def test_mlp_beats_the_line_and_is_deterministic(data, model):
    line = bb.least_squares(data.age_train, data.wage_train)
    line_mse = bb.mse(bb.predict_linear(line, data.age_test), data.wage_test)
    mlp_mse = bb.mse(model.predict(data.age_test), data.wage_test)
    assert mlp_mse < 0.3 * line_mse
    assert mlp_mse < 1.5 * data.noise ** 2
    again = bb.fit_mlp(data, width=12, steps=400, seed=1)
    assert np.array_equal(again.predict(data.age_test), model.predict(data.age_test))
    assert bb.n_parameters(model) == 12 + 12 + 12 * 12 + 12 + 12 + 1


def test_training_restores_thread_count(data):
    before = torch.get_num_threads()
    bb.train_mlp(data.age_train, data.wage_train, width=4, steps=5)
    assert torch.get_num_threads() == before


def test_snapshots_and_bad_inputs(data):
    run = bb.train_mlp(data.age_train, data.wage_train, width=4, steps=20, snapshot_every=10)
    assert sorted(run.snapshots) == [0, 10, 20]
    assert np.array_equal(run.at_step(20).predict([30.0]), run.model.predict([30.0]))
    assert not np.array_equal(run.at_step(0).predict([30.0]), run.model.predict([30.0]))
    assert len(run.train_mse) == 20
    with pytest.raises(ValueError, match="activation"):
        bb.WageMLP(activation="swish")
    with pytest.raises(ValueError, match=r"\[n, 1\]"):
        run.model(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="snapshots"):
        bb.train_mlp(data.age_train, data.wage_train, width=4, steps=2).at_step(0)


def test_no_hidden_unit_starts_dead():
    torch.manual_seed(0)
    model = bb.WageMLP(width=32, depth=2)
    model.fit_scaling(bb.age_grid(), np.zeros(200))  # what train_mlp does before training
    acts = bb.response_curves(model, bb.age_grid(), layer=0)
    assert (np.ptp(acts, axis=0) > 0).all(), "every first-layer unit should be active somewhere on the age range"


# ------------------------------------------------------------------ tools on the black box

def test_contributions_sum_to_the_prediction(model):
    ages = bb.age_grid(50)
    c = attr.unit_contributions(model, ages)
    assert c.shape == (50, model.width)
    assert np.allclose(c.sum(1) + attr.model_offset(model), model.predict(ages), atol=1e-3)
    active = attr.units_active_per_age(c)
    assert active.shape == (50,) and active.max() <= model.width


def test_max_activating_inputs_matches_sorting():
    acts = torch.tensor([[0.1, 5.0], [3.0, -1.0], [2.0, 4.0]])
    assert attr.max_activating_inputs(acts, 2).tolist() == [[1, 0], [2, 2]]
    with pytest.raises(ValueError, match="k must be"):
        attr.max_activating_inputs(acts, 4)
    with pytest.raises(ValueError, match="n_inputs, n_units"):
        attr.max_activating_inputs(acts[0], 1)


def test_mean_and_zero_ablation_of_one_unit():
    h = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    m = attr.mean_ablate_unit(h, 1)
    assert m.tolist() == [[1.0, 4.0], [3.0, 4.0]] and h[0, 1] == 2.0, "must not edit in place"
    assert attr.zero_ablate_unit(h, 0).tolist() == [[0.0, 2.0], [0.0, 6.0]]


def test_zero_ablation_hurts_at_least_as_much_as_mean_ablation(data, model):
    eff = attr.ablation_effects(model, data.age_test, data.wage_test)
    assert eff["zero"].shape == eff["mean"].shape == (model.width,)
    # zero ablation = mean ablation + a constant shift of the output: the gap is exactly the derived formula
    w, b = attr.readout_weights(model)
    with torch.no_grad():
        h = model.hidden(data.age_test)[-1]
    y = torch.tensor(data.wage_test, dtype=torch.float32)
    gap = attr.ablation_gap_formula(h, w, b, y).numpy()
    assert np.allclose(eff["zero"] - eff["mean"], gap, atol=1e-3)
    assert np.allclose(model.readout(h).detach().numpy(), (h @ w + b).numpy(), atol=1e-4)
    assert eff["mean"].max() > 1.0, "some unit should matter"
    top = int(np.argmax(eff["mean"]))
    ablated = attr.predict_ablated(model, data.age_test, top, "mean")
    assert np.isclose(bb.mse(ablated, data.wage_test) - bb.mse(model.predict(data.age_test), data.wage_test),
                      eff["mean"][top], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="mode"):
        attr.predict_ablated(model, data.age_test, 0, "resample")


def test_ablation_costs_by_hand_and_bad_inputs():
    h = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    w = torch.tensor([1.0, 1.0])
    y = torch.tensor([3.0, 3.0])           # the intact readout (b = 0) is exact: MSE 0
    costs = attr.ablation_costs(h, w, 0.0, y, 0)
    # zero: predictions (2, 0) -> MSE (1 + 9) / 2 = 5; mean (2): predictions (4, 2) -> MSE 1
    assert torch.allclose(costs, torch.tensor([5.0, 1.0])) and costs.dtype == torch.float32
    assert h.tolist() == [[1.0, 2.0], [3.0, 0.0]], "must not edit in place"
    gap = attr.ablation_gap_formula(h, w, 0.0, y)
    assert torch.allclose(gap[0], costs[0] - costs[1])
    with pytest.raises(ValueError, match="w_out must be"):
        attr.ablation_costs(h, torch.ones(3), 0.0, y, 0)
    with pytest.raises(ValueError, match="unit must be"):
        attr.ablation_costs(h, w, 0.0, y, 2)


def test_earlier_layer_ablation_runs_the_rest_of_the_network(data, model):
    with torch.no_grad():
        h0 = model.hidden(data.age_test)[0]
        assert torch.allclose(model.run_from(0, h0), model(data.age_test), atol=1e-5)
    first = attr.ablation_effects(model, data.age_test, data.wage_test, layer=0)
    assert first["zero"].shape == (model.width,) and np.isfinite(first["zero"]).all()
    assert not np.allclose(first["zero"], first["mean"])
    off = attr.zero_fraction(model, data.age_test)
    assert off.shape == (model.width,) and ((off >= 0) & (off <= 1)).all() and off.max() > 0


def test_linear_pieces_are_exactly_linear(model):
    pieces = attr.linear_pieces(model)
    assert pieces.n_pieces == len(pieces.kinks) + 1 >= 2
    assert pieces.max_misfit < 1e-3
    assert ((pieces.kinks > bb.AGE_MIN) & (pieces.kinks < bb.AGE_MAX)).all()
    # a kinked function the fit could not call linear: the whole range at once is far from a line
    ages = bb.age_grid(200)
    pred = model.predict(ages)
    assert np.abs(np.polyval(np.polyfit(ages, pred, 1), ages) - pred).max() > 1.0


def test_basis_check_sum_is_invariant_but_coordinates_are_not_relu(data, model):
    rot = attr.basis_check(model, data.age_test, seed=1)
    assert rot.max_sum_error < 1e-3
    assert rot.negative_share_units == 0.0 and rot.negative_share_rotated > 0.1


def test_credit_across_seeds_keeps_the_inputs_and_changes_the_run(data):
    a, b = attr.credit_across_seeds(data, seeds=[0, 1], steps=100, width=6)
    assert a.inputs == b.inputs == ["age", "experience"] and a.input_corr == b.input_corr > 0.9
    assert not np.allclose(a.unit_credit, b.unit_credit)
    assert len(a.unit_age_shares) > 0 and 0 <= a.age_share <= 1


def test_nonlinearity_marginal_effect_varies_and_weights_switch(model, data):
    ages = bb.age_grid(60)
    me = attr.marginal_effect(model, ages)
    assert me[ages < 25].mean() > 1.0 and me[ages > 64].mean() < -0.5
    eff, names = attr.weight_effects(model, ages)
    assert eff.shape == (60, bb.n_parameters(model)) == (60, len(names))
    # the output bias moves every prediction by the same amount (times the output scale)
    j = names.index("out.bias[0]")
    assert np.allclose(eff[:, j], eff[0, j])
    summary = attr.summarise_effects(eff)
    assert summary.off_fraction > 0.1
    assert attr.summarise_effects(attr.linear_weight_effects(ages)).sign_flips == 0


def test_summarise_effects_counts_flips_and_switches():
    e = np.array([[1.0, 0.0, 1.0], [-1.0, 1.0, 2.0], [0.5, 1.0, 3.0]])
    s = attr.summarise_effects(e)
    assert (s.n_weights, s.sign_flips, s.switched_off) == (3, 1, 1)


def test_unit_input_credit_rows_sum_to_one(data):
    rng = np.random.default_rng(0)
    x, names = attr.wage_features(data.age_train, "age + experience", rng)
    assert names == ["age", "experience"] and np.corrcoef(x.T)[0, 1] > 0.9
    m = bb.train_mlp(x, data.wage_train, width=6, steps=50).model
    credit = attr.unit_input_credit(m, x[:100])
    live = credit.sum(1) > 0
    assert credit.shape == (6, 2) and np.allclose(credit[live].sum(1), 1.0)
    with pytest.raises(ValueError, match="setting"):
        attr.wage_features(data.age_train, "age + shoe size", rng)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_dimensionality_smears_credit_away_from_age(seed):
    data = bb.make_wage_data(n_train=400, n_test=400, seed=seed)
    res = attr.dimensionality_demo(data, seed=seed, steps=400)
    unit_credit = [r.unit_age_credit for r in res]
    out_credit = [r.output_age_credit for r in res]
    assert unit_credit[0] > 0.99 and unit_credit[1] < 0.9 and unit_credit[2] < unit_credit[1]
    assert out_credit[0] > 0.99 and out_credit[2] < out_credit[1] < 0.97
    assert res[2].age_share < res[0].age_share
    assert "unit credit to age" in attr.dims_table(res)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlp_beats_line_across_seeds(seed):
    data = bb.make_wage_data(seed=seed)
    line = bb.least_squares(data.age_train, data.wage_train)
    m = bb.fit_mlp(data, seed=seed)
    assert bb.mse(m.predict(data.age_test), data.wage_test) < 0.25 * bb.mse(bb.predict_linear(line, data.age_test),
                                                                           data.wage_test)


def test_explorer_plot_caches_runs_and_validates():
    import matplotlib.pyplot as plt

    bb._EXPLORER_RUNS.clear()
    fig = bb.plot_mlp_explorer(width=4, activation="tanh", steps=100)
    assert len(fig.axes) == 2 and len(bb._EXPLORER_RUNS) == 1
    plt.close(fig)
    fig = bb.plot_mlp_explorer(width=4, activation="tanh", steps=300)
    assert len(bb._EXPLORER_RUNS) == 1, "changing steps must not retrain"
    plt.close(fig)
    with pytest.raises(ValueError, match="activation"):
        bb.plot_mlp_explorer(activation="swish")
    with pytest.raises(ValueError, match="steps"):
        bb.plot_mlp_explorer(steps=10_000)


def test_figures_render(data, model):
    import matplotlib.pyplot as plt

    line = bb.least_squares(data.age_train, data.wage_train)
    eff = attr.ablation_effects(model, data.age_test, data.wage_test)
    for fig in (bb.plot_data(data, line, {"MLP": model}), bb.plot_residuals(data, line, model),
                attr.plot_units(model, highlight=[0]), attr.plot_nonlinearity(model, line),
                attr.plot_ablation(model, data, eff)):
        assert fig.axes
        plt.close(fig)


# ------------------------------------------------------------------ history

def test_timeline_entries_are_complete_and_in_range():
    assert len(history.TIMELINE) >= 20
    nbs = set(history.notebooks())
    for e in history.TIMELINE:
        assert history.FIRST_YEAR <= e.year <= history.LAST_YEAR
        assert e.month is None or 1 <= e.month <= 12
        assert e.kind in history.KINDS and e.model in history.MODEL_TYPES
        assert e.notebook in nbs, f"{e.short} links to an unknown notebook {e.notebook}"
        assert e.title and e.authors and e.ref and e.method
    # every notebook after 00 teaches at least one result on the timeline
    assert set(history.counts()["notebook"]) == nbs


def test_timeline_respects_fact_sheet_corrections():
    by_short = {e.short: e for e in history.TIMELINE}
    assert "Kramár" in by_short["AtP*"].authors and "2403.00745" in by_short["AtP*"].ref
    assert "Syed" in by_short["EAP"].authors and "2310.10348" in by_short["EAP"].ref
    assert by_short["IOI circuit"].ref.startswith("arXiv 2211.00593")


def test_reading_list_has_early_interventions_and_lm_work():
    """The list must not suggest that interventions arrived with transformers: occlusion (2013) is one,
    and language-model papers intervened before 2022."""
    by_short = {e.short: e for e in history.TIMELINE}
    assert by_short["Deconvnet & occlusion"].kind != "observational"
    early_lm = [e for e in history.TIMELINE if e.model == "LM" and e.year < 2022 and e.kind != "observational"]
    assert {"Sentiment neuron", "Number units", "Causal mediation", "Causal abstraction"} <= {e.short for e in early_lm}
    for short, arxiv in (("Number units", "1903.07435"), ("Causal mediation", "2004.12265"),
                         ("Causal abstraction", "2106.02997"), ("GAN dissection", "1811.10597"),
                         ("Sentiment neuron", "1704.01444"), ("LSTM cells", "1506.02078")):
        assert arxiv in by_short[short].ref
    assert "2209.11895" in by_short["Induction heads"].ref and "Mar 2022" in by_short["Induction heads"].ref
    assert "they studied" in {n.number: n for n in history.SERIES}["02"].why_here


def test_select_filters_by_kind_and_years():
    inter = history.select("interventional", 2022, 2023)
    assert inter and all(e.kind == "interventional" and 2022 <= e.year <= 2023 for e in inter)
    assert len(history.select()) == len(history.TIMELINE)
    assert all(e.model == "vision" for e in history.select(model="vision"))
    with pytest.raises(ValueError, match="kind"):
        history.select("causal")
    with pytest.raises(ValueError, match="after"):
        history.select(start=2024, end=2020)


def test_timeline_figures_and_tables():
    import matplotlib.pyplot as plt

    fig = history.plot_timeline()
    assert len(fig.axes[0].collections) == len(history.TIMELINE)
    plt.close(fig)
    fig = history.plot_timeline("observational", 2013, 2019)
    assert len(fig.axes[0].collections) == len(history.select("observational", 2013, 2019))
    plt.close(fig)
    plt.close(history.plot_timeline(start=2014, end=2015))  # empty selection still draws
    fig = history.plot_timeline(start=2023, end=2022)  # reversed range (a widget can produce it) is swapped
    assert len(fig.axes[0].collections) == len(history.select(start=2022, end=2023))
    plt.close(fig)
    table = history.series_table()
    assert table.count("\n") == len(history.SERIES) + 1
    assert history.timeline_table().count("\n") == len(history.TIMELINE) + 1
    by_short = {e.short: e for e in history.TIMELINE}
    assert by_short["Curve detectors"].first_author == "Cammarata et al."
    assert history.TIMELINE[0].citation().startswith("Erhan")
