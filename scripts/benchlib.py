"""Helpers the benchmark drivers share (scripts/bench_generate.py, scripts/bench_ip2p.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def run_child(cmd: list[str], log: Path) -> tuple[float, int]:
    """Runs cmd with its output in `log`; returns (wall seconds, peak RSS bytes of that child,
    from os.wait4). Exits with the log's tail when the command fails."""
    with open(log, "w") as f:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: {cmd[0]} failed with exit code {code}; see {log}:\n" + log.read_text()[-2000:])
    return wall, usage.ru_maxrss * 1024


def run_child_memory(cmd: list[str], log: Path, interval: float = 0.02) -> tuple[float, int, int]:
    """run_child, and also the child's peak anonymous RSS (RssAnon of /proc/PID/status, polled
    every `interval` seconds): memory the process owns, as opposed to file pages it maps (a
    memory-mapped weight file), which ru_maxrss counts too. Returns (wall, peak RSS, peak
    anonymous RSS), in bytes."""
    import threading

    with open(log, "w") as f:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        peak = [0]
        done = threading.Event()

        def poll() -> None:
            status = Path(f"/proc/{proc.pid}/status")
            while not done.is_set():
                try:
                    for line in status.read_text().splitlines():
                        if line.startswith("RssAnon:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                except (OSError, ValueError):
                    pass
                done.wait(interval)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        poller.join()
        wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: {cmd[0]} failed with exit code {code}; see {log}:\n" + log.read_text()[-2000:])
    return wall, usage.ru_maxrss * 1024, peak[0]


def compare_methods(methods: list[str], repeats: int, out: Path, cpp_cmd, py_cmd, label: str, resolution: int,
                    batch: int) -> list[str]:
    """A recipe executable against its Python reference, method by method, each measurement its
    own process, C++ and Python interleaved. cpp_cmd(method, run_dir) is the executable's command
    (its metrics.jsonl gives step_time); py_cmd(method, json_file) the reference's (--bench, whose
    JSON gives step_seconds). Step time: the median over the steps after the first. Returns one
    markdown row per method: step time, peak RSS and peak anonymous RSS, C++ / Python / ratio."""
    import json
    import statistics

    rows = []
    gib = lambda b: f"{b / 2**30:.2f}"
    for method in methods:
        res = {"cpp": [], "python": []}
        for rep in range(repeats):
            run = out / f"{method}.cpp.{rep}"
            print(f"[bench] {method} C++ {rep + 1}/{repeats}", file=sys.stderr)
            subprocess.run(["rm", "-rf", str(run)], check=True)
            wall, rss, anon = run_child_memory(cpp_cmd(method, run), out / f"{method}.cpp.{rep}.log")
            metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            times = [m["step_time"] for m in metrics if "step_time" in m]
            res["cpp"].append({"step": statistics.median(times[1:]), "rss": rss, "anon": anon, "wall": wall})
            print(f"[bench] {method} Python {rep + 1}/{repeats}", file=sys.stderr)
            js = out / f"{method}.python.{rep}.json"
            wall, rss, anon = run_child_memory(py_cmd(method, js), out / f"{method}.python.{rep}.log")
            r = json.loads(js.read_text())
            res["python"].append({"step": statistics.median(r["step_seconds"][1:]), "rss": rss, "anon": anon,
                                  "wall": wall})
        med = lambda side, k: statistics.median(x[k] for x in res[side])
        cs, ps = med("cpp", "step"), med("python", "step")
        cr, pr, ca, pa = med("cpp", "rss"), med("python", "rss"), med("cpp", "anon"), med("python", "anon")
        rows.append(f"| {label} | {method} | {resolution} | {batch} | "
                    f"{cs:.3g} | {ps:.3g} | {cs / ps:.2f} | {gib(cr)} | {gib(pr)} | {cr / pr:.2f} | "
                    f"{gib(ca)} | {gib(pa)} | {ca / pa:.2f} |")
    return rows
