"""Shared fixtures. Unit tests run offline, on the CPU, with seeds fixed."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def smollm2():
    """The offline pretrained LM, loaded once per test session."""
    from mi_tutor.models import load_lm

    return load_lm("smollm2-135m", verbose=False)


@pytest.fixture(scope="session")
def gpt2_arch():
    """A randomly initialised GPT-2-architecture bridge (tests the GPT-2 code path offline)."""
    from mi_tutor.models import random_gpt2

    return random_gpt2()
