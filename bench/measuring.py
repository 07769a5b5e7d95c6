"""How the ingest benchmarks time a contender: a fresh subprocess, wall and CPU time, peak memory.

In: a command line (and its environment). Out: a :class:`Measurement` of one run
(wall seconds, CPU seconds of the process and its children from ``wait4``, peak
RSS), the command's stdout, and :func:`median_run` to fold rounds into one row.

Used by bench_ingest.py and bench_reddit.py; imported as a sibling module (the bench
scripts run as ``python bench/NAME.py``, which puts bench/ on ``sys.path``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Measurement:
    """One contender's run: what it read, how long it took, its peak memory, its output rows."""

    contender: str
    lines: int
    seconds: float
    cpu_seconds: float
    peak_mib: float
    rows_out: int = 0

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds


def tree_rss(process: Any) -> int:
    """Resident bytes of a psutil process and all its children (0 once it is gone)."""
    import psutil

    try:
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0


def run_measured(contender: str, command: list[str], lines: int, env: dict[str, str]) -> tuple[Measurement, str]:
    """Run ``command`` in a fresh subprocess; its measurement (``rows_out`` 0) and stdout.

    The peak is the higher of the kernel's high-water mark for the process (``wait4``)
    and a psutil poll of its process tree every 50 ms (which catches helper processes).
    The disk is synced first: the previous contender's files are still being written
    back, and that would slow whichever contender runs next.

    Raises:
        RuntimeError: the command exited non-zero (the message holds its output's tail).
    """
    import psutil

    peak = 0
    done = threading.Event()
    os.sync()
    with tempfile.TemporaryFile("w+") as stdout:
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=stdout)

        def poll() -> None:
            nonlocal peak
            try:
                process = psutil.Process(child.pid)
            except psutil.Error:
                return
            while not done.is_set():
                peak = max(peak, tree_rss(process))
                done.wait(POLL_SECONDS)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        poller.join()
        stdout.seek(0)
        output = stdout.read()
    if child.returncode != 0:
        raise RuntimeError(f"{contender} failed (exit {child.returncode}): {' '.join(command)}\n{output[-2000:]}")
    peak = max(peak, usage.ru_maxrss * 1024)  # ru_maxrss is in KiB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    return Measurement(contender, lines, seconds, cpu, peak / 2**20), output


def median_run(measurements: list[Measurement]) -> Measurement:
    """One contender's rounds as one row: median wall and CPU time, the highest peak."""
    return replace(
        measurements[0],
        seconds=statistics.median(m.seconds for m in measurements),
        cpu_seconds=statistics.median(m.cpu_seconds for m in measurements),
        peak_mib=max(m.peak_mib for m in measurements),
    )
