"""Reading and writing representations (notebook 08): the logit lens, linear probes, steering.

Three ways to look at the residual stream of a language model:

- **read it through the output** (the logit lens, nostalgebraist 2020): decode the residual after
  each layer with the final norm and the unembedding (`lab.readout.lens_logits`);
- **read it with a trained classifier** (a linear probe, Alain & Bengio 2016): here, whether the
  subject of a sentence is plural, with a control task (Hewitt & Liang 2019) that asks how much
  of a probe's accuracy is the probe's own memory;
- **write to it** (steering: ActAdd, Turner et al. 2023; CAA, Rimsky et al. 2023): add a direction
  after one block (`lab.hooks.steering_hooks`) and measure what moves, and what else moves.

The data (lens prompts, nouns, templates, control text) are made for this lesson and ship in
``mi_tutor/data/representations/representations.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .env import trim_memory
from .lab import hooks, patching, readout, scores

DATA_FILE = Path(__file__).parent / "data" / "representations" / "representations.json"


@lru_cache(maxsize=1)
def data() -> dict:
    """The lesson's project-made data (lens prompts, subject and attractor nouns, templates, control text)."""
    return json.loads(DATA_FILE.read_text())


def encode(model, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS + each prompt, right-padded: ``(tokens [batch, pos], last [batch])`` with `last` the last real position.

    Right padding is harmless in a causal model: no real position attends to a pad.
    """
    rows = [model.to_tokens(p)[0] for p in prompts]
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), int(pad), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    return tokens, torch.tensor([len(r) - 1 for r in rows])


def first_token(model, word: str) -> int:
    """The id of the first token of `word` (e.g. ``" Paris"``)."""
    return int(model.to_tokens(word, prepend_bos=False)[0, 0])


# --------------------------------------------------------------------------------------
# 1. The logit lens
# --------------------------------------------------------------------------------------


def rms_lens(resid: torch.Tensor, weight: torch.Tensor, W_U: torch.Tensor, eps: float) -> torch.Tensor:
    """The logit lens through an RMSNorm: ``(resid / sqrt(mean(resid**2) + eps) * weight) @ W_U``.

    `resid` [n, d_model], `weight` [d_model], `W_U` [d_model, d_vocab] -> logits [n, d_vocab].
    """
    scale = (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return (resid / scale * weight) @ W_U


@dataclass
class LensRun:
    """The logit lens on a set of prompts, at the last position, after every layer (index 0 = embeddings).

    `ranks` [n_layers + 1, n]: rank of the expected answer (0 = top); `top_ids`/`top_probs`
    [n_layers + 1, n, k]; `kl` [n_layers + 1, n]: KL(model's output || lens) in nats;
    `final_top` [n]: the model's own top token; `last_ids` [n]: the prompt's last token.
    """

    prompts: list[str]
    answers: list[str]
    answer_ids: torch.Tensor
    ranks: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    kl: torch.Tensor
    final_top: torch.Tensor
    last_ids: torch.Tensor
    max_gap: float
    #: the decoded text of every token id in `top_ids` (decoded one by one: a whole-vocabulary batch decode
    #: runs the tokenizer's thread pool and costs memory)
    vocab: dict[int, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.ranks.shape[0] - 1

    @property
    def correct(self) -> torch.Tensor:
        """Prompts on which the model's own top token is the expected answer."""
        return self.final_top == self.answer_ids

    def first_top_layer(self) -> torch.Tensor:
        """Per prompt, the first lens index at which the answer ranks top and stays top to the end (-1 if never)."""
        top = self.ranks == 0  # [L+1, n]
        stays = top.flip(0).cumprod(0).flip(0).bool()
        out = torch.full((top.shape[1],), -1)
        for i in range(top.shape[1]):
            idx = torch.nonzero(stays[:, i]).flatten()
            if len(idx):
                out[i] = int(idx[0])
        return out

    def copies_input(self) -> torch.Tensor:
        """Per lens index, the fraction of prompts whose lens top token is the prompt's own last token."""
        return (self.top_ids[:, :, 0] == self.last_ids[None]).float().mean(1)


@torch.no_grad()
def lens_run(model, prompts: Sequence[str] | None = None, answers: Sequence[str] | None = None, k: int = 10) -> LensRun:
    """Run the full-vocabulary logit lens (`lab.readout.lens_logits`) on the lesson's prompts (or yours)."""
    if prompts is None:
        prompts, answers = zip(*data()["lens_prompts"])
    prompts, answers = list(prompts), list(answers)
    tokens, last = encode(model, prompts)
    n = model.cfg.n_layers
    names = [hooks.hook_name(0, "resid_pre")] + [hooks.hook_name(l, "resid_post") for l in range(n)]
    wanted = set(names)
    logits_all, cache = model.run_with_cache(tokens, names_filter=lambda nm: nm in wanted)  # one forward for both
    b = torch.arange(len(prompts))
    resid = torch.stack([cache[nm][b, last] for nm in names])  # [L+1, n, d], as readout.residuals_at
    model_logits = logits_all[b, last].float()
    del logits_all, cache
    ans = torch.tensor([first_token(model, a) for a in answers])
    ranks, top_ids, top_probs, kl = [], [], [], []
    for layer_resid in resid:  # one layer at a time: [n, vocab] each, never [L+1, n, vocab]
        logits = readout.lens_logits(model, layer_resid)
        ranks.append((logits > logits[torch.arange(len(prompts)), ans][:, None]).sum(-1))
        p, i = logits.softmax(-1).topk(k, -1)
        top_probs.append(p)
        top_ids.append(i)
        kl.append(readout.kl_div(model_logits, logits))
        trim_memory(collect=False)  # each layer's freed few-MB blocks, else kept on the heap (measured: up to +0.3 GB)
    max_gap = float((logits - model_logits).abs().max())  # the last layer
    ranks, top_ids, top_probs, kl = (torch.stack(x) for x in (ranks, top_ids, top_probs, kl))
    return LensRun(prompts, answers, ans, ranks, top_ids, top_probs, kl, model_logits.argmax(-1),
                   tokens[torch.arange(len(prompts)), last], max_gap,
                   {int(i): model.tokenizer.decode([int(i)]) for i in torch.unique(top_ids)})


def plot_lens_overview(run: LensRun, title: str = ""):
    """Three panels over layers: the fraction of prompts whose answer ranks top, the answer's median rank, KL to the output."""
    import matplotlib.pyplot as plt

    x = np.arange(run.n_layers + 1)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(x, (run.ranks == 0).float().mean(1), marker=".", label="answer ranks top")
    axes[0].plot(x, run.copies_input(), marker=".", label="lens top = the prompt's last token")
    axes[0].set(xlabel="layer (0 = embeddings)", ylabel="fraction of prompts", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=8)
    r = run.ranks.float() + 1
    axes[1].plot(x, r.median(1).values, marker=".", color="C2")
    axes[1].fill_between(x, r.quantile(0.25, 1), r.quantile(0.75, 1), alpha=0.25, color="C2")
    axes[1].set(yscale="log", xlabel="layer", ylabel="answer rank + 1 (median, IQR)")
    axes[2].plot(x, run.kl.median(1).values, marker=".", color="C3")
    axes[2].set(yscale="log", xlabel="layer", ylabel="KL(output || lens), nats (median)")
    fig.suptitle(title or f"The logit lens on {run.ranks.shape[1]} prompts")
    fig.tight_layout()
    return fig


def plot_lens_view(run: LensRun, prompt: int = 0, layer: int = 0):
    """The logit-lens explorer's view: the lens's top tokens at `layer` for one prompt, and the answer's rank by layer."""
    import matplotlib.pyplot as plt

    k = run.top_ids.shape[-1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.3]})
    labels = [run.vocab[int(t)] for t in run.top_ids[layer, prompt]]
    probs = run.top_probs[layer, prompt].numpy()
    colors = ["C1" if int(t) == int(run.answer_ids[prompt]) else "C0" for t in run.top_ids[layer, prompt]]
    a.barh(range(k)[::-1], probs, color=colors)
    a.set_yticks(range(k)[::-1], [repr(s) for s in labels], fontsize=8)
    a.set(xlabel="lens probability", title=f"layer {layer}: top {k} (orange = answer)")
    ranks = run.ranks[:, prompt].numpy() + 1
    b.plot(np.arange(len(ranks)), ranks, marker=".")
    b.axvline(layer, color="grey", ls="--")
    b.set(yscale="log", xlabel="layer (0 = embeddings)", ylabel="answer rank + 1",
          title=f"{run.prompts[prompt]!r} -> {run.answers[prompt]!r}: rank {int(ranks[layer]) - 1} at layer {layer}")
    fig.tight_layout()
    return fig


@torch.no_grad()
def translator_kl(model, tokens: torch.Tensor, layers: Sequence[int] | None = None, ridge: float = 1.0,
                  train_frac: float = 0.6) -> dict[str, torch.Tensor]:
    """A cheap stand-in for the tuned lens: per layer, an affine map from the residual to the LAST layer's residual,
    fitted by ridge least squares on part of `tokens`' positions, then decoded with the logit lens.

    Returns ``{"logit lens": [len(layers)], "translator": [len(layers)], "constant": [1]}`` (lens indices, default
    all): mean KL(output || lens) on the held-out positions. "constant" decodes the mean last-layer residual of
    the fitting positions at every position: the floor any map reaches by ignoring its input.

    This is a least-squares stand-in, not the tuned lens: the tuned lens of Belrose et al. 2023 writes each
    translator as ``h + A h + b`` (starting at the identity, i.e. at the logit lens) and trains it by gradient
    descent on this KL itself, over far more tokens. Least squares weighs every residual direction alike, also
    those the final norm and unembedding ignore, and the ridge penalty pulls ``A`` towards zero (the constant).
    """
    n = model.cfg.n_layers
    names = [hooks.hook_name(0, "resid_pre")] + [hooks.hook_name(l, "resid_post") for l in range(n)]
    acts = hooks.activations(model, tokens, names)
    H = torch.stack([acts[nm][:, 1:].reshape(-1, model.cfg.d_model) for nm in names]).float()  # skip BOS
    m = H.shape[1]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(m, generator=g)
    tr, te = perm[: int(train_frac * m)], perm[int(train_frac * m):]
    out_logits = readout.lens_logits(model, H[-1, te])
    const = readout.lens_logits(model, H[-1, tr].mean(0, keepdim=True)).expand_as(out_logits)
    lens_kl, tr_kl = [], []
    for layer in (range(n + 1) if layers is None else layers):
        # float64: the normal equations of late residuals (norms in the hundreds) are ill-conditioned, and in float32
        # the CPU's own BLAS code path moved these KLs by up to 0.04 nats (measured on two x86 kernel sets)
        X = torch.cat([H[layer, tr], torch.ones(len(tr), 1)], 1).double()
        A = torch.linalg.solve(X.T @ X + ridge * torch.eye(X.shape[1], dtype=X.dtype), X.T @ H[-1, tr].double())
        pred = (torch.cat([H[layer, te], torch.ones(len(te), 1)], 1).double() @ A).float()
        lens_kl.append(readout.kl_div(out_logits, readout.lens_logits(model, H[layer, te])).mean())
        tr_kl.append(readout.kl_div(out_logits, readout.lens_logits(model, pred)).mean())
    return {"logit lens": torch.stack(lens_kl), "translator": torch.stack(tr_kl),
            "constant": readout.kl_div(out_logits, const).mean()[None]}


# --------------------------------------------------------------------------------------
# 2. Linear probes: is the subject plural?
# --------------------------------------------------------------------------------------


@dataclass
class AgreementSet:
    """Sentences "The <subject> <preposition> the <attractor>" that stop where the verb would come.

    `plural` [n]: the subject is plural (the label); `attractor_plural` [n]: the last noun is (a
    distractor, independent of the label); `noun` [n]: the subject's lemma (the word type the
    control task labels); `are`/`is_`: the verb tokens that agree with a plural / singular subject.
    """

    prompts: list[str]
    tokens: torch.Tensor
    last: torch.Tensor
    plural: torch.Tensor
    attractor_plural: torch.Tensor
    noun: torch.Tensor
    are: int
    is_: int

    def __len__(self) -> int:
        return len(self.prompts)


def agreement_set(model, seed: int = 0) -> AgreementSet:
    """Every subject (singular and plural) in ``templates_per_subject`` of the templates (rotating, so every template
    is used equally), each sentence with an attractor noun of random number."""
    d = data()
    rng = np.random.default_rng(seed)
    n_t = len(d["templates"])
    per = int(d.get("templates_per_subject", n_t))
    prompts, plural, attr, noun = [], [], [], []
    for i, pair in enumerate(d["subjects"]):
        for t in [(i + k) % n_t for k in range(per)]:
            template = d["templates"][t]
            a_pair = d["attractors"][(i + t) % len(d["attractors"])]
            for number in (0, 1):
                a_num = int(rng.integers(2))
                prompts.append(template.format(s=pair[number], a=a_pair[a_num]))
                plural.append(number)
                attr.append(a_num)
                noun.append(i)
    tokens, last = encode(model, prompts)
    is_, are = (first_token(model, v) for v in d["verbs"])
    return AgreementSet(prompts, tokens, last, torch.tensor(plural), torch.tensor(attr), torch.tensor(noun), are, is_)


def agreement_logit_diff(logits_last: torch.Tensor, ds: AgreementSet) -> torch.Tensor:
    """Per prompt, logit(" are") - logit(" is") at the last position (positive = the model expects a plural verb)."""
    return logits_last[:, ds.are] - logits_last[:, ds.is_]


@torch.no_grad()
def last_logits(model, tokens: torch.Tensor, last: torch.Tensor, fwd_hooks: Sequence = ()) -> torch.Tensor:
    """Logits at each prompt's last real position, ``[batch, vocab]``, optionally under hooks."""
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(tokens)
    return logits[torch.arange(tokens.shape[0]), last].float()


def split(n: int, test_frac: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)`` into (train, test) indices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * test_frac))
    return perm[k:].sort().values, perm[:k].sort().values


def noun_split(noun: torch.Tensor, test_frac: float = 1 / 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of the sentences by subject noun: (train, test) indices whose nouns are disjoint.

    `noun` [n]: each sentence's noun id. A probe scored on test nouns it never saw cannot succeed by
    remembering nouns; it has to read a number feature that carries over to new words.
    """
    types = torch.unique(noun)
    if len(types) < 4:
        raise ValueError(f"a split by noun needs at least 4 nouns, got {len(types)}")
    perm = types[torch.randperm(len(types), generator=torch.Generator().manual_seed(seed))]
    k = max(1, int(round(len(types) * test_frac)))
    is_test = torch.isin(noun, perm[:k])
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def per_group_mean(correct: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Mean of `correct` [..., n] within each group (e.g. each test noun) -> [..., n_groups], groups in sorted order.

    Bootstrapping these means resamples whole nouns: the right interval when sentences of one noun are not
    independent of each other.
    """
    ids = torch.unique(group)
    return torch.stack([correct[..., group == g].float().mean(-1) for g in ids], -1)


def control_labels(word: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Hewitt & Liang's control task: each word type gets a random label (0/1), the same at every occurrence."""
    types = int(word.max()) + 1
    g = torch.Generator().manual_seed(seed)
    table = torch.randperm(types, generator=g) % 2  # balanced
    return table[word]


def mean_difference_direction(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``mean(acts[labels == 1]) - mean(acts[labels == 0])``: `acts` [n, d], `labels` [n] of 0/1 -> [d]."""
    pos = labels.bool()
    return acts[pos].mean(0) - acts[~pos].mean(0)


def mean_difference_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                             test_y: torch.Tensor) -> float:
    """Held-out accuracy of the mean-difference classifier: project on mu1 - mu0, threshold at the midpoint of the class means."""
    pos = train_y.bool()
    mu1, mu0 = train_x[pos].mean(0), train_x[~pos].mean(0)
    d = mu1 - mu0
    pred = (test_x @ d) > ((mu1 + mu0) / 2) @ d
    return float((pred == test_y.bool()).float().mean())


def selectivity(train_x: torch.Tensor, train_y: torch.Tensor, train_c: torch.Tensor, test_x: torch.Tensor,
                test_y: torch.Tensor, test_c: torch.Tensor) -> float:
    """Selectivity (Hewitt & Liang 2019) of the mean-difference probe: held-out accuracy on the task labels `y`
    minus held-out accuracy on the control labels `c`, the same probe trained the same way on each."""
    return (mean_difference_accuracy(train_x, train_y, test_x, test_y)
            - mean_difference_accuracy(train_x, train_c, test_x, test_c))


def _logistic(C: float = 0.1):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def logistic_probe(train_x: torch.Tensor, train_y: torch.Tensor, C: float = 0.1):
    """A logistic-regression probe (scikit-learn, standardised inputs, L2 penalty 1/C), fitted."""
    return _logistic(C).fit(train_x.double().numpy(), train_y.numpy())


def probe_direction(probe) -> torch.Tensor:
    """A fitted `logistic_probe`'s weight vector in the residual stream's own coordinates, ``[d]``."""
    scaler, lr = probe[0], probe[-1]
    return torch.tensor(lr.coef_[0] / scaler.scale_, dtype=torch.float32)


@dataclass
class ProbeSweep:
    """Held-out probe accuracy after every layer (index 0 = embeddings), per probe and labelling.

    `layers`: the lens indices probed; `acc[(probe, labels)]` [len(layers)] with probe in {"mean
    difference", "logistic"} and labels e.g. "task", "control"; `correct[(probe, labels)]`
    [len(layers), n_test] per test prompt (for bootstrap).
    """

    layers: list[int]
    acc: dict[tuple[str, str], torch.Tensor]
    correct: dict[tuple[str, str], torch.Tensor]
    #: each probe's direction in the residual stream's coordinates, ``[len(layers), d_model]``
    directions: dict[tuple[str, str], torch.Tensor]

    def selectivity(self, probe: str) -> torch.Tensor:
        return self.acc[(probe, "task")] - self.acc[(probe, "control")]

    def best_layer(self, probe: str = "logistic") -> int:
        """The layer with the highest held-out task accuracy (the earliest on a tie)."""
        a = self.acc[(probe, "task")]
        return self.layers[int(torch.nonzero(a == a.max()).flatten()[0])]


def probe_sweep(acts: torch.Tensor, labels: dict[str, torch.Tensor], train: torch.Tensor, test: torch.Tensor,
                layers: Sequence[int] | None = None, C: float = 0.1) -> ProbeSweep:
    """Fit both probes on `train` and score them on `test` at each of `layers` (indices into `acts` [L+1, n, d];
    default all), for each labelling."""
    layers = list(range(acts.shape[0])) if layers is None else list(layers)
    acc, correct, dirs = {}, {}, {}
    for lab_name, y in labels.items():
        for probe in ("mean difference", "logistic"):
            rows, ds = [], []
            for layer in layers:
                x_tr, x_te = acts[layer, train], acts[layer, test]
                if probe == "logistic":
                    fitted = logistic_probe(x_tr, y[train], C)
                    pred = torch.tensor(fitted.predict(x_te.double().numpy()))
                    ds.append(probe_direction(fitted))
                else:
                    pos = y[train].bool()
                    mu1, mu0 = x_tr[pos].mean(0), x_tr[~pos].mean(0)
                    pred = ((x_te @ (mu1 - mu0)) > ((mu1 + mu0) / 2) @ (mu1 - mu0)).long()
                    ds.append(mu1 - mu0)
                rows.append((pred == y[test]).float())
            correct[(probe, lab_name)] = torch.stack(rows)
            acc[(probe, lab_name)] = correct[(probe, lab_name)].mean(1)
            dirs[(probe, lab_name)] = torch.stack(ds)
    return ProbeSweep(layers, acc, correct, dirs)


def sweep_table(sweeps: dict[str, ProbeSweep]) -> str:
    """Held-out accuracy by layer, one row per (probe, labels, split): the sweeps side by side as text."""
    first = next(iter(sweeps.values()))
    lines = ["probe     labels     split     " + " ".join(f"{l:>4d}" for l in first.layers)]
    keys = list(first.acc)
    for probe, lab_name in keys:
        for split_name, sw in sweeps.items():
            if (probe, lab_name) in sw.acc:
                lines.append(f"{probe[:8]:9s} {lab_name:10s} {split_name:9s} "
                             + " ".join(f"{float(a):4.2f}" for a in sw.acc[(probe, lab_name)]))
    return "\n".join(lines)


def value_range(x: torch.Tensor) -> str:
    """``"0.38-0.53"``, or ``"1.00"`` when every value rounds to the same two decimals."""
    lo, hi = f"{float(x.min()):.2f}", f"{float(x.max()):.2f}"
    return lo if lo == hi else f"{lo}-{hi}"


def plot_probe_sweep(sweep: ProbeSweep, title: str = "", other: ProbeSweep | None = None,
                     other_name: str = "held-out sentences"):
    """Held-out accuracy by layer: both probes on the task and on the control task, and their selectivity.

    `other` (optional): a second sweep on another split, whose logistic task and control rows are drawn in grey.
    """
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.6))
    if other is not None:
        for lab_name, ls in (("task", "-"), ("control", ":")):
            if ("logistic", lab_name) in other.acc:
                a.plot(other.layers, other.acc[("logistic", lab_name)].numpy(), ls=ls, color="grey", alpha=0.8,
                       label=f"logistic, {lab_name} ({other_name})")
    styles = {"task": ("-", "."), "control": (":", "x"), "attractor": ("--", "+")}
    for (probe, lab_name), acc in sweep.acc.items():
        ls, marker = styles.get(lab_name, ("-.", "."))
        a.plot(sweep.layers, acc.numpy(), marker=marker, ls=ls,
               color="C0" if probe == "logistic" else "C1", label=f"{probe}, {lab_name}")
    a.axhline(0.5, color="grey", lw=0.8)
    a.set(xlabel="layer (0 = embeddings)", ylabel="held-out accuracy", ylim=(0.3, 1.02))
    a.legend(fontsize=8)
    for probe, color in (("logistic", "C0"), ("mean difference", "C1")):
        b.plot(sweep.layers, sweep.selectivity(probe).numpy(), marker=".", color=color, label=probe)
    b.axhline(0, color="grey", lw=0.8)
    b.set(xlabel="layer", ylabel="selectivity = task - control accuracy")
    b.legend(fontsize=8)
    fig.suptitle(title or "Linear probes for 'the subject is plural', by layer")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# 3. Steering
# --------------------------------------------------------------------------------------


def steer(resid: torch.Tensor, direction: torch.Tensor, coeff: float) -> torch.Tensor:
    """The steering hook's body: a NEW tensor ``resid + coeff * direction / ||direction||`` at every position.

    `resid` [batch, pos, d_model], `direction` [d_model].
    """
    return resid + coeff * direction / direction.norm()


@torch.no_grad()
def steered_final_residuals(model, tokens: torch.Tensor, blocks: Sequence[int], vectors: torch.Tensor,
                            max_rows: int = 192) -> torch.Tensor:
    """The last layer's residual ``[1 + m, batch, pos, d_model]``: row 0 clean, row i + 1 with ``vectors[i]`` added
    to the residual stream after block ``blocks[i]`` at every position.

    One clean pass reads the residuals after the blocks; then `lab.patching.run_copies` runs the steered copies
    in batches of at most `max_rows` rows (copies x prompts), each copy only from its own block on (the blocks
    before it are the clean run's).
    """
    n = model.cfg.n_layers
    blocks = [int(b) for b in blocks]
    if len(blocks) != len(vectors):
        raise ValueError(f"{len(blocks)} blocks for {len(vectors)} vectors: give one block per vector")
    if any(not 0 <= b < n for b in blocks):
        raise ValueError(f"blocks must be in [0, {n}), got {sorted(set(blocks))}")
    final = hooks.hook_name(n - 1, "resid_post")
    wanted = {hooks.hook_name(b, "resid_post") for b in blocks}
    cache = model.run_with_cache(tokens, names_filter=lambda nm: nm in wanted)[1]  # drop the clean logits at once
    copies = []
    for b, v in zip(blocks, vectors):
        clean = cache[hooks.hook_name(b, "resid_post")]
        copies.append([patching.Patch(b, None, clean + v.to(clean.dtype), "resid_post")])
    per = max(1, max_rows // tokens.shape[0])
    rows = [patching.run_copies(model, tokens, copies[i:i + per], capture=[final])[1][final]
            for i in range(0, max(1, len(copies)), per)]
    return torch.cat([rows[0][:1]] + [r[1:] for r in rows], 0)


def _metric_rows(model, final: torch.Tensor, last: torch.Tensor, metric) -> torch.Tensor:
    """`metric` of the logits at each prompt's last position, for every row of ``final`` [rows, batch, pos, d]."""
    b = torch.arange(final.shape[1])
    out = []
    for f in final:
        out.append(metric(readout.lens_logits(model, f[b, last])))
        trim_memory(collect=False)  # as in lens_run: give each row's logits back
    return torch.stack(out)


@torch.no_grad()
def dose_responses(model, tokens: torch.Tensor, last: torch.Tensor, layer: int, directions: dict[str, torch.Tensor],
                   coeffs: Sequence[float], metric) -> dict[str, torch.Tensor]:
    """For each named direction, `metric(last_logits)` [batch] under ``resid_post[layer] += c * direction`` for each c:
    ``{name: [len(coeffs), batch]}``, all in one batched run (coefficient 0 is the clean run)."""
    names = list(directions)
    jobs = [(nm, c) for nm in names for c in coeffs if c != 0]
    vectors = torch.stack([float(c) * directions[nm] for nm, c in jobs]) if jobs else torch.zeros(0, model.cfg.d_model)
    rows = _metric_rows(model, steered_final_residuals(model, tokens, [layer] * len(jobs), vectors), last, metric)
    row_of = {job: i + 1 for i, job in enumerate(jobs)}  # row 0 is the clean run
    return {nm: torch.stack([rows[row_of[(nm, c)] if c != 0 else 0] for c in coeffs]) for nm in names}


def dose_response(model, tokens: torch.Tensor, last: torch.Tensor, layer: int, direction: torch.Tensor,
                  coeffs: Sequence[float], metric) -> torch.Tensor:
    """`metric(last_logits)` [batch] under ``resid_post[layer] += c * direction`` for each c: ``[len(coeffs), batch]``.

    `direction` is used as given (its length sets the scale: c = 1 adds it once), at every position.
    """
    return dose_responses(model, tokens, last, layer, {"v": direction}, coeffs, metric)["v"]


@torch.no_grad()
def steering_by_layer(model, tokens: torch.Tensor, last: torch.Tensor, directions: torch.Tensor,
                      blocks: Sequence[int], metric, coeff: float = 1.0) -> torch.Tensor:
    """Per-prompt change of `metric` when ``coeff * directions[i]`` is added after block ``blocks[i]``:
    ``[len(blocks), batch]`` (one batched run)."""
    rows = _metric_rows(model, steered_final_residuals(model, tokens, blocks, coeff * directions), last, metric)
    return rows[1:] - rows[0]


@torch.no_grad()
def side_effect_kls(model, tokens: torch.Tensor, layer: int, directions: dict[str, torch.Tensor],
                    coeffs: Sequence[float]) -> dict[str, torch.Tensor]:
    """Mean KL(clean || steered) over every position after BOS of unrelated text `tokens`, per named direction and
    coefficient: ``{name: [len(coeffs)]}`` (0 at coefficient 0), in one batched run."""
    names = list(directions)
    jobs = [(nm, c) for nm in names for c in coeffs if c != 0]
    vectors = torch.stack([float(c) * directions[nm] for nm, c in jobs]) if jobs else torch.zeros(0, model.cfg.d_model)
    final = steered_final_residuals(model, tokens, [layer] * len(jobs), vectors)[:, :, 1:]
    clean = readout.lens_logits(model, final[0])
    kl = {job: readout.kl_div(clean, readout.lens_logits(model, final[i + 1])).mean() for i, job in enumerate(jobs)}
    return {nm: torch.stack([kl[(nm, c)] if c != 0 else torch.tensor(0.0) for c in coeffs]) for nm in names}


def side_effect_kl(model, tokens: torch.Tensor, layer: int, direction: torch.Tensor,
                   coeffs: Sequence[float]) -> torch.Tensor:
    """Mean KL(clean || steered) over every position after BOS of unrelated text `tokens`, per coefficient: ``[len(coeffs)]``."""
    return side_effect_kls(model, tokens, layer, {"v": direction}, coeffs)["v"]


def control_tokens(model, rows: int = 4, length: int = 24) -> torch.Tensor:
    """`rows` segments of the lesson's unrelated control text, each BOS + (`length` - 1) tokens."""
    ids = model.to_tokens(data()["control_text"], prepend_bos=False)[0]
    need = rows * (length - 1)
    if len(ids) < need:
        raise ValueError(f"the control text has {len(ids)} tokens; {rows} rows of {length} need {need}")
    bos = model.to_tokens("")[0, :1]
    return torch.stack([torch.cat([bos, ids[i * (length - 1):(i + 1) * (length - 1)]]) for i in range(rows)])


def intervals(per_prompt: torch.Tensor, seed: int = 0) -> list[scores.Interval]:
    """Bootstrap interval (over prompts, axis 1) of the mean of each row of ``[n_coeffs, n_prompts]``."""
    return [scores.bootstrap(row, n=500, seed=seed) for row in per_prompt]


def plot_dose_response(coeffs: Sequence[float], curves: dict[str, list[scores.Interval]],
                       kls: dict[str, torch.Tensor], layer: int, title: str = ""):
    """Left: change of logit(are) - logit(is) against the coefficient (95% bootstrap band); right: KL on control text."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.6))
    x = np.asarray(coeffs, dtype=float)
    for i, (nm, iv) in enumerate(curves.items()):
        a.plot(x, [v.value for v in iv], marker=".", color=f"C{i}", label=nm)
        a.fill_between(x, [v.low for v in iv], [v.high for v in iv], color=f"C{i}", alpha=0.2)
        b.plot(x, kls[nm].numpy(), marker=".", color=f"C{i}", label=nm)
    a.axhline(0, color="grey", lw=0.8)
    a.set(xlabel="coefficient (multiples of the class-mean distance)", ylabel="change in logit(are) - logit(is)",
          title=f"target, steering after block {layer}")
    b.set(xlabel="coefficient", ylabel="KL(clean || steered), nats", yscale="symlog", title="side effect on unrelated text")
    a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@torch.no_grad()
def greedy(model, prompt: str, n: int = 8, fwd_hooks: Sequence = ()) -> str:
    """A deterministic greedy continuation of `prompt` (`n` tokens), optionally under hooks."""
    tokens = model.to_tokens(prompt)
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        for _ in range(n):
            nxt = model(tokens)[0, -1].argmax()
            tokens = torch.cat([tokens, nxt.view(1, 1)], 1)
    return model.to_string(tokens[0, -n:])


class SteeringExplorer:
    """Precomputed mean-difference directions per layer; `view(layer, coeff)` steers one prompt live.

    The view shows the next-token distribution (clean and steered), a greedy continuation and
    the side-effect KL on the control text.
    """

    def __init__(self, model, directions: torch.Tensor, prompt: str, ds: AgreementSet, ctrl: torch.Tensor, k: int = 8):
        self.model, self.directions, self.prompt, self.ds, self.ctrl, self.k = model, directions, prompt, ds, ctrl, k
        self.tokens = model.to_tokens(prompt)
        self.clean = model(self.tokens)[0, -1].float().softmax(-1)
        self.clean_ctrl = model(ctrl)[:, 1:]

    @torch.no_grad()
    def view(self, layer: int = 0, coeff: float = 0.0):
        import matplotlib.pyplot as plt

        fwd = hooks.steering_hooks(layer, float(coeff) * self.directions[layer]) if coeff else []
        with self.model.hooks(fwd_hooks=fwd):
            p = self.model(self.tokens)[0, -1].float().softmax(-1)
            kl = float(readout.kl_div(self.clean_ctrl, self.model(self.ctrl)[:, 1:]).mean()) if coeff else 0.0
        text = greedy(self.model, self.prompt, 8, fwd)
        ids = torch.unique(torch.cat([p.topk(self.k).indices, torch.tensor([self.ds.are, self.ds.is_])]))
        ids = ids[p[ids].argsort(descending=True)][: self.k + 2]
        fig, ax = plt.subplots(figsize=(9, 3.6))
        y = np.arange(len(ids))[::-1]
        ax.barh(y + 0.2, self.clean[ids].numpy(), height=0.4, color="lightgrey", label="clean")
        ax.barh(y - 0.2, p[ids].numpy(), height=0.4, color="C0", label="steered")
        ax.set_yticks(y, [repr(self.model.to_string(i)) for i in ids], fontsize=8)
        ax.set(xlabel="next-token probability")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"{self.prompt!r} + {coeff:+.2f} x direction after block {layer}\n"
                     f"greedy: {text!r}   |   KL on control text {kl:.3f} nats", fontsize=9)
        fig.tight_layout()
        return fig


__all__ = [
    "DATA_FILE", "data", "encode", "first_token", "rms_lens", "LensRun", "lens_run", "plot_lens_overview",
    "plot_lens_view", "translator_kl", "AgreementSet", "agreement_set", "agreement_logit_diff", "last_logits",
    "split", "noun_split", "per_group_mean", "control_labels", "mean_difference_direction",
    "mean_difference_accuracy", "selectivity", "logistic_probe", "probe_direction", "ProbeSweep", "probe_sweep",
    "sweep_table", "value_range", "plot_probe_sweep", "steer", "steered_final_residuals", "dose_responses", "dose_response",
    "steering_by_layer", "side_effect_kls", "side_effect_kl", "control_tokens", "intervals", "plot_dose_response",
    "greedy", "SteeringExplorer",
]
