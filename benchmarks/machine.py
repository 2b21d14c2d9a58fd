"""What the benchmark scripts report about the machine they ran on (imported as `machine`: the
scripts run as `python benchmarks/NAME.py`, which puts this folder on sys.path)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_busy_seconds() -> float | None:
    """CPU-seconds all processes have spent busy (user+nice+system+irq+softirq), from /proc/stat."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        return (int(f[0]) + int(f[1]) + int(f[2]) + int(f[5]) + int(f[6])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
