#!/usr/bin/env python3
"""Generation benchmark: `lisadiff generate` against diffusers' StableDiffusionPipeline on the
same pipeline folder, prompts, seeds, scheduler and size, on the same machine in the same run.

    bench_generate.py --pipeline DIR [--steps 10] [--height 256 --width 256] [--images 3]
                      [--repeats 2] [--guidance 7.5] [--cli build/apps/lisadiff] [--out DIR]
                      [--label NAME] [--markdown FILE]

Every measurement is its own process, C++ and Python interleaved per repeat. Each process
makes --images images, one pipeline call each with batch 1 and seed i (what `lisadiff
generate` does: seed + i); the first image is a warm-up and the time per image is the median
of the others (generation only: loading is reported apart). Peak RSS is the child's
ru_maxrss (os.wait4), for both sides alike. The images of the two sides are compared pixel
for pixel (same seeds, so they should agree to a few uint8 levels: float32 on different
kernels). The reference side is this script with --reference (diffusers, torch; Python is a
tool here, never the product).
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

PROMPTS = ["a red circle on a white background", "a blue square", "a green triangle in the middle"]


def reference(args: argparse.Namespace) -> None:
    """The diffusers side: load, then one call per image, timed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    seconds, images = [], []
    for i in range(args.images):
        prompt = PROMPTS[i % len(PROMPTS)]
        t = time.perf_counter()
        out = pipe(prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height,
                   width=args.width, generator=torch.Generator().manual_seed(i)).images[0]
        seconds.append(time.perf_counter() - t)
        images.append(np.asarray(out))
    out_dir = Path(args.reference)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "images.npy", np.stack(images))
    (out_dir / "result.json").write_text(json.dumps({
        "load_s": load_s, "seconds": seconds, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "scheduler": type(pipe.scheduler).__name__}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--cli", default=str(Path(__file__).resolve().parent.parent / "build/apps/lisadiff"))
    p.add_argument("--out")
    p.add_argument("--label", default="")
    p.add_argument("--markdown")
    p.add_argument("--reference", help=argparse.SUPPRESS)  # child mode: the diffusers side, results to this folder
    args = p.parse_args()
    if args.images < 2:
        p.error("--images must be at least 2 (the first one is a warm-up)")
    if args.reference:
        return reference(args)

    import numpy as np

    from PIL import Image

    if args.height is None or args.width is None:
        cfg = json.loads((Path(args.pipeline) / "unet/config.json").read_text())
        vae = json.loads((Path(args.pipeline) / "vae/config.json").read_text())
        side = cfg["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)
        args.height = args.height or side
        args.width = args.width or side
    out = Path(args.out or tempfile.mkdtemp(prefix="lisadiff-bench-generate."))
    out.mkdir(parents=True, exist_ok=True)
    rows = {"cpp": [], "python": []}
    for rep in range(args.repeats):
        # C++: lisadiff generate, one call per image with seed i.
        d = out / f"cpp.{rep}"
        cmd = [args.cli, "--log-level", "warn", "generate", args.pipeline, "--out", str(d), "--overwrite",
               "--steps", str(args.steps), "--guidance_scale", str(args.guidance), "--height", str(args.height),
               "--width", str(args.width), "--seed", "0"]
        # One prompt per image (cycling), one image each: seed 0, 1, 2, ... as the Python side.
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
        (out / "prompts.txt").write_text("\n".join(prompts) + "\n")
        cmd += ["--prompts", str(out / "prompts.txt")]
        print(f"[bench] C++ repeat {rep + 1}/{args.repeats}", file=sys.stderr)
        wall, rss = run_child(cmd, out / f"cpp.{rep}.log")
        records = [json.loads(line) for line in (d / "images.jsonl").read_text().splitlines()]
        seconds = [r["seconds"] for r in records]
        images = np.stack([np.asarray(Image.open(d / r["file"]).convert("RGB")) for r in records])
        rows["cpp"].append({"wall": wall, "rss": rss, "seconds": seconds, "images": images,
                            "scheduler": records[0]["scheduler"]})
        # Python: diffusers.
        d = out / f"python.{rep}"
        print(f"[bench] Python repeat {rep + 1}/{args.repeats}", file=sys.stderr)
        cmd = [sys.executable, __file__, "--pipeline", args.pipeline, "--steps", str(args.steps), "--guidance",
               str(args.guidance), "--height", str(args.height), "--width", str(args.width), "--images",
               str(args.images), "--reference", str(d)]
        wall, rss = run_child(cmd, out / f"python.{rep}.log")
        r = json.loads((d / "result.json").read_text())
        rows["python"].append({"wall": wall, "rss": rss, "seconds": r["seconds"], "images": np.load(d / "images.npy"),
                               "scheduler": r["scheduler"], "threads": r["threads"], "torch": r["torch"],
                               "load_s": r["load_s"]})

    def per_image(side: str) -> float:  # median over repeats of the median of images 2..N
        return statistics.median(statistics.median(r["seconds"][1:]) for r in rows[side])

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[side])

    diff = max(int(np.abs(c["images"].astype(int) - py["images"].astype(int)).max())
               for c, py in zip(rows["cpp"], rows["python"]))
    cs, ps = per_image("cpp"), per_image("python")
    cr, pr = med("cpp", "rss"), med("python", "rss")
    cw, pw = med("cpp", "wall"), med("python", "wall")
    mib = lambda b: f"{b / 2**20:,.0f}"
    py0 = rows["python"][0]
    label = args.label or Path(args.pipeline).name
    lines = [
        f"| {label} | {args.width}x{args.height} | {args.steps} | {cs:.3g} | {ps:.3g} | {cs / ps:.2f} | {mib(cr)} | "
        f"{mib(pr)} | {cr / pr:.2f} | {cw:.1f} / {pw:.1f} | {diff} |",
        f"\n{label}: scheduler {rows['cpp'][0]['scheduler']} (diffusers {py0['scheduler']}), guidance {args.guidance} "
        f"(CFG), {args.images} images per process (the first a warm-up), {args.repeats} repeats; per-image seconds C++ "
        f"{[round(s, 3) for r in rows['cpp'] for s in r['seconds']]}, Python "
        f"{[round(s, 3) for r in rows['python'] for s in r['seconds']]}; torch {py0['torch']}, {py0['threads']} threads; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the end.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n")
    print(f"[bench] outputs in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
