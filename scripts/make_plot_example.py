#!/usr/bin/env python3
"""Writes a synthetic metrics.jsonl (the format training runs write; README.md, "lisadiff plot")
for the example figure docs/plot-example.png:

    python3 scripts/make_plot_example.py /tmp/example-run
    build/apps/lisadiff plot /tmp/example-run --metrics loss,lr,grad_norm --log-y grad_norm \
        --width 800 --height 560 --out docs/plot-example.png

400 steps: lr with 50 warmup steps then cosine decay, a noisy decaying loss, grad_norm every
10 steps, a LISA re-draw every 50 steps, a checkpoint at 250, and a last line cut off mid-write
as a crashed run leaves it. Seeded, so the figure is the same on every run.
"""
import json
import math
import pathlib
import random
import sys

STEPS = 400


def main(out_dir: pathlib.Path) -> None:
    random.seed(0)
    lines = []
    for step in range(STEPS + 1):
        warmup = min(1.0, step / 50)
        cosine = 0.5 * (1 + math.cos(math.pi * max(0, step - 50) / (STEPS - 50)))
        record = {
            "step": step,
            "loss": round(abs(0.09 + 0.22 * math.exp(-step / 150) + random.gauss(0, 0.02)), 4),
            "lr": 1e-4 * warmup * cosine,
            "epoch": step // 200,
        }
        if step % 10 == 0:
            record["grad_norm"] = round(abs(random.gauss(0.8, 0.2)) + 2 * math.exp(-step / 100), 3)
        lines.append(json.dumps(record))
        if step and step % 50 == 0:
            lines.append(json.dumps({"step": step, "event": "recall"}))
        if step and step % 250 == 0:
            lines.append(json.dumps({"step": step, "event": "checkpoint"}))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 401, "loss": 0.0')


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
