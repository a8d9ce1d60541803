"""Per exercise: a correct solution written differently from the reference passes; a solution that
changes its input in place is rejected and named; realistic wrong solutions fail with the right name.

The alternative solutions use other indexing styles, loops, einsum or numpy, the way learners write them.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mi_tutor import exercises

E = exercises.REGISTRY


# ---------------------------------------------------------------- correct, written differently

def _ls(x, y):
    X = np.hstack([np.ones((len(x), 1)), np.asarray(x, float).reshape(len(x), -1)])
    return np.linalg.solve(X.T @ X, X.T @ y)


def _max_act(acts, k):
    return torch.stack([torch.argsort(acts[:, j], descending=True)[:k] for j in range(acts.shape[1])], dim=1)


def _mean_unit(hidden, unit):
    out = torch.empty_like(hidden)
    out.copy_(hidden)
    out[:, unit] = hidden[:, unit].sum() / hidden.shape[0]
    return out


def _costs(hidden, w_out, b_out, target, unit):
    keep = torch.ones(hidden.shape[1])
    keep[unit] = 0.0
    zeroed = hidden * keep                                   # a new tensor: hidden is untouched
    meaned = zeroed + (1 - keep) * hidden[:, unit].mean()
    intact = F.mse_loss(hidden @ w_out + b_out, target)
    return torch.tensor([F.mse_loss(zeroed @ w_out + b_out, target) - intact,
                         F.mse_loss(meaned @ w_out + b_out, target) - intact])


def _fourier(p):
    rows = [[1.0 / math.sqrt(p)] * p]
    for k in range(1, (p - 1) // 2 + 1):
        rows.append([math.cos(2 * math.pi * k * x / p) * math.sqrt(2 / p) for x in range(p)])
        rows.append([math.sin(2 * math.pi * k * x / p) * math.sqrt(2 / p) for x in range(p)])
    return torch.tensor(rows, dtype=torch.float32)


def _shares(W, p):
    b = _fourier(p)
    c = torch.einsum("bp,pd->bd", b, W[:p])
    total = (W[:p] ** 2).sum()
    return torch.stack([(c[2 * k - 1] ** 2).sum() + (c[2 * k] ** 2).sum() for k in range(1, (p - 1) // 2 + 1)]) / total


def _excluded(logits, acts, W_L, directions, labels):
    part = torch.einsum("mn,mk,kd->nd", directions, directions, acts)
    return F.cross_entropy(logits - part @ W_L, labels).item()


def _fraction(coeffs, k):
    sq = coeffs ** 2
    idx = [0, 2 * k - 1, 2 * k]
    block = sum(sq[i, j] for i in idx for j in idx) - sq[0, 0]
    return block / (sq.sum(dim=(0, 1)) - sq[0, 0])


def _restricted_logits(logits, directions, labels):
    coeff = torch.einsum("mn,np->mp", directions, logits)
    kept = logits.sum(0) / logits.shape[0] + torch.einsum("mn,mp->np", directions, coeff)
    return F.nll_loss(torch.log_softmax(kept.to(torch.float64), dim=-1), labels).item()


def _prev(pattern):
    seq = pattern.shape[-1]
    return torch.stack([pattern[..., q, q - 1] for q in range(1, seq)], dim=-1).mean(-1)


def _induction(pattern, half_len, start=0):
    vals = [pattern[..., q, q - half_len + 1] for q in range(start + half_len, start + 2 * half_len)]
    return sum(vals) / len(vals)


def _kcomp(W_OV, W_QK):
    return float(torch.norm(W_QK @ W_OV.T) / (torch.norm(W_QK) * torch.norm(W_OV)))


def _icl(loss, early=50, late=500, halfwidth=5):
    w = halfwidth
    return float(loss[:, late - w:late + w + 1].mean() - loss[:, early - w:early + w + 1].mean())


def _mean_hook(z, hook, head, mean_z):
    keep = torch.ones(z.shape[2], 1)
    keep[head] = 0
    return z * keep + mean_z[None] * (1 - keep)


def _restore_hook(k, hook, head, clean_k, n_heads):
    group = n_heads // k.shape[2]
    parts = [clean_k[:, :, i:i + 1] if i == head // group else k[:, :, i:i + 1] for i in range(k.shape[2])]
    return torch.cat(parts, dim=2)


def _ld(logits, io, s):
    last = logits[:, -1, :]
    return last.gather(1, io[:, None]).squeeze(1) - last.gather(1, s[:, None]).squeeze(1)


def _patch(z, z_source, head, pos=None):
    mask = torch.zeros(z.shape[1], z.shape[2], dtype=torch.bool)
    if pos is None:
        mask[:, head] = True
    else:
        mask[pos, head] = True
    return torch.where(mask[None, :, :, None], z_source, z)


def _loop(run, z_source, layers, n_heads, pos=None):
    from mi_tutor.lab.hooks import hook_name

    rows = []
    for L in layers:
        row = []
        for h in range(n_heads):
            def swap(z, hook, h=h, L=L):
                return _patch(z, z_source[L], h, pos)
            row.append(run([(hook_name(L, "z"), swap)]))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32) - run()


def _copy(resid, W_V, W_O, W_U, k):
    out = []
    for h in range(W_V.shape[0]):
        logits = resid @ W_V[h] @ W_O[h] @ W_U
        ranks = (logits > logits.diagonal()[:, None]).sum(-1)  # names strictly above the attended name itself
        out.append((ranks < k).float().mean())
    return torch.stack(out)


def _pp(resid, z_target, z_source, W_O, W_Q, sender):
    delta = torch.einsum("bpd,dm->bpm", z_source[:, :, sender] - z_target[:, :, sender], W_O[sender])
    return resid @ W_Q + delta @ W_Q


def _succ(logits, category, successor):
    hits = n = 0
    for i in range(len(successor)):
        if successor[i] < 0:
            continue
        row = logits[i].clone()
        row[category != category[i]] = -float("inf")
        hits += int(row.argmax() == successor[i])
        n += 1
    return hits / n


def _ica(eff_ov):  # population std: accepted, the task only says "unit standard deviation"
    L, H, n, _ = eff_ov.shape
    x = eff_ov.numpy().astype(np.float64)
    x = x - x.mean(-1, keepdims=True)
    x = x.reshape(L * H, n * n)
    return (x / x.std(-1, keepdims=True)).T


def _mean_head(z, head, mean_z):
    out = z.detach().clone()
    for b in range(z.shape[0]):
        out[b, :, head] = mean_z[:, head]
    return out


def _attr(z_target, z_source, grad):
    return torch.einsum("bphd,bphd->bh", z_source - z_target, grad).mean(0)


def _eff_ov_head(resid, w_in, W_V, W_O, w_final, W_U):  # one row at a time, einsum
    rows = []
    for x in resid:
        x = x * torch.rsqrt(x.square().mean() + 1e-5) * w_in
        o = torch.einsum("d,de,ef->f", x, W_V, W_O)
        o = o * torch.rsqrt(o.square().mean() + 1e-5) * w_final
        rows.append(o @ W_U)
    return torch.stack(rows)


def _eff_ov_inplace(resid, w_in, W_V, W_O, w_final, W_U):  # normalises the caller's resid in place
    resid.mul_(torch.rsqrt(resid.pow(2).mean(-1, keepdim=True) + 1e-5)).mul_(w_in)
    o = resid @ W_V @ W_O
    return o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * w_final @ W_U


def _eff_ov_no_eps(resid, w_in, W_V, W_O, w_final, W_U):  # right up to eps, but reads W_U by rows
    o = (resid / resid.pow(2).mean(-1, keepdim=True).sqrt() * w_in) @ W_V @ W_O
    return ((o / o.pow(2).mean(-1, keepdim=True).sqrt() * w_final) @ W_U).T


def _resample(z, head, perm):
    out = z.clone()
    out[:, :, head] = z[:, :, head].index_select(0, perm)
    return out


def _kl(clean, ablated):
    return F.kl_div(ablated.log_softmax(-1), clean.log_softmax(-1), log_target=True, reduction="none").sum(-1).mean()


def _split(ld_clean, ld_ablated, dla_clean, dla_ablated, head):
    l, h = head
    total = ld_clean - ld_ablated
    direct = float(dla_clean[l, h] - dla_ablated[l, h])
    return torch.tensor([total, direct, direct - total], dtype=torch.float32)


def _cov(per_prompt, target):
    x = per_prompt - per_prompt.mean(0)
    y = (target - target.mean())[:, None, None]
    return (x * y).mean(0) / (x.std(0, correction=0) * y.std(0, correction=0))


def _grads(W, X, y):
    out = []
    for n in range(len(X)):
        w = W.clone().requires_grad_(True)
        F.cross_entropy((X[n] @ w.T)[None], y[n:n + 1]).backward()
        out.append(w.grad)
    return torch.stack(out)


def _frozen(out_clean, out_ablated, scale_clean, scale_ablated, direction):
    return torch.einsum("bd,bd->b", out_clean, direction) / scale_clean - torch.einsum(
        "bd,bd->b", out_ablated, direction) / scale_clean


def _frozen_inplace(out_clean, out_ablated, scale_clean, scale_ablated, direction):
    out_clean -= out_ablated
    return (out_clean * direction).sum(-1) / scale_clean


def _frozen_mean(out_clean, out_ablated, scale_clean, scale_ablated, direction):
    return (((out_clean - out_ablated) * direction).sum(-1) / scale_clean).mean()


def _proj(G, k, seed=0):
    R = torch.randn(G.shape[1], k, generator=torch.Generator().manual_seed(seed), dtype=G.dtype)
    return (G @ R) * k ** -0.5


def _gram(deltas, xs):
    return torch.einsum("ti,si,tj,sj->ts", deltas, deltas, xs, xs)


def _sae(h, h_hat, z, l1_coeff):
    return torch.linalg.vector_norm(h - h_hat, dim=-1).pow(2).mean() + l1_coeff * torch.linalg.vector_norm(z, 1, dim=-1).mean()


def _recovery(true_dirs, learned_dirs):
    cos = F.cosine_similarity(true_dirs[:, None, :], learned_dirs[None, :, :], dim=-1)
    return cos.amax(dim=1).mean()


def _mask(pre, r):
    g = torch.minimum(torch.maximum(pre, torch.zeros_like(pre)), torch.ones_like(pre))
    return g, 1 - (1 - g) * (1 - r)


def _recon(U, V, bias, x, g, r, target_out):
    m = torch.lerp(g, torch.ones_like(g), r)                      # U(g, 1)
    W_enc = torch.einsum("bc,cm,cn->bmn", m, U, V)                # per-input masked weights
    h = torch.einsum("bmn,bn->bm", W_enc, x)
    out = F.relu(torch.einsum("bmn,bm->bn", W_enc, h) + bias)
    return F.mse_loss(out, target_out, reduction="sum") / len(x)


def _rms_lens(resid, weight, W_U, eps):
    rms = torch.sqrt(torch.mean(resid * resid, dim=1, keepdim=True) + eps)
    return torch.einsum("nd,dv->nv", resid * weight / rms, W_U)


def _mean_diff(acts, labels):
    ones = labels.float()[:, None]
    return (acts * ones).sum(0) / ones.sum() - (acts * (1 - ones)).sum(0) / (1 - ones).sum()


def _selectivity(train_x, train_y, train_c, test_x, test_y, test_c):
    accs = []
    for tr, te in ((train_y, test_y), (train_c, test_c)):
        mu = [train_x[tr == k].mean(0) for k in (0, 1)]
        d = mu[1] - mu[0]
        score = (test_x - (mu[0] + mu[1]) / 2) @ d
        accs.append(((score > 0).long() == te).double().mean().item())
    return accs[0] - accs[1]


def _steer(resid, direction, coeff):
    unit = torch.nn.functional.normalize(direction, dim=0)
    return torch.add(resid, unit, alpha=coeff)


ALTERNATIVES = {
    "least_squares": _ls, "max_activating_inputs": _max_act, "mean_ablate_unit": _mean_unit,
    "ablation_costs": _costs,
    "fourier_basis": _fourier, "frequency_shares": _shares, "excluded_loss": _excluded,
    "frequency_fraction": _fraction, "restricted_loss_logits": _restricted_logits,
    "previous_token_score": _prev, "induction_score": _induction,
    "k_composition_score": _kcomp, "in_context_learning_score": _icl, "mean_ablation_hook": _mean_hook,
    "restore_keys_hook": _restore_hook, "logit_difference": _ld,
    "patch_head": _patch, "head_patching_map": _loop, "path_patched_query": _pp, "copy_score": _copy,
    "successor_score": _succ, "ica_matrix": _ica,
    "effective_ov_head": _eff_ov_head, "mean_ablate_head": _mean_head, "attribution_estimate": _attr,
    "resample_ablate_head": _resample, "control_kl": _kl, "split_total_effect": _split, "covariation_scores": _cov,
    "frozen_direct_effect": _frozen,
    "per_example_grads": _grads, "random_projection": _proj, "per_token_gram": _gram, "sae_loss": _sae,
    "feature_recovery": _recovery, "causal_importance_mask": _mask,
    "stochastic_recon_loss": _recon,
    "rms_lens": _rms_lens, "mean_difference_direction": _mean_diff, "selectivity": _selectivity, "steer": _steer,
}


def test_every_exercise_has_an_alternative_solution():
    assert set(ALTERNATIVES) == set(E)


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_a_correct_solution_written_differently_passes(name):
    result = exercises.run_check(name, ALTERNATIVES[name])
    assert result.passed, result.message


# ---------------------------------------------------------------- in-place changes of the inputs

def _mutating(name):
    """The reference's result, but the function also overwrites its first tensor input."""
    ref = E[name].reference

    def fn(*args, **kwargs):
        out = ref(*args, **kwargs)
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                a.mul_(2).add_(1)
                break
            if isinstance(a, np.ndarray):
                a *= 2
                a += 1
                break
        return out
    return fn


MUTABLE = [n for n in sorted(E) if any(isinstance(a, (torch.Tensor, np.ndarray)) and
                                       (not isinstance(a, torch.Tensor) or a.is_floating_point())
                                       for a in E[n].fresh_cases()[0][0])]


@pytest.mark.parametrize("name", MUTABLE)
def test_changing_an_input_in_place_is_rejected_and_named(name):
    result = exercises.run_check(name, _mutating(name))
    assert not result.passed and result.kind == "mutation", result.message
    assert "in place" in result.message and result.mistake and "in place" in result.mistake


def _inplace_mean_unit(hidden, unit):
    hidden[:, unit] = hidden[:, unit].mean()
    return hidden


def _inplace_costs(hidden, w_out, b_out, target, unit):
    intact = ((hidden @ w_out + b_out - target) ** 2).mean()
    hidden[:, unit] = 0.0
    zero = ((hidden @ w_out + b_out - target) ** 2).mean() - intact
    hidden[:, unit] = hidden[:, unit].mean()                 # the mean of the zeroed column: 0
    return torch.stack([zero, ((hidden @ w_out + b_out - target) ** 2).mean() - intact])


def _inplace_mean_hook(z, hook, head, mean_z):
    z[:, :, head] = mean_z[:, head]  # TransformerLens accepts this (a hook may edit in place), the task does not
    return z


def _inplace_restore(k, hook, head, clean_k, n_heads):
    kv = head // (n_heads // k.shape[2])
    k[:, :, kv] = clean_k[:, :, kv]


def _inplace_patch(z, z_source, head, pos=None):
    z[:, :, head] = z_source[:, :, head]
    return z


def _inplace_mean_head(z, head, mean_z):
    z[:, :, head] = mean_z[None, :, head]
    return z


def _inplace_resample(z, head, perm):
    z[:, :, head] = z[perm][:, :, head]
    return z


def _inplace_steer(resid, direction, coeff):
    resid += coeff * direction / direction.norm()
    return resid


COPY_TASKS = {"mean_ablate_unit": (_inplace_mean_unit, "hidden"), "mean_ablation_hook": (_inplace_mean_hook, "z"),
              "restore_keys_hook": (_inplace_restore, "k"), "patch_head": (_inplace_patch, "z"),
              "mean_ablate_head": (_inplace_mean_head, "z"),
              "resample_ablate_head": (_inplace_resample, "z"),
              "steer": (_inplace_steer, "resid")}


def test_the_copy_tasks_are_flagged():
    assert {n for n, e in E.items() if e.returns_copy} == set(COPY_TASKS)


@pytest.mark.parametrize("name", sorted(COPY_TASKS))
def test_a_realistic_in_place_solution_of_a_copy_task_is_rejected(name):
    fn, arg = COPY_TASKS[name]
    result = exercises.run_check(name, fn)
    assert not result.passed and result.kind == "mutation"
    assert f"changed its input `{arg}` in place" in result.message
    assert "the task asks for a new tensor" in result.message and "Hint:" in result.message


# ---------------------------------------------------------------- almost right, and type strictness

def test_successor_score_masking_with_zero_is_caught_by_all_negative_logits():
    def mask_zero(logits, category, successor):
        has = successor >= 0
        same = category[None, :] == category[:, None]
        top = torch.where(same, logits, torch.zeros_like(logits)).argmax(-1)
        return float((top[has] == successor[has]).float().mean())
    result = exercises.run_check("successor_score", mask_zero)
    assert not result.passed
    assert result.mistake and "instead of -inf" in result.mistake


def test_ica_matrix_accepts_both_standard_deviations_but_not_no_scaling():
    assert exercises.run_check("ica_matrix", _ica).passed  # numpy's std: the population one
    assert exercises.run_check("ica_matrix", E["ica_matrix"].reference).passed  # torch's: unbiased
    assert not exercises.run_check("ica_matrix", lambda e: _ica(e) * 1.5).passed


@pytest.mark.parametrize("name,convert,words", [
    ("mean_ablate_unit", lambda t: t.numpy(), "numpy array; the task asks for a torch.Tensor"),
    ("mean_ablate_unit", lambda t: t.double(), "torch.float64; the task asks for torch.float32"),
    ("mean_ablate_unit", lambda t: t.to(torch.complex64) + 1j, "complex tensor"),
    ("mean_ablate_unit", lambda t: t.tolist(), "is a list, expected a torch.Tensor"),
    ("ablation_costs", lambda t: t.double(), "torch.float64; the task asks for torch.float32"),
    ("max_activating_inputs", lambda t: t.float(), "the task asks for integers"),
    ("successor_score", lambda f: str(f), "the task asks for one real number"),
    ("successor_score", lambda f: complex(f, 1), "the task asks for one real number"),
    ("least_squares", lambda a: torch.tensor(a), "torch.Tensor; the task asks for a numpy array"),
    ("least_squares", lambda a: a.astype(np.float32), "the task asks for float64"),
    ("sae_loss", lambda t: t.item(), "the task asks for a scalar torch.Tensor"),
    ("causal_importance_mask", lambda t: t[0], "is a Tensor, expected a tuple of 2 items"),
])
def test_a_result_of_the_wrong_type_is_refused_in_one_line(name, convert, words):
    ref = E[name].reference
    result = exercises.run_check(name, lambda *a, **k: convert(ref(*a, **k)))
    assert not result.passed and result.kind == "type", result.message
    assert words in result.message
    assert "Traceback" not in result.message


def test_a_wrong_result_that_matches_no_mistake_says_where_and_by_how_much():
    result = exercises.run_check("copy_score", lambda resid, W_V, W_O, W_U, k: torch.zeros(W_V.shape[0]))
    assert not result.passed and result.mistake is None  # zeros are not "you took the top k over a column"
    assert "largest difference" in result.message and "at index [" in result.message and "instead of" in result.message


def test_a_mistake_is_named_only_if_it_matches_on_every_input():
    ref = E["logit_difference"].reference
    calls = []

    def flipped_once(lg, io, s):
        calls.append(1)
        out = ref(lg, io, s)
        return -out if len(calls) == 1 else out
    result = exercises.run_check("logit_difference", flipped_once)
    assert not result.passed and result.mistake is None


# ---------------------------------------------------------------- realistic wrong solutions, as learners write them

def _topk_tuple(acts, k):
    return acts.topk(k, dim=0)


def _ls_float32(x, y):
    return _ls(x, y).astype(np.float32)


def _fourier_sin_first(p):
    b = _fourier(p)
    out = b.clone()
    out[1::2], out[2::2] = b[2::2], b[1::2]
    return out


def _restricted_centre_in_place(logits, directions, labels):
    mean = logits.mean(0, keepdim=True)
    logits -= mean  # centre first, but in the caller's tensor
    kept = mean + directions.T @ (directions @ logits)
    return float(F.cross_entropy(kept.double(), labels))


def _restricted_projection_only(logits, directions, labels):
    kept = directions.T @ (directions @ logits)
    return float(F.cross_entropy(kept.double(), labels))


def _ld_wrong_index(logits, io, s):
    return logits[:, -1][io][:, 0] - logits[:, -1][s][:, 0]


def _kl_batchmean(clean, ablated):
    return F.kl_div(ablated.log_softmax(-1), clean.softmax(-1), reduction="batchmean")


def _split_tuple(ld_clean, ld_ablated, dla_clean, dla_ablated, head):
    return tuple(_split(ld_clean, ld_ablated, dla_clean, dla_ablated, head).tolist())


def _proj_numpy_rng(G, k, seed=0):
    R = torch.tensor(np.random.default_rng(seed).normal(size=(G.shape[1], k)), dtype=G.dtype)
    return G @ R / math.sqrt(k)


def _induction_off_by_one(pattern, half_len, start=0):
    q = torch.arange(start + half_len, start + 2 * half_len)
    return pattern[..., q, q - half_len].mean(-1)


def _mean_hook_zero_all_positions(z, hook, head, mean_z):
    out = z.clone()
    out[..., head, :] = torch.zeros_like(out[..., head, :])
    return out


def _restore_query_index(k, hook, head, clean_k, n_heads):
    out = k.clone()
    out[:, :, head] = clean_k[:, :, head]  # the query-head index on the key/value axis: IndexError with GQA
    return out


def _mse_loss(h, h_hat, z, l1_coeff):
    return F.mse_loss(h_hat, h) + l1_coeff * z.abs().sum(-1).mean()


def _grads_times_n(W, X, y):
    Wg = W.clone().requires_grad_(True)
    F.cross_entropy(X @ Wg.T, y, reduction="sum").backward()
    return Wg.grad.expand(len(X), *W.shape).clone()


def _prev_sum(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).sum(-1)


def _mean_unit_overall(hidden, unit):
    out = hidden.clone()
    out[:, unit] = hidden.mean()
    return out


def _costs_reusing_zeroed(hidden, w_out, b_out, target, unit):
    ablated = hidden.clone()
    intact = ((hidden @ w_out + b_out - target) ** 2).mean()
    ablated[:, unit] = 0.0
    zero = ((ablated @ w_out + b_out - target) ** 2).mean() - intact
    ablated[:, unit] = ablated[:, unit].mean()
    return torch.stack([zero, ((ablated @ w_out + b_out - target) ** 2).mean() - intact])


def _costs_mean_of_contribution(hidden, w_out, b_out, target, unit):
    meaned = hidden.clone()
    meaned[:, unit] = (hidden[:, unit] * w_out[unit]).mean()  # the mean contribution, not the mean activation
    zeroed = hidden.clone()
    zeroed[:, unit] = 0.0
    intact = ((hidden @ w_out + b_out - target) ** 2).mean()
    return torch.stack([((h @ w_out + b_out - target) ** 2).mean() - intact for h in (zeroed, meaned)])


def _gram_of_summed_gradient(deltas, xs):
    G = torch.einsum("ti,tj->tij", deltas, xs).flatten(1)
    return G @ G.T / len(xs)


def _recon_untied_mask(U, V, bias, x, g, r, target_out):
    m = g + (1 - g) * r
    h = ((x @ V.T) * m) @ U
    out = torch.relu((h @ U.T) @ V + bias)
    return ((out - target_out) ** 2).sum(-1).mean()


def _sigmoid_mask(pre, r):
    g = torch.sigmoid(pre)
    return g, g + (1 - g) * r


def _loop_all_positions(run, z_source, layers, n_heads, pos=None):
    return _loop(run, z_source, layers, n_heads, None)


def _loop_cache_mutated(run, z_source, layers, n_heads, pos=None):
    """Writes the patch into the source cache itself (then hands it to the run): the cache changes."""
    from mi_tutor.lab.hooks import hook_name

    out = torch.zeros(len(layers), n_heads)
    clean = run()
    for i, L in enumerate(layers):
        for h in range(n_heads):
            def swap(z, hook, h=h, L=L):
                z_source[L][:, :, [j for j in range(n_heads) if j != h]] = z[:, :, [j for j in range(n_heads) if j != h]]
                return z_source[L]
            out[i, h] = run([(hook_name(L, "z"), swap)]) - clean
    return out


def _copy_diag_max(resid, W_V, W_O, W_U, k):
    """Asks whether the attended name is the row's maximum, whatever k."""
    logits = torch.einsum("nd,hde,hem,mj->hnj", resid, W_V, W_O, W_U)
    return (logits.argmax(-1) == torch.arange(resid.shape[0])).float().mean(-1)


#: (exercise, wrong solution, a phrase of the named mistake, or None when no known mistake fits)
REALISTIC_WRONG = [
    ("max_activating_inputs", _topk_tuple, None),
    ("least_squares", _ls_float32, None),
    ("ablation_costs", _inplace_costs, "in place"),
    ("ablation_costs", _costs_reusing_zeroed, "after it had been zeroed"),
    ("ablation_costs", _costs_mean_of_contribution, None),
    ("fourier_basis", _fourier_sin_first, None),
    ("restricted_loss_logits", _restricted_centre_in_place, "in place"),
    ("restricted_loss_logits", _restricted_projection_only, "mean over the inputs"),
    ("logit_difference", _ld_wrong_index, None),
    ("control_kl", _kl_batchmean, "reduction='batchmean'"),
    ("split_total_effect", _split_tuple, None),
    ("random_projection", _proj_numpy_rng, None),
    ("induction_score", _induction_off_by_one, "duplicate-token"),
    ("mean_ablation_hook", _mean_hook_zero_all_positions, "zero-ablated"),
    ("restore_keys_hook", _restore_query_index, None),
    ("sae_loss", _mse_loss, "F.mse_loss"),
    ("per_example_grads", _grads_times_n, None),
    ("previous_token_score", _prev_sum, None),
    ("mean_ablate_unit", _mean_unit_overall, None),
    ("causal_importance_mask", _sigmoid_mask, "smooth sigmoid"),
    ("per_token_gram", _gram_of_summed_gradient, None),
    ("stochastic_recon_loss", _recon_untied_mask, "both uses"),
    ("head_patching_map", _loop_all_positions, "every position"),
    ("head_patching_map", _loop_cache_mutated, "in place"),
    ("copy_score", _copy_diag_max, "top 1"),
    ("mean_ablate_unit", _inplace_mean_unit, "in place"),
    ("patch_head", _inplace_patch, "in place"),
    ("effective_ov_head", _eff_ov_inplace, "in place"),
    ("effective_ov_head", _eff_ov_no_eps, "rows must be input tokens"),
    ("frozen_direct_effect", _frozen_inplace, "in place"),
    ("frozen_direct_effect", _frozen_mean, None),
]


@pytest.mark.parametrize("name,fn,named", REALISTIC_WRONG, ids=[f"{n}:{f.__name__}" for n, f, _ in REALISTIC_WRONG])
def test_a_realistic_wrong_solution_fails_and_is_named_only_if_it_fits(name, fn, named):
    result = exercises.run_check(name, fn)
    assert not result.passed, f"{fn.__name__} passes the check of {name}"
    if named is None:
        assert result.mistake is None, result.message
        assert "on inputs (" in result.message  # says on which input it differs
    else:
        assert result.mistake and named in result.mistake, result.message
    assert "Hint:" in result.message
