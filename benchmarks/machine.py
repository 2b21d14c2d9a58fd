"""What the benchmark scripts report about the machine they ran on (imported as `machine`: the
scripts run as `python benchmarks/NAME.py`, which puts this folder on sys.path)."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Any


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


def cpu_flags() -> list[str]:
    """What `grep -o 'avx2\\|avx512_bf16\\|amx' /proc/cpuinfo | sort -u` prints: the flags that decide
    whether bf16 compute is fast (AVX512-BF16 / AMX) or the CPU is AVX2-only (fp32 only)."""
    try:
        return sorted(set(re.findall(r"avx2|avx512_bf16|amx", Path("/proc/cpuinfo").read_text())))
    except OSError:
        return []


class Contention:
    """How many cores other processes kept busy while a block ran: (machine busy - own CPU) / wall."""

    def __enter__(self) -> "Contention":
        self.busy, self.own, self.t = machine_busy_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        busy = machine_busy_seconds()
        wall = time.perf_counter() - self.t
        own = time.process_time() - self.own
        self.other_cores = None if busy is None or self.busy is None else round(max(0.0, busy - self.busy - own) / wall, 2)
