"""The instruments refuse bad arguments before any forward pass, with one line naming the argument and the
valid range (InstrumentError, a ValueError). Toy model only."""
from __future__ import annotations

import pytest
import torch

from mi_tutor.lab import hooks, patching as P, readout
from mi_tutor.models import attn_only_model
from mi_tutor.validate import InstrumentError

GOOD = torch.zeros(2, 5, dtype=torch.long)


@pytest.fixture(scope="module")
def toy():
    return attn_only_model(n_layers=2, d_model=32, n_heads=4, d_vocab=30, n_ctx=12, seed=0)


class _NoForward:
    """Wraps the toy so that any forward pass fails the test: validation must come first."""

    def __init__(self, model):
        self.cfg = model.cfg

    def __getattr__(self, name):
        raise AssertionError(f"a forward pass ({name}) ran before the arguments were checked")

    def __call__(self, *a, **k):
        raise AssertionError("a forward pass ran before the arguments were checked")


def _metric(logits):
    return logits[:, -1, 0]


BAD_TOKENS = {
    "float ids": (torch.zeros(2, 5), "must be an integer tensor"),
    "bool ids": (torch.zeros(2, 5, dtype=torch.bool), "must be an integer tensor"),
    "1-D": (torch.zeros(5, dtype=torch.long), "must be 2-D"),
    "3-D": (torch.zeros(1, 2, 5, dtype=torch.long), "must be 2-D"),
    "0 tokens": (torch.zeros(2, 0, dtype=torch.long), "at least one prompt and one token"),
    "0 prompts": (torch.zeros(0, 5, dtype=torch.long), "at least one prompt and one token"),
    "id too big": (torch.full((2, 5), 30, dtype=torch.long), "vocabulary is 0..29"),
    "negative id": (torch.full((2, 5), -1, dtype=torch.long), "vocabulary is 0..29"),
    "a list": ([[1, 2, 3]], "must be a torch tensor"),
    "a string": ("a b c", "must be a torch tensor"),
}

CALLS = {
    "head_outputs": lambda m, t: hooks.head_outputs(m, t),
    "ablation_values": lambda m, t: P.ablation_values(m, t, "zero"),
    "ablate_heads": lambda m, t: P.ablate_heads(m, t, _metric, kind="zero"),
    "replace_heads": lambda m, t: P.replace_heads(m, t, {}, _metric),
    "patch_residual": lambda m, t: P.patch_residual(m, t, t, _metric),
    "attribution_patch_heads": lambda m, t: P.attribution_patch_heads(m, t, t, _metric),
    "patch_heads": lambda m, t: P.patch_heads(m, t, t, _metric),
    "path_patch": lambda m, t: P.path_patch(m, t, t, _metric, [(0, 0)], [(1, 0)]),
    "direct_logit_attribution": lambda m, t: readout.direct_logit_attribution(m, t, torch.tensor([1, 2]), torch.tensor([2, 1])),
}


@pytest.mark.parametrize("bad", sorted(BAD_TOKENS))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_bad_tokens_are_refused_before_any_forward_pass(toy, call, bad):
    tokens, words = BAD_TOKENS[bad]
    with pytest.raises(InstrumentError, match=words) as info:
        CALLS[call](_NoForward(toy), tokens)
    assert "\n" not in str(info.value)


MISMATCHED = {
    "patch_residual": lambda m, a, b: P.patch_residual(m, a, b, _metric),
    "attribution_patch_heads": lambda m, a, b: P.attribution_patch_heads(m, a, b, _metric),
    "patch_heads": lambda m, a, b: P.patch_heads(m, a, b, _metric),
    "patch_heads_by_position": lambda m, a, b: P.patch_heads_by_position(m, a, b, _metric, [(0, 0)]),
    "path_patch": lambda m, a, b: P.path_patch(m, a, b, _metric, [(0, 0)], [(1, 0)]),
}


@pytest.mark.parametrize("other", [torch.zeros(2, 6, dtype=torch.long), torch.zeros(3, 5, dtype=torch.long), None],
                         ids=["longer", "more prompts", "none"])
@pytest.mark.parametrize("call", sorted(MISMATCHED))
def test_mismatched_clean_and_corrupt_prompts_are_refused(toy, call, other):
    with pytest.raises(InstrumentError, match="must have the same shape"):
        MISMATCHED[call](_NoForward(toy), GOOD, other)


@pytest.mark.parametrize("layers,words", [([2], "layer 2 in layers is out of range: this model has layers 0..1"),
                                          ([-1], "out of range"), ([0.5], "must be an integer"), (["0"], "must be an integer")])
@pytest.mark.parametrize("call", ["head_outputs", "patch_heads", "patch_residual", "ablate_heads"])
def test_layers_out_of_range_are_refused(toy, call, layers, words):
    fn = {"head_outputs": lambda m: hooks.head_outputs(m, GOOD, layers),
          "patch_heads": lambda m: P.patch_heads(m, GOOD, GOOD, _metric, layers=layers),
          "patch_residual": lambda m: P.patch_residual(m, GOOD, GOOD, _metric, layers=layers),
          "ablate_heads": lambda m: P.ablate_heads(m, GOOD, _metric, kind="zero", layers=layers)}[call]
    with pytest.raises(InstrumentError, match=words):
        fn(_NoForward(toy))


@pytest.mark.parametrize("heads,words", [([(0, 4)], "head 4 of \\(0, 4\\) is out of range: this model has heads 0..3"),
                                         ([(2, 0)], "layer 2 of head"), ([(0,)], "a \\(layer, head\\) pair"),
                                         ([3], "a \\(layer, head\\) pair"), ([(0, 1.5)], "must be an integer")])
def test_heads_out_of_range_are_refused(toy, heads, words):
    with pytest.raises(InstrumentError, match=words):
        P.patch_heads_by_position(_NoForward(toy), GOOD, GOOD, _metric, heads)
    with pytest.raises(InstrumentError, match=words):
        P.path_patch(_NoForward(toy), GOOD, GOOD, _metric, heads, [(1, 0)])


@pytest.mark.parametrize("kind", ["zeros", "Mean", "", None, 0])
def test_an_unknown_ablation_kind_is_refused(toy, kind):
    with pytest.raises(InstrumentError, match="unknown ablation kind .* use one of: 'zero', 'mean', 'resample'"):
        P.ablation_values(_NoForward(toy), GOOD, kind)
    with pytest.raises(InstrumentError, match="unknown ablation kind"):
        P.ablate_heads(_NoForward(toy), GOOD, _metric, kind=kind)


@pytest.mark.parametrize("io,s,words", [
    (torch.tensor([1, 2, 3]), torch.tensor([2, 1]), "io has shape \\(3,\\); it needs one token id per prompt: \\(2,\\)"),
    (torch.tensor([1, 2]), torch.tensor([2]), "s has shape \\(1,\\)"),
    (torch.tensor([1.0, 2.0]), torch.tensor([2, 1]), "io must be an integer tensor"),
    ([1, 2], torch.tensor([2, 1]), "io must be an integer tensor"),
    (torch.tensor([1, 99]), torch.tensor([2, 1]), "outside the vocabulary 0..29"),
    (torch.tensor([[1, 2]]), torch.tensor([2, 1]), "io has shape \\(1, 2\\)"),
])
def test_dla_answers_of_the_wrong_length_are_refused_not_broadcast(toy, io, s, words):
    with pytest.raises(InstrumentError, match=words):
        readout.direct_logit_attribution(_NoForward(toy), GOOD, io, s)


def test_good_arguments_still_work(toy):
    tokens = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(0))
    assert P.ablate_heads(toy, tokens, _metric, kind="zero").shape == (2, 4)
    assert P.patch_heads(toy, tokens, tokens.flip(0), _metric, layers=[1]).shape == (2, 4)


@pytest.mark.parametrize("correct,wrong,words", [
    (torch.tensor([0, 1, 2]), torch.tensor([1, 0]), "correct has shape \\(3,\\); it needs one token id per prompt: \\(2,\\)"),
    (torch.tensor([0, 1]), torch.tensor([1.0, 0.0]), "wrong must be an integer tensor"),
    (0, torch.tensor([1, 0]), "correct must be an integer tensor"),
])
def test_logit_diff_refuses_answers_that_would_broadcast(correct, wrong, words):
    with pytest.raises(InstrumentError, match=words):
        hooks.logit_diff(torch.zeros(2, 5, 7), correct, wrong)
