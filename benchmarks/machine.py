"""What the benchmark scripts report about the machine they ran on (imported as `machine`: the
scripts run as `python benchmarks/NAME.py`, which puts this folder on sys.path)."""

from __future__ import annotations

import os
import platform
import re
import statistics
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


def linear_shapes(model) -> list[tuple[int, int]]:
    """(in_features, out_features) of every matmul one token passes through, the LM head included."""
    import torch

    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def gemm_seconds(shapes: list[tuple[int, int]], batch: int, dtype, repeats: int, inner: int = 10) -> float:
    """Summed time of `batch`-row GEMMs through `shapes` (each distinct shape timed alone, median of
    `repeats` runs of `inner`): the fastest these matmuls can run on this machine with torch's kernels."""
    import torch

    total = 0.0
    cache: dict[tuple[int, int], float] = {}
    for shape in shapes:
        if shape not in cache:
            x = torch.randn(batch, shape[0], dtype=dtype)
            w = torch.randn(shape[1], shape[0], dtype=dtype)
            for _ in range(3):
                torch.nn.functional.linear(x, w)
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(inner):
                    torch.nn.functional.linear(x, w)
                runs.append((time.perf_counter() - start) / inner)
            cache[shape] = statistics.median(runs)
        total += cache[shape]
    return total


def gemm_peak_gflops(shapes: list[tuple[int, int]], rows: int, dtype, repeats: int = 3) -> float:
    """GFLOP/s of this machine's GEMMs through a model's linear layers at `rows` rows (training shapes:
    rows = tokens of a batch), i.e. the matmul peak that 6·N·tokens/s is a share of."""
    flops = sum(2 * rows * k * n for k, n in shapes)
    return flops / gemm_seconds(shapes, rows, dtype, repeats, inner=1) / 1e9


def auto_dtype() -> str:
    """What mathrl's `--dtype auto` computes in on this machine, as a name: bf16 or fp32."""
    import torch

    from mathrl.engine import models

    return "bf16" if models.pick_dtype("auto") == torch.bfloat16 else "fp32"
