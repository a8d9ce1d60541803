"""Train the paper's grokking run on a CPU and ship compact artefacts for notebook 01.

Setting (Nanda, Chan, Lieberum, Smith & Steinhardt 2023, "Progress measures for grokking via
mechanistic interpretability", arXiv 2301.05217): p = 113, 30% of the 12,769 pairs for
training, full-batch AdamW, lr 1e-3, weight decay 1.0, betas (0.9, 0.98), 10-step linear
warm-up, model seed 0, split seed 0. The paper trains 40k epochs; on a CPU we train as many
steps as `--steps` or `--max-minutes` allows and record exactly what was run.

Two stages:

1. ``train``: trains with `mi_tutor.grokking.train_grokking` (the fast last-position forward)
   and writes a float16 checkpoint of every weight every `--every` steps, plus one JSON line
   of train/test loss and accuracy, into a scratch directory (~0.45 MB per checkpoint; not
   shipped).
2. ``finalize``: runs the notebook's own analysis (`mi_tutor.fourier.progress_measures`) over
   every scratch checkpoint, then writes into ``mi_tutor/data/grokking/``:

   - ``paper_run.json``: the config, what was run (steps, wall time, machine), the metrics at
     every checkpoint (losses, accuracies, restricted/excluded loss, Gini, weight norm) and
     the key frequencies;
   - ``paper_checkpoints.safetensors``: a handful of float16 checkpoints (the scrubber's steps).

Usage::

    python scripts/train_grokking_paper.py train --steps 40000 --max-minutes 70
    python scripts/train_grokking_paper.py finalize
    python scripts/train_grokking_paper.py all          # both
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mi_tutor import grokking  # noqa: E402

SCRATCH = Path(os.environ.get("MI_TUTOR_GROK_SCRATCH", "/tmp/mi_tutor_grokking_paper"))
#: how many checkpoints ship (chosen evenly in log-ish step spacing plus the phase edges)
N_SHIPPED = 8


def paper_config(steps: int, every: int) -> grokking.GrokConfig:
    cfg = grokking.GrokConfig(**{**grokking.PAPER.to_dict(), "n_steps": steps, "eval_every": every,
                                 "checkpoint_every": every})
    cfg.betas = tuple(cfg.betas)
    return cfg


def train_stage(args) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    cfg = paper_config(args.steps, args.every)
    tokens, labels = grokking.all_pairs(cfg.p)
    train_idx, test_idx = grokking.make_split(cfg.p, cfg.frac_train, cfg.data_seed, cfg.split)
    log = open(SCRATCH / "metrics.jsonl", "w")
    t0 = time.perf_counter()

    def on_checkpoint(step: int, model) -> None:
        state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(SCRATCH / f"ckpt_{step:06d}.safetensors"))
        row = {"step": step, "seconds": round(time.perf_counter() - t0, 1)}
        row.update(grokking.evaluate(model, tokens, labels, train_idx, test_idx))
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), flush=True)

    run = grokking.train_grokking(cfg, live=False, progress=False, on_checkpoint=on_checkpoint,
                                  keep_checkpoints=False, max_seconds=args.max_minutes * 60, threads=args.threads)
    info = {"config": cfg.to_dict(), "steps_run": run.history.steps[-1], "seconds": run.history.seconds,
            "stopped_by_time": run.history.stopped_early, "threads": args.threads,
            "machine": f"{platform.machine()} {os.cpu_count()} cores, load average at end {os.getloadavg()}",
            "torch": torch.__version__}
    (SCRATCH / "run_info.json").write_text(json.dumps(info, indent=1))
    print("done", info, flush=True)


def finalize_stage(args) -> None:
    from safetensors.torch import load_file, save_file

    from mi_tutor import fourier

    rows = [json.loads(line) for line in open(SCRATCH / "metrics.jsonl")]
    if (SCRATCH / "run_info.json").exists():
        info = json.loads((SCRATCH / "run_info.json").read_text())
    else:  # the train stage was stopped by hand: say so, from what it logged
        info = {"steps_run": rows[-1]["step"], "seconds": rows[-1]["seconds"], "stopped_by_time": True,
                "note": args.note or "training was stopped by hand before --steps", "threads": args.threads,
                "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    files = sorted(SCRATCH.glob("ckpt_*.safetensors"))
    if not files:
        raise SystemExit(f"no checkpoints in {SCRATCH}: run the train stage first")
    steps = [int(f.stem.split("_")[1]) for f in files]
    cfg = paper_config(max(steps), args.every)
    states = {s: load_file(str(f)) for s, f in zip(steps, files)}
    measures = fourier.progress_measures(states, cfg)
    by_step = {r["step"]: r for r in rows}
    metrics = {k: [by_step[s][k] if s in by_step else None for s in steps]
               for k in ("train_loss", "test_loss", "train_acc", "test_acc", "seconds")}
    metrics.update({k: v for k, v in measures.items() if k not in ("steps", "key_freqs")})
    phases = fourier.phase_boundaries(steps, metrics)
    ship = fourier.pick_checkpoints(steps, phases, N_SHIPPED)
    out = {
        "what": "scripts/train_grokking_paper.py: the paper's setting trained on a CPU",
        "paper": "Nanda, Chan, Lieberum, Smith & Steinhardt 2023, arXiv 2301.05217",
        "config": cfg.to_dict(),
        "run": info,
        "steps": steps,
        "metrics": metrics,
        "key_freqs": measures["key_freqs"],
        "phases": phases,
        "shipped_steps": ship,
    }
    grokking.DATA_DIR.mkdir(parents=True, exist_ok=True)
    (grokking.DATA_DIR / "paper_run.json").write_text(json.dumps(out, indent=None, separators=(",", ":")))
    tensors = {f"step_{s:06d}/{k}": v.half().contiguous() for s in ship for k, v in states[s].items()}
    save_file(tensors, str(grokking.DATA_DIR / "paper_checkpoints.safetensors"), metadata={"format": "pt"})
    print("wrote", grokking.DATA_DIR, "steps", steps[0], "...", steps[-1], "shipped", ship, "key freqs",
          measures["key_freqs"], "phases", phases)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["train", "finalize", "all"])
    ap.add_argument("--steps", type=int, default=40_000, help="full-batch steps (the paper: 40k)")
    ap.add_argument("--every", type=int, default=100, help="checkpoint/eval interval")
    ap.add_argument("--max-minutes", type=float, default=24 * 60.0, help="stop training after this wall time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    ap.add_argument("--note", default="", help="finalize: a note on how the run ended (stored in the JSON)")
    args = ap.parse_args()
    if args.stage in ("train", "all"):
        train_stage(args)
    if args.stage in ("finalize", "all"):
        finalize_stage(args)


if __name__ == "__main__":
    main()
