"""Dynamic sampling (mathrl.train.dynamic_sampling) on the tiny random model in fp32: zero-spread groups are
refilled, the trained advantages are TRL's for the trained batch, settings, logs, seeds, the old behaviour."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer

from mathrl.errors import MathrlError
from mathrl.train.rewards import REWARDS, register_reward
from mathrl.train.dynamic_sampling import (DynamicFastGRPOTrainer, DynamicSamplingMixin, PassRecord, candidate_order,
                                           group_spread)
from mathrl.train.fast_grpo import FastGRPOTrainer
from mathrl.train.grpo import build_trainer, run_grpo
from test_grpo import make_cfg

DYNAMIC_KEYS = ("dynamic/zero_std_before", "dynamic/zero_std_after", "dynamic/refills", "dynamic/extra_prompts",
                "dynamic/sampled/reward", "dynamic/sampled/rewards/half_constant/mean")


def _constant(answer) -> bool:
    return sum(map(ord, str(answer))) % 2 == 0


if "half_constant" not in REWARDS:
    @register_reward("half_constant", description="test reward: 0 for about half the prompts, varied for the rest")
    def half_constant(completions, answer, **kwargs):
        return [0.0 if _constant(a) else len(set(c)) / 20.0 for c, a in zip(completions, answer)]


def dyn_cfg(tiny_model_dir, tmp_path, **kw):
    base = dict(rewards="half_constant", num_samples=16, max_steps=2, max_refills=2)
    return make_cfg(tiny_model_dir, tmp_path, **{**base, **kw})


def _spy(trainer):
    """Per generation: the rows, rewards and output of TRL's pass on the final batch, and the rows as drawn."""
    seen, last = [], {}
    calc, gen = trainer._calculate_rewards, trainer._generate_and_score_completions

    def calculate(inputs, prompts, completions, completion_ids):
        out = calc(inputs, prompts, completions, completion_ids)
        last.update(rows=list(inputs), rewards=out.clone(), completion_ids=list(completion_ids))
        return out

    def generate(inputs):
        drawn = list(inputs)
        out = gen(inputs)
        seen.append(dict(last, drawn=drawn, out=out))
        return out

    trainer._calculate_rewards, trainer._generate_and_score_completions = calculate, generate
    return seen


def _log(tmp_path):
    return [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines() if '"reward"' in x]


def test_group_spread_follows_trls_zero_std_rule():
    nan = float("nan")
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0],      # same total: no spread
                            [1.0, 0.0], [0.0, 1.0],      # same total, different functions: no spread
                            [0.0, 0.5], [0.0, 0.0],      # spread
                            [nan, nan], [0.3, nan],      # one scored row: no spread (TRL's std is NaN)
                            [nan, 1.0], [nan, 0.0]])     # NaN functions skipped as TRL's nansum does: spread
    got = group_spread(rewards, torch.tensor([1.0, 1.0]), 2).tolist()
    assert got == [False, False, True, False, True]
    assert group_spread(rewards[:2], torch.tensor([1.0, 0.0]), 2).tolist() == [False]


def test_candidate_order_is_seeded_skips_the_step_and_prefers_mixed_prompts():
    prompts = [f"p{i}" for i in range(12)]
    a = candidate_order(prompts, 0, 3, 0, {"p1", "p2"})
    assert a == candidate_order(prompts, 0, 3, 0, {"p1", "p2"}) and sorted(a) == [0, *range(3, 12)]
    assert a != candidate_order(prompts, 0, 4, 0, {"p1", "p2"}) != candidate_order(prompts, 0, 3, 1, {"p1", "p2"})
    record = PassRecord()
    record.update(["p3"] * 4 + ["p4"] * 4 + ["p5"] * 4, [True, False, False, False] + [False] * 4 + [True] * 4)
    assert [record.tier(p) for p in ("p3", "p4", "p5", "p6")] == [0, 2, 2, 1]
    ordered = [prompts[i] for i in candidate_order(prompts, 0, 3, 0, {"p1", "p2"}, record)]
    assert ordered[0] == "p3" and set(ordered[-2:]) == {"p4", "p5"}


def test_pass_rate_policy_swaps_always_or_never_solved_groups_before_generating():
    prompts = [f"p{i}" for i in range(6)]
    record = PassRecord()
    record.update(["p0"] * 2 + ["p1"] * 2 + ["p2"] * 2 + ["p3"] * 2, [False, False, True, False, True, True, True, False])
    fake = SimpleNamespace(num_generations=2, pass_record=record, _dataset_prompts=prompts, args=SimpleNamespace(seed=0),
                           state=SimpleNamespace(global_step=0), accelerator=SimpleNamespace(process_index=0),
                           train_dataset=[{"prompt": p, "answer": "1"} for p in prompts])
    rows = [{"prompt": p, "answer": "1"} for p in ("p0", "p0", "p1", "p1", "p2", "p2")]
    # p0 never and p2 always solved: swapped for p3 (mixed) first, then an unseen prompt; p1 (mixed) stays
    assert DynamicSamplingMixin._apply_policy(fake, rows) == 2
    got = [r["prompt"] for r in rows]
    assert got[:4] == ["p3", "p3", "p1", "p1"] and got[4] == got[5] and got[4] in {"p4", "p5"}


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_spread_groups_are_refilled_and_advantages_are_trls_for_the_trained_batch(tiny_model_dir, tmp_path, scale):
    trainer, _, _ = build_trainer(dyn_cfg(tiny_model_dir, tmp_path, scale_rewards=scale, max_steps=3))
    assert isinstance(trainer, DynamicFastGRPOTrainer)
    seen = _spy(trainer)
    trainer.train()
    size, weights = trainer.num_generations, trainer.reward_weights
    fewer = 0
    for gen, row in zip(seen, _log(tmp_path)):
        rows, rewards, adv = gen["rows"], gen["rewards"], gen["out"]["advantages"]
        assert len(rows) == len(gen["drawn"]) == adv.numel() and gen["out"]["completion_ids"].size(0) == len(rows)
        before = sum(_constant(gen["drawn"][g]["answer"]) for g in range(0, len(rows), size))
        after = int((~group_spread(rewards, weights, size)).sum())
        assert after <= before and row["dynamic/zero_std_before"] == before / (len(rows) // size)
        assert row["dynamic/zero_std_after"] == after / (len(rows) // size)
        fewer += after < before
        # TRL's formula, on the rows trained: group mean; std per group, or over this (refilled) batch
        total = (rewards * weights).nansum(1).view(-1, size)
        centred = total - total.mean(1, keepdim=True)
        std = {"group": total.std(1, keepdim=True), "batch": total.std().expand_as(total), "none": None}[scale]
        expected = centred if std is None else centred / (std + 1e-4)
        torch.testing.assert_close(adv, expected.flatten(), atol=1e-6, rtol=1e-5)
        if scale != "batch":  # TRL's own zero-std fraction is per group there, and then the same figure
            assert row["frac_reward_zero_std"] == pytest.approx(row["dynamic/zero_std_after"])
        for key in DYNAMIC_KEYS:
            assert key in row, key
    assert fewer, "some step should have had a zero-spread group refilled"
    # stock TRL on the last trained batch (its completions replayed) computes the same advantages
    gen = seen[-1]
    trainer.model.train()
    trainer._generate_single_turn = lambda *a, **k: (gen["completion_ids"], None)
    stock = GRPOTrainer._generate_and_score_completions(trainer, gen["rows"])
    torch.testing.assert_close(stock["advantages"], gen["out"]["advantages"])


def test_oversampled_candidates_share_the_steps_generation_call(tiny_model_dir, tmp_path):
    """oversample 1.0, no refill rounds: each step makes one generation call for its own groups and as many
    candidates, zero-spread groups are replaced from those candidates, and the advantages are TRL's
    (group-normalised) for the rows trained."""
    trainer, _, _ = build_trainer(dyn_cfg(tiny_model_dir, tmp_path, oversample=1.0, max_refills=0, max_steps=3))
    calls, gen_single = [], trainer._generate_single_turn

    def count(prompt_ids, *a, **k):
        if trainer._replay is None:  # TRL's pass on the final batch replays; it generates nothing
            calls.append(len(prompt_ids))
        return gen_single(prompt_ids, *a, **k)

    trainer._generate_single_turn = count
    seen = _spy(trainer)
    trainer.train()
    size, weights = trainer.num_generations, trainer.reward_weights
    assert calls == [2 * len(gen["drawn"]) for gen in seen] and len(seen) == 3
    log, fewer = _log(tmp_path), 0
    for gen, row in zip(seen, log):
        groups = len(gen["drawn"]) // size
        assert len(gen["rows"]) == len(gen["drawn"]) and row["dynamic/extra_prompts"] == groups
        assert row["dynamic/refills"] == 0
        fewer += row["dynamic/zero_std_after"] < row["dynamic/zero_std_before"]
        total = (gen["rewards"] * weights).nansum(1).view(-1, size)
        expected = (total - total.mean(1, keepdim=True)) / (total.std(1, keepdim=True) + 1e-4)
        torch.testing.assert_close(gen["out"]["advantages"], expected.flatten(), atol=1e-6, rtol=1e-5)
    assert fewer, "some step should have had a zero-spread group replaced by a candidate"


def test_stock_trainer_refills_through_trls_own_generation(tiny_model_dir, tmp_path):
    from mathrl.train.dynamic_sampling import DynamicGRPOTrainer

    trainer, log, _ = _train(tiny_model_dir, tmp_path, "stock", fast=False, max_steps=3)
    assert type(trainer) is DynamicGRPOTrainer
    assert any(r["dynamic/zero_std_after"] < r["dynamic/zero_std_before"] for r in log)


def test_num_iterations_two_refills_once_and_reuses_the_refilled_batch(tiny_model_dir, tmp_path):
    trainer, _, _ = build_trainer(dyn_cfg(tiny_model_dir, tmp_path, num_iterations=2, max_steps=2))
    seen = _spy(trainer)
    batches = []
    original = trainer.compute_loss

    def spy_loss(model, inputs, *a, **k):
        batches.append(inputs)
        return original(model, inputs, *a, **k)

    trainer.compute_loss = spy_loss
    trainer.train()
    assert len(seen) == 1 and len(batches) == 2  # one generation, trained twice
    out = seen[0]["out"]
    assert out["old_per_token_logps"] is not None and out["old_per_token_logps"].size(0) == len(seen[0]["rows"])
    for b in batches:
        assert torch.equal(b["advantages"].sort().values, out["advantages"].sort().values)
    log = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert "dynamic/zero_std_before" in log[0] and not any("dynamic/zero_std_before" in r for r in log[1:])


def _train(tiny_model_dir, tmp_path, name, **kw):
    trainer, _, _ = build_trainer(dyn_cfg(tiny_model_dir, tmp_path, output_dir=str(tmp_path / name), **kw))
    trainer.train()
    log = [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines() if '"reward"' in x]
    return trainer, log, {k: p.detach().clone() for k, p in trainer.model.named_parameters()}


def test_no_dynamic_sampling_and_zero_refills_train_exactly_like_the_old_trainer(tiny_model_dir, tmp_path):
    off, off_log, off_w = _train(tiny_model_dir, tmp_path, "off", dynamic_sampling=False)
    assert type(off) is FastGRPOTrainer and not any(k.startswith("dynamic/") for r in off_log for k in r)
    assert any(r["frac_reward_zero_std"] > 0 for r in off_log)
    # refills off, measuring on: the replayed completions give bit-identical training
    on, on_log, on_w = _train(tiny_model_dir, tmp_path, "zero", max_refills=0)
    assert isinstance(on, DynamicFastGRPOTrainer)
    for a, b in zip(off_log, on_log):
        assert (a["loss"], a["reward"], a["grad_norm"]) == (b["loss"], b["reward"], b["grad_norm"])
        assert b["dynamic/zero_std_before"] == b["dynamic/zero_std_after"] == a["frac_reward_zero_std"]
        assert b["dynamic/sampled/reward"] == pytest.approx(a["reward"]) and b["dynamic/extra_prompts"] == 0
    assert all(torch.equal(off_w[k], on_w[k]) for k in off_w)


def test_dynamic_sampling_is_deterministic_under_a_seed(tiny_model_dir, tmp_path):
    _, log_a, w_a = _train(tiny_model_dir, tmp_path, "a")
    _, log_b, w_b = _train(tiny_model_dir, tmp_path, "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "step_time", "tokens_per_second")
                           and not k.startswith(("timing/", "memory/"))} for r in rows]
    assert strip(log_a) == strip(log_b) and any(r["dynamic/extra_prompts"] > 0 for r in log_a)
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)


@pytest.mark.parametrize("kw, message", [
    (dict(max_refills=-1), "max_refills must be >= 0"),
    (dict(oversample=-0.5), "oversample must be >= 0"),
    (dict(prompt_policy="hardest"), "prompt_policy must be one of uniform, pass_rate"),
    (dict(prompt_policy="pass_rate", dynamic_sampling=False, rewards="correctness"), "works inside dynamic sampling"),
    (dict(prompt_policy="pass_rate", rewards="half_constant"), "has none"),
])
def test_dynamic_sampling_settings_are_validated(tiny_model_dir, tmp_path, kw, message):
    with pytest.raises(MathrlError, match=message):
        dyn_cfg(tiny_model_dir, tmp_path, **kw)


def test_untested_trl_turns_dynamic_sampling_off_with_the_one_warning(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import trl

    monkeypatch.setattr(trl, "__version__", "1.9.0")
    trainer, _, _ = build_trainer(dyn_cfg(tiny_model_dir, tmp_path, fast=False))
    assert type(trainer) is GRPOTrainer
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "without dynamic sampling" in lines[0]


@pytest.mark.parametrize("flags, policy", [(["--no-dynamic-sampling"], None),
                                           (["--prompt-policy", "pass_rate", "--max-refills", "1"], "pass_rate")])
def test_cli_dynamic_sampling_flags_and_run_record(tiny_model_dir, tmp_path, flags, policy):
    from typer.testing import CliRunner

    from mathrl.cli import app

    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, ["grpo", "--model", str(tiny_model_dir), "--task", "arithmetic", "--task-config", "1",
                                      "--num-samples", "8", "--prompts-per-step", "2", "--num-generations", "2",
                                      "--max-completion-length", "4", "--max-steps", "2", "--dtype", "fp32",
                                      "--rewards", "correctness,half_constant", "--output-dir", str(out), *flags])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "mathrl_config.json").read_text())
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if '"reward"' in x]
    if policy is None:
        assert record["config"]["dynamic_sampling"] is False and record["dynamic_sampling"] is None
        assert not any(k.startswith("dynamic/") for r in log for k in r)
    else:
        assert record["config"]["prompt_policy"] == policy == record["dynamic_sampling"]["prompt_policy"]
        assert record["dynamic_sampling"]["max_refills"] == 1 and record["dynamic_sampling"]["generations"] == 2
        assert all("dynamic/policy_swaps" in r for r in log)


def test_run_record_summarises_dynamic_sampling(tiny_model_dir, tmp_path):
    record = run_grpo(dyn_cfg(tiny_model_dir, tmp_path, max_steps=2))
    log = _log(tmp_path)
    summary = record["dynamic_sampling"]
    assert summary["generations"] == 2 and summary["extra_prompts"] == sum(r["dynamic/extra_prompts"] for r in log)
    assert summary["zero_std_before"] == pytest.approx(sum(r["dynamic/zero_std_before"] for r in log) / 2, abs=1e-4)


def test_reward_hacking_alarm_reads_the_batches_as_drawn():
    """Format saturating in the drawn batches while the trained (refilled) batches keep format spread:
    the alarm must see the drawn rewards, and stay quiet when only the trained ones rise."""
    from mathrl.train.rl import hacking_alarm

    rising, flat = [i / 10 for i in range(10)], [0.5] * 10

    def rows(drawn_fmt, trained_fmt):
        return [{"reward": t, "rewards/format/mean": t, "rewards/correctness/mean": 0.3,
                 "dynamic/sampled/reward": d, "dynamic/sampled/rewards/format/mean": d,
                 "dynamic/sampled/rewards/correctness/mean": 0.0} for d, t in zip(drawn_fmt, trained_fmt)]

    assert "reward hacking" in hacking_alarm(rows(rising, flat), window=10)
    assert hacking_alarm(rows(flat, rising), window=10) is None


GRADED: list[int] = []

if "counted_half_constant" not in REWARDS:
    @register_reward("counted_half_constant", description="test reward: half_constant, counting the completions graded")
    def counted_half_constant(completions, answer, log_extra=None, **kwargs):
        GRADED.append(len(completions))
        if log_extra is not None:  # a per-row column, to check that it follows its rows into the trained batch
            log_extra("graded_answer", [str(a) for a in answer])
        return [0.0 if _constant(a) else len(set(c)) / 20.0 for c, a in zip(completions, answer)]


@pytest.mark.parametrize("refills", [0, 2])
def test_every_completion_is_graded_once(tiny_model_dir, tmp_path, refills):
    """Dynamic sampling graded the final batch a second time in TRL's pass (costly, and Math-Verify's
    wall-clock timeout could give another verdict than the one that chose the batch); TRL's pass now
    reuses the verdicts, and the reward functions' per-row logs describe the rows trained."""
    trainer, _, _ = build_trainer(dyn_cfg(tiny_model_dir, tmp_path, rewards="counted_half_constant", max_steps=2,
                                          max_refills=refills))
    generated, extra_seen, last_rows = [], [], []
    gen_single, gen_score, calc = (trainer._generate_single_turn, trainer._generate_and_score_completions,
                                   trainer._calculate_rewards)

    def count(prompt_ids, *a, **k):
        replay = trainer._replay is not None  # TRL's pass on the final batch: completions replayed, not drawn
        ids, logps = gen_single(prompt_ids, *a, **k)
        generated.append(0 if replay else len(ids))
        return ids, logps

    def calculate(inputs, *a):
        last_rows[:] = list(inputs)
        return calc(inputs, *a)

    def score(inputs):
        out = gen_score(inputs)
        extra_seen.append((list(trainer._logs["extra"]["graded_answer"])[-len(last_rows):],
                           [str(r["answer"]) for r in last_rows]))
        return out

    trainer._generate_single_turn, trainer._calculate_rewards = count, calculate
    trainer._generate_and_score_completions = score
    GRADED.clear()
    trainer.train()
    assert sum(GRADED) == sum(generated) > 0  # the old code graded sum(generated) + the rows of every step
    assert len(extra_seen) == 2 and all(logged == trained for logged, trained in extra_seen)
