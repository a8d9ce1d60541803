"""Notebook 03's circuit argument repeated prompt by prompt and template by template.

The IOI paper (Wang et al. 2022, arXiv 2211.00593) reports its knockouts and path-patching
effects as means over many prompts and 15 templates. A circuit found on one template's pooled
numbers could rest on a few prompts or on one template, so this module reruns each step with
the spread kept:

- `path_patch_per_prompt` / `path_jobs`: path patching (the instruments' `patching.path_patch`,
  same two steps) with the metric kept per prompt, for bootstrap intervals over prompts;
- `knockout_templates`: the name-mover knockout on every template, with every head's rise in
  direct effect (self-repair), using each template's ABC mean (the paper's mean ablation);
- `validate_templates`: faithfulness and completeness (each class knocked out of the circuit
  and of the model) on every template; the ablation runs of one template share one batched
  pass of the fast engine (`patching.copies_runner`);
- `template_paths` and `class_support`: for each head of the circuit, on how many templates it
  meets its class's criterion (the thresholds of `ioi_circuit.classify_heads`, in logits of
  the pooled LD).

Conventions: one `ioi.IOIDataset` per template (aligned prompts); heads are (layer, head);
changes are "patched minus clean" logit differences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from . import ioi
from .lab import fast_llama, patching, readout, scores
from .lab.hooks import Head, all_heads, head_label, head_outputs, hook_name

# --------------------------------------------------------------------------------------
# Path patching, per prompt
# --------------------------------------------------------------------------------------


def _receivers(receivers: Sequence, site: str) -> list[tuple[int, int, str]]:
    out = []
    for r in receivers:
        if not isinstance(r, (tuple, list)) or len(r) not in (2, 3):
            raise ioi.IOIError(f"a receiver is (layer, head) or (layer, head, site), not {r!r}")
        st = r[2] if len(r) == 3 else site
        if st not in ("q", "k", "v"):
            raise ioi.IOIError(f"receivers are read at 'q', 'k' or 'v', not {st!r}")
        out.append((int(r[0]), int(r[1]), st))
    return out


@torch.no_grad()
def path_jobs(model, ds: ioi.IOIDataset, jobs: Sequence[tuple[Head, Sequence]], site: str = "q",
              max_rows: int = 128) -> torch.Tensor:
    """Path patching of several (sender, receivers) pairs in shared passes: ``[len(ds), len(jobs)]`` changes in LD.

    Each job is a sender head and its receivers ((layer, head) read at `site`, or
    (layer, head, site)); the senders share the source run and the batched passes.
    """
    jobs = [(tuple(int(x) for x in snd), _receivers(rec, site)) for snd, rec in jobs]
    for snd, rec in jobs:
        if not rec:
            raise ioi.IOIError("path patching needs at least one receiver")
        if snd[0] >= max(l for l, _, _ in rec):
            raise ioi.IOIError(f"sender {head_label(snd)} is not below its top receiver layer "
                               f"({max(l for l, _, _ in rec)}): a head only sends to later layers")
    if not jobs:
        return torch.zeros(len(ds), 0)
    src = head_outputs(model, ds.abc_tokens, sorted({snd[0] for snd, _ in jobs}))
    out = []
    per = max(1, max_rows // len(ds))
    for i in range(0, len(jobs), per):
        chunk = jobs[i:i + per]
        names = sorted({hook_name(l, st) for _, rec in chunk for l, _, st in rec})
        top = max(l for _, rec in chunk for l, _, _ in rec)
        _, cap = patching.run_copies(model, ds.tokens, [[patching.Patch(l, h, src[l])] for (l, h), _ in chunk],
                                     freeze=True, capture=names, stop_after_layer=top)
        copies = [[patching.Patch(l, h, cap[hook_name(l, st)][j + 1], site=st) for l, h, st in rec]
                  for j, (_, rec) in enumerate(chunk)]
        logits, _ = patching.run_copies(model, ds.tokens, copies)
        clean = ds.metric(logits[0]).float()  # row 0: the unpatched prompts
        out += [ds.metric(lg).float() - clean for lg in logits[1:]]
    return torch.stack(out, 1)


def path_patch_per_prompt(model, ds: ioi.IOIDataset, senders: Sequence[Head], receivers: Sequence, site: str = "q",
                          max_rows: int = 128) -> torch.Tensor:
    """Path patching from ABC into IOI, per prompt: ``[len(ds), len(senders)]`` changes in the logit difference.

    The same two steps as `patching.path_patch` (its mean over prompts, tested): (1) each
    sender takes its ABC output while every other head is frozen at its clean value (MLPs
    recompute), and the receivers' `site` inputs are recorded; (2) a clean run with only those
    inputs replaced. Keeping the metric per prompt gives a bootstrap over prompts.
    """
    return path_jobs(model, ds, [(snd, receivers) for snd in senders], site, max_rows)


def path_table_per_prompt(model, ds: ioi.IOIDataset, receivers: Sequence, senders: Sequence[Head],
                          site: str = "q") -> torch.Tensor:
    """`path_patch_per_prompt` laid out as ``[len(ds), n_layers, n_heads]`` (NaN where not a sender)."""
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    rec_heads = {(int(r[0]), int(r[1])) for r in receivers}
    top = max(int(r[0]) for r in receivers)
    senders = [tuple(s) for s in senders if s[0] < top and tuple(s) not in rec_heads]
    table = torch.full((len(ds), n_l, n_h), float("nan"))
    if senders:
        vals = path_patch_per_prompt(model, ds, senders, receivers, site)
        for j, (l, h) in enumerate(senders):
            table[:, l, h] = vals[:, j]
    return table


def fmt_senders(per_prompt: torch.Tensor, heads: Sequence[Head], seed: int = 0) -> str:
    """'L20H0 -1.02 [-1.40, -0.66] (8/8 < 0)' per head: mean change over prompts, its 95% bootstrap interval,
    and on how many prompts the change is negative."""
    parts = []
    for h in heads:
        iv = scores.bootstrap(per_prompt[:, h[0], h[1]], seed=seed)
        x = per_prompt[:, h[0], h[1]]
        parts.append(f"{head_label(h)} {iv.value:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] ({int((x < 0).sum())}/{len(x)} < 0)")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------
# Knockouts, faithfulness and completeness on every template
# --------------------------------------------------------------------------------------


def abc_heads(model, datasets: Sequence[ioi.IOIDataset]) -> list[dict[int, torch.Tensor]]:
    """Each template's head outputs on its ABC prompts, prompt by prompt (one pass per template, on the fast
    plain-torch forward when the model supports it)."""
    if fast_llama.supports(model):
        r = fast_llama.LlamaRunner(model)
        return [dict(enumerate(r.run(ds.abc_tokens)["z"])) for ds in datasets]
    return [head_outputs(model, ds.abc_tokens) for ds in datasets]


def abc_means(model, datasets: Sequence[ioi.IOIDataset],
              heads: Sequence[dict[int, torch.Tensor]] | None = None) -> list[dict[int, torch.Tensor]]:
    """Each template's mean head outputs over its ABC prompts (the paper's mean ablation), shaped like hook_z.

    The same values as ``patching.ablation_values(model, ds.tokens, "mean", reference_tokens=ds.abc_tokens)``;
    pass `heads` (`abc_heads`) to reuse the ABC runs.
    """
    heads = abc_heads(model, datasets) if heads is None else heads
    return [{l: z.mean(0, keepdim=True).expand(len(ds), *z.shape[1:]).clone() for l, z in h.items()}
            for ds, h in zip(datasets, heads)]


def _runner(model, tokens: torch.Tensor, fast=None):
    """(clean head outputs per layer, copies -> last-position logits [1 + n, batch, 1, vocab]) on the fastest backend
    (`fast`: a `fast_llama.LlamaRunner` to reuse)."""
    if fast is not None or fast_llama.supports(model):
        r = fast if fast is not None else fast_llama.LlamaRunner(model)
        base = r.run(tokens)
        return base["z"], lambda copies: r.replace_heads(tokens, copies, base)[:, :, None]
    z = head_outputs(model, tokens)
    return [z[l] for l in range(model.cfg.n_layers)], lambda copies: patching.run_copies(model, tokens, copies)[0]


@dataclass
class TemplateKnockout:
    """Mean-ablating `heads` on every template: per-template means ``[T]`` and every head's rise in direct effect.

    model_t: clean LD; knocked_t: LD with `heads` ablated; removed_t: their direct effect
    before; gain_t [T, layers, heads]: rise in each head's DLA (NaN for the ablated heads).
    """

    heads: list[Head]
    model_t: torch.Tensor
    knocked_t: torch.Tensor
    removed_t: torch.Tensor
    gain_t: torch.Tensor

    @property
    def kept_t(self) -> torch.Tensor:
        """Share of the logit difference kept, per template."""
        return self.knocked_t / self.model_t

    @property
    def kept(self) -> float:
        """Pooled: mean knocked LD / mean clean LD (templates have equal sizes)."""
        return float(self.knocked_t.mean() / self.model_t.mean())

    @property
    def repair_t(self) -> torch.Tensor:
        """Self-repair per template: the removed direct effect minus the fall in LD."""
        return self.removed_t - (self.model_t - self.knocked_t)

    def gain_of(self, heads: Sequence[Head]) -> torch.Tensor:
        """Summed rise in direct effect of `heads`, per template ``[T]``."""
        return sum((torch.nan_to_num(self.gain_t[:, l, h]) for l, h in heads), torch.zeros(self.gain_t.shape[0]))

    @property
    def gain(self) -> torch.Tensor:
        """Mean rise over templates ``[layers, heads]``."""
        return self.gain_t.mean(0)


def knockout_templates(model, datasets: Sequence[ioi.IOIDataset], heads: Sequence[Head], dlas: Sequence[readout.DLA],
                       means: Sequence[dict[int, torch.Tensor]]) -> TemplateKnockout:
    """Mean-ablate `heads` (e.g. the name movers) on every template and re-measure DLA (one pass per template).

    `dlas[t]` is template t's clean `readout.DLA`, `means[t]` its ABC means (`abc_means`).
    """
    hs = [tuple(int(x) for x in h) for h in heads]
    if not hs:
        raise ioi.IOIError("knock out at least one head (e.g. the name movers)")
    model_t, knocked_t, removed_t, gain_t = [], [], [], []
    for ds, before, m in zip(datasets, dlas, means):
        after = readout.direct_logit_attribution(model, ds.tokens, ds.io, ds.s,
                                                 fwd_hooks=patching.patch_hooks(model, patching.heads_replaced(hs, m)))
        g = after.heads - before.heads
        for l, h in hs:
            g[l, h] = float("nan")
        model_t.append(before.logit_diff), knocked_t.append(after.logit_diff)
        removed_t.append(float(sum(before.heads[h] for h in hs))), gain_t.append(g)
    tt = torch.tensor
    return TemplateKnockout(hs, tt(model_t), tt(knocked_t), tt(removed_t), torch.stack(gain_t))


@dataclass
class TemplateValidation:
    """Per-prompt logit differences under the paper's knockouts (mean ablation over each template's ABC prompts).

    model [N]: clean; circuit [N]: every head outside the circuit ablated; empty [N]: every head
    ablated; template [N]. Completeness runs on the first `n_complete` prompts of each template
    (the rows where `complete_rows` [N] is True): without[c] = (circuit without class c, model
    without class c), each ``[n_complete x T]``. prev[head] [N]: change in LD when the head takes
    its ABC output at S1+1 only (the previous-token test, every template).
    """

    model: torch.Tensor
    circuit: torch.Tensor
    empty: torch.Tensor
    template: torch.Tensor
    without: dict[str, tuple[torch.Tensor, torch.Tensor]]
    complete_rows: torch.Tensor
    prev: dict[Head, torch.Tensor]

    def t_mean(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Per-template means of a per-prompt vector ``[N] -> [T]`` (or of the rows `rows` selects)."""
        tpl = self.template if rows is None else self.template[rows]
        return torch.stack([x[tpl == t].mean() for t in range(int(self.template.max()) + 1)])

    @property
    def faithfulness_t(self) -> torch.Tensor:
        """circuit / model LD per template (the paper's faithfulness, 87% for GPT-2 small)."""
        return self.t_mean(self.circuit) / self.t_mean(self.model)

    @property
    def faithfulness(self) -> float:
        """Pooled over all prompts: mean circuit LD / mean model LD."""
        return float(self.circuit.mean() / self.model.mean())

    @property
    def normalised(self) -> float:
        """Pooled (circuit - empty) / (model - empty): the share of what the heads add that the circuit keeps."""
        return float((self.circuit.mean() - self.empty.mean()) / (self.model.mean() - self.empty.mean()))

    def faithfulness_interval(self, n: int = 1000, seed: int = 0) -> tuple[float, float]:
        """95% bootstrap interval over prompts of the pooled ratio (numerator and denominator resampled together)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(self.model), (n, len(self.model)), generator=g)
        r = self.circuit[idx].mean(1) / self.model[idx].mean(1)
        return float(r.quantile(0.025)), float(r.quantile(0.975))

    def gap(self, c: str | None = None) -> torch.Tensor:
        """Per-template completeness gap ``[T]`` on the completeness prompts: circuit minus model, both without
        class `c` (None: with nothing knocked out)."""
        rows = self.complete_rows
        if c is None:
            return self.t_mean(self.circuit[rows], rows) - self.t_mean(self.model[rows], rows)
        a, b = self.without[c]
        return self.t_mean(a, rows) - self.t_mean(b, rows)

    @property
    def n_complete(self) -> int:
        return int(self.complete_rows.sum())


def validate_templates(model, datasets: Sequence[ioi.IOIDataset], circuit: Sequence[Head], classes: dict[str, list[Head]],
                       means: Sequence[dict[int, torch.Tensor]], abc: Sequence[dict[int, torch.Tensor]] | None = None,
                       prev_heads: Sequence[Head] = (), n_complete: int | None = None) -> TemplateValidation:
    """Faithfulness, completeness and the previous-token test on every template (see `TemplateValidation`).

    Per template, one batched pass runs the circuit alone, no head, and each `prev_heads` head
    patched at S1+1 with its ABC output (`abc`, from `abc_heads`) on every prompt; a second runs
    each class out of the circuit and out of the model on the first `n_complete` prompts (all if
    None). `means[t]` are the ABC means (`abc_means`). The MLPs are never ablated, as in the paper.
    """
    every = all_heads(model)
    inside = {tuple(h) for h in circuit}
    outside = [h for h in every if h not in inside]
    groups = {c: [tuple(h) for h in hs] for c, hs in classes.items() if hs}
    prev_heads = [tuple(h) for h in prev_heads]
    if prev_heads and abc is None:
        raise ioi.IOIError("the previous-token test needs the ABC head outputs: pass abc=abc_heads(model, datasets)")
    model_ld, circ, empty, tpl, rows = [], [], [], [], []
    without = {c: ([], []) for c in groups}
    prev = {h: [] for h in prev_heads}
    fast = fast_llama.LlamaRunner(model) if fast_llama.supports(model) else None
    for t, (ds, m) in enumerate(zip(datasets, means)):
        n_ds = len(ds)

        def rep(heads, n=n_ds, m=m):
            return patching.heads_replaced(heads, {l: v[:n] for l, v in m.items()})
        z, run = _runner(model, ds.tokens, fast)
        b, at = torch.arange(len(ds)), ds.pos["S1+1"]
        prev_copies = []
        for l, h in prev_heads:
            v = z[l].clone()
            v[b, at, h] = abc[t][l][b, at, h]
            prev_copies.append([patching.Patch(l, h, v)])
        ld = [ds.metric(lg).float() for lg in run([rep(outside), rep(every)] + prev_copies)]
        model_ld.append(ld[0]), circ.append(ld[1]), empty.append(ld[2])
        for k, h in enumerate(prev_heads):
            prev[h].append(ld[3 + k] - ld[0])
        n = len(ds) if n_complete is None else min(n_complete, len(ds))
        sub = ds if n == len(ds) else ds.subset(range(n))
        copies = []
        for hs in groups.values():
            copies += [rep(outside + [h for h in hs if h not in outside], n), rep(hs, n)]
        if copies:
            _, run_sub = _runner(model, sub.tokens, fast) if n < len(ds) else (z, run)
            ld_c = [sub.metric(lg).float() for lg in run_sub(copies)]
            for k, c in enumerate(groups):
                without[c][0].append(ld_c[1 + 2 * k]), without[c][1].append(ld_c[2 + 2 * k])
        tpl.append(torch.full((len(ds),), t))
        rows.append(torch.arange(len(ds)) < n)
    cat = torch.cat
    return TemplateValidation(cat(model_ld), cat(circ), cat(empty), cat(tpl),
                              {c: (cat(a), cat(b_)) for c, (a, b_) in without.items()}, cat(rows),
                              {h: cat(v) for h, v in prev.items()})


# --------------------------------------------------------------------------------------
# The classes, template by template
# --------------------------------------------------------------------------------------


def template_paths(model, datasets: Sequence[ioi.IOIDataset], q_receivers: Sequence, q_senders: Sequence[Head],
                   vk_receivers: Sequence, vk_senders: Sequence[Head], n: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Path patching of a few senders on every template (the first `n` prompts of each, all if None).

    Returns the per-template mean changes ``[T, layers, heads]`` (NaN where not a sender) into
    the `q_receivers`' queries and into `vk_receivers` (e.g. S-inhibition values and answer
    keys); both sets share one batched path-patching run per template.
    """
    n_l, n_h = model.cfg.n_layers, model.cfg.n_heads
    q_snd = [tuple(h) for h in q_senders]
    vk_snd = [tuple(h) for h in vk_senders]
    jobs = [(h, list(q_receivers)) for h in q_snd] + [(h, list(vk_receivers)) for h in vk_snd]
    q_t, vk_t = torch.full((len(datasets), n_l, n_h), float("nan")), torch.full((len(datasets), n_l, n_h), float("nan"))
    for t, ds in enumerate(datasets):
        sub = ds if n is None or n >= len(ds) else ds.subset(range(n))
        vals = path_jobs(model, sub, jobs, "q").mean(0)
        for j, (l, h) in enumerate(q_snd):
            q_t[t, l, h] = vals[j]
        for j, (l, h) in enumerate(vk_snd):
            vk_t[t, l, h] = vals[len(q_snd) + j]
    return q_t, vk_t


def class_support(classes: dict[str, list[Head]], clean_ld: float, t: dict[str, torch.Tensor], frac: float = 0.1,
                  path_frac: float = 0.05, prev_min: float = 0.3) -> dict[str, dict[Head, torch.Tensor]]:
    """For each head of each class, whether it meets its class's criterion on each template: {class: {head: bool [T]}}.

    `t` holds per-template tables ``[T, layers, heads]``: "dla", "dla_io", "dla_s", "attn_io",
    "attn_s2", "induction", "duplicate", "prev_token", and where measured "pp_q", "pp_v",
    "prev_patch" (NaN = not measured: the criterion fails). The criteria are those of
    `ioi_circuit.classify_heads`, with the thresholds fixed in logits from the pooled `clean_ld`
    (a template's own LD can be near zero). The "at most k heads" cut is not applied per template.
    """
    L = abs(clean_ld)
    thr, pthr = frac * L, -path_frac * L
    nan_false = lambda x: torch.nan_to_num(x, nan=float("inf"))  # an unmeasured path effect never passes
    crit = {
        "name mover": lambda l, h: (t["dla"][:, l, h] >= thr) & (t["dla_io"][:, l, h] >= -t["dla_s"][:, l, h]),
        "negative name mover": lambda l, h: (t["dla"][:, l, h] <= -thr) & (-t["dla_io"][:, l, h] >= t["dla_s"][:, l, h]),
        "S-inhibition": lambda l, h: nan_false(t["pp_q"][:, l, h]) <= pthr,
        "induction": lambda l, h: (nan_false(t["pp_v"][:, l, h]) <= pthr)
        & (t["induction"][:, l, h] > t["duplicate"][:, l, h]),
        "duplicate token": lambda l, h: (nan_false(t["pp_v"][:, l, h]) <= pthr)
        & (t["duplicate"][:, l, h] >= t["induction"][:, l, h]),
        "previous token": lambda l, h: (t["prev_token"][:, l, h] >= prev_min) & (nan_false(t["prev_patch"][:, l, h]) <= pthr),
    }
    extra = lambda l, h: (t["dla"][:, l, h] >= thr) & (t["attn_s2"][:, l, h] >= t["attn_io"][:, l, h])
    out: dict[str, dict[Head, torch.Tensor]] = {}
    for c, heads in classes.items():
        f = crit.get(c, extra if c not in crit and c != "backup name mover" else None)
        if f is None or not heads:
            continue
        out[c] = {tuple(h): f(*h).bool() for h in heads}
    return out


def support_table(support: dict[str, dict[Head, torch.Tensor]]) -> str:
    """One row per head: class, on how many templates it meets the criterion, and which templates fail."""
    rows = [f"{'class':42s}{'head':7s}{'templates':>10s}  fails on"]
    for c, heads in support.items():
        for h, ok in heads.items():
            fails = [str(i) for i, v in enumerate(ok.tolist()) if not v]
            rows.append(f"{c:42s}{head_label(h):7s}{int(ok.sum()):>6d}/{len(ok):<3d}  {', '.join(fails) or '-'}")
    return "\n".join(rows)


def support_counts(support: dict[str, dict[Head, torch.Tensor]]) -> dict[Head, int]:
    """{head: number of templates on which it meets its class's criterion}."""
    return {h: int(ok.sum()) for heads in support.values() for h, ok in heads.items()}


__all__ = ["path_jobs", "path_patch_per_prompt", "path_table_per_prompt", "fmt_senders", "abc_heads", "abc_means",
           "TemplateKnockout",
           "knockout_templates", "TemplateValidation", "validate_templates",
           "template_paths", "class_support", "support_table", "support_counts"]
