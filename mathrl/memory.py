"""Peak memory of a stage: process RSS on CPU (Linux's VmHWM, reset per stage through
/proc/self/clear_refs), `torch.cuda.max_memory_allocated` on GPU. Recorded in every training record,
summary.json and stage.json, so a run's memory is a measured figure, not a guess.

Resetting VmHWM also resets what `getrusage`'s ru_maxrss (and so `/usr/bin/time -v`) reports at exit:
after several stages in one process, `time -v` shows only the peak since the last reset. `reset_peak`
therefore folds each stage's peak into a process-lifetime maximum first (`process_peak_gb`), which the
runner prints and writes into plan.json as the run's peak.

Within a stage, `window_peak_gb` gives the peak of one part of a step (generation, forward, backward, the
optimizer step: the trainers log them as `memory/<part>`). It must not reset VmHWM (that would leave
`/usr/bin/time -v` with the last part's peak), so a daemon thread samples the RSS every
`SAMPLE_S` seconds instead: a part's figure can miss a spike shorter than that, the stage's VmHWM cannot.

Simplified: where /proc is missing (macOS) the CPU figure is the process's lifetime peak
(`resource.getrusage`), which a later stage cannot reset; the record says which (`rss_source`)."""

from __future__ import annotations

import os
import re
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")
_lifetime_bytes = 0  # the largest VmHWM seen before any reset: the process's peak across stages
_STATM = Path("/proc/self/statm")
SAMPLE_S = 0.005  # the window sampler's period: allocating and touching 100 MB takes ~20 ms here


def reset_peak() -> bool:
    """Start a new peak here (True where the OS allows it)."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except ImportError:
        pass
    global _lifetime_bytes
    _lifetime_bytes = max(_lifetime_bytes, _hwm_bytes() or 0)
    if _sampler is not None:  # a part's window never spans a reset (nor the stage before it)
        _sampler.take()
    try:
        _CLEAR.write_text("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
        return True
    except OSError:
        return False


def _hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_peak_gb() -> float | None:
    """The process's peak RSS in GiB since it started, across every `reset_peak` (None without /proc)."""
    hwm = _hwm_bytes()
    return None if hwm is None else round(max(_lifetime_bytes, hwm) / 2**30, 3)


def peak() -> dict[str, Any]:
    """{"peak_rss_gb", "rss_source", and "peak_cuda_gb" with a GPU} since the last `reset_peak`."""
    hwm = _hwm_bytes()
    if hwm is not None:
        out: dict[str, Any] = {"peak_rss_gb": round(hwm / 2**30, 3), "rss_source": "VmHWM since the stage began"}
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30, 3),
               "rss_source": "process lifetime peak"}
    try:
        import torch

        if torch.cuda.is_available():
            out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    except ImportError:
        pass
    return out


def _rss_bytes() -> int | None:
    try:
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _Sampler:
    """The largest RSS seen since `take` last ran, sampled by a daemon thread (restarted after a fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.top = _rss_bytes() or 0
        self.lock = threading.Lock()
        threading.Thread(target=self._run, name="mathrl-rss-sampler", daemon=True).start()

    def _run(self) -> None:
        while True:
            rss = _rss_bytes() or 0
            with self.lock:
                self.top = max(self.top, rss)
            time.sleep(SAMPLE_S)

    def take(self) -> int:
        now = _rss_bytes() or 0
        with self.lock:
            top, self.top = max(self.top, now), now
        return top


_sampler: _Sampler | None = None


def window_peak_gb() -> float | None:
    """Peak RSS in GiB since the previous call (the first call starts the sampler and returns the RSS
    now); None without /proc. Nothing is reset: the stage's and the process's peaks are untouched."""
    global _sampler
    if _rss_bytes() is None:
        return None
    if _sampler is None or _sampler.pid != os.getpid():
        _sampler = _Sampler()
    return round(_sampler.take() / 2**30, 3)


def peak_parts(log_rows: list[dict[str, Any]]) -> dict[str, float]:
    """The largest value of every `memory/<part>` key over a training log's rows (a run record's
    `memory_parts`): which part of a step reached the stage's peak."""
    out: dict[str, float] = {}
    for row in log_rows:
        for key, value in row.items():
            if key.startswith("memory/") and isinstance(value, (int, float)):
                out[key] = max(out.get(key, 0.0), float(value))
    return dict(sorted(out.items()))


def release() -> None:
    """Hand memory a finished stage freed back to the OS (gc, glibc's malloc_trim, the CUDA cache), so the
    next stage's peak starts from what is really still in use."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def parse_size(text: str | float | None) -> float | None:
    """'8GB', '8GiB', '1500MB', '8' (GiB) -> GiB; None -> None. GB and GiB are both read as GiB (the
    gap, 7%, is inside the estimate's error)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b?)?\s*", str(text).lower())
    if not m:
        raise MathrlError(f"max_memory {text!r} is not a size: write e.g. 8GB, 1500MB or 2.5")
    unit = (m.group(2) or "g")[0]
    return float(m.group(1)) * {"k": 2**-20, "m": 2**-10, "g": 1.0, "t": 2**10}[unit]
