"""Indirect object identification (IOI) prompts for any tokenizer, and the behaviour metric.

The task of Wang et al. 2022 ("Interpretability in the Wild", arXiv 2211.00593): in
"Then, Mary and John went to the store. John gave a drink to", the next token should be
the indirect object (IO) " Mary", not the subject (S) " John", who is mentioned twice.

- Templates carry the placeholders ``[S]``, ``[IO]``, ``[PLACE]``, ``[OBJECT]``; they are
  written in BABA order (S first) and the ABBA version swaps the first two names.
- Names, places and objects are kept only if they are ONE token (with a leading space) for
  the loaded tokenizer, so that every prompt of a template has the same length and the
  positions of IO, S1, S2 and END are the same in BABA prompts (and in ABBA prompts).
- Every prompt has its ABC counterfactual: the same sentence with three unrelated names
  (the paper's p_ABC), used for mean ablation and as the source of activation patching.

`make_ioi(model, n, template=0, seed=0)` returns an `IOIDataset`; `behaviour` gives the
mean logit difference, the share of prompts where IO beats S and the IO probability.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from .lab.hooks import Metric, declare_logits

#: Common English first names (filtered to single tokens of the loaded tokenizer).
NAMES = (
    "Mary John Alice Bob Tom James Sarah Michael David Emma Anna Paul Mark Kate Lisa Daniel "
    "Laura Peter Jack Ryan Sam Chris Rachel Linda Karen Susan Jessica Jennifer Robert Thomas "
    "Andrew Kevin Brian Jason Eric Adam Steve Lucy Grace Rose Amy Helen Emily Sophie Jane Ben "
    "Joe Dan Matt Tim Nick Max Leo Luke Jake Josh Alex Ruth Alan Carl Frank George Henry Ian "
    "Lily Mia Nina Oscar Sean Tony Victor Will Sara Anne Beth Claire Diana Ella Holly Iris "
    "Julia Kim Olivia Sophia Tara Vera Wendy Charles Richard Joseph Edward Patrick Dennis "
    "Jerry Gary Larry Scott Ted"
).split()
PLACES = ("store garden restaurant school hospital office station house park beach market "
          "library church museum bank airport cafe zoo farm lake").split()
OBJECTS = ("drink ring book bone kiss gift letter basketball computer necklace snack apple bag "
           "key ball pen hat phone cake flower").split()

#: BABA templates (S first). The ABBA version of each swaps the first two name slots.
TEMPLATES = (
    "Then, [S] and [IO] went to the [PLACE]. [S] gave a [OBJECT] to",
    "When [S] and [IO] got a [OBJECT] at the [PLACE], [S] decided to give it to",
    "Then, [S] and [IO] had a long argument, and afterwards [S] said to",
    "After [S] and [IO] went to the [PLACE], [S] gave a [OBJECT] to",
    "While [S] and [IO] were working at the [PLACE], [S] gave a [OBJECT] to",
    "Friends [S] and [IO] found a [OBJECT] at the [PLACE]. [S] gave it to",
)

#: The paper's numbers for GPT-2 small (Wang et al. 2022), for side-by-side tables.
PAPER_GPT2 = {"mean logit diff": 3.56, "IO > S": 0.993, "IO probability": 0.49}


class IOIError(ValueError):
    """A template, word list or sentence that cannot make IOI prompts (the message says why)."""


def single_token_words(model, words, kind: str = "words") -> list[str]:
    """Keep the words that are one token with a leading space (" Mary") for `model`'s tokenizer."""
    keep = [w for w in words if len(model.to_tokens(" " + w, prepend_bos=False)[0]) == 1]
    return keep


def check_template(template: str) -> None:
    """Raise `IOIError` unless `template` is a usable BABA template."""
    if not isinstance(template, str):
        raise IOIError(f"a template is a string, got {type(template).__name__}")
    slots = re.findall(r"\[[A-Z]+\]", template)
    unknown = sorted(set(slots) - {"[S]", "[IO]", "[PLACE]", "[OBJECT]"})
    if unknown:
        raise IOIError(f"unknown placeholder(s) {unknown}; use [S], [IO], [PLACE], [OBJECT]")
    names = [s for s in slots if s in ("[S]", "[IO]")]
    if names != ["[S]", "[IO]", "[S]"]:
        raise IOIError(f"a BABA template names [S], then [IO], then [S] again (found {names}), "
                       "e.g. 'Then, [S] and [IO] went to the [PLACE]. [S] gave a [OBJECT] to'")
    for m in re.finditer(r"\[[A-Z]+\]", template):
        if m.start() == 0 or template[m.start() - 1] != " ":
            raise IOIError(f"put a space before {m.group()} (words are single tokens *with* a leading space, "
                           "so a placeholder cannot start the template or follow punctuation directly)")
    if template.rstrip() != template or template.endswith("[IO]"):
        raise IOIError("end the template right before the answer (no trailing space, no [IO] at the end)")


@dataclass
class IOIDataset:
    """Aligned IOI prompts of one template, with their ABC counterfactuals.

    Attributes:
        prompts, abc_prompts: the sentences.
        tokens, abc_tokens: ``[n, pos]`` (with BOS).
        io, s: ``[n]`` token ids of the indirect object and the subject.
        order: "BABA" or "ABBA" per prompt.
        pos: {"IO", "S1", "S2", "S1+1", "END"} -> ``[n]`` positions.
        template: the BABA template used.
    """

    prompts: list[str]
    abc_prompts: list[str]
    tokens: torch.Tensor
    abc_tokens: torch.Tensor
    io: torch.Tensor
    s: torch.Tensor
    order: list[str]
    pos: dict[str, torch.Tensor]
    template: str
    names: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def metric(self) -> Metric:
        """metric(logits): per-prompt logit difference IO - S at the final position (works on
        repeated batches). It declares the two logits per prompt it reads (`declare_logits`)."""
        return declare_logits(self._logit_diff, torch.cat([self.io, self.s]))

    def _logit_diff(self, logits: torch.Tensor) -> torch.Tensor:
        reps = logits.shape[0] // len(self)
        io, s = self.io.repeat(reps), self.s.repeat(reps)
        b = torch.arange(logits.shape[0])
        last = logits[b, -1]
        return last[b, io] - last[b, s]

    def subset(self, idx) -> "IOIDataset":
        """The prompts at indices `idx` (a list or slice)."""
        idx = list(range(len(self)))[idx] if isinstance(idx, slice) else list(idx)
        t = torch.tensor(idx)
        return IOIDataset([self.prompts[i] for i in idx], [self.abc_prompts[i] for i in idx], self.tokens[t],
                          self.abc_tokens[t], self.io[t], self.s[t], [self.order[i] for i in idx],
                          {k: v[t] for k, v in self.pos.items()}, self.template,
                          {k: [v[i] for i in idx] for k, v in self.names.items()})


def _fill(template: str, first: str, second: str, s2: str, place: str, obj: str) -> str:
    out = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
    parts = re.split(r"\[(?:S|IO)\]", out)
    return parts[0] + first + parts[1] + second + parts[2] + s2 + parts[3]


def make_ioi(model, n: int = 8, template: int | str = 0, seed: int = 0, names=None, places=None,
             objects=None) -> IOIDataset:
    """`n` IOI prompts from one template (half BABA, half ABBA), reproducible from `seed`.

    Args:
        template: an index into `TEMPLATES` or a template string (see `check_template`).
        names, places, objects: word lists (default: this module's); words that are not a
            single token for `model`'s tokenizer are dropped, and too few left is an error.
    """
    if n < 1:
        raise IOIError(f"n must be at least 1, got {n}")
    if isinstance(template, (int, np.integer)) and not -len(TEMPLATES) <= template < len(TEMPLATES):
        raise IOIError(f"template={template} is not one of the {len(TEMPLATES)} built-in templates: pass an index "
                       f"0..{len(TEMPLATES) - 1} (see ioi.TEMPLATES) or a template string with [S], [IO] and [S] again")
    if not isinstance(template, (int, np.integer, str)):
        raise IOIError(f"template must be an index into ioi.TEMPLATES or a template string, got {type(template).__name__}")
    tpl = TEMPLATES[int(template)] if not isinstance(template, str) else template
    check_template(tpl)
    names = single_token_words(model, NAMES if names is None else names)
    places = single_token_words(model, PLACES if places is None else places)
    objects = single_token_words(model, OBJECTS if objects is None else objects)
    if len(names) < 5:
        raise IOIError(f"only {len(names)} of the names are single tokens for this tokenizer; need at least 5 "
                       "(IO, S and three ABC names). Pass names= with common first names.")
    if ("[PLACE]" in tpl and not places) or ("[OBJECT]" in tpl and not objects):
        raise IOIError("no place/object word is a single token for this tokenizer: pass places=/objects=")
    rng = np.random.default_rng(seed)
    prompts, abc, orders, ios, ss, abc_names = [], [], [], [], [], []
    for i in range(n):
        a, b, c, d, e = rng.choice(len(names), 5, replace=False)
        io, s = names[a], names[b]
        place = places[rng.integers(len(places))] if places else ""
        obj = objects[rng.integers(len(objects))] if objects else ""
        order = "BABA" if i % 2 == 0 else "ABBA"
        first, second = (s, io) if order == "BABA" else (io, s)
        prompts.append(_fill(tpl, first, second, s, place, obj))
        abc.append(_fill(tpl, names[c], names[d], names[e], place, obj))
        orders.append(order)
        ios.append(io)
        ss.append(s)
        abc_names.append([names[c], names[d], names[e]])
    tokens = model.to_tokens(prompts)
    abc_tokens = model.to_tokens(abc)
    if tokens.shape != abc_tokens.shape or any(len(model.to_tokens(p)[0]) != tokens.shape[1] for p in prompts[:2] + abc[:2]):
        raise IOIError("prompts of this template tokenize to different lengths: check the fillers are single tokens")
    io_ids = torch.tensor([model.to_single_token(" " + x) for x in ios])
    s_ids = torch.tensor([model.to_single_token(" " + x) for x in ss])
    pos = positions(tokens, io_ids, s_ids)
    return IOIDataset(prompts, abc, tokens, abc_tokens, io_ids, s_ids, orders, pos, tpl,
                      {"IO": ios, "S": ss, "ABC": abc_names})


def positions(tokens: torch.Tensor, io: torch.Tensor, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """Positions of IO, S1, S2, S1+1 and END in each prompt ([n] each)."""
    out = {"IO": [], "S1": [], "S2": [], "S1+1": [], "END": []}
    for row, i, s_ in zip(tokens, io, s):
        io_at = (row == i).nonzero().flatten().tolist()
        s_at = (row == s_).nonzero().flatten().tolist()
        if len(io_at) != 1 or len(s_at) != 2:
            raise IOIError(f"expected IO once and S twice in each prompt, found IO {len(io_at)}x and S {len(s_at)}x")
        out["IO"].append(io_at[0])
        out["S1"].append(s_at[0])
        out["S2"].append(s_at[1])
        out["S1+1"].append(s_at[0] + 1)
        out["END"].append(len(row) - 1)
    return {k: torch.tensor(v) for k, v in out.items()}


@dataclass
class Behaviour:
    """How well the model does IOI: mean logit difference, share IO > S, mean IO probability."""

    mean_logit_diff: float
    frac_io_beats_s: float
    io_prob: float
    logit_diffs: torch.Tensor

    def table(self, model_name: str = "this model") -> str:
        """A three-row comparison with the paper's GPT-2 small numbers (labelled)."""
        rows = [("mean logit diff (IO - S)", f"{self.mean_logit_diff:.2f}", f"{PAPER_GPT2['mean logit diff']:.2f}"),
                ("IO beats S", f"{self.frac_io_beats_s:.1%}", f"{PAPER_GPT2['IO > S']:.1%}"),
                ("IO probability", f"{self.io_prob:.1%}", f"{PAPER_GPT2['IO probability']:.0%}")]
        head = f"{'':26s}{model_name:>16s}{'paper (GPT-2 small)':>22s}"
        return "\n".join([head] + [f"{a:26s}{b:>16s}{c:>22s}" for a, b, c in rows])


@torch.no_grad()
def behaviour(model, ds: IOIDataset, logits: torch.Tensor | None = None) -> Behaviour:
    """Compute the IOI behaviour summary on `ds` (pass `logits` to reuse a run)."""
    if logits is None:
        logits = model(ds.tokens)
    ld = ds.metric(logits)
    probs = logits[:, -1].float().softmax(-1)
    io_p = probs[torch.arange(len(ds)), ds.io]
    return Behaviour(float(ld.mean()), float((ld > 0).float().mean()), float(io_p.mean()), ld)


# --------------------------------------------------------------------------------------
# Free-form sentences (the prompt editor)
# --------------------------------------------------------------------------------------


@dataclass
class ParsedSentence:
    """A user's IOI sentence: tokens, IO and S ids and positions."""

    text: str
    tokens: torch.Tensor
    io_name: str
    s_name: str
    io: int
    s: int
    pos: dict[str, int]


def parse_ioi_sentence(model, text: str) -> ParsedSentence:
    """Check that `text` is IOI-shaped and find IO and S; raise `IOIError` saying what is wrong.

    IOI-shaped: two different names (capitalised words, each one token with its leading
    space), the first clause mentions both, one of them (S) is mentioned again, and the
    sentence stops right where the other name (IO) should come.
    """
    if not isinstance(text, str) or not text.strip():
        raise IOIError("type a sentence, e.g. 'When Mary and John went to the store, John gave a drink to'")
    text = text.rstrip()
    words = re.findall(r"[A-Za-z]+", text)
    if not words:
        raise IOIError("the sentence has no words")
    # capitalised words after a space are name candidates; one that starts a sentence ("... store. John gave")
    # counts if it is a known first name or is also used mid-sentence (so "Later" or "Afterwards" do not)
    every = list(re.finditer(r"(?<=\s)[A-Z][a-z]+", text))
    initial = [bool(re.search(r"[.!?]\s*$", text[: m.start()])) for m in every]
    mid = {m.group() for m, ini in zip(every, initial) if not ini}
    cands = [m for m, ini in zip(every, initial) if not ini or m.group() in mid or m.group() in NAMES]
    names = [m.group() for m in cands]
    distinct = list(dict.fromkeys(names))
    if cands and text[cands[-1].end():].strip(" .!?") == "":
        raise IOIError(f"the sentence ends with the name {names[-1]!r}: stop right before the answer, so that the "
                       "model has to predict it (e.g. end with '... gave a drink to')")
    if len(distinct) < 2:
        raise IOIError(f"found {len(distinct)} name(s) ({', '.join(distinct) or 'none'}): an IOI sentence needs two "
                       "people, e.g. 'When Mary and John ...' (names are capitalised words after a space)")
    if len(distinct) > 2:
        raise IOIError(f"found {len(distinct)} different names ({', '.join(distinct)}): use exactly two people")
    counts = {n: names.count(n) for n in distinct}
    if sorted(counts.values()) != [1, 2]:
        raise IOIError(f"name counts {counts}: one person (the subject) must be mentioned twice and the other "
                       "(the indirect object) once, e.g. '... Mary and John ... John gave a drink to'")
    s_name = next(n for n, c in counts.items() if c == 2)
    io_name = next(n for n, c in counts.items() if c == 1)
    if names[-1] != s_name:
        raise IOIError(f"the second mention of the subject ({s_name}) must come after both names are introduced")
    multi = [n for n in distinct if len(model.to_tokens(" " + n, prepend_bos=False)[0]) != 1]
    if multi:
        raise IOIError(f"{', '.join(multi)} is split into several tokens by this tokenizer; pick a common name "
                       f"such as {', '.join(single_token_words(model, NAMES)[:5])}")
    tokens = model.to_tokens(text)
    io_id, s_id = model.to_single_token(" " + io_name), model.to_single_token(" " + s_name)
    try:
        pos = {k: int(v[0]) for k, v in positions(tokens, torch.tensor([io_id]), torch.tensor([s_id])).items()}
    except IOIError:
        raise IOIError("the names must appear with a space before them (e.g. 'and John', not 'and-John')") from None
    return ParsedSentence(text, tokens, io_name, s_name, io_id, s_id, pos)


__all__ = ["NAMES", "PLACES", "OBJECTS", "TEMPLATES", "PAPER_GPT2", "IOIError", "IOIDataset", "Behaviour",
           "ParsedSentence", "single_token_words", "check_template", "make_ioi", "positions", "behaviour",
           "parse_ioi_sentence"]
