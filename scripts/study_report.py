#!/usr/bin/env python3
"""Results and tables of scripts/study.sh (a measurement tool; nothing in lisadiff runs it).

  study_report.py result --run DIR --task T --variant V --method M --seed S --seconds N
      DIR/result.json from the run's metrics.jsonl and its evaluations
  study_report.py report --out DIR [--check]
      DIR/study.md: the tables of docs/study.md; --check fails when a cell is empty
  study_report.py grids --out DIR
      DIR/figures/<task>-grid.png: the first images of each task's evaluation, one row per
      method (seed 1) under the base model's row, the same prompts and seeds in every row
"""
import argparse
import json
import math
import pathlib
import statistics
import sys

MAIN_EVAL = {"t2i": "orange", "ip2p": "edits", "dpo": "known", "lcm": "known"}
TASK_TITLES = {
    "t2i": "text_to_image: a colour the model never saw (orange)",
    "ip2p": "instruct_pix2pix: recolour edits",
    "dpo": "diffusion_dpo: prefer the image that matches its caption",
    "lcm": "lcm_distill: 4-step images",
}
KNOB_TITLES = {
    "lisa": "8 active units, re-draw every 20 steps, tensor units, first+last always on, fp32 (the headline)",
    "lisa-units2": "2 active units",
    "lisa-units32": "32 active units",
    "lisa-interval5": "re-draw every 5 steps",
    "lisa-interval100": "re-draw every 100 steps",
    "lisa-block": "block units (resnet, attention, ...) instead of tensors",
    "lisa-no-first": "only the last tensor always on (no conv_in)",
    "lisa-bf16-frozen": "frozen weights in bf16 (bf16 autocast)",
}


def read_json(path):
    return json.loads(pathlib.Path(path).read_text())


def metrics(run):
    rows = []
    for line in (run / "out" / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in r and "step_time" in r:
            rows.append(r)
    return rows


def result(args):
    run = pathlib.Path(args.run)
    rows = metrics(run)
    if not rows:
        sys.exit(f"{run}/out/metrics.jsonl: no training steps logged")
    times = [r["step_time"] for r in rows[1:]] or [rows[0]["step_time"]]  # the first step warms up
    score = read_json(run / MAIN_EVAL[args.task] / "score.json")
    res = {
        "task": args.task, "variant": args.variant, "method": args.method, "seed": args.seed,
        "score": score["color_and_shape"]["rate"], "color": score["color"]["rate"],
        "shape": score["shape"]["rate"],
        "background": score["background"]["rate"] if score["background"]["judged"] else None,
        "step_time": statistics.median(times),
        "peak_rss_mb": max(r.get("peak_memory", 0) for r in rows) / 2**20,
        "trainable": statistics.mean(r["active_parameters"] for r in rows),
        "final_loss": statistics.mean(r["loss"] for r in rows[-10:]),
        "wall_seconds": args.seconds,
    }
    if (run / "known" / "score.json").exists() and args.task == "t2i":
        res["retention"] = read_json(run / "known" / "score.json")["color_and_shape"]["rate"]
    if (run / "loss.json").exists():
        res["heldout_loss"] = read_json(run / "loss.json")["loss"]
    (run / "result.json").write_text(json.dumps(res, indent=1) + "\n")


def mean_sd(values, fmt, percent=False):
    values = [v for v in values if v is not None]
    if not values:
        return ""
    scale = 100 if percent else 1
    m = statistics.mean(values) * scale
    text = fmt.format(m)
    if len(values) > 1:
        text += " ± " + fmt.format(statistics.stdev(values) * scale)
    return text + (" %" if percent else "")


def report(args):
    out = pathlib.Path(args.out)
    results = [read_json(p) for p in sorted(out.glob("runs/*/*/seed*/result.json"))]
    ev = out / "eval"

    def base_score(name):
        p = ev / name / "score.json"
        return read_json(p)["color_and_shape"]["rate"] if p.exists() else None

    def base_loss(name):
        p = ev / f"{name}-loss.json"
        return read_json(p)["loss"] if p.exists() else None

    before = {"t2i": base_score("base-orange"), "ip2p": base_score("base-ip2p"), "dpo": base_score("base-known"),
              "lcm": base_score("base-known-4")}
    loss_before = {"t2i": base_loss("base-orange"), "dpo": base_loss("base-known")}
    lines = ["# Study tables (scripts/study.sh)", ""]
    empty = []

    def row(cells):
        for c in cells:
            if c == "":
                empty.append(cells[0])
        lines.append("| " + " | ".join(cells) + " |")

    for task in ["t2i", "ip2p", "dpo", "lcm"]:
        rs = [r for r in results if r["task"] == task and r["variant"] == r["method"]]
        if not rs:
            continue
        lines += [f"## {TASK_TITLES[task]}", ""]
        head = ["method", "seeds", "score before", "score after", "colour", "shape"]
        if task == "t2i":
            head.append("known colours kept")
        if task == "ip2p":
            head.append("background kept")
        if task in ("t2i", "dpo"):
            head.append("held-out loss (before → after)")
        if task == "lcm":
            head.append("teacher, 25 DDIM steps")
        head += ["step time (s)", "peak RSS (MB)", "trainable parameters"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + " --- |" * len(head))
        full_time = [r["step_time"] for r in rs if r["method"] == "full"]
        for method in ["lisa", "lora", "full"]:
            m = [r for r in rs if r["method"] == method]
            if not m:
                continue
            b = before[task]
            cells = [method, str(len(m)), "n/a" if b is None else f"{100 * b:.1f} %",
                     mean_sd([r["score"] for r in m], "{:.1f}", True), mean_sd([r["color"] for r in m], "{:.1f}", True),
                     mean_sd([r["shape"] for r in m], "{:.1f}", True)]
            if task == "t2i":
                cells.append(mean_sd([r.get("retention") for r in m], "{:.1f}", True))
            if task == "ip2p":
                cells.append(mean_sd([r.get("background") for r in m], "{:.1f}", True))
            if task in ("t2i", "dpo"):
                lb = loss_before[task]
                after = mean_sd([r.get("heldout_loss") for r in m], "{:.4f}")
                cells.append(("" if lb is None else f"{lb:.4f} → ") + after if after else "")
            if task == "lcm":
                t = base_score("base-known")
                cells.append("" if t is None else f"{100 * t:.1f} %")
            st = statistics.mean(r["step_time"] for r in m)
            ratio = f" ({st / statistics.mean(full_time):.2f}x full)" if full_time else ""
            cells += [f"{st:.3f}{ratio}", mean_sd([r["peak_rss_mb"] for r in m], "{:.0f}"),
                      f"{statistics.mean(r['trainable'] for r in m):,.0f}"]
            row(cells)
        lines.append("")

    knobs = [r for r in results if r["task"] == "t2i" and r["method"] == "lisa" and r["seed"] == 1]
    if len(knobs) > 1:
        lines += ["## LISA's knobs (text_to_image, orange, seed 1)", "",
                  "| variant | score after | colour | known colours kept | held-out loss | step time (s) | peak RSS (MB) | trainable parameters |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for variant in KNOB_TITLES:
            r = next((k for k in knobs if k["variant"] == variant), None)
            if r is None:
                continue
            row([KNOB_TITLES[variant], f"{100 * r['score']:.1f} %", f"{100 * r['color']:.1f} %",
                 "" if r.get("retention") is None else f"{100 * r['retention']:.1f} %",
                 "" if r.get("heldout_loss") is None else f"{r['heldout_loss']:.4f}",
                 f"{r['step_time']:.3f}", f"{r['peak_rss_mb']:.0f}", f"{r['trainable']:,.0f}"])
        lines.append("")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))
    if args.check:
        if not results:
            sys.exit("study_report: no finished run")
        if empty:
            sys.exit("study_report: empty cells in rows: " + ", ".join(sorted(set(empty))))


GRID_EVAL = {"t2i": ("orange", "base-orange"), "ip2p": ("edits", "base-ip2p"), "dpo": ("known", "base-known"),
             "lcm": ("known", "base-known-4")}


def grids(args):
    from PIL import Image, ImageDraw  # a measurement tool's figure; lisadiff itself draws with cairo

    out = pathlib.Path(args.out)
    (out / "figures").mkdir(exist_ok=True)
    cols, cell, label_w = 8, 64, 150
    for task, (eval_name, base) in GRID_EVAL.items():
        rows = []
        if base:
            rows.append(("before (shapes model)" if task != "lcm" else "teacher, 4 DDIM steps", out / "eval" / base))
        if task == "lcm":
            rows.append(("teacher, 25 DDIM steps", out / "eval" / "base-known"))
        if task == "ip2p":
            rows.append(("source image", None))
        for method in ["lisa", "lora", "full"]:
            rows.append((method, out / "runs" / task / method / "seed1" / eval_name))
        method_dir = out / "runs" / task / "lisa" / "seed1" / eval_name
        if not (method_dir / "images.jsonl").exists():
            continue
        index = [json.loads(l) for l in (method_dir / "images.jsonl").read_text().splitlines() if l.strip()][:cols]
        head = 30
        img = Image.new("RGB", (label_w + cols * (cell + 4), head + len(rows) * (cell + 4)), "white")
        d = ImageDraw.Draw(img)
        for c, rec in enumerate(index):
            words = [w for w in rec["prompt"].split() if w not in ("a", "the", "make", "on", "background")]
            d.text((label_w + c * (cell + 4), 2), " ".join(words[:2])[:11], fill="black")
            d.text((label_w + c * (cell + 4), 14), " ".join(words[2:])[:11], fill="black")
        for r, (name, folder) in enumerate(rows):
            y = head + r * (cell + 4)
            d.text((4, y + cell // 2 - 6), name, fill="black")
            for c, rec in enumerate(index):
                path = pathlib.Path(rec["image"]) if folder is None else folder / rec["file"]
                if path.exists():
                    img.paste(Image.open(path).convert("RGB").resize((cell, cell), Image.NEAREST),
                              (label_w + c * (cell + 4), y))
        img.save(out / "figures" / f"{task}-grid.png")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("result")
    r.add_argument("--run", required=True)
    r.add_argument("--task", required=True, choices=list(MAIN_EVAL))
    r.add_argument("--variant", required=True)
    r.add_argument("--method", required=True)
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--seconds", type=float, required=True)
    s = sub.add_parser("report")
    s.add_argument("--out", required=True)
    s.add_argument("--check", action="store_true")
    g = sub.add_parser("grids")
    g.add_argument("--out", required=True)
    args = p.parse_args()
    {"result": result, "report": report, "grids": grids}[args.command](args)


if __name__ == "__main__":
    main()
