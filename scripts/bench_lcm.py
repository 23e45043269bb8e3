#!/usr/bin/env python3
"""LCM distillation training-step benchmark: the lcm_distill executable against the Python
reference of the scripts' loop (scripts/lcm_reference.py --bench: diffusers components, peft
LoRA on the LCM-LoRA targets at rank 64, torch AdamW; LISA as per-tensor AdamW over the first,
the last and a quarter of the other tensors, the fork's rate; the teacher and the target are
float32 UNets), same pipeline, resolution, batch and methods, on the same machine in the same
run.

    bench_lcm.py --pipeline DIR [--resolution 256] [--batch 1] [--steps 4] [--methods "lisa full lora"]
                 [--repeats 1] [--label NAME] [--out DIR] [-- extra lcm_distill flags]

Every measurement is its own process, C++ and Python interleaved (benchlib.compare_methods).
Step time: the median over the steps after the first (C++: step_time of metrics.jsonl, which
includes decoding the sample from its shard; the Python side is fed tensors). Peak RSS: the
child's ru_maxrss (os.wait4), which counts the pages of memory-mapped files it touched; peak
anonymous RSS: RssAnon polled every 20 ms, the memory the process owns. lisadiff's teacher
(and LoRA's base) is, on a CPU in float32, the memory-mapped weight file itself: it shows in
RSS, not in anonymous RSS. Both sides: huber loss, learning rate 1e-5, no weight decay, the
teacher without autocast (--teacher_autocast no: the script's CPU default is bfloat16
autocast, which the reference does not time), no accumulation, float32.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import compare_methods  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--methods", default="lisa full lora")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--label", default="")
    p.add_argument("--bin", default=str(ROOT / "build/apps"))
    p.add_argument("--out")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="lisadiff-bench-lcm."))
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "00000.tar").exists():
        subprocess.run([f"{args.bin}/lisadiff", "--log-level", "warn", "make-dataset", "--kind", "t2i", "--format",
                        "wds", "--n", str(max(args.batch * args.steps, 8)), "--size", str(args.resolution), "--out",
                        str(data), "--overwrite"], check=True)

    def cpp_cmd(method, run):
        return [f"{args.bin}/lcm_distill", "--pretrained_teacher_model", args.pipeline, "--train_shards_path_or_url",
                str(data / "00000.tar"), "--resolution", str(args.resolution), "--train_batch_size", str(args.batch),
                "--max_train_steps", str(args.steps), "--checkpointing_steps", "1000000", "--validation_steps",
                "1000000", "--report_to", "none", "--learning_rate", "1e-5", "--loss_type", "huber",
                "--adam_weight_decay", "0", "--teacher_autocast", "no", "--seed", "0", "--method", method,
                "--lisa_rate", "0.25", "--lisa_interval", "1000000", "--output_dir", str(run)] + extra

    def py_cmd(method, js):
        return [sys.executable, str(ROOT / "scripts/lcm_reference.py"), "--pipeline", args.pipeline, "--bench", method,
                "--steps", str(args.steps), "--batch", str(args.batch), "--resolution", str(args.resolution),
                "--json", str(js)]

    rows = compare_methods(args.methods.split(), args.repeats, out, cpp_cmd, py_cmd,
                           args.label or Path(args.pipeline).name, args.resolution, args.batch)
    print("| pipeline | method | px | batch | C++ s/step | Python s/step | ratio | C++ peak RSS GiB | Python | ratio | "
          "C++ peak anon GiB | Python | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{args.steps} steps per process (the first is not timed), {args.repeats} repeat(s); {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f} at the end; extra flags {extra}; outputs in {out}")


if __name__ == "__main__":
    main()
