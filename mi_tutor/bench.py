"""A benchmark, not a test: where the time goes, notebook by notebook and for the suite.

``mi-tutor bench`` (or ``./run.sh bench``) writes ``benchmarks/results.json`` and
``benchmarks/results.md``. Each measurement runs in a fresh subprocess, so peak RSS is that
process's own high-water mark (``ru_maxrss``); for notebooks it is the kernel's.

What it records, in one run:

- every notebook, executed as the test suite executes it without a browser (the headless
  test in ``tests/test_notebooks.py``: a fresh kernel, the checked outputs compared), on a
  quiet machine and, with ``--neighbour``, again beside one busy CPU-bound process, with the
  ratio (the target: at most 2x);
- the first and the cached model load, the cached one split into imports and loading;
- all-heads activation patching at one and two threads against TransformerLens's loop;
- with ``--setup``, set-up from a fresh clone of HEAD (a new virtual environment, the
  machine's warm pip cache);
- with ``--suite``, the whole suite as CI runs it (``./run.sh test``), quiet and, with
  ``--neighbour``, beside a busy process; the suite's parts come from ``artifacts/suite.json``,
  which every suite run writes.

Budgets come from the notebook issues; the table says which are met. Numbers depend on the
machine and on what else it is doing: the table records the machine and its load average.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .env import MKL_KERNELS
from .notebooks import repo_root, source_notebooks

#: (wall seconds, peak RSS GB) per notebook number, from the issues.
BUDGETS: dict[str, tuple[float, float]] = {
    "00": (60, 1.0), "01": (120, 1.0), "02": (180, 1.5), "03": (180, 1.5),
    "04": (180, 1.5), "05": (180, 1.5), "06": (180, 1.5), "07": (180, 1.0),
    "08": (180, 1.5),
}
LOAD_BUDGET = (3.0, 1.2)  # cached smollm2-135m load, including imports

_NOTEBOOK_RUNNER = r"""
import json, resource, subprocess, sys, time
# The notebook runs as the suite runs it without a browser (tests/test_notebooks.py: a fresh
# kernel, checked outputs compared); the kernel is a child of pytest, so RUSAGE_CHILDREN's
# high-water mark is the kernel's (or pytest's, if larger).
node = sys.argv[1]
t0 = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", node],
                      capture_output=True, text=True)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
tail = proc.stdout.strip().splitlines()[-1:] or [""]
error = None if proc.returncode == 0 and "passed" in tail[0] else f"pytest: {tail[0][:200]}"
print(json.dumps({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_gb": ru.ru_maxrss / 1024 ** 2,
                  "error": error, "pytest": tail[0]}))
"""

_LOAD_RUNNER = r"""
import json, resource, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import transformers
t2 = time.perf_counter()
import transformer_lens.model_bridge
t3 = time.perf_counter()
from mi_tutor.models import load_lm
t4 = time.perf_counter()
load_lm("smollm2-135m", verbose=False)
t5 = time.perf_counter()
print(json.dumps({"wall_s": t5 - t0, "imports_s": t4 - t0, "load_s": t5 - t4,
                  "import_split_s": {"torch": t1 - t0, "transformers": t2 - t1, "transformer_lens.model_bridge": t3 - t2,
                                     "mi_tutor": t4 - t3},
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}))
"""

#: The matmul throughput of this process: 1536 x 1536 x 1536 products, 8 of them (sets ``peak``, FLOP/s).
_MATMUL_PEAK = r"""
a = torch.randn(1536, 1536); a @ a
t0 = time.perf_counter()
for _ in range(8): a @ a
peak = 8 * 2 * 1536 ** 3 / (time.perf_counter() - t0)
"""

#: The same throughput alone, in its own process (for MKL's unpinned path: ``MKL_CBWR=AUTO``).
_MATMUL_RUNNER = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
""" + _MATMUL_PEAK + r"""
print(json.dumps({"gflops": peak / 1e9}))
"""

_PATCH_RUNNER = r"""
import json, sys, time, torch, warnings, contextlib, io as _io
warnings.filterwarnings("ignore")
from mi_tutor import setup
setup(threads=int(sys.argv[1]), quiet=True)
from mi_tutor.models import load_lm
from mi_tutor.lab import hooks, patching as engine
from transformer_lens import patching
m = load_lm("smollm2-135m", verbose=False)
clean = m.to_tokens(["When Mary and John went to the store, John gave a drink to"])
corrupt = m.to_tokens(["When Paul and Kate went to the store, Lisa gave a drink to"])
io, s = m.to_single_token(" Mary"), m.to_single_token(" John")
metric_b = hooks.logit_diff_metric(torch.tensor([io]), torch.tensor([s]))  # declares the two logits it reads
metric_tl = lambda lg: metric_b(lg).mean()
def timed(fn):
    t0 = time.perf_counter(); out = fn(); return out, time.perf_counter() - t0
_, clean_cache = m.run_with_cache(clean)
growing, t_grow = timed(lambda: engine.patch_heads(m, corrupt, clean, metric_b, fast=False))
fast, t_fast = timed(lambda: engine.patch_heads(m, corrupt, clean, metric_b, fast=True))
attrib, t_attr = timed(lambda: engine.attribution_patch_heads(m, corrupt, clean, metric_b))
with contextlib.redirect_stderr(_io.StringIO()):
    theirs, t_tl = timed(lambda: patching.get_act_patch_attn_head_out_all_pos(m, corrupt, clean_cache, metric_tl))
theirs = theirs.float()
base = float(metric_b(m(corrupt)).mean())
# The floor: the exact engine's arithmetic (counted) over this core count's matmul throughput.
from torch.utils.flop_counter import FlopCounterMode
with FlopCounterMode(display=False) as counter:
    engine.patch_heads(m, corrupt, clean, metric_b, fast=True)
""" + _MATMUL_PEAK + r"""
corr = lambda a, b: float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])
print(json.dumps({"threads": torch.get_num_threads(), "tokens": clean.shape[1], "heads": theirs.numel(),
                  "transformer_lens_s": t_tl, "growing_batch_s": t_grow, "fast_llama_s": t_fast,
                  "attribution_s": t_attr, "speedup_growing_batch": t_tl / t_grow,
                  "speedup_fast_llama": t_tl / t_fast, "speedup_attribution": t_tl / t_attr,
                  "fast_llama_gflop": counter.get_total_flops() / 1e9, "matmul_peak_gflops": peak / 1e9,
                  "floor_s": counter.get_total_flops() / peak,
                  "max_abs_diff_exact": float(max((x - theirs).abs().max() for x in (growing, fast))),
                  "attribution_correlation": corr(attrib, theirs - base),
                  "fast_values": fast.flatten().tolist()}))
"""


def _run_json(code: str, args: list[str], env: dict | None = None, timeout: int = 3600, cwd: Path | None = None) -> dict:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=cwd)
    lines = [l for l in proc.stdout.strip().splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-500:]}
    return json.loads(lines[-1])


def bench_model_load() -> dict:
    """First load (dequantise into an empty cache) and cached load, each in a fresh process."""
    with tempfile.TemporaryDirectory() as cache:
        env = {"MI_TUTOR_CACHE": cache, "HF_HUB_OFFLINE": "1"}
        first = _run_json(_LOAD_RUNNER, [], env)
        second = _run_json(_LOAD_RUNNER, [], env)
        third = _run_json(_LOAD_RUNNER, [], env)
    return {"first": first, "cached": second, "cached_again": third}


def bench_notebook(path: Path) -> dict:
    """One notebook, executed as the suite's headless test executes it, in a fresh process."""
    env = {"MI_TUTOR_MODEL": os.environ.get("MI_TUTOR_MODEL", "smollm2-135m"), "MI_TUTOR_STRICT": "1"}
    node = f"tests/test_notebooks.py::test_notebook_runs_headless_and_matches_its_checked_outputs[{path.name}]"
    return _run_json(_NOTEBOOK_RUNNER, [node], env, cwd=repo_root())


class BusyNeighbour:
    """One CPU-bound process beside the measurement (a pure-Python spin loop), as a learner
    on a shared Colab or Binder core has; a context manager that stops it afterwards."""

    def __enter__(self) -> "BusyNeighbour":
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)  # let it reach full speed
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def bench_setup() -> dict:
    """Set-up from a fresh clone of HEAD into a new virtual environment (pip's cache stays warm)."""
    with tempfile.TemporaryDirectory(prefix="mi_tutor_setup_") as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", "--local", str(repo_root()), str(clone)], check=True, timeout=300)
        env = dict(os.environ, MI_TUTOR_VENV=str(Path(tmp) / "venv"))
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "run.sh", "setup"], cwd=clone, env=env, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "error": None if proc.returncode == 0 else (proc.stderr or proc.stdout)[-300:]}


def bench_suite() -> dict:
    """The whole suite as CI runs it (``./run.sh test``); its parts from artifacts/suite.json."""
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "run.sh", "test", "-q"], cwd=repo_root(), capture_output=True, text=True,
                          env=dict(os.environ, CI="true"), timeout=3 * 3600)
    wall = time.perf_counter() - t0
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    return {"wall_s": wall, "exit_status": proc.returncode, "pytest": tail[0], "recorded": last_suite_parts()}


def last_suite_parts() -> dict:
    """What the last suite run recorded about its parts (``artifacts/suite.json``), or {}."""
    try:
        return json.loads((repo_root() / "artifacts" / "suite.json").read_text())
    except (OSError, ValueError):
        return {}


def bench_patching(threads: tuple[int, ...] = (1, 2)) -> dict:
    """All 270 heads of SmolLM2 patched on one IOI prompt, in one process per thread count:
    TransformerLens's per-patch loop against our two batched engines and attribution patching.

    Each row also records the matmul throughput MKL reaches on its own code path for this CPU
    (``MKL_CBWR=AUTO``), beside the pinned one every measurement runs under: the price of
    identical numbers on every machine (`env.MKL_KERNELS`)."""
    out = {}
    for t in threads:
        out[str(t)] = _run_json(_PATCH_RUNNER, [str(t)], {"HF_HUB_OFFLINE": "1"})
        free = _run_json(_MATMUL_RUNNER, [str(t)], {"MKL_CBWR": "AUTO"})
        if "gflops" in free and "error" not in out[str(t)]:
            out[str(t)]["matmul_peak_unpinned_gflops"] = free["gflops"]
    return {**out, **thread_agreement(out)}


def thread_agreement(patch: dict) -> dict:
    """How far the fast engine's 270 effects at each thread count are from one thread's (bitwise or not).

    Returns ``{"thread_agreement": {threads: {"max_abs_diff": ..., "heads_differing": ..., "heads": ...}}}``,
    or {} without a one-thread run. The measurement behind the thread-count claims (bitwise equal under the MKL pin).
    """
    one = patch.get("1", {}).get("fast_values")
    if not one:
        return {}
    agree = {}
    for t, p in patch.items():
        vals = p.get("fast_values") if isinstance(p, dict) else None
        if t == "1" or not vals or len(vals) != len(one):
            continue
        diffs = [abs(a - b) for a, b in zip(vals, one)]
        agree[t] = {"max_abs_diff": max(diffs), "heads_differing": sum(d != 0 for d in diffs), "heads": len(one)}
    return {"thread_agreement": agree} if agree else {}


def _verdict(value: float | None, budget: float) -> str:
    if value is None:
        return "n/a"
    return "met" if value <= budget else "MISSED"


def to_markdown(results: dict) -> str:
    lines = ["# mi_tutor benchmark", "",
             f"Machine: {results['machine']}. Load average at start: {results['loadavg_start']}. "
             f"Date: {results['date']}.", "",
             "| what | wall time (s) | CPU time (s) | budget (s) | peak RSS (GB) | budget (GB) | verdict | "
             "beside a busy process (s) | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["notebooks"].items():
        wall, rss = r.get("wall_s"), r.get("peak_rss_gb")
        bw, br = BUDGETS.get(name[:2], (float("nan"), float("nan")))
        verdict = "ERROR: " + r["error"][:80] if r.get("error") else (
            "met" if (_verdict(wall, bw) == "met" and _verdict(rss, br) == "met") else "MISSED")
        cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "-"
        busy = results.get("notebooks_beside_busy", {}).get(name, {})
        busy_wall = busy.get("wall_s")
        ratio = f"{busy_wall / wall:.2f}x" if busy_wall and wall else "-"
        busy_cell = ("ERROR" if busy.get("error") else f"{busy_wall:.1f}") if busy else "-"
        if wall is None:
            lines.append(f"| notebook {name} | - | - | {bw:.0f} | - | {br:.1f} | {verdict} | {busy_cell} | - |")
        else:
            lines.append(f"| notebook {name} | {wall:.1f} | {cpu} | {bw:.0f} | {rss:.2f} | {br:.1f} | {verdict} | "
                         f"{busy_cell} | {ratio} |")
    total = sum(r.get("wall_s") or 0 for r in results["notebooks"].values())
    cpu_total = sum(r.get("cpu_s") or 0 for r in results["notebooks"].values())
    budget_total = sum(BUDGETS.get(n[:2], (0, 0))[0] for n in results["notebooks"])
    peak = max([r.get("peak_rss_gb") or 0 for r in results["notebooks"].values()] or [0])
    lines.append(f"| **all notebooks** | {total:.1f} | {cpu_total:.1f} | {budget_total:.0f} | {peak:.2f} (max) | | | | |")
    load = results.get("model_load", {})
    for key, label in (("first", "smollm2-135m first load (dequantise + cache)"), ("cached",
                                                                                   "smollm2-135m cached load, incl. imports")):
        r = load.get(key, {})
        if "wall_s" in r:
            budget = LOAD_BUDGET if key == "cached" else (None, None)
            within = budget[0] is not None and r["wall_s"] <= budget[0] and r["peak_rss_gb"] <= budget[1]
            verdict = "" if budget[0] is None else ("met" if within else "MISSED")
            lines.append(f"| {label} | {r['wall_s']:.1f} | - | {budget[0] or '-'} | {r['peak_rss_gb']:.2f} | "
                         f"{budget[1] or '-'} | {verdict} | | |")
    cached = load.get("cached", {})
    if "import_split_s" in cached:
        split = ", ".join(f"{k} {v:.1f} s" for k, v in cached["import_split_s"].items())
        lines += ["", f"Cached load: {cached['imports_s']:.1f} s of imports ({split}), then {cached['load_s']:.1f} s "
                  "to load the weights into the bridge."]
    if results.get("setup"):
        r = results["setup"]
        lines += ["", "Set-up from a fresh clone of HEAD (new virtual environment, warm pip cache): "
                  + (f"{r['wall_s']:.0f} s (target 120 s)." if not r.get("error") else f"failed: {r['error'][-120:]}")]
    suites = results.get("suite", {})
    for label, r in suites.items():
        rec = r.get("recorded", {})
        lines += ["", f"The suite as CI runs it ({label}): {r['wall_s'] / 60:.1f} min wall, exit status {r['exit_status']}, "
                  f"{r['pytest']}; {rec.get('workers', '?')} workers; load average at its end {rec.get('loadavg_end', '?')}.", "",
                  "| part | test seconds (summed over workers) | tests |", "|---|---|---|"]
        lines += [f"| {part} | {v['seconds']:.0f} | {v['tests']} |" for part, v in rec.get("parts", {}).items()]
    patch = results.get("patching", {})
    if patch:
        lines += ["", "All-heads activation patching, SmolLM2 (270 heads, one 15-token IOI prompt, corrupted <- clean), "
                  "each row one process:", "",
                  "| torch threads | TransformerLens loop (s) | growing batch, hooks (s) | "
                  "fast Llama engine (s) | attribution (s) | speed-up, growing batch | speed-up, fast Llama | "
                  "speed-up, attribution | max abs diff (exact) | attribution r |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for t, p in patch.items():
            if t == "thread_agreement":
                continue
            if "error" in p:
                lines.append(f"| {t} | error: {p['error'][-80:]} | | | | | | | | |")
                continue
            fast = "-" if p.get("fast_llama_s") is None else f"{p['fast_llama_s']:.1f}"
            fast_x = "-" if p.get("speedup_fast_llama") is None else f"{p['speedup_fast_llama']:.1f}x"
            lines.append(f"| {p['threads']} | {p['transformer_lens_s']:.1f} | "
                         f"{p['growing_batch_s']:.1f} | {fast} | {p['attribution_s']:.2f} | {p['speedup_growing_batch']:.1f}x | "
                         f"{fast_x} | {p['speedup_attribution']:.0f}x | {p['max_abs_diff_exact']:.1e} | "
                         f"{p['attribution_correlation']:.3f} |")
        for t, a in patch.get("thread_agreement", {}).items():
            lines += ["", f"The same engine on {t} threads differs from one thread in {a['heads_differing']} of "
                      f"{a['heads']} head effects, by at most {a['max_abs_diff']:.1e}"
                      + (": bitwise identical." if a["heads_differing"] == 0 else
                         " (the batched matmuls split their work by thread count): so the language-model notebooks run "
                         "on one thread, and every machine prints the same numbers.")]
        floors = [(t, p) for t, p in patch.items() if "floor_s" in p]
        if floors:
            lines += ["", "What any exact engine must compute: the fast engine's counted arithmetic, against the measured "
                      "matmul throughput of the same process (1536 x 1536 x 1536), gives a floor on its time:", "",
                      "| torch threads | exact engine (GFLOP) | matmul throughput (GFLOP/s) | floor (s) | fast Llama (s) | "
                      "share of peak reached | best possible speed-up over the TransformerLens loop | "
                      "matmul throughput on MKL's own path for this CPU, unpinned (GFLOP/s) |",
                      "|---|---|---|---|---|---|---|---|"]
            for t, p in floors:
                free = p.get("matmul_peak_unpinned_gflops")
                lines.append(f"| {t} | {p['fast_llama_gflop']:.0f} | {p['matmul_peak_gflops']:.0f} | {p['floor_s']:.1f} | "
                             f"{p['fast_llama_s']:.1f} | {p['floor_s'] / p['fast_llama_s']:.0%} | "
                             f"{p['transformer_lens_s'] / p['floor_s']:.1f}x | {'-' if free is None else f'{free:.0f}'} |")
            lines += ["", "Every row runs under the pin that makes the numbers the same on every x86 machine "
                      f"(MKL_CBWR={MKL_KERNELS}): the last column is what MKL's own path for this CPU would give instead."]
    return "\n".join(lines) + "\n"


def run_benchmark(notebooks: list[Path] | None = None, out: Path | None = None, model_load: bool = True,
                  patching: bool = True, neighbour: bool = False, setup: bool = False, suite: bool = False) -> dict:
    """Run the benchmark and write results.json / results.md; returns the results.

    Args:
        notebooks: which notebooks (default: every source notebook).
        out: output folder (default: ``benchmarks/``).
        model_load, patching: include the model-load and the patching measurements.
        neighbour: also run every notebook (and, with `suite`, the suite) beside one busy process.
        setup: include set-up from a fresh clone.
        suite: include the whole suite as CI runs it (about half an hour on two cores).
    """
    out = out or repo_root() / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    paths = notebooks or source_notebooks()
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "notebooks": {},
    }
    if setup:
        print("set-up from a fresh clone ...", flush=True)
        results["setup"] = bench_setup()
    if model_load:
        print("model load ...", flush=True)
        results["model_load"] = bench_model_load()
    for p in paths:
        print(f"{p.name} ...", flush=True)
        results["notebooks"][p.stem] = bench_notebook(p)
        print("   ", results["notebooks"][p.stem], flush=True)
    if neighbour:
        results["notebooks_beside_busy"] = {}
        for p in paths:
            print(f"{p.name} beside a busy process ...", flush=True)
            with BusyNeighbour():
                results["notebooks_beside_busy"][p.stem] = bench_notebook(p)
            print("   ", results["notebooks_beside_busy"][p.stem], flush=True)
    if patching:
        print("patching: batched vs TransformerLens loop ...", flush=True)
        results["patching"] = bench_patching()
    if suite:
        results["suite"] = {}
        print("the suite, quiet ...", flush=True)
        results["suite"]["quiet"] = bench_suite()
        if neighbour:
            print("the suite, beside a busy process ...", flush=True)
            with BusyNeighbour():
                results["suite"]["beside a busy process"] = bench_suite()
    elif recorded := last_suite_parts():
        results["suite"] = {"last run of ./run.sh test, recorded in artifacts/suite.json":
                            {"wall_s": recorded["wall_s"], "exit_status": recorded["exit_status"],
                             "pytest": f"recorded {recorded['date']}", "recorded": recorded}}
    results["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results
