"""Ordinal sequences for successor-head experiments: Monday -> Tuesday, 3 -> 4, B -> C.

`ordinal_tokens(model)` turns the word lists in `CATEGORIES` into the single tokens of a
model's tokenizer, with each token's category and the index of its successor. Items that
are not one token are dropped; an item whose neighbour was dropped loses its successor
(a gap must not count as succession). `OrdinalTokens.report()` says what survived.

`successor_prompts` builds aligned prompts such as ``" Monday, Tuesday,"`` (answer
``" Wednesday"``) plus a corrupted twin per prompt (same category, shuffled items, no
succession) for patching; `behaviour_table` measures how often the model continues them.

The same `OrdinalTokens` structure describes the toy model's vocabulary
(`mi_tutor.successor.ToyTask.ordinal_tokens`), so every method in `successor` runs
unchanged on the toy model and on a pretrained LM.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

#: The ordinal categories (Gould et al. 2023 use numbers, number words, days, months,
#: letters and ordinals). Each list is in successor order.
CATEGORIES: dict[str, list[str]] = {
    "numbers": [str(i) for i in range(0, 21)],
    "number words": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                     "eleven", "twelve"],
    "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "months": ["January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December"],
    "letters": [chr(c) for c in range(ord("A"), ord("Z") + 1)],
    "ordinals": ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                 "ninth", "tenth"],
}


@dataclass
class OrdinalTokens:
    """Ordinal tokens of one vocabulary, in category order.

    Attributes:
        ids: [n] token ids.
        labels: n display strings (the item, e.g. "Monday").
        forms: n token strings as the tokenizer sees them (e.g. " Monday").
        category: [n] category index into `category_names`.
        category_names: names of the categories that kept at least two tokens.
        successor: [n] index (into these n tokens) of the successor, or -1 if none.
        dropped: per category, the items that were not a single token.
    """

    ids: torch.Tensor
    labels: list[str]
    forms: list[str]
    category: torch.Tensor
    category_names: list[str]
    successor: torch.Tensor
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def in_category(self, c: int | str) -> torch.Tensor:
        """Indices (into these tokens) of category `c` (an index or a name)."""
        ci = self.category_names.index(c) if isinstance(c, str) else int(c)
        return torch.nonzero(self.category == ci).flatten()

    @property
    def n_with_successor(self) -> int:
        return int((self.successor >= 0).sum())

    def chance(self) -> float:
        """Expected successor score of a head that guesses uniformly within each category."""
        sizes = torch.bincount(self.category, minlength=len(self.category_names)).float()
        has = self.successor >= 0
        return float((1.0 / sizes[self.category[has]]).mean())

    def report(self) -> str:
        """One line per category: what was kept and what was dropped."""
        lines = []
        for ci, name in enumerate(self.category_names):
            idx = self.in_category(ci)
            kept = [self.labels[i] for i in idx]
            n_succ = int((self.successor[idx] >= 0).sum())
            shown = ", ".join(kept) if len(kept) <= 12 else ", ".join(kept[:6] + ["..."] + kept[-3:])
            lines.append(f"{name:>12}: {len(kept):2d} tokens, {n_succ:2d} with a successor  [{shown}]")
        for name, items in self.dropped.items():
            if items and name not in self.category_names:
                lines.append(f"{name:>12}: dropped entirely (not single tokens: {', '.join(items[:5])}...)")
            elif items:
                more = "..." if len(items) > 6 else ""
                lines.append(f"{'':>12}  {name}: dropped {len(items)} multi-token items ({', '.join(items[:6])}{more})")
        return "\n".join(lines)


def _single_token(model, s: str) -> int | None:
    toks = model.to_tokens(s, prepend_bos=False)[0]
    return int(toks[0]) if toks.numel() == 1 else None


def ordinal_tokens(model, categories: dict[str, list[str]] | None = None) -> OrdinalTokens:
    """The single-token ordinal items of `model`'s tokenizer.

    Each item is tried as " item" first (the form that follows ", " in a list), then as
    "item" (e.g. digits on SmolLM2, whose tokenizer splits " 7" into " " and "7"). Items that
    are neither are dropped. Categories with fewer than two tokens are dropped.
    """
    categories = categories or CATEGORIES
    ids, labels, forms, cats, succ = [], [], [], [], []
    names: list[str] = []
    dropped: dict[str, list[str]] = {}
    seen: set[int] = set()
    for name, items in categories.items():
        found = []
        for item in items:
            tok, form = None, None
            for f in (" " + item, item):
                tok = _single_token(model, f)
                if tok is not None:
                    form = f
                    break
            if tok is None or tok in seen:
                dropped.setdefault(name, []).append(item)
                found.append(None)
            else:
                found.append((item, form, tok))
        if sum(x is not None for x in found) < 2:
            continue
        ci = len(names)
        names.append(name)
        start = len(ids)
        positions = {}
        for j, x in enumerate(found):
            if x is None:
                continue
            positions[j] = len(ids)
            labels.append(x[0]); forms.append(x[1]); ids.append(x[2]); cats.append(ci); succ.append(-1)
            seen.add(x[2])
        for j, k in positions.items():
            if j + 1 in positions:
                succ[k] = positions[j + 1]
        assert len(ids) > start
    if not ids:
        raise ValueError("no ordinal item is a single token for this tokenizer")
    return OrdinalTokens(torch.tensor(ids), labels, forms, torch.tensor(cats), names, torch.tensor(succ), dropped)


@dataclass
class SuccessorPrompts:
    """Aligned successor prompts (all the same length).

    Attributes:
        tokens: [P, 1 + 2 * n_items] clean prompts, e.g. BOS " Monday" "," " Tuesday" ",".
        corrupt: [P, same] the same category's items in an order with no succession.
        target: [P] token id of the correct continuation (the successor of the last item).
        target_index: [P] its index into the `OrdinalTokens`.
        category: [P] category index.
        text: the clean prompts as strings.
    """

    tokens: torch.Tensor
    corrupt: torch.Tensor
    target: torch.Tensor
    target_index: torch.Tensor
    category: torch.Tensor
    text: list[str]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _prompt_ids(bos: list[int], comma: int, ids: Sequence[int]) -> list[int]:
    out = list(bos)
    for t in ids:
        out += [int(t), comma]
    return out


def successor_prompts(model, otok: OrdinalTokens, n_items: int = 2, per_category: int | None = None,
                      seed: int = 0, bos: Sequence[int] | None = None, comma: int | None = None) -> SuccessorPrompts:
    """Prompts of `n_items` consecutive ordinal tokens, each followed by a comma.

    Built from token ids (BOS, item, ",", item, ",", ...), so every prompt has the same length
    and the answer position is the last one. The corrupted twin keeps the category but draws
    `n_items` other items of it in an order where no item follows its predecessor.

    Args:
        per_category: keep at most this many prompts per category (evenly spread), or all.
        bos, comma: token ids to use instead of asking `model`'s tokenizer (toy models have none;
            pass model=None then).
    """
    if n_items < 1:
        raise ValueError("n_items must be at least 1")
    rng = np.random.default_rng(seed)
    bos = list(bos) if bos is not None else model.to_tokens("", prepend_bos=True)[0].tolist()
    comma = comma if comma is not None else _single_token(model, ",")
    if comma is None:
        raise ValueError("',' is not a single token for this tokenizer")
    rows, bad, tgt, tgt_i, cats, texts = [], [], [], [], [], []
    for ci in range(len(otok.category_names)):
        idx = otok.in_category(ci).tolist()
        chains = []
        for start in idx:
            chain = [start]
            while len(chain) < n_items + 1 and otok.successor[chain[-1]] >= 0:
                chain.append(int(otok.successor[chain[-1]]))
            if len(chain) == n_items + 1:
                chains.append(chain)
        if per_category is not None and len(chains) > per_category:
            keep = np.linspace(0, len(chains) - 1, per_category).round().astype(int)
            chains = [chains[k] for k in keep]
        for chain in chains:
            items, answer = chain[:-1], chain[-1]
            pool = [i for i in idx if i != answer]
            for _ in range(100):
                perm = list(rng.choice(pool, size=min(n_items, len(pool)), replace=False))
                if len(perm) < n_items:
                    perm += perm[: n_items - len(perm)]
                if all(otok.successor[a] != b for a, b in zip(perm, perm[1:])) and otok.successor[perm[-1]] != answer:
                    break
            rows.append(_prompt_ids(bos, comma, otok.ids[items].tolist()))
            bad.append(_prompt_ids(bos, comma, otok.ids[perm].tolist()))
            tgt.append(int(otok.ids[answer])); tgt_i.append(answer); cats.append(ci)
            texts.append("".join(otok.forms[i] + "," for i in items))
    if not rows:
        raise ValueError(f"no category has {n_items + 1} consecutive single-token items")
    return SuccessorPrompts(torch.tensor(rows), torch.tensor(bad), torch.tensor(tgt), torch.tensor(tgt_i),
                            torch.tensor(cats), texts)


def _token_text(model, otok: OrdinalTokens, tok: int) -> str:
    hit = torch.nonzero(otok.ids == tok).flatten()
    if len(hit):
        return otok.forms[int(hit[0])]
    try:
        return model.to_string(torch.tensor([tok]))
    except Exception:  # toy models have no tokenizer
        return f"<{tok}>"


@torch.no_grad()
def behaviour_table(model, otok: OrdinalTokens, prompts: SuccessorPrompts) -> list[dict]:
    """Per category: how often the model's top-1 next token is the successor.

    Two numbers per category: over the whole vocabulary, and "within the set" (top-1 among
    that category's ordinal tokens only).
    """
    logits = model(prompts.tokens)[:, -1]
    top_all = logits.argmax(-1)
    rows = []
    for ci, name in enumerate(otok.category_names):
        sel = torch.nonzero(prompts.category == ci).flatten()
        if len(sel) == 0:
            continue
        cat_idx = otok.in_category(ci)
        within = logits[sel][:, otok.ids[cat_idx]].argmax(-1)
        ok_within = otok.ids[cat_idx][within] == prompts.target[sel]
        rows.append({
            "category": name, "prompts": int(len(sel)),
            "top1_vocab": int((top_all[sel] == prompts.target[sel]).sum()),
            "top1_within": int(ok_within.sum()),
            "example": prompts.text[int(sel[0])] + " ->" + _token_text(model, otok, int(top_all[sel[0]])),
        })
    return rows


__all__ = ["CATEGORIES", "OrdinalTokens", "ordinal_tokens", "SuccessorPrompts", "successor_prompts", "behaviour_table"]
