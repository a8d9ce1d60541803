"""The toy with a planted Q/K-composition head: the seed's puzzle with a known answer.

Ameisen & Batson (Circuits Updates, Sept 2024) found early heads with large ablation effects
and low successor scores, and suggested Q/K-composition with the later successor heads. The
toy of `successor.ToyTask` contains such a head by design: its "after" queries
(``w03 Sep after Tue w17 4 =`` -> ``Wed``) can only be answered if a layer-0 head moves
information between positions: "I follow 'after'" into the marked item (for a layer-1 head's
keys: K-composition) or where "after" was into "=" (for its queries: Q-composition). A
layer-1 successor head then finds the item and copies its successor (OV). This module:

- `marker_prompts`: aligned probe prompts ``BOS (w y) (w y) (w y) =`` with the marker in one
  of the three slots, and a *twin* of each with the same items and the marker in another slot;
- the ground truth, by two decisive interventions that none of the four methods uses:
  *carriers* (`successor.minimal_flip_set`: heads whose outputs at "=" carry the answer) and
  *routers* (`minimal_routing_set`: heads that, patched from the twin at every position
  BEFORE "=", move the answer to the twin's, i.e. change where the carriers look);
- `best_smaller_set`: the check that a greedy set is a smallest one (every set one head smaller);
- `ablation_break_rates`: how often mean-ablating one head changes the top-1 answer;
- `marker_routes`: path patching of a router's change into only the later heads' keys,
  queries or values (Wang et al. 2022), and `composition_table`: the K/Q/V-composition
  scores of Elhage et al. (2021) beside their random baseline;
- `toy_head_table`, `recovery_sentences`: the comparison read from the numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .lab.hooks import Head, head_label, head_outputs, logprob_metric
from .lab.patching import ablate_heads, copies_runner, heads_replaced, path_patch, run_patched, Patch
from .lab.scores import composition_baseline, composition_scores, head_weights, ranks
from .ordinal import SuccessorPrompts
from .successor import ToyTask, flip_rates_of_sets

N_SLOTS = 3


@dataclass
class MarkerPrompts(SuccessorPrompts):
    """`SuccessorPrompts` for "after" queries; `corrupt` is the twin (same items, marker moved).

    Extra attributes:
        twin_target: [P] token id of the twin's answer (the successor of the item it marks).
        marked_pos: [P] position of the marked item in the prompt.
    """

    twin_target: torch.Tensor = None
    marked_pos: torch.Tensor = None


def marker_prompts(task: ToyTask, n: int = 48, seed: int = 0) -> MarkerPrompts:
    """`n` prompts ``BOS w1 y1 w2 y2 w3 y3 =``: three distinct items, one slot's word is "after".

    The marked slot cycles through the three slots (so a position-wise mean does not keep the
    mark); the twin marks another slot, chosen at random, with the same items and words.
    The answer is the successor of the marked item (every item has one).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    ot = task.otok
    has = [i for i in range(len(ot)) if int(ot.successor[i]) >= 0]
    words = task.distractors
    rows, twins, tgt, tgt_i, twin_t, cats, marked, texts = [], [], [], [], [], [], [], []

    def build(items, ws, slot):
        seq = [0]
        for i in range(N_SLOTS):
            seq += [task.after if i == slot else int(ws[i]), int(ot.ids[items[i]])]
        return seq + [task.query]

    for p in range(n):
        items = [int(i) for i in rng.choice(has, N_SLOTS, replace=False)]
        ws = rng.choice(words, N_SLOTS)
        slot = p % N_SLOTS
        other = (slot + 1 + int(rng.integers(N_SLOTS - 1))) % N_SLOTS
        seq = build(items, ws, slot)
        rows.append(seq)
        twins.append(build(items, ws, other))
        answer = int(ot.successor[items[slot]])
        tgt.append(int(ot.ids[answer])); tgt_i.append(answer); cats.append(int(ot.category[items[slot]]))
        twin_t.append(int(ot.ids[int(ot.successor[items[other]])]))
        marked.append(2 + 2 * slot)
        texts.append(" ".join(task.vocab[t] for t in seq[1:]))
    return MarkerPrompts(torch.tensor(rows), torch.tensor(twins), torch.tensor(tgt), torch.tensor(tgt_i),
                         torch.tensor(cats), texts, torch.tensor(twin_t), torch.tensor(marked))


def marker_accuracy(model, prompts: MarkerPrompts) -> float:
    """Top-1 accuracy of the answer at "=" on the probe prompts."""
    with torch.no_grad():
        return float((model(prompts.tokens)[:, -1].argmax(-1) == prompts.target).float().mean())


# --------------------------------------------------------------------------------------
# Ground truth part two: the routers
# --------------------------------------------------------------------------------------


@torch.no_grad()
def routing_flip_rates(model, prompts: MarkerPrompts, head_sets: Sequence[Sequence[Head]], max_rows: int = 128) -> list[float]:
    """For each set of heads: patch their outputs from the twin at every position except the last
    (at "=" they keep their own values) and count how often the top-1 becomes the twin's answer."""
    src = head_outputs(model, prompts.corrupt)
    own = head_outputs(model, prompts.tokens)
    mixed = {l: torch.cat([src[l][:, :-1], own[l][:, -1:]], 1) for l in src}
    run = copies_runner(model, prompts.tokens)
    per = max(1, max_rows // len(prompts))
    rates: list[float] = []
    for i in range(0, len(head_sets), per):
        logits = run([heads_replaced(hs, mixed) for hs in head_sets[i:i + per]])[1:, :, -1]
        rates += (logits.argmax(-1) == prompts.twin_target).float().mean(-1).tolist()
    return rates


def minimal_routing_set(model, prompts: MarkerPrompts, threshold: float = 0.8) -> tuple[list[Head], list[float]]:
    """Greedy: the smallest set of heads whose outputs before "=" (from the twin) move the answer to the twin's.

    Heads are added one at a time (the largest rise first) until the rate reaches `threshold`;
    if no addition raises it any more before that, no set routes the answer and ([], rates) is returned.
    """
    L, H = model.cfg.n_layers, model.cfg.n_heads
    chosen: list[Head] = []
    rates: list[float] = []
    while len(chosen) < L * H and (not rates or rates[-1] < threshold):
        candidates = [(l, h) for l in range(L) for h in range(H) if (l, h) not in chosen]
        r = routing_flip_rates(model, prompts, [chosen + [c] for c in candidates])
        best = int(np.argmax(r))
        if rates and r[best] <= rates[-1]:
            break
        chosen.append(candidates[best])
        rates.append(r[best])
    return (chosen, rates) if rates and rates[-1] >= threshold else ([], rates)


def best_smaller_set(model, prompts: SuccessorPrompts, chosen: Sequence[Head], routing: bool = False) -> tuple[list[Head], float]:
    """Is a greedy set minimal? Every set with one head fewer than `chosen`, tried exhaustively.

    Returns the best such set and its rate (carriers: `successor.flip_rates_of_sets`, patched at
    the last position; ``routing=True``: `routing_flip_rates`, patched before it). If that rate
    is below the threshold the greedy set is a smallest set. An empty `chosen` is rejected.
    """
    from itertools import combinations

    if not chosen:
        raise ValueError("chosen is empty: pass the set minimal_flip_set or minimal_routing_set returned")
    heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    sets = [list(c) for c in combinations(heads, len(chosen) - 1)]
    if not sets[0]:
        return [], 0.0  # the empty set patches nothing, so it moves no answer
    rates = routing_flip_rates(model, prompts, sets) if routing else flip_rates_of_sets(model, prompts, sets)
    best = int(np.argmax(rates))
    return sets[best], float(rates[best])


def ablation_break_rates(model, prompts: SuccessorPrompts) -> torch.Tensor:
    """Share of prompts whose top-1 answer stops being the target when one head is mean-ablated, [n_layers, n_heads]."""
    target = prompts.target

    def broken(logits):
        return (logits[:, -1].argmax(-1) != target).float()

    return ablate_heads(model, prompts.tokens, broken, "mean", reference_tokens=prompts.tokens)


# --------------------------------------------------------------------------------------
# The route: path patching into keys / queries / values, and composition scores
# --------------------------------------------------------------------------------------


@torch.no_grad()
def marker_routes(model, prompts: MarkerPrompts, sender: Head):
    """Where a router's change acts: the sender patched from the twin (all positions), and that change
    allowed to reach ONLY the later heads' keys, queries or values (`lab.patching.path_patch`,
    ``freeze=False``: every path from the sender to those inputs, through MLPs too).

    Returns a DataFrame: per route, the share of prompts whose answer moves to the twin's and the
    drop in log p(answer).
    """
    import pandas as pd

    ls = sender[0]
    if ls >= model.cfg.n_layers - 1:
        raise ValueError(f"sender {head_label(sender)} is in the last layer: no later head reads it")
    moved = lambda lg: (lg[:, -1].argmax(-1) == prompts.twin_target).float()  # noqa: E731
    lp = logprob_metric(prompts.target)
    base = float(lp(model(prompts.tokens)).mean())
    src = head_outputs(model, prompts.corrupt, [ls])
    logits = run_patched(model, prompts.tokens, [Patch(ls, sender[1], src[ls])])
    rows = {"total (sender patched everywhere)": (float(moved(logits).mean()), base - float(lp(logits).mean()))}
    later = [(l, h) for l in range(ls + 1, model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    for site, name in (("k", "keys"), ("q", "queries"), ("v", "values")):
        got = [float(path_patch(model, prompts.tokens, prompts.corrupt, m, [sender], later, site=site, freeze=False)[0])
               for m in (moved, lp)]
        rows[f"only later heads' {name}"] = (got[0], base - got[1])
    return pd.DataFrame(rows, index=["answer moves to the twin's", "drop in log p(answer)"]).T.round(3)


def composition_table(model, sender: Head, seed: int = 0):
    """K-, Q- and V-composition scores (Elhage et al. 2021) of `sender` with every head of the next layer,
    and the random baseline of the same shapes. Returns (DataFrame, baseline)."""
    import pandas as pd

    ls, hs = sender
    if ls >= model.cfg.n_layers - 1:
        raise ValueError(f"sender {head_label(sender)} is in the last layer: no later head reads it")
    W = head_weights(model)
    table = {kind: composition_scores(W, ls, ls + 1, kind)[hs] for kind in ("K", "Q", "V")}
    df = pd.DataFrame({f"{k}-composition": v.numpy() for k, v in table.items()},
                      index=[head_label((ls + 1, h)) for h in range(model.cfg.n_heads)]).round(3)
    return df, composition_baseline(model.cfg.d_model, model.cfg.d_head, seed=seed)


# --------------------------------------------------------------------------------------
# Reading the comparison
# --------------------------------------------------------------------------------------


def toy_head_table(scores: dict[str, torch.Tensor], carriers: Sequence[Head], routers: Sequence[Head],
                   break_rate: torch.Tensor):
    """Every head of the toy: its role in the ground truth, its rank under each method, and how often
    mean-ablating it alone breaks the answer (a DataFrame sorted by role)."""
    import pandas as pd

    rk = {m: ranks(s) for m, s in scores.items()}
    L, H = break_rate.shape
    rows = []
    for l in range(L):
        for h in range(H):
            role = "carrier" if (l, h) in carriers else "router" if (l, h) in routers else "-"
            row = {"head": head_label((l, h)), "role": role}
            row |= {f"{m} rank": int(r[l, h]) for m, r in rk.items()}
            row["ablation breaks"] = round(float(break_rate[l, h]), 2)
            rows.append(row)
    order = {"router": 0, "carrier": 1, "-": 2}
    table = pd.DataFrame(rows).sort_values(["role", "head"], key=lambda c: c.map(order) if c.name == "role" else c)
    return table.set_index("head")


def recovery_sentences(recovery: dict[str, float], random: float, router_ranks: dict[str, list[int]], k: int) -> list[str]:
    """Plain sentences from the numbers: which methods beat a random ranking, which put every router in their top `k`."""
    beat = [m for m, r in recovery.items() if r > random]
    out = [f"methods above the random ranking ({random:.2f}): {', '.join(beat) or 'none'}; "
           f"at or below it: {', '.join(m for m in recovery if m not in beat) or 'none'}"]
    if any(router_ranks.values()):
        found = [m for m, rs in router_ranks.items() if rs and all(r <= k for r in rs)]
        missed = [m for m, rs in router_ranks.items() if rs and not all(r <= k for r in rs)]
        out.append(f"the router(s) in the top {k}: {', '.join(found) or 'no method'}; "
                   f"missed by: {', '.join(missed) or 'no method'}")
    best = max(recovery.values())
    leaders = [m for m, r in recovery.items() if r == best]
    out.append(f"highest recovery {best:.2f}: {', '.join(leaders)}"
               + (" (a tie)" if len(leaders) > 1 else ""))
    return out


__all__ = [
    "N_SLOTS", "MarkerPrompts", "marker_prompts", "marker_accuracy", "routing_flip_rates", "minimal_routing_set",
    "ablation_break_rates", "marker_routes", "composition_table", "toy_head_table", "recovery_sentences",
]
