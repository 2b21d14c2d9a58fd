"""A budgeted training stage that is killed and resumed continues the same plan: the learning rate at
every step equals an uninterrupted run's, the time limit counts the time already used, and the log has
one row per step. Driven by a fake clock (10 s per optimizer step) so the plans are deterministic."""

from __future__ import annotations

import json

import pytest
import transformers

from mathrl.train import common
from mathrl.train.sft import run_sft
from test_sft import make_cfg


class Killed(Exception):
    pass


@pytest.fixture
def fake_clock(monkeypatch):
    """common.clock advances 10 s per micro-step; `kill_at[0]` = n raises Killed in the n-th micro-step."""
    now, calls, kill_at = [0.0], [0], [None]
    monkeypatch.setattr(common, "clock", lambda: now[0])
    step = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        calls[0] += 1
        if kill_at[0] is not None and calls[0] == kill_at[0]:
            raise Killed
        now[0] += 10.0
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    return now, calls, kill_at


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_a_killed_budgeted_stage_resumes_with_the_same_schedule_time_and_log(tiny_model_dir, tmp_path, fake_clock):
    now, calls, kill_at = fake_clock
    kw = dict(max_steps=100, max_minutes=1.0, lr_scheduler="cosine", warmup_ratio=0.0, save_steps=2, train_samples=64,
              batch_size=2, learning_rate=1e-3, save_total_limit=10)
    # uninterrupted: 60 s at 10 s a step; at step 3, 30 s are left: the cosine is refit to 6 steps
    whole = run_sft(make_cfg(tiny_model_dir, tmp_path, output_dir=str(tmp_path / "whole"), **kw))
    assert whole["global_step"] == whole["planned_steps"] == 6
    reference = {r["step"]: r["learning_rate"] for r in _log(tmp_path / "whole") if "learning_rate" in r}
    # killed in step 6 (checkpoint-4 is the last; step 5 was logged after it), then rerun with --resume
    now[0], calls[0], kill_at[0] = 0.0, 0, 6
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run_sft(make_cfg(tiny_model_dir, tmp_path, output_dir=str(out), **kw))
    assert (out / "checkpoint-4").exists() and [r["step"] for r in _log(out) if "loss" in r] == [1, 2, 3, 4, 5]
    now[0], kill_at[0] = 1000.0, None  # a new process: its clock starts anywhere
    resumed = run_sft(make_cfg(tiny_model_dir, tmp_path, output_dir=str(out), resume=True, **kw))
    rows = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # one row per step: step 5 is not there twice
    assert resumed["global_step"] == resumed["planned_steps"] == 6  # old code: the 100-step horizon, run to 60 s
    for r in rows:
        assert r["learning_rate"] == pytest.approx(reference[r["step"]], rel=1e-6, abs=1e-12), r["step"]
    # the resumed run spent only what was left of the 60 s (40 s used by the 4 checkpointed steps)
    assert now[0] - 1000.0 == 20.0


def test_a_restored_time_limit_counts_the_time_already_used(monkeypatch):
    """A 60-s limit with 15-s steps: a fresh run stops at 60 s; resumed after 2 steps it used to start the
    whole 60 s again (75 s in all)."""
    clock = [0.0]
    monkeypatch.setattr(common, "clock", lambda: clock[0])

    def run(budget, first_step):
        step = first_step
        while True:
            clock[0] += 15.0
            step += 1
            budget.decide(step, planned=100)
            if budget.out_of_time():
                return step

    fresh = common.StepBudget(max_minutes=1.0)
    assert run(fresh, 0) == 4 and clock[0] == 60.0
    clock[0] = 0.0
    first = common.StepBudget(max_minutes=1.0)
    for step in (1, 2):
        clock[0] += 15.0
        first.decide(step, planned=100)
    saved = json.loads(json.dumps(first.state()))  # as written into the checkpoint
    clock[0] = 500.0
    second = common.StepBudget(max_minutes=1.0, first_step=2)
    second.restore(saved)
    assert run(second, 2) == 4 and clock[0] - 500.0 == 30.0
