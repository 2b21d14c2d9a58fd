"""PPO: the arithmetic against hand-computed values, and the loop on a tiny random model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mathrl.errors import MathrlError
from mathrl.train import ppo_core
from mathrl.train.ppo import PPORunConfig, run_ppo
from mathrl.train.rollout import Rollout, prompt_indices


def make_cfg(tiny_model_dir, tmp_path, **kw) -> PPORunConfig:
    base = dict(model=str(tiny_model_dir), task="arithmetic", task_config="1", prompts=16, prompts_per_step=4,
                mini_batch_size=2, max_completion_length=8, max_steps=2, save_steps=1, learning_rate=1e-3,
                dtype="fp32", output_dir=str(tmp_path / "ppo"))
    base.update(kw)
    return PPORunConfig(**base)


# -- arithmetic ---------------------------------------------------------------------------------------


def test_gae_matches_hand_computed_values_and_ignores_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 9.9]])  # 9.9 sits on padding: must not count
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = ppo_core.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0: δ2 = 1 - 0.7 = 0.3; δ1 = 0.9·0.7 - 0.6 = 0.03; δ0 = 0.9·0.6 - 0.5 = 0.04; γλ = 0.72
    a2 = 0.3
    a1 = 0.03 + 0.72 * a2
    a0 = 0.04 + 0.72 * a1
    # row 1 ends at t=1: δ1 = 2 - 0.2 = 1.8; δ0 = 0.9·0.2 - 0.1 = 0.08
    b1 = 1.8
    b0 = 0.08 + 0.72 * b1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.6, a2 + 0.7], [b0 + 0.1, b1 + 0.2, 0.0]]))


def test_gamma_one_lambda_one_gives_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, 0.2, 0.3]])
    values = torch.tensor([[1.0, 2.0, 3.0]])
    adv, _ = ppo_core.gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.6 - 1.0, 0.5 - 2.0, 0.3 - 3.0]]))


def test_token_rewards_put_the_score_on_the_last_real_token_and_charge_kl_everywhere():
    logps = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = ppo_core.token_rewards(torch.tensor([1.0, 0.5]), logps, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -0.5], [0.0, 0.5, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 0.05 + 1.0], [0.0, -0.05 + 0.5, 0.0]]))


def test_clipped_policy_loss_example():
    # ratios 1.5, 1.5, 0.5 with advantages +1, -1, +1 and ε = 0.2:
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(1.5, 1.2) = 1.5; token 2: max(-0.5, -0.8) = -0.5
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, stats = ppo_core.policy_loss(new, old, adv, torch.ones(1, 3), clip=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5) / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # the clipped token gets no gradient; the others get -A·ρ/3
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 1.5 / 3, -0.5 / 3]]))


def test_clipped_value_loss_example():
    values, old, returns = torch.tensor([[1.0, 0.1]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.1]])
    loss, clipfrac = ppo_core.value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: V_clip = 0.2, max((1-2)², (0.2-2)²) = 3.24; token 1: both errors 0
    assert loss.item() == pytest.approx(0.5 * (3.24 + 0.0) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_whiten_and_explained_variance():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w = ppo_core.whiten(x, mask)
    assert ppo_core.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert ppo_core.masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert w[1, 1] == 0 and w[1, 2] == 0
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    assert ppo_core.explained_variance(returns, returns, torch.ones(1, 3)) == pytest.approx(1.0)
    assert ppo_core.explained_variance(torch.full((1, 3), 2.0), returns, torch.ones(1, 3)) == pytest.approx(0.0)
    assert math.isnan(ppo_core.explained_variance(returns, torch.ones(1, 3), torch.ones(1, 3)))


def test_prompt_indices_are_disjoint_across_ranks_and_cover_the_pool_each_epoch():
    pool, per_step, world = 12, 3, 2
    seen = [i for step in range(2) for rank in range(world) for i in prompt_indices(pool, step, per_step, rank, world, 7)]
    assert sorted(seen) == list(range(pool))  # 2 steps x 2 ranks x 3 = one epoch, no repeats
    assert prompt_indices(pool, 1, per_step, 0, world, 7) == prompt_indices(pool, 1, per_step, 0, world, 7)
    assert prompt_indices(pool, 0, per_step, 0, 1, 7) != prompt_indices(pool, 0, per_step, 0, 1, 8)


def test_rollout_select_cuts_unused_padding():
    ids = torch.tensor([[0, 0, 5, 6, 7, 0], [0, 3, 4, 8, 0, 0], [9, 9, 9, 1, 2, 3]])
    attn = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    r = Rollout(ids, attn, mask, *(torch.arange(9.0).view(3, 3) for _ in range(4)))
    sub = r.select(torch.tensor([0, 1]))
    assert sub.input_ids.tolist() == [[0, 5, 6, 7], [3, 4, 8, 0]]  # one left pad column and one right one cut
    assert sub.mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert sub.returns.tolist() == [[0.0, 1.0], [3.0, 4.0]]


# -- the loop -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, message", [
    ({"mini_batch_size": 3}, "not divisible by mini_batch_size 3"),
    ({"mini_batch_size": 4, "grad_accum": 3}, "not divisible by grad_accum 3"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
    ({"gamma": 1.5}, "gamma and lam must be in [0, 1]"),
    ({"method": "qlora"}, "method must be full or lora"),
    ({"rewards": "nonsense"}, "nonsense"),
])
def test_validation_errors_name_the_culprit(tiny_model_dir, tmp_path, kw, message):
    with pytest.raises(MathrlError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_cfg(tiny_model_dir, tmp_path, **kw).validate()


def test_ppo_trains_logs_and_starts_at_ratio_one(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = make_cfg(tiny_model_dir, tmp_path, ppo_epochs=1, mini_batch_size=4, max_steps=2, kl_coef=0.05)
    record = run_ppo(cfg)
    out = tmp_path / "ppo"
    assert record["trainer"] == "ppo" and record["global_step"] == 2
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    head = load_file(str(out / "value_head.safetensors"))
    assert head["weight"].abs().sum() > 0  # the zero-initialised value head learned something
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "kl", "policy_loss", "value_loss", "clipfrac", "entropy", "approx_kl", "grad_norm",
                "rewards/correctness/mean", "completion_length"):
        assert key in rows[0], key
    # one epoch, one mini-batch: the update sees exactly the rollout policy (ratio 1, no clipping),
    # and at step 1 the policy is the reference (KL 0)
    assert rows[0]["approx_kl"] < 1e-8 and rows[0]["clipfrac"] == 0
    assert abs(rows[0]["kl"]) < 1e-5
    assert (out / "training_curves.png").exists()
    assert json.loads((out / "mathrl_config.json").read_text())["config"]["kl_coef"] == 0.05


def test_lora_ppo_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, tmp_path, method="lora", max_steps=2)
    run_ppo(cfg)
    out = tmp_path / "ppo"
    assert (out / "adapter_config.json").exists() and (out / "checkpoint-2").is_dir()
    with pytest.raises(MathrlError, match="--resume"):
        run_ppo(make_cfg(tiny_model_dir, tmp_path, method="lora", max_steps=3))
    again = run_ppo(make_cfg(tiny_model_dir, tmp_path, method="lora", max_steps=3, resume=True))
    assert again["global_step"] == 3 and again["resumed_from"].endswith("checkpoint-2")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert abs(rows[0]["kl"]) < 1e-5  # LoRA's reference (adapter off) equals the policy at the start
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_resume_truncates_log_rows_after_the_checkpoint(tiny_model_dir, tmp_path):
    run_ppo(make_cfg(tiny_model_dir, tmp_path, max_steps=2, save_steps=1, save_total_limit=5))
    out = tmp_path / "ppo"
    import shutil

    shutil.rmtree(out / "checkpoint-2")  # as if killed after logging step 2 but before its checkpoint
    again = run_ppo(make_cfg(tiny_model_dir, tmp_path, max_steps=2, save_steps=1, resume=True))
    assert again["resumed_from"].endswith("checkpoint-1")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]


def test_cli_ppo_trains(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from mathrl.cli import app

    out = tmp_path / "cli-ppo"
    result = CliRunner().invoke(app, ["ppo", "--model", str(tiny_model_dir), "--task", "arithmetic", "--task-config", "1",
                                      "--num-samples", "8", "--prompts-per-step", "2", "--mini-batch-size", "2",
                                      "--max-completion-length", "6", "--max-steps", "1", "--dtype", "fp32",
                                      "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "PPO steps" in result.output and (out / "value_head.safetensors").exists()
    bad = CliRunner().invoke(app, ["ppo", "--model", str(tiny_model_dir), "--task", "arithmetic",
                                   "--prompts-per-step", "3", "--mini-batch-size", "2", "--output-dir", str(out)])
    assert isinstance(bad.exception, MathrlError) and "not divisible by mini_batch_size" in str(bad.exception)


def test_shipped_ppo_config_is_valid_and_the_runner_knows_ppo():
    from pathlib import Path

    from mathrl import config as cfgmod
    from mathrl.experiments.kinds import setting_names

    cfg = cfgmod.resolve(PPORunConfig, Path(__file__).parent.parent / "configs" / "ppo" / "arithmetic_cpu.yaml", {})
    cfg.validate()
    assert {"kl_coef", "gamma", "lam", "vf_coef"} <= setting_names("ppo")


def test_bf16_policy_runs_two_steps(tiny_model_dir, tmp_path):
    """The fp32 value head received bf16 hidden states: `mat1 and mat2 must have the same dtype`."""
    record = run_ppo(make_cfg(tiny_model_dir, tmp_path, dtype="bf16", max_steps=2))
    assert record["global_step"] == 2
    log = [json.loads(x) for x in (tmp_path / "ppo" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["value_loss"]) for r in log)


def test_gpu_sized_rl_defaults_on_cpu_get_a_one_line_budget_note():
    """PPO's defaults (32 rollouts × 256 tokens × 100 steps) take hours on a 2-core CPU: say so, once."""
    from mathrl.train.grpo import GRPORunConfig
    from mathrl.train.rl import cpu_budget_note

    ppo = PPORunConfig()
    note = cpu_budget_note(ppo.rollouts_per_step(), ppo)
    assert note is not None and "\n" not in note
    assert "100 steps × 32 completions × ≤ 256 tokens = up to 819,200" in note and "--max-minutes" in note
    assert "configs/ppo/arithmetic_cpu.yaml" in note
    assert cpu_budget_note(ppo.rollouts_per_step(), PPORunConfig(max_minutes=5)) is None
    assert cpu_budget_note(4, PPORunConfig(prompts_per_step=4, max_steps=10, max_completion_length=96)) is None
    grpo = GRPORunConfig(max_steps=200)
    assert "configs/grpo/arithmetic_cpu.yaml" in cpu_budget_note(grpo.completions_per_step(), grpo)
