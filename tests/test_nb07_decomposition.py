"""Unit tests of notebook 07's modules: toy models of superposition, SAEs, and the SPD decomposition."""
from __future__ import annotations

import math

import pytest
import torch

from mi_tutor import sae as A
from mi_tutor import spd as P
from mi_tutor import superposition as S


@pytest.fixture(autouse=True)
def _single_thread():
    """Run on one thread, like the notebook (`setup()` does the same): these models are tiny, and on a
    shared CPU a thread pool only adds synchronisation overhead to every small op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- superposition

def test_sample_features_density_and_range():
    g = torch.Generator().manual_seed(0)
    x = S.sample_features(20000, 6, 0.1, g)
    assert x.shape == (20000, 6)
    assert 0.09 < (x > 0).float().mean() < 0.11
    assert x.min() >= 0 and x.max() <= 1


def test_sample_features_per_instance_density():
    x = S.sample_features(20000, 3, torch.tensor([1.0, 0.0]), torch.Generator().manual_seed(0), instances=2)
    assert (x[:, 0] > 0).float().mean() > 0.99 and (x[:, 1] == 0).all()


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="density"):
        S.sample_features(4, 3, 1.5)
    model = S.ToyModel(5, 2)
    with pytest.raises(ValueError, match="expects 5"):
        model(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="expects 2"):
        A.SAE(2, 4).encode(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="same shape"):
        P.causal_importance_mask(torch.zeros(2, 3), torch.zeros(3, 2))


def test_toy_model_shapes_and_tied_readout():
    model = S.ToyModel(5, 2, seed=3)
    x = torch.rand(7, 5)
    h = model.hidden(x)
    assert h.shape == (7, 2)
    torch.testing.assert_close(h, x @ model.W[0].T)
    torch.testing.assert_close(model(x), torch.relu(h @ model.W[0] + model.b[0]))
    assert model.feature_directions().shape == (5, 2)


def test_superposition_geometry_metrics():
    W = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])  # f0, f2 antipodal; f1 own dim; f3 dropped
    torch.testing.assert_close(S.feature_norms(W), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    sup = S.superposition_score(W)
    assert sup[1] < 1e-6 and sup[0] > 0.99 and sup[2] > 0.99
    assert math.isclose(S.dimensions_per_feature(W), 2 / 3, rel_tol=1e-5)


@pytest.mark.slow
def test_sparse_toy_model_superposes_dense_one_does_not():
    run = S.train_instances(5, 2, [1.0, 0.03], torch.tensor([0.8 ** i for i in range(5)]), steps=1500, lr=1e-2, batch=256)
    norms = run.model.W.detach().norm(dim=1)  # [instances, features]
    assert int((norms[0] > 0.5).sum()) <= 3, "dense features: only the most important ones get a dimension"
    assert int((norms[1] > 0.5).sum()) == 5, "sparse features: all five are packed into 2-D"


def test_hidden_dims_mask_keeps_unused_rows_zero():
    run = S.train_instances(4, 3, [0.3, 0.3], steps=5, hidden_dims=[1, 3])
    assert run.model.W.detach()[0, 1:].abs().max() == 0
    assert run.model.W.detach()[1].abs().max() > 0


# ----------------------------------------------------------------------------- SAE

def test_sae_loss_by_hand():
    h = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    h_hat = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    z = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    # recon: (1 + 2) / 2 = 1.5 ; l1: (3 + 0) / 2 = 1.5
    assert math.isclose(float(A.sae_loss(h, h_hat, z, 0.1)), 1.5 + 0.15, rel_tol=1e-6)


def test_feature_recovery_is_scale_and_order_invariant():
    true = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    learned = torch.cat([true[[2, 0, 3, 1]] * torch.tensor([[2.0], [0.1], [5.0], [1.0]]), torch.randn(2, 3)])
    assert math.isclose(float(A.feature_recovery(true, learned)), 1.0, abs_tol=1e-6)
    assert float(A.feature_recovery(true[:1], -true[:1])) < -0.99  # opposite direction: no recovery


def test_sae_decoder_columns_stay_unit_norm_and_metrics_in_range():
    model = S.random_toy(6, 3, seed=0)
    run = A.train_sae(lambda b, g: model.hidden(S.sample_features(b, 6, 0.2, g)), 3, 8, l1_coeff=0.1, steps=30)
    torch.testing.assert_close(run.sae.W_dec.norm(dim=0), torch.ones(8))
    h = model.hidden(S.sample_features(500, 6, 0.2, torch.Generator().manual_seed(1)))
    assert 0 <= A.dead_fraction(run.sae, h) <= 1 and A.l0(run.sae, h) >= 0 and A.fvu(run.sae, h) >= 0


def test_batched_saes_match_separate_runs_and_respect_sizes():
    model = S.random_toy(6, 3, seed=0)
    acts = lambda b, g: model.hidden(S.sample_features(b, 6, 0.2, g))
    runs = A.train_saes(acts, 3, [4, 8], [0.3, 0.1], steps=20, lr=1e-2, batch=32)
    alone = A.train_sae(acts, 3, 8, l1_coeff=0.1, steps=20, lr=1e-2, batch=32)
    assert [r.sae.d_sae for r in runs] == [4, 8] and runs[0].copies == 2
    torch.testing.assert_close(runs[1].sae.W_dec, alone.sae.W_dec, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs[1].sae.W_enc, alone.sae.W_enc, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one l1_coeff per"):
        A.train_saes(acts, 3, [4, 8], [0.1], steps=1)


def test_chance_recovery_is_high_in_2d_and_lower_in_more_dimensions():
    assert A.chance_recovery(5, 10, 2) > 0.85
    assert A.chance_recovery(5, 10, 5) < A.chance_recovery(5, 10, 2) - 0.15
    assert A.chance_recovery(5, 1, 2) < A.chance_recovery(5, 10, 2)


def test_matched_recovery_uses_the_component_that_writes_most():
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    writes = torch.zeros(2, 3, 2)
    writes[0, 0] = torch.tensor([2.0, 0.0])    # feature 0: the biggest write is aligned
    writes[0, 1] = torch.tensor([0.0, 0.1])
    # feature 1: the biggest write is orthogonal (an aligned direction elsewhere does not count)
    writes[1, 2] = torch.tensor([1.0, 0.0])
    writes[1, 1] = torch.tensor([0.0, 0.5])
    assert math.isclose(A.matched_recovery(true, writes), 0.5, abs_tol=1e-6)
    with pytest.raises(ValueError, match="writes must be"):
        A.matched_recovery(true, torch.zeros(3, 3, 2))


@pytest.mark.slow
def test_sae_recovers_planted_features_and_l1_shrinks():
    """SAE on activations of a random 8-feature, 4-dim linear embedding: high L1 recovers, and shrinks."""
    model = S.random_toy(8, 4, seed=2)
    acts = lambda b, g: model.hidden(S.sample_features(b, 8, 0.05, g))
    strong = A.train_sae(acts, 4, 8, l1_coeff=0.3, steps=800, lr=1e-2, batch=512, seed=0).sae
    weak = A.train_sae(acts, 4, 8, l1_coeff=0.01, steps=800, lr=1e-2, batch=512, seed=0).sae
    true = model.feature_directions()
    recovery = float(A.feature_recovery(true, strong.directions()))
    assert recovery > 0.8 and recovery > A.chance_recovery(8, 8, 4) + 0.1, f"recovery {recovery:.3f} is near chance"
    assert A.shrinkage(strong, true) < A.shrinkage(weak, true) - 0.1


@pytest.mark.slow
def test_absorption_parent_latent_goes_quiet_when_child_fires():
    res = A.absorption_experiment(l1_coeff=0.3, steps=800)
    assert res.fire_rate_parent_alone > 0.9
    assert max(res.child_cos_with_parent) > 0.5, "a child latent should carry the parent direction"
    assert res.fire_rate_with_child < res.fire_rate_parent_alone - 0.15


# ----------------------------------------------------------------------------- SPD

def test_causal_importance_mask_bounds():
    pre = torch.tensor([[-2.0, 0.3, 5.0]])
    r = torch.tensor([[0.5, 0.5, 0.5]])
    g, m = P.causal_importance_mask(pre, r)
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.3, 1.0]]))
    torch.testing.assert_close(m, torch.tensor([[0.5, 0.65, 1.0]]))


def test_masked_forward_with_all_ones_and_exact_parts_equals_target():
    target = S.random_toy(5, 2, seed=0)
    spd = P.SPDDecomposition(target, n_components=5)
    with torch.no_grad():  # plant the true decomposition: component i = W_i e_i^T
        spd.U.copy_(target.W[0].T)
        spd.V.copy_(torch.eye(5))
    x = torch.rand(9, 5)
    h, out = spd.masked_forward(x, torch.ones(9, 5))
    torch.testing.assert_close(h, target.hidden(x))
    torch.testing.assert_close(out, target(x))
    losses = P.spd_losses(spd, x, torch.Generator().manual_seed(0))
    assert float(losses["faithfulness"].detach()) < 1e-10
    # ablating the component of an inactive feature changes nothing
    x1 = torch.zeros(1, 5)
    x1[0, 2] = 0.7
    mask = torch.ones(1, 5)
    mask[0, 0] = 0
    torch.testing.assert_close(spd.masked_forward(x1, mask)[1], target(x1))


def test_spd_warmup_makes_the_parts_add_up_and_training_reduces_recon():
    target = S.train_toy(5, 2, 0.1, steps=150).model
    cold = P.train_spd(target, 0.1, n_components=6, steps=1, batch=64, warmup_steps=0)
    warm = P.train_spd(target, 0.1, n_components=6, steps=1, batch=64, warmup_steps=200)
    err = lambda run: float(((run.spd.weights() - target.W[0]) ** 2).sum())
    assert err(warm) < err(cold) / 10, "the faithfulness warm-up should make sum_c u_c v_c^T close to W"
    run = P.train_spd(target, 0.1, n_components=6, steps=80, batch=128, lr=1e-2)
    recon = [v for v in run.history["stochastic_recon"] if math.isfinite(v)]
    assert recon[-1] < recon[0]
    assert run.steps == 80 and run.batch == 128 and run.copies == 1


def test_batched_spd_copies_match_separate_runs():
    """Copies of one batched run train independently: copy i equals a run with copy i's coefficient alone."""
    target = S.train_toy(5, 2, 0.1, steps=100).model
    both = P.train_spds(target, 0.1, [1e-2, 1e-1], n_components=4, steps=15, batch=32, lr=1e-2)
    alone = P.train_spd(target, 0.1, n_components=4, importance_coeff=1e-1, steps=15, batch=32, lr=1e-2)
    torch.testing.assert_close(both[1].spd.U, alone.spd.U, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1].spd.w1, alone.spd.w1, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0].spd.U, both[1].spd.U), "different coefficients should give different decompositions"


def test_write_directions_fix_the_sign_ambiguity():
    target = S.random_toy(5, 2, seed=0)
    spd = P.SPDDecomposition(target, n_components=5)
    with torch.no_grad():  # the true decomposition, with components 1 and 3 written as (-u)(-v)^T
        flip = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])[:, None]
        spd.U.copy_(target.W[0].T * flip)
        spd.V.copy_(torch.eye(5) * flip)
    torch.testing.assert_close(P.write_directions(spd), target.W[0].T)
    torch.testing.assert_close(P.read_directions(spd), torch.eye(5))
    assert math.isclose(float(A.feature_recovery(target.feature_directions(), P.write_directions(spd))), 1.0, rel_tol=1e-5)


def test_stochastic_recon_loss_is_the_loss_spd_trains_on():
    target = S.random_toy(5, 2, seed=0)
    spd = P.SPDDecomposition(target, n_components=4, seed=1)
    x = torch.rand(7, 5)
    g, r = torch.rand(7, 4), torch.rand(7, 4)
    _, out = spd.masked_forward(x, g + (1 - g) * r)
    with torch.no_grad():
        want = ((out - target(x)) ** 2).sum(-1).mean()
        got = P.stochastic_recon_loss(spd.U, spd.V, target.b[0], x, g, r, target(x))
    torch.testing.assert_close(got, want)
    # with g = 1 everywhere the noise does not matter
    with torch.no_grad():
        ones = torch.ones(7, 4)
        a = P.stochastic_recon_loss(spd.U, spd.V, target.b[0], x, ones, torch.rand(7, 4), target(x))
        b = P.stochastic_recon_loss(spd.U, spd.V, target.b[0], x, ones, torch.rand(7, 4), target(x))
    torch.testing.assert_close(a, b)


def test_silenced_copy_keeps_h_and_switches_one_output_off():
    model = S.random_toy(5, 2, seed=0)
    sil = S.silenced_copy(model, 3)
    x = torch.rand(20, 5)
    torch.testing.assert_close(sil.hidden(x), model.hidden(x))
    assert float(sil(x)[:, 3].abs().max()) == 0.0
    torch.testing.assert_close(sil(x)[:, [0, 1, 2, 4]], model(x)[:, [0, 1, 2, 4]])
    torch.testing.assert_close(S.readout_fn(model)(model.hidden(x)), model(x))
    with pytest.raises(ValueError, match="feature"):
        S.silenced_copy(model, 7)


def test_end_to_end_sae_ignores_what_downstream_ignores():
    """With a downstream map that reads only dimension 0, the e2e SAE need not reconstruct dimension 1."""
    g0 = torch.Generator().manual_seed(0)
    acts = lambda b, g: torch.randn(b, 2, generator=g).abs()
    down = lambda h: h[..., :1]
    e2e = A.train_sae(acts, 2, 4, l1_coeff=0.05, steps=300, lr=1e-2, batch=128, downstream=down).sae
    plain = A.train_sae(acts, 2, 4, l1_coeff=0.05, steps=300, lr=1e-2, batch=128).sae
    h = acts(2000, g0)
    err = lambda s, dim: float(((s(h)[0] - h)[:, dim] ** 2).mean())
    assert err(e2e, 0) < 0.05 and err(e2e, 1) > 3 * err(plain, 1)


def test_shrinkage_rows_and_unused_feature_report():
    target = S.train_toy(5, 2, 0.1, steps=150).model
    sae_run = A.train_sae(lambda b, g: target.hidden(S.sample_features(b, 5, 0.1, g)), 2, 6, 0.05, steps=60, batch=64)
    spd_run = P.train_spd(target, 0.1, n_components=6, steps=20, batch=64)
    x = S.sample_features(512, 5, 0.1, torch.Generator().manual_seed(0))
    table = P.compare_methods(target, sae_run, spd_run, x)
    assert table["SAE"]["shrinkage"] == pytest.approx(A.shrinkage(sae_run.sae, target.feature_directions()))
    assert 0 <= table["SPD"]["shrinkage"] < 3
    rep = P.unused_feature_report(target, sae_run.sae, sae_run.sae, spd_run.spd, 0, x)
    assert rep["output use (feature)"] > 0 and rep["SAE latent (feature)"] == rep["e2e-SAE latent (feature)"]
    assert set(rep) == {"output use (feature)"} | {f"{n} ({w})" for n in ("SAE latent", "e2e-SAE latent", "SPD importance")
                                                  for w in ("feature", "others")}
