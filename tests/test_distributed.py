"""`torchrun --nproc_per_node 2 -m mathrl sft|grpo` on CPU (gloo) with the tiny model: both ranks train on
their own shard of the data, only rank 0 writes, and the saved model loads. A probe (tests/dist_probe/
sitecustomize.py, imported by each rank) records what every rank was given and what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "dist_probe"

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def torchrun(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None,
             ) -> tuple[subprocess.CompletedProcess, dict[int, list[dict]]]:
    """`torchrun --standalone --nproc_per_node 2 -m mathrl ARGS`; returns the process and each rank's probe events."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PROBE), str(REPO_ROOT)]), MATHRL_PROBE_DIR=str(probe_dir),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               **(env_extra or {}))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mathrl", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    events = {int(p.stem.split("-")[1]): [json.loads(line) for line in p.read_text().splitlines()]
              for p in probe_dir.glob("rank-*.jsonl")}
    return proc, events


def check_ranks(proc: subprocess.CompletedProcess, events: dict[int, list[dict]], out: Path, steps: int) -> list[set]:
    """Both ranks ran every step with world size 2; only rank 0 wrote; one summary line; outputs complete.
    Returns each rank's set of training rows."""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(events) == [0, 1]
    seen = []
    for rank in (0, 1):
        step_events = [e for e in events[rank] if e["event"] == "step"]
        assert len(step_events) == steps and all(e["world_size"] == 2 for e in step_events)
        seen.append({json.dumps(r) for e in step_events for r in e["rows"]})
    writes = {rank: [e["path"] for e in events[rank] if e["event"] == "write"] for rank in (0, 1)}
    assert writes[1] == [], f"rank 1 wrote {writes[1]}"
    assert any(p.endswith("mathrl_config.json") for p in writes[0]) and any(p == str(out) for p in writes[0])
    assert proc.stdout.count("trained ") == 1 and proc.stdout.count("[mathrl] 2 processes") == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, steps + 1))  # one line per step, not per rank
    assert json.loads((out / "mathrl_config.json").read_text())["world_size"] == 2
    assert (out / "training_curves.png").exists() and not list(out.glob(".*.tmp"))
    return seen


def check_same_weights(events: dict[int, list[dict]], min_steps: int) -> None:
    """Every optimizer step left both ranks with the same parameters (DDP all-reduced the gradients)."""
    sums = {rank: [e for e in events[rank] if e["event"] == "params"] for rank in (0, 1)}
    assert len(sums[0]) == len(sums[1]) >= min_steps
    assert sums[0][0]["weighted"] != sums[0][-1]["weighted"], "the weights did not change: the check would be vacuous"
    for a, b in zip(sums[0], sums[1]):
        for key in ("sum", "weighted", "abs"):
            assert abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(a[key])), (key, a, b)


def check_loads(out: Path) -> None:
    import torch

    from mathrl.engine.models import load_model

    model, tokenizer, _ = load_model(str(out), dtype="fp32", device="cpu")
    with torch.no_grad():
        logits = model(**tokenizer("12 + 30 =", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()


def test_torchrun_sft_two_ranks(tiny_model_dir, tmp_path):
    out = tmp_path / "sft"
    proc, events = torchrun(tmp_path, "sft", "--model", str(tiny_model_dir), "--task", "arithmetic", "--task-config", "1",
                            "--num-samples", "8", "--batch-size", "2", "--max-steps", "2", "--dtype", "fp32",
                            "--output-dir", str(out))
    rank0, rank1 = check_ranks(proc, events, out, steps=2)
    # 2 ranks x 2 steps x 2 samples = the 8 samples once: each rank its own half
    assert len(rank0) == len(rank1) == 4 and not rank0 & rank1
    # the shared-prefix fast path ran (rank 0's count): its pass goes through DDP's forward, so the check below holds
    assert json.loads((out / "mathrl_config.json").read_text())["fast_path"]["fast_batches"] == 2
    check_same_weights(events, 2)
    check_loads(out)


def test_torchrun_grpo_two_ranks(tiny_model_dir, tmp_path):
    out = tmp_path / "grpo"
    proc, events = torchrun(tmp_path, "grpo", "--model", str(tiny_model_dir), "--task", "arithmetic", "--task-config", "1",
                            "--num-samples", "8", "--num-generations", "2", "--prompts-per-step", "2",
                            "--max-completion-length", "8", "--max-steps", "2", "--dtype", "fp32", "--output-dir", str(out),
                            "--rewards", "probe_rewards.distinct_chars", "--lr", "1e-2")
    rank0, rank1 = check_ranks(proc, events, out, steps=2)
    # each rank generates for its own prompts (2 per step), none shared with the other rank
    assert len(rank0) == len(rank1) == 4 and not rank0 & rank1
    check_same_weights(events, 2)
    check_loads(out)


@pytest.mark.parametrize("command", [["eval", "--output-dir", "x"], ["run", "experiment.yaml"]])
def test_single_process_commands_refuse_a_multi_process_launch(command, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), RANK="1", WORLD_SIZE="2", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "mathrl", *command], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "runs as one process, but this launch started 2" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_torchrun_ppo_two_ranks(tiny_model_dir, tmp_path):
    out = tmp_path / "ppo"
    proc, events = torchrun(tmp_path, "ppo", "--model", str(tiny_model_dir), "--task", "arithmetic", "--task-config", "1",
                            "--num-samples", "8", "--prompts-per-step", "2", "--mini-batch-size", "2",
                            "--max-completion-length", "8", "--max-steps", "2", "--dtype", "fp32", "--output-dir", str(out),
                            "--rewards", "probe_rewards.distinct_chars", "--lr", "1e-2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # PPO's loop is its own (no Trainer steps to record): rank 0 shows writes, rank 1 must show none
    assert any(e["event"] == "write" for e in events[0])
    assert not [e for e in events.get(1, []) if e["event"] == "write"]
    check_same_weights(events, 2)
    assert proc.stdout.count("trained ") == 1
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((out / "mathrl_config.json").read_text())["world_size"] == 2
    check_loads(out)


def test_torchrun_grpo_dynamic_sampling_refills_one_rank_only(tiny_model_dir, tmp_path):
    """Rank 0's groups never have reward spread, rank 1's always do: rank 0 runs refill rounds rank 1 does not
    need, and both must join every round's collectives (no deadlock), with weights equal after every step."""
    out = tmp_path / "grpo-dyn"
    proc, events = torchrun(tmp_path, "grpo", "--model", str(tiny_model_dir), "--task", "arithmetic", "--task-config", "1",
                            "--num-samples", "8", "--num-generations", "2", "--prompts-per-step", "2",
                            "--max-completion-length", "8", "--max-steps", "2", "--dtype", "fp32", "--output-dir", str(out),
                            "--rewards", "probe_rewards.constant_on_rank0", "--lr", "1e-2", "--max-refills", "2")
    check_ranks(proc, events, out, steps=2)
    check_same_weights(events, 2)
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"reward"' in line]
    assert len(steps) == 2
    for row in steps:
        # 4 groups (2 per rank): rank 0's 2 never get spread (rank 1's 2-completion groups may tie by chance, and
        # are then refilled); rank 0 needs 2 groups in each of the 2 rounds, so both ranks generate 2 per round
        assert 0.5 <= row["dynamic/zero_std_after"] <= row["dynamic/zero_std_before"]
        assert (row["dynamic/refills"], row["dynamic/extra_prompts"]) == (2, 8)


@pytest.mark.parametrize("trainer", ["sft", "ppo"])
def test_a_time_budget_is_decided_on_rank_0_for_every_rank(tiny_model_dir, tmp_path, trainer):
    """Each rank used to judge `--max-minutes` on its own clock: here rank 1's runs 200x fast, so it stopped
    after a step or two while rank 0 went on into an all-reduce that never came (a hang). Rank 0 now
    decides the stop and the horizon for both, so both run the same steps and end with the same weights."""
    out = tmp_path / trainer
    common = ["--model", str(tiny_model_dir), "--task", "arithmetic", "--task-config", "1", "--num-samples", "16",
              "--max-steps", "5", "--dtype", "fp32", "--output-dir", str(out), "--max-minutes", "0.5"]
    extra = (["--batch-size", "2"] if trainer == "sft" else
             ["--prompts-per-step", "2", "--mini-batch-size", "2", "--max-completion-length", "8",
              "--rewards", "probe_rewards.distinct_chars", "--lr", "1e-2"])
    proc, events = torchrun(tmp_path, trainer, *common, *extra, env_extra={"MATHRL_PROBE_FAST_CLOCK": "1:200"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((out / "mathrl_config.json").read_text())["global_step"] == 5  # rank 0's clock: all 5 fit
    check_same_weights(events, 5)
