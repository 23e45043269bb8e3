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
