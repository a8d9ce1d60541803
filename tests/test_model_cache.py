"""The model cache: size + sampled hash recorded and verified, corrupt caches rebuilt with one line,
non-finite logits refused, unusable MI_TUTOR_CACHE paths explained. Fake caches and stub models only
(SmolLM2 itself is never loaded here)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mi_tutor import model_cache as C
from mi_tutor import models


def _fake_cache(directory: Path, mb: float = 3.0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    n = int(mb * (1 << 20) / 4)
    save_file({"a": torch.arange(n, dtype=torch.float32), "b": torch.ones(7)}, str(directory / C.WEIGHTS))
    C.write_manifest(directory, gguf="fake.gguf")
    return directory


def test_an_intact_cache_passes_and_records_size_and_hash(tmp_path):
    d = _fake_cache(tmp_path / "c")
    manifest = json.loads((d / C.MANIFEST).read_text())
    assert manifest["model_size"] == (d / C.WEIGHTS).stat().st_size and len(manifest["model_hash"]) == 32
    assert manifest["gguf"] == "fake.gguf"
    assert C.cache_problem(d) is None
    assert C.cache_problem(tmp_path / "nothing") == "missing"


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p: Path):
    p.write_bytes(b"")


def _overwrite_start(p: Path):
    data = bytearray(p.read_bytes())
    data[200:5000] = bytes(range(256)) * 18 + bytes(192)
    p.write_bytes(bytes(data))


def _overwrite_end(p: Path):
    data = bytearray(p.read_bytes())
    data[-3000:] = b"\x7f" * 3000
    p.write_bytes(bytes(data))


def _append(p: Path):
    with p.open("ab") as f:
        f.write(b"junk")


def _broken_header(p: Path):
    data = bytearray(p.read_bytes())
    data[8:20] = b"not json ..."
    p.write_bytes(bytes(data))


def _huge_header_length(p: Path):
    data = bytearray(p.read_bytes())
    data[:8] = (1 << 40).to_bytes(8, "little")
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _empty, _overwrite_start, _overwrite_end, _append, _broken_header,
                                    _huge_header_length])
def test_a_damaged_cache_is_detected(tmp_path, damage):
    d = _fake_cache(tmp_path / "c")
    damage(d / C.WEIGHTS)
    problem = C.cache_problem(d)
    assert problem not in (None, "missing")
    assert "\n" not in problem


def test_an_old_cache_without_a_manifest_gets_one(tmp_path):
    d = _fake_cache(tmp_path / "c")
    (d / C.MANIFEST).write_text(json.dumps({"gguf": "fake.gguf"}))
    assert C.cache_problem(d) is None
    assert "model_hash" in json.loads((d / C.MANIFEST).read_text())


def test_an_unreadable_manifest_is_a_problem_not_a_traceback(tmp_path):
    d = _fake_cache(tmp_path / "c")
    (d / C.MANIFEST).write_text("{not json")
    assert C.cache_problem(d).startswith("the cache cannot be read")


def test_a_file_as_cache_folder_says_what_to_do(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(C.CacheUnusableError, match="is a file, not a folder: set MI_TUTOR_CACHE"):
        C.ensure_writable(f)


def test_a_read_only_cache_folder_says_what_to_do():
    with pytest.raises(C.CacheUnusableError, match="is not writable .*set MI_TUTOR_CACHE to a writable folder"):
        C.ensure_writable(Path("/proc/mi_tutor_cache_test"))  # not writable even for root


class _Stub(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, tokens):
        return torch.full((*tokens.shape, 5), self.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_are_refused(value):
    with pytest.raises(ValueError, match="non-finite logits"):
        C.require_finite(_Stub(value))


def test_finite_logits_pass():
    C.require_finite(_Stub(0.5))


@pytest.fixture
def fake_loader(tmp_path, monkeypatch):
    """models._load_smollm2 with a fake cache builder and a stub model: counts the builds."""
    monkeypatch.setenv("MI_TUTOR_CACHE", str(tmp_path / "cache"))
    state = {"builds": 0, "values": [0.5]}

    def build(target=None):
        target = target or models.smollm2_cache_path()
        if not (target / C.WEIGHTS).exists():
            state["builds"] += 1
            _fake_cache(target, 1.0)
        return target

    def boot(path):
        return _Stub(state["values"].pop(0) if len(state["values"]) > 1 else state["values"][0])

    monkeypatch.setattr(models, "build_smollm2_cache", build)
    monkeypatch.setattr(models, "_boot", boot)
    return state


def test_a_corrupt_cache_is_rebuilt_with_one_line(fake_loader, capsys):
    path = models.smollm2_cache_path()
    _fake_cache(path)
    _truncate(path / C.WEIGHTS)
    model, source = models._load_smollm2()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "is corrupt" in out[0] and "rebuilding it" in out[0]
    assert fake_loader["builds"] == 1 and "dequantised now" in source
    assert C.cache_problem(path) is None


def test_an_intact_cache_is_read_without_rebuilding(fake_loader, capsys):
    _fake_cache(models.smollm2_cache_path())
    _, source = models._load_smollm2()
    assert fake_loader["builds"] == 0 and source.startswith("cache ") and capsys.readouterr().out == ""


def test_nan_weights_the_hash_missed_are_rebuilt_once(fake_loader, capsys):
    _fake_cache(models.smollm2_cache_path())
    fake_loader["values"] = [float("nan"), 0.5]
    models._load_smollm2()
    assert fake_loader["builds"] == 1 and "non-finite logits" in capsys.readouterr().out


def test_nan_even_after_a_rebuild_is_a_clear_error(fake_loader):
    fake_loader["values"] = [float("nan")]
    with pytest.raises(models.ModelUnavailableError, match="could not be loaded even from a freshly built cache"):
        models._load_smollm2()


def test_a_file_as_mi_tutor_cache_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "a_file"
    f.write_text("x")
    monkeypatch.setenv("MI_TUTOR_CACHE", str(f))
    with pytest.raises(models.ModelUnavailableError, match="is a file, not a folder"):
        models.load_lm("smollm2-135m", reuse=False, verbose=False)


def test_a_read_only_mi_tutor_cache_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MI_TUTOR_CACHE", "/proc/mi_tutor_cache_test")
    with pytest.raises(models.ModelUnavailableError, match="is not writable"):
        models.build_smollm2_cache()


@pytest.mark.parametrize("name", ["gpt3", "", "smollm2", "GPT-2 small"])
def test_an_unknown_model_name_is_one_clear_error(name):
    with pytest.raises(ValueError, match="Unknown model .* Supported: "):
        models.load_lm(name, verbose=False)


def test_an_import_error_while_loading_keeps_the_cache_and_says_what_to_do(fake_loader, monkeypatch):
    path = models.smollm2_cache_path()
    _fake_cache(path)

    def boot(path):
        raise ImportError("cannot import name 'Profile' from 'profile' (/tmp/work/profile.py)")

    monkeypatch.setattr(models, "_boot", boot)
    with pytest.raises(models.ModelUnavailableError, match="named like a Python module") as err:
        models._load_smollm2()
    assert "\n" not in str(err.value) and "profile.py" in str(err.value)
    assert C.cache_problem(path) is None and fake_loader["builds"] == 0  # the good cache is still there, not rebuilt
