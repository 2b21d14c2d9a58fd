"""The GRPO step breakdown (mathrl.train.step_timing): every part is logged once per optimizer step, the
parts add up to the step, refills and reference passes land in their own keys, and the run record
summarises them."""

from __future__ import annotations

import json
import time

import pytest

from mathrl.train.grpo import run_grpo
from mathrl.train.step_timing import PARTS, StepClock
from test_dynamic_sampling import dyn_cfg


def _rows(tmp_path):
    return [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines() if '"timing/forward"' in x]


def test_nested_parts_count_once_and_flush_starts_the_next_step():
    clock = StepClock()
    with clock.part("generate"):
        with clock.part("rewards"):  # inside generate: generate's time
            time.sleep(0.01)
    clock.parts["backward"] += 0.5
    clock.micro_total = 2.0
    out = clock.flush()
    assert out["timing/rewards"] == 0 and out["timing/generate"] > 0 and out["timing/backward"] == 0.5
    assert out["timing/other"] == pytest.approx(2.0 - 0.5 - out["timing/generate"], abs=1e-3)
    assert {k for k in out if k.startswith("timing/")} == {f"timing/{p}" for p in PARTS}
    assert clock.flush()["timing/generate"] == 0 and clock.micro_total == 0


def test_each_part_logs_the_peak_memory_it_reached():
    """A block allocated and freed inside one part shows in that part's `memory/*`, not the next one's."""
    from mathrl import memory

    if memory.window_peak_gb() is None:
        pytest.skip("needs /proc/self/status and a writable /proc/self/clear_refs")
    import numpy as np

    clock = StepClock()
    with clock.part("forward"):
        block = np.ones(400 * 2**20 // 8)  # ~400 MiB touched
        time.sleep(3 * memory.SAMPLE_S)
        del block
    memory.release()
    with clock.part("generate"):
        time.sleep(0.01)
    out = clock.flush()
    assert out["memory/forward"] > out["memory/generate"] + 0.3
    assert memory.peak()["peak_rss_gb"] >= out["memory/forward"] - 0.01  # the stage's peak saw it too
    assert not any(k.startswith("memory/") for k in clock.flush())  # the next step starts empty


def test_every_step_logs_its_breakdown_and_the_parts_add_up(tiny_model_dir, tmp_path):
    record = run_grpo(dyn_cfg(tiny_model_dir, tmp_path, max_steps=3, beta=0.1))
    rows = _rows(tmp_path)
    assert len(rows) == 3 and all("reward" in r for r in rows)
    for r in rows:
        parts = {p: r[f"timing/{p}"] for p in PARTS}
        assert all(v >= 0 for v in parts.values())
        for p in ("generate", "rewards", "forward", "backward", "optimizer", "reference"):
            assert parts[p] > 0, (p, parts)
        assert parts["old_logprobs"] == 0  # one iteration, generation in step: TRL needs no old pass
        # TRL's step_time is the step's training_step calls; the parts other than the optimizer cover exactly that
        inside = sum(v for p, v in parts.items() if p != "optimizer")
        assert inside == pytest.approx(r["step_time"], rel=0.02, abs=2e-3)
    assert any(r["timing/refill"] > 0 for r in rows) == any(r["dynamic/refills"] > 0 for r in rows)
    assert set(record["timing"]) == {f"timing/{p}" for p in PARTS}
    assert record["timing"]["timing/generate"] > 0
    from mathrl import memory

    if memory.window_peak_gb() is not None:  # Linux: every step says which part reached which peak
        for r in rows:
            assert all(r[f"memory/{p}"] > 0 for p in ("generate", "rewards", "forward", "backward", "optimizer", "reference"))
        parts = record["memory_parts"]
        assert parts["memory/forward"] == max(r["memory/forward"] for r in rows)
        assert max(parts.values()) <= record["memory"]["peak_rss_gb"] + 1e-3


def test_old_logprobs_are_timed_when_trl_needs_them(tiny_model_dir, tmp_path):
    run_grpo(dyn_cfg(tiny_model_dir, tmp_path, max_steps=2, num_iterations=2, dynamic_sampling=False))
    rows = _rows(tmp_path)
    assert len(rows) == 2 and "reward" not in rows[1]  # TRL logs rewards where it generated
    assert rows[0]["timing/old_logprobs"] > 0 and rows[0]["timing/reference"] == 0
    assert rows[0]["timing/generate"] > 0 and rows[1]["timing/generate"] == 0  # the second step reuses the batch
