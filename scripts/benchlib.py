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
