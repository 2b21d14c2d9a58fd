"""The run's peak memory survives the per-stage resets of the kernel's high-water mark."""

from __future__ import annotations

import pytest

from mathrl import memory


def test_process_peak_keeps_what_a_stage_reset_cleared():
    """A stage's reset of VmHWM also clears what ru_maxrss and `/usr/bin/time -v` report; the process peak
    still holds the earlier stage's high-water mark (fails where reset_peak does not fold it in first)."""
    if memory._hwm_bytes() is None or not memory.reset_peak():
        pytest.skip("needs /proc/self/status and a writable /proc/self/clear_refs")
    import numpy as np

    block = np.ones(400 * 2**20 // 8)  # ~400 MiB touched: "an earlier stage"
    stage_peak = memory.peak()["peak_rss_gb"]
    del block
    memory.release()
    assert memory.reset_peak()  # the next stage begins
    after = memory.peak()["peak_rss_gb"]
    assert after < stage_peak - 0.2  # the reset really cleared the high-water mark
    assert memory.process_peak_gb() >= stage_peak
