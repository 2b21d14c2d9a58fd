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



def test_a_window_reports_its_own_peak_and_leaves_the_high_water_mark_alone():
    """`window_peak_gb` gives each window its own peak without resetting VmHWM, so the stage's peak and
    what `/usr/bin/time -v` reads at exit still hold the largest window."""
    if memory.window_peak_gb() is None or not memory.reset_peak():
        pytest.skip("needs /proc/self/status and a writable /proc/self/clear_refs")
    import time

    import numpy as np

    memory.window_peak_gb()
    block = np.ones(400 * 2**20 // 8)
    time.sleep(3 * memory.SAMPLE_S)
    del block
    memory.release()
    big = memory.window_peak_gb()
    small = memory.window_peak_gb()
    assert big > small + 0.3
    assert memory.peak()["peak_rss_gb"] >= big - 0.01  # VmHWM (page-granular, same source) kept the block
