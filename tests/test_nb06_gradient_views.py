"""Unit tests of notebook 06's modules: mi_tutor.multitask and mi_tutor.gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mi_tutor import gradients as gr
from mi_tutor import multitask as mt


# ------------------------------------------------------------------ the multi-task data and model

def test_make_tasks_answers_follow_the_rules():
    d = mt.make_tasks(50, p=11, seed=3)
    assert d.tokens.shape == (150, 4) and len(d) == 150
    x, op = d.tokens[:, :3], d.tokens[:, 3]
    assert torch.equal(op, d.task + 11), "the op token names the task"
    add, copy, rep = (d.task == i for i in range(3))
    assert torch.equal(d.targets[add], (x[add, 0] + x[add, 1]) % 11)
    assert torch.equal(d.targets[copy], x[copy, 0])
    # repeat: the target occurs exactly twice among x1..x3
    counts = (x[rep] == d.targets[rep, None]).sum(1)
    assert torch.all(counts == 2)
    assert torch.equal(mt.make_tasks(50, p=11, seed=3).tokens, d.tokens)
    assert not torch.equal(mt.make_tasks(50, p=11, seed=4).tokens, d.tokens)
    with pytest.raises(ValueError, match="n_per_task"):
        mt.make_tasks(0)


def test_model_rejects_bad_shapes_and_trains_on_copy():
    model = mt.build_model(p=5, seed=0, d_model=16, d_mlp=32)
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(3, 5, dtype=torch.long))
    train, test = mt.make_tasks(150, p=5, seed=0), mt.make_tasks(40, p=5, seed=1)
    hist = mt.train_model(model, train, test, steps=120, lr=1e-2, progress=False)
    assert hist.last("train_loss") < hist.metrics["train_loss"][0] / 3
    assert hist.last("acc_copy") > 0.9, "copying is the easiest task; a tiny model must learn it"


# ------------------------------------------------------------------ per-example gradients

@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = mt.build_model(p=5, seed=1, d_model=16, d_mlp=32)
    data = mt.make_tasks(12, p=5, seed=2)
    return model, data


def test_per_example_grads_match_one_backward_per_example(small):
    model, data = small
    G = gr.per_example_grads(model, data.tokens, data.targets, chunk=5)
    assert G.shape == (len(data), sum(p.numel() for p in model.parameters()))
    for i in (0, 7, 35):
        model.zero_grad()
        F.cross_entropy(model(data.tokens[i:i + 1]), data.targets[i:i + 1]).backward()
        want = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert torch.allclose(G[i], want, atol=1e-5)
    model.zero_grad()
    sub = gr.per_example_grads(model, data.tokens, data.targets, params=["unembed.weight"])
    assert sub.shape[1] == model.unembed.weight.numel()
    with pytest.raises(ValueError, match="same length"):
        gr.per_example_grads(model, data.tokens, data.targets[:3])


def test_kronecker_projection_equals_projecting_the_exact_gradient():
    torch.manual_seed(0)
    xs, ds = torch.randn(4, 3, 6), torch.randn(4, 3, 5)
    P_in, P_out = torch.randn(2, 6), torch.randn(3, 5)
    got = gr.kronecker_project(xs, ds, P_in, P_out)
    G = torch.einsum("nto,nti->noi", ds, xs)                  # exact per-example gradients
    want = (P_out @ G @ P_in.T).flatten(1)
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="agree"):
        gr.kronecker_project(xs, ds[:, :2], P_in, P_out)


def test_kronecker_grads_cover_every_parameter_and_keep_inner_products(small):
    """With k_side >= every layer dimension the Kronecker projection barely compresses, so the cosines
    of projected gradients must track the exact per-example cosines closely."""
    model, data = small
    G = gr.per_example_grads(model, data.tokens, data.targets)
    K = gr.kronecker_grads(model, data.tokens, data.targets, k_side=256, seed=0)
    r = gr.offdiag_correlation(gr.cosine_matrix(G), gr.cosine_matrix(K))
    assert r > 0.9, f"Kronecker-projected cosines should track the exact ones (r={r:.3f})"
    assert all(p.grad is None for p in model.parameters()), "kronecker_grads must not leave .grad behind"


def test_linear_capture_gives_per_example_gradients_for_a_bias_layer():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    y = torch.randint(0, 3, (5,))
    with gr.LinearCapture({"lin": lin}) as cap:
        F.cross_entropy(lin(x), y, reduction="sum").backward()
    x1, d = cap.xs["lin"], cap.deltas["lin"]
    assert x1.shape == (5, 1, 5) and torch.all(x1[..., -1] == 1), "bias appears as a constant input 1"
    per = torch.einsum("nto,nti->noi", d, x1)                  # [5, 3, 5]: weight and bias gradients
    assert torch.allclose(per.sum(0)[:, :4], lin.weight.grad, atol=1e-5)
    assert torch.allclose(per.sum(0)[:, 4], lin.bias.grad, atol=1e-5)


# ------------------------------------------------------------------ similarity, projection, clustering

def test_angular_similarity_values():
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    S = gr.angular_similarity(G)
    assert torch.allclose(S, torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]]), atol=1e-3)
    with pytest.raises(ValueError, match="n_examples"):
        gr.cosine_matrix(torch.zeros(3))


def test_random_projection_keeps_inner_products_better_with_k():
    torch.manual_seed(0)
    G = torch.randn(30, 2000) + torch.linspace(-2, 2, 30)[:, None] * torch.randn(1, 2000)  # varied cosines
    S = gr.cosine_matrix(G)
    corrs = [gr.offdiag_correlation(S, gr.cosine_matrix(gr.random_projection(G, k, seed=1))) for k in (4, 64, 1024)]
    assert corrs[0] < corrs[1] < corrs[2] and corrs[2] > 0.95
    assert torch.equal(gr.random_projection(G, 16, seed=3), gr.random_projection(G, 16, seed=3))
    with pytest.raises(ValueError, match="positive"):
        gr.random_projection(G, 0)


def test_ari_matches_sklearn_and_is_permutation_invariant():
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 60), rng.integers(0, 3, 60)
        assert abs(gr.adjusted_rand_index(a, b) - adjusted_rand_score(a, b)) < 1e-9
    a = rng.integers(0, 4, 40)
    assert gr.adjusted_rand_index(a, (a + 1) % 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        gr.adjusted_rand_index([0, 1], [0, 1, 1])


def test_spectral_clusters_find_planted_groups_and_purity_beats_shuffles():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 50))
    truth = np.repeat(np.arange(3), 20)
    G = torch.tensor(centres[truth] + 0.5 * rng.normal(size=(60, 50)), dtype=torch.float32)
    lab = gr.spectral_clusters(gr.angular_similarity(G), 3, seed=0)
    assert gr.adjusted_rand_index(lab, truth) > 0.9
    assert gr.purity(lab, truth) > gr.shuffled_purity(lab, truth, n=20).max() + 0.3
    with pytest.raises(ValueError, match="square"):
        gr.spectral_clusters(np.zeros((3, 4)), 2)


def test_cluster_table_and_browser_figure():
    import matplotlib

    matplotlib.use("Agg")
    S = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.2], [0.1, 0.2, 1.0]])
    lab = np.array([0, 0, 1])
    rows = gr.cluster_table(lab, S, lambda i: f"ex{i}", per_cluster=2)
    assert rows[0]["size"] == 2 and set(rows[0]["examples"]) == {"ex0", "ex1"}
    assert gr.nearest_clusters(lab, S, 0) == [(1, pytest.approx(0.15))]
    fig = gr.plot_cluster(lab, S, lambda i: f"ex{i}", cluster=1)
    assert "cluster 1" in fig.texts[0].get_text()
    with pytest.raises(ValueError, match="no cluster"):
        gr.plot_cluster(lab, S, str, cluster=5)


# ------------------------------------------------------------------ the language-model path (tiny random GPT-2)

def test_lm_token_gradients_exact_similarity_matches_brute_force():
    """On a tiny random GPT-2, the rank-1 exact similarity equals the cosine of per-token gradients
    computed by brute force (one backward per token) for the last block's c_proj / c_fc weights."""
    from mi_tutor.models import random_gpt2

    model = random_gpt2(n_layers=2, n_heads=2, d_model=32, seed=0)
    torch.manual_seed(0)
    toks = torch.randint(5, 500, (2, 10))
    tg = gr.lm_token_gradients(model, toks, max_loss=1e9, max_tokens=6, k_side=8, batch=2)
    assert len(tg.losses) == 6 and tg.grads.shape[0] == 6
    mods = gr.last_block_linears(model)
    assert set(tg.layers) == {gr.short_name(n) for n in mods}
    params = [p for m in mods.values() for p in m.parameters(recurse=False)]
    rows = []
    for s, p in zip(tg.seq.tolist(), tg.pos.tolist()):
        for q in params:
            q.requires_grad_(True)
        logits = model(toks[s:s + 1])
        loss = F.cross_entropy(logits[0, p - 1:p], toks[s, p:p + 1])
        gs = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.flatten() for g in gs]))
        for q in params:
            q.requires_grad_(False)
    brute = gr.cosine_matrix(torch.stack(rows))
    assert torch.allclose(tg.exact_sim, brute, atol=1e-4), (tg.exact_sim - brute).abs().max()
    assert torch.allclose(tg.losses, torch.stack([
        F.cross_entropy(model(toks[s:s + 1])[0, p - 1:p], toks[s, p:p + 1]) for s, p in zip(tg.seq.tolist(), tg.pos.tolist())
    ]), atol=1e-5)


def test_lm_factor_grams_multiply_to_the_exact_similarity():
    from mi_tutor import attribution as at
    from mi_tutor.models import random_gpt2

    model = random_gpt2(n_layers=2, n_heads=2, d_model=32, seed=0)
    torch.manual_seed(0)
    tg = gr.lm_token_gradients(model, torch.randint(5, 500, (2, 10)), max_loss=1e9, max_tokens=8, k_side=8, batch=2)
    gram = sum(d * x for d, x in tg.factor_grams.values())
    d = gram.diagonal().sqrt()
    torch.testing.assert_close((gram / d[:, None] / d[None]).float(), tg.exact_sim, atol=1e-5, rtol=0)
    fr = at.factor_report(tg.factor_grams, 2, tg.token_ids.numpy())
    assert sum(fr["layer share"].values()) == pytest.approx(1.0)
    assert set(fr["r2"]) == {"output gradient delta only", "input activation x only", "product of the two"}
    assert all(0 <= v <= 1 + 1e-9 for v in fr["r2"].values())


# ------------------------------------------------------------------ notebook 06's baselines, reparametrisation, attribution

def test_rank_one_gram_equals_inner_products_of_outer_products():
    torch.manual_seed(0)
    deltas, xs = torch.randn(6, 3), torch.randn(6, 4)
    outer = torch.einsum("ti,tj->tij", deltas, xs).flatten(1)
    torch.testing.assert_close(gr.rank_one_gram(deltas, xs), outer @ outer.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="agree on N"):
        gr.rank_one_gram(deltas, xs[:5])


def test_rank_one_gram_is_the_gram_of_a_linear_layers_per_example_gradients():
    """For a bias-free linear layer on one position, vmap per-example gradients have Gram (dd^T)*(xx^T)."""
    torch.manual_seed(1)
    layer = nn.Linear(5, 3, bias=False)
    X, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    G = gr.per_example_grads(layer, X, y)
    logits = (X @ layer.weight.detach().T)
    deltas = logits.softmax(-1) - F.one_hot(y, 3).float()
    torch.testing.assert_close(gr.rank_one_gram(deltas, X), G @ G.T, rtol=1e-4, atol=1e-5)


def test_rotation_keeps_function_and_gradient_cosines_rescaling_keeps_only_the_function(small):
    from mi_tutor import attribution as at

    model, data = small
    S0 = gr.cosine_matrix(gr.per_example_grads(model, data.tokens, data.targets))
    d = model.q.in_features
    for M, invariant in ((at.random_rotation(d, seed=3), True), (at.random_rescaling(d, seed=3), False)):
        new = at.reparametrise(model, M)
        with torch.no_grad():
            torch.testing.assert_close(new(data.tokens), model(data.tokens), atol=1e-4, rtol=1e-4)
        S1 = gr.cosine_matrix(gr.per_example_grads(new, data.tokens, data.targets))
        change = float((S1 - S0).abs().max())
        assert (change < 1e-4) if invariant else (change > 1e-2), (invariant, change)
    rot = at.random_rotation(d, seed=3)
    torch.testing.assert_close(rot @ rot.T, torch.eye(d), atol=1e-5, rtol=0)


def test_baseline_table_scores_a_planted_structure():
    from mi_tutor import attribution as at

    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 20)
    centres = rng.normal(size=(3, 8)) * 5
    feats = torch.tensor(centres[truth] + rng.normal(size=(60, 8)), dtype=torch.float32)
    noise = torch.tensor(rng.normal(size=(60, 8)), dtype=torch.float32)
    reps = at.Representations({"planted": gr.angular_similarity(feats), "noise": gr.angular_similarity(noise)}, truth.copy())
    rows = {r.name: r for r in at.baseline_table(reps, truth, truth, 3, 3, n_subsamples=3)}
    assert rows["planted"].ari_task[0] > 0.9 and rows["noise"].ari_task[0] < 0.3
    assert rows["predicted token (no clustering)"].ari_task == (1.0, 0.0)
    assert "planted" in at.format_baselines(list(rows.values()), 3, 3)


def test_best_single_coordinate_finds_the_informative_one():
    from mi_tutor import attribution as at

    labels = np.repeat(np.arange(3), 30)
    acts = torch.randn(90, 5)
    acts[:, 2] += torch.tensor(labels * 10.0)
    j, acc = at.best_single_coordinate(acts, labels)
    assert j == 2 and acc > 0.95


def test_attribution_scores_and_top_influencer_shares():
    from mi_tutor import attribution as at

    torch.manual_seed(0)
    phi_train = torch.randn(40, 6)
    phi_test = phi_train[:5] + 0.01 * torch.randn(5, 6)
    scores = at.attribution_scores(phi_train, phi_test, damping=1e-6)
    assert scores.shape == (5, 40)
    K = phi_train.T @ phi_train
    torch.testing.assert_close(scores, phi_test @ torch.linalg.solve(K, phi_train.T), atol=1e-3, rtol=1e-3)
    same = {"is itself": torch.eye(5, 40, dtype=torch.bool)}
    res = at.top_influencers_agreement(10 * torch.eye(5, 40) + 0.1 * torch.rand(5, 40), 1, same)
    assert res["is itself"][0] == 1.0 and res["is itself"][3] == pytest.approx(5 / 200)


def test_input_overlap_counts_rows():
    from mi_tutor import attribution as at

    train = torch.tensor([[0, 1], [2, 3]])
    assert at.input_overlap(torch.tensor([[0, 1], [1, 0], [2, 3], [0, 1]]), train) == 0.75


def test_attribution_helpers_reject_mismatched_shapes(small):
    from mi_tutor import attribution as at

    model, _ = small
    with pytest.raises(ValueError, match="share k"):
        at.attribution_scores(torch.randn(5, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match="residual stream"):
        at.reparametrise(model, torch.eye(3))
    reps = at.Representations({"x": torch.eye(4)}, np.zeros(4, int))
    with pytest.raises(ValueError, match="same N"):
        at.baseline_table(reps, np.zeros(5, int), np.zeros(5, int), 2, 2)
