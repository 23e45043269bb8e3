#!/usr/bin/env python3
"""Data-parallel benchmark: how much of a training step waits for the gradient all-reduce.
instruct_pix2pix on a `lisadiff make-dataset --kind ip2p` folder, run once as 1 process and once
by `lisadiff launch --num_processes 2` (Gloo on the CPU), same per-process batch, method by
method.

    bench_dist.py --pipeline DIR [--resolution 64] [--batch 1] [--steps 6] [--methods "lisa full"]
                  [--label NAME] [--out DIR] [-- extra instruct_pix2pix flags]

From rank 0's metrics.jsonl, the medians over the steps after the first: step_time (the whole
step, the all-reduce included) and comm_wait (the seconds the step was blocked waiting for
reduced gradients; the rest of the communication overlapped the backward pass). The share is
comm_wait / step_time. Both processes share this machine's cores, so a 2-process step also pays
for the other process's compute; the 1-process step time is given for that comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import run_child  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def medians(metrics: Path) -> tuple[float, float]:
    lines = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    steps = [l for l in lines if "step_time" in l][1:]
    if not steps:
        sys.exit(f"{metrics}: fewer than 2 steps")
    return (statistics.median(l["step_time"] for l in steps), statistics.median(l.get("comm_wait", 0.0) for l in steps))


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", required=True)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--methods", default="lisa full")
    p.add_argument("--label", default="")
    p.add_argument("--out", default="")
    p.add_argument("--build", default=str(ROOT / "build"))
    a = p.parse_args(argv)
    build = Path(a.build)
    cli, app = build / "apps/lisadiff", build / "apps/instruct_pix2pix"
    out = Path(a.out or tempfile.mkdtemp(prefix="bench-dist-"))
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not data.exists():
        subprocess.run([str(cli), "make-dataset", "--kind", "ip2p", "--format", "folder", "--n",
                        str(max(16, 4 * a.batch * a.steps)), "--size", str(a.resolution), "--out", str(data)],
                       check=True, stdout=subprocess.DEVNULL)
    label = a.label or Path(a.pipeline).name
    rows = []
    for method in a.methods.split():
        res = {}
        for processes in (1, 2):
            run = out / f"{method}.{processes}"
            subprocess.run(["rm", "-rf", str(run)], check=True)
            cmd = [str(cli), "launch", "--num_processes", str(processes), "--main_process_port", str(29500 + os.getpid() % 1000),
                   str(app), "--pretrained_model_name_or_path", a.pipeline, "--dataset_name", str(data),
                   "--resolution", str(a.resolution), "--train_batch_size", str(a.batch), "--max_train_steps", str(a.steps),
                   "--checkpointing_steps", "100000", "--method", method, "--seed", "0", "--report_to", "none",
                   "--output_dir", str(run)] + extra
            print(f"[bench] {method}, {processes} process(es)", file=sys.stderr)
            run_child(cmd, out / f"{method}.{processes}.log")
            res[processes] = medians(run / "metrics.jsonl")
            subprocess.run(["rm", "-rf", str(run / "unet"), str(run / "vae"), str(run / "text_encoder")], check=False)
        (t1, _), (t2, wait) = res[1], res[2]
        rows.append(f"| {label} | {method} | {a.resolution} | {a.batch} | {t1:.3g} | {t2:.3g} | {wait:.3g} | "
                    f"{100 * wait / t2:.1f} % |")
    print("| pipeline | method | px | batch per process | 1 process s/step | 2 processes s/step | blocked on all-reduce s/step | share |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(r)
    print(f"\n{a.steps} steps per run (the first is not counted); {os.cpu_count()} CPUs; extra flags {extra}; outputs in {out}")


if __name__ == "__main__":
    main()
