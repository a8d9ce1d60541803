"""Keeping the dequantised model cache honest: a size + sampled hash, a usable folder, finite logits.

`models.build_smollm2_cache` records the size of ``model.safetensors`` and a cheap hash (the
safetensors header plus 64 evenly spaced 64 KB samples, ~4 MB read: milliseconds, against
~1 s for hashing all 517 MB) in ``mi_tutor_source.json``. `cache_problem` checks them before a
load; a mismatch (a truncated, emptied or overwritten file) makes the loader rebuild the cache
with one line saying so. Corruption between samples is caught after loading: `require_finite`
runs one token through the model and refuses NaN/inf logits.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

MANIFEST = "mi_tutor_source.json"
WEIGHTS = "model.safetensors"
_SAMPLES = 64
_CHUNK = 64 * 1024


class CacheUnusableError(RuntimeError):
    """The cache folder cannot be used (it is a file, or not writable); the message says what to do."""


def sampled_hash(path: Path) -> str:
    """blake2b of the file's size, its first MB and 64 evenly spaced 64 KB samples."""
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        for i in range(_SAMPLES):
            f.seek(max(0, (size - _CHUNK) * i // max(1, _SAMPLES - 1)))
            h.update(f.read(_CHUNK))
    return h.hexdigest()


def write_manifest(directory: Path, **extra: Any) -> dict:
    """Record the weights' size and sampled hash (with `extra` fields) in the cache's manifest."""
    weights = directory / WEIGHTS
    data = dict(extra)
    data.update(model_size=weights.stat().st_size, model_hash=sampled_hash(weights))
    (directory / MANIFEST).write_text(json.dumps(data))
    return data


def _header_problem(weights: Path) -> str | None:
    """None if the safetensors header parses and its tensors fit in the file, else what is wrong."""
    size = weights.stat().st_size
    if size < 8:
        return f"{WEIGHTS} is {size} bytes long (empty or truncated)"
    with weights.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n <= 0 or n > min(size - 8, 100 << 20):
            return f"{WEIGHTS} has a broken header"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return f"{WEIGHTS} has a broken header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and 8 + n + max(ends) > size:
        return f"{WEIGHTS} is truncated ({size} bytes, its header needs {8 + n + max(ends)})"
    return None


def cache_problem(directory: Path) -> str | None:
    """None if the cache at `directory` looks intact; "missing" if there is none; else what is wrong."""
    weights = directory / WEIGHTS
    if not weights.exists():
        return "missing"
    try:
        problem = _header_problem(weights)
        if problem:
            return problem
        manifest = json.loads((directory / MANIFEST).read_text()) if (directory / MANIFEST).exists() else {}
        if "model_size" not in manifest:  # a cache written before manifests: record one now if we can
            try:
                write_manifest(directory, **manifest)
            except OSError:
                pass
            return None
        size = weights.stat().st_size
        if size != manifest["model_size"]:
            return f"{WEIGHTS} is {size} bytes, {manifest['model_size']} were written"
        if sampled_hash(weights) != manifest.get("model_hash"):
            return f"{WEIGHTS} has changed since it was written (hash mismatch)"
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        return f"the cache cannot be read ({type(e).__name__}: {e})"
    return None


def remove_cache(directory: Path) -> None:
    """Delete a corrupt cache folder (so that the next build starts clean)."""
    shutil.rmtree(directory, ignore_errors=True)
    if directory.exists():
        raise CacheUnusableError(f"The corrupt model cache {directory} cannot be deleted: delete it by hand, "
                                 f"or set MI_TUTOR_CACHE to another writable folder.")


def ensure_writable(folder: Path) -> None:
    """Raise `CacheUnusableError` (with what to do) unless `folder` is, or can become, a writable folder."""
    hint = "set MI_TUTOR_CACHE to a writable folder (or unset it to use the default per-user cache)"
    if folder.exists() and not folder.is_dir():
        raise CacheUnusableError(f"The model cache path {folder} is a file, not a folder: {hint}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except (OSError, FileExistsError) as e:
        raise CacheUnusableError(f"The model cache folder {folder} is not writable ({type(e).__name__}): {hint}.") from None


def require_finite(model: Any, what: str = "the model") -> None:
    """Run one token through `model`; raise ValueError if any logit is NaN or infinite."""
    with torch.no_grad():
        logits = model(torch.zeros(1, 1, dtype=torch.long))
    if not torch.isfinite(logits).all():
        raise ValueError(f"{what} gives non-finite logits (NaN or inf): its weights are corrupt")
