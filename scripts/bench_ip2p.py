#!/usr/bin/env python3
"""InstructPix2Pix training-step benchmark: the instruct_pix2pix executable against the Python
reference of the script's loop (scripts/ip2p_reference.py --bench: diffusers components, torch
AdamW; LISA as per-tensor AdamW over the first, the last and 8 drawn tensors; LoRA with peft
adapters of rank 4 and conv_in in full), same pipeline,
resolution, batch and methods, on the same machine in the same run.

    bench_ip2p.py --pipeline DIR [--resolution 256] [--batch 2] [--steps 4] [--methods "lisa lora full"]
                  [--repeats 1] [--label NAME] [--out DIR]

Every measurement is its own process, C++ and Python interleaved. Step time: the median over
the steps after the first (C++: step_time of metrics.jsonl; it includes decoding the batch's
two PNGs, which the Python side, fed tensors, does not do). Peak RSS: the child's ru_maxrss
(os.wait4). The C++ side reads a make-dataset ip2p folder of the resolution's size; both
sides use conditioning dropout 0.05, learning rate 5e-5, no accumulation, float32.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import run_child  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--methods", default="lisa lora full")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--label", default="")
    p.add_argument("--bin", default=str(ROOT / "build/apps"))
    p.add_argument("--out")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="lisadiff-bench-ip2p."))
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "metadata.jsonl").exists():
        subprocess.run([f"{args.bin}/lisadiff", "--log-level", "warn", "make-dataset", "--kind", "ip2p", "--format",
                        "folder", "--n", str(args.batch * args.steps), "--size", str(args.resolution), "--out",
                        str(data), "--overwrite"], check=True)
    rows = []
    for method in args.methods.split():
        res = {"cpp": [], "python": []}
        for rep in range(args.repeats):
            run = out / f"{method}.cpp.{rep}"
            cmd = [f"{args.bin}/instruct_pix2pix", "--pretrained_model_name_or_path", args.pipeline, "--dataset_name",
                   str(data), "--resolution", str(args.resolution), "--train_batch_size", str(args.batch),
                   "--max_train_steps", str(args.steps), "--checkpointing_steps", "1000000", "--report_to", "none",
                   "--conditioning_dropout_prob", "0.05", "--learning_rate", "5e-5", "--seed", "0", "--method", method,
                   "--lisa_interval", "1000000", "--lora_rank", "4", "--output_dir", str(run)]
            print(f"[bench] {method} C++ {rep + 1}/{args.repeats}", file=sys.stderr)
            subprocess.run(["rm", "-rf", str(run)], check=True)
            wall, rss = run_child(cmd, out / f"{method}.cpp.{rep}.log")
            metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            times = [m["step_time"] for m in metrics if "step_time" in m]
            res["cpp"].append({"step": statistics.median(times[1:]), "rss": rss, "wall": wall})
            print(f"[bench] {method} Python {rep + 1}/{args.repeats}", file=sys.stderr)
            js = out / f"{method}.python.{rep}.json"
            cmd = [sys.executable, str(ROOT / "scripts/ip2p_reference.py"), "--pipeline", args.pipeline, "--bench", method,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--resolution", str(args.resolution),
                   "--json", str(js)]
            wall, rss = run_child(cmd, out / f"{method}.python.{rep}.log")
            r = json.loads(js.read_text())
            res["python"].append({"step": statistics.median(r["step_seconds"][1:]), "rss": rss, "wall": wall})
        med = lambda side, k: statistics.median(x[k] for x in res[side])
        cs, ps, cr, pr = med("cpp", "step"), med("python", "step"), med("cpp", "rss"), med("python", "rss")
        rows.append(f"| {args.label or Path(args.pipeline).name} | {method} | {args.resolution} | {args.batch} | "
                    f"{cs:.3g} | {ps:.3g} | {cs / ps:.2f} | {cr / 2**20:,.0f} | {pr / 2**20:,.0f} | {cr / pr:.2f} |")
    print("\n".join(rows))
    print(f"\n{args.steps} steps per process (the first is not timed), {args.repeats} repeat(s); {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f} at the end; outputs in {out}")


if __name__ == "__main__":
    main()
