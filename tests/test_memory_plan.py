"""`max_memory`: a stage whose pass would not fit runs in smaller passes with the same update; one that cannot
fit at all stops before its weights load (mathrl.train.memory_plan)."""

from __future__ import annotations

import pytest
import torch

from mathrl.errors import MathrlError
from mathrl.train import memory_plan
from test_grpo import make_cfg as make_grpo_cfg
from test_sft import make_cfg as make_sft_cfg


@pytest.mark.parametrize("text, gib", [("8GB", 8.0), ("8 GiB", 8.0), ("1536MB", 1.5), ("2.5", 2.5), (3, 3.0),
                                       ("1t", 1024.0), (None, None)])
def test_sizes_parse(text, gib):
    assert memory_plan.parse_size(text) == gib


@pytest.mark.parametrize("bad", ["lots", "-2GB", "8 PB"])
def test_a_size_that_is_not_one_is_a_one_line_error_naming_it(tiny_model_dir, tmp_path, bad):
    with pytest.raises(MathrlError, match="max_memory") as e:
        make_sft_cfg(tiny_model_dir, tmp_path, max_memory=bad).validate()
    assert "\n" not in str(e.value)
    with pytest.raises(MathrlError, match="positive"):
        make_sft_cfg(tiny_model_dir, tmp_path, max_memory="0GB").validate()


def test_largest_fitting_is_the_biggest_whole_divisor_within_the_limit():
    cost = lambda rows: 1.0 + rows / 10  # noqa: E731
    assert memory_plan.largest_fitting(128, 8, cost, 100.0) == 128
    assert memory_plan.largest_fitting(128, 8, cost, 8.0) == 64  # 96 and 112 do not divide 128
    assert memory_plan.largest_fitting(128, 8, cost, 2.7) == 16
    assert memory_plan.largest_fitting(128, 8, cost, 1.5) is None  # not even one group
    assert memory_plan.largest_fitting(12, 1, cost, 1.45) == 4  # 4 divides 12; 5 would not


def test_no_automatic_plan_under_a_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert memory_plan.limit_gb(None) is None  # ranks would read MemAvailable at different moments
    assert memory_plan.limit_gb("4GB") == 4.0  # a stated per-process cap is the same on every rank
    monkeypatch.setenv("WORLD_SIZE", "1")
    limit = memory_plan.limit_gb(None)
    assert limit is None or limit > 0.1


def _sft_limit_between(tiny_model_dir, tmp_path, low_rows, high_rows):
    """A max_memory that admits `low_rows` a pass but not `high_rows`, from the planner's own estimate."""
    from mathrl.train.sft import tokens_per_row

    cfg = make_sft_cfg(tiny_model_dir, tmp_path)
    _, record = memory_plan.fit_sft(cfg, tokens_per_row(cfg, _samples(tiny_model_dir, tmp_path)))
    shape = memory_plan.model_shape(str(tiny_model_dir))
    costs = [memory_plan.estimate_gb("sft", shape, shape["params"], rows * record["tokens_per_row"])
             for rows in (low_rows, high_rows)]
    assert costs[0] < costs[1]
    return f"{(costs[0] + costs[1]) / 2:.9f}"


def _samples(tiny_model_dir, tmp_path):
    from mathrl.train.sft import training_samples

    return training_samples(make_sft_cfg(tiny_model_dir, tmp_path))


@pytest.mark.parametrize("fast", [True, False])
def test_sft_that_would_not_fit_runs_smaller_batches_with_the_same_update(tiny_model_dir, tmp_path, fast):
    from mathrl.train.sft import run_sft

    limit = _sft_limit_between(tiny_model_dir, tmp_path, 2, 4)
    weights, records = {}, {}
    for name, extra in (("whole", {}), ("planned", {"max_memory": limit})):
        cfg = make_sft_cfg(tiny_model_dir, tmp_path, output_dir=str(tmp_path / name), max_steps=1, batch_size=4,
                           grad_accum=1, fast=fast, **extra)
        records[name] = run_sft(cfg)
        from safetensors.torch import load_file

        weights[name] = load_file(str(tmp_path / name / "model.safetensors"))
    plan = records["planned"]["memory_plan"]
    assert plan["batch_size"] == 2 and plan["grad_accum"] == 2 and plan["estimate_gb"] <= float(limit)
    assert records["whole"]["memory_plan"]["batch_size"] == 4
    for k in weights["whole"]:
        torch.testing.assert_close(weights["planned"][k], weights["whole"][k], rtol=1e-4, atol=1e-6)


def test_a_stage_that_cannot_fit_stops_before_its_weights_load(tiny_model_dir, tmp_path, monkeypatch):
    from mathrl.train import common
    from mathrl.train.grpo import build_trainer as build_grpo
    from mathrl.train.sft import build_trainer as build_sft

    def never(*a, **k):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(common, "load_training_model", never)
    with pytest.raises(MathrlError, match=r"sft does not fit in 0\.1 GiB even at 1 row") as e:
        build_sft(make_sft_cfg(tiny_model_dir, tmp_path, max_memory="0.1GB"))
    assert "--max-memory" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MathrlError, match=r"grpo does not fit in 0\.1 GiB even at one group of 4"):
        build_grpo(make_grpo_cfg(tiny_model_dir, tmp_path, prompts_per_step=4, num_generations=4,
                                 max_memory="0.1GB"))


def test_grpo_that_would_not_fit_runs_micro_batches_of_whole_groups(tiny_model_dir, tmp_path):
    from mathrl.train.grpo import build_trainer, training_prompts

    cfg = make_grpo_cfg(tiny_model_dir, tmp_path, prompts_per_step=4, num_generations=4, max_steps=1,
                        dynamic_sampling=False)
    _, plain = memory_plan.fit_grpo(cfg, training_prompts(cfg), cfg.protocol(), sampling_copy=False)
    assert plain["micro_batch_size"] == 16
    shape = memory_plan.model_shape(str(tiny_model_dir))

    def cost(rows):
        tokens = rows * cfg.max_completion_length + rows / 4 * plain["prompt_tokens"]
        return memory_plan.estimate_gb("grpo", shape, shape["params"], tokens)

    limit = f"{(cost(8) + cost(16)) / 2:.9f}"
    trainer, _, _ = build_trainer(make_grpo_cfg(tiny_model_dir, tmp_path, prompts_per_step=4, num_generations=4,
                                                max_steps=1, dynamic_sampling=False, max_memory=limit))
    assert trainer.mathrl_memory_plan["micro_batch_size"] == 8
    assert trainer.args.per_device_train_batch_size == 8 and trainer.args.gradient_accumulation_steps == 2


def test_mathrl_run_estimates_every_stage_first_and_stops_on_one_that_cannot_fit(tiny_model_dir, tmp_path):
    from test_runner import run, write_exp

    def experiment(grpo_memory):
        return {"defaults": {"model": str(tiny_model_dir), "task": "arithmetic", "task_config": "1", "dtype": "fp32"},
                "stages": {"sft": {"kind": "sft", "train_samples": 8, "batch_size": 4, "max_steps": 1},
                           "rl": {"kind": "grpo", "from": "sft", "prompts_per_step": 2, "num_generations": 4,
                                  "max_steps": 1, "max_memory": grpo_memory}}}

    runs, f = tmp_path / "runs", tmp_path / "exp.yaml"
    write_exp(f, experiment("16GB"))
    _, text = run(f, runs, dry_run=True)
    assert "memory: estimated peak sft" in text and "rl " in text and "limit 16.0 GiB" in text
    write_exp(f, experiment("0.1GB"))
    with pytest.raises(MathrlError, match=r"stage rl: grpo does not fit in 0\.1 GiB"):
        run(f, runs)
    assert not (runs / "tiny" / "sft" / "stage.json").exists()  # nothing ran: the SFT stage was not started
