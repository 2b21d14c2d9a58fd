"""Budget-aware experiments: durations, the plan's arithmetic, and `mathrl run --budget` on the tiny model."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mathrl.experiments import budget, budget_pricing
from mathrl.errors import MathrlError
from mathrl.experiments.schema import load_experiments, rebuild
from mathrl.experiments.runner import run_file

EVAL = {"limit": 4, "max_new_tokens": 8, "batch_size": 4, "backend": "hf", "progress": False}


def experiment(model_dir: Path) -> dict:
    return {
        "defaults": {"model": str(model_dir), "task": "arithmetic", "task_config": "1", "dtype": "fp32"},
        "stages": {
            "sft": {"kind": "sft", "train_samples": 16, "batch_size": 4, "save_steps": 1000, "budget_share": 3},
            "grpo": {"kind": "grpo", "from": "sft", "prompts": 8, "prompts_per_step": 2, "num_generations": 2,
                     "max_completion_length": 8, "save_steps": 1000},
        },
        "eval": {"models": ["base", "sft", "grpo"], **EVAL},
    }


def write(path: Path, exp: dict) -> Path:
    path.write_text(yaml.safe_dump({"experiments": {"tiny": exp}}, sort_keys=False))
    return path


@pytest.mark.parametrize("text, seconds", [("20m", 1200), ("90s", 90), ("1h30m", 5400), (2, 120), ("1.5m", 90)])
def test_parse_duration(text, seconds):
    assert budget.parse_duration(text) == seconds


def test_bad_duration_is_one_line():
    with pytest.raises(MathrlError, match="budget 'soon'"):
        budget.parse_duration("soon")


def fake_calibration(decode=50.0, train=100.0) -> budget_pricing.Calibration:
    return budget_pricing.Calibration(model="m", dtype="float32", cpu_flags="avx2", decode_tokens_per_s=decode, decode_batch=4,
                              train_tokens_per_s=train, train_batch=4, seconds=3.0)


def test_plan_fills_the_budget_by_share_and_sets_the_horizon(tiny_model_dir, tmp_path):
    stages = load_experiments(write(tmp_path / "e.yaml", experiment(tiny_model_dir)), tmp_path / "runs")["tiny"]
    plan = budget_pricing.make_plan(stages, 600, fake_calibration(), prompt_len=40, solution_len=10, n_questions=300)
    sft, grpo = plan["stages"]["sft"], plan["stages"]["grpo"]
    assert sft["allocation_s"] == pytest.approx(3 * grpo["allocation_s"], abs=0.2)  # budget_share 3 : 1
    assert sft["max_steps"] == int(sft["allocation_s"] // sft["step_s"])
    assert sft["step_s"] == pytest.approx(round(budget_pricing.SFT_STEP_OVERHEAD * 4 * (40 + 10 + 1) / 100.0, 2))  # batch x tokens / rate
    # base eval: 4 questions x the whole max_new_tokens; trained models: 1.3 x the solution length
    assert plan["stages"]["eval/base/arithmetic.1-gsm8k-chat-0shot"]["estimate_s"] == pytest.approx(budget_pricing.STAGE_OVERHEAD_S + 4 * 8 / 50, abs=0.1)
    # a budget is a limit: the plan aims MARGIN under it (planned to the full 20 minutes, the demo took 20.2)
    assert 0.85 * 600 < plan["estimate_s"] <= (1 - budget_pricing.MARGIN) * 600 and budget_pricing.MARGIN >= 0.05
    keys = {st.name: st.key for st in stages}
    budget.apply_plan(stages, plan)
    rebuild(stages, "test")
    by_name = {st.name: st for st in stages}
    assert by_name["sft"].config.max_steps == sft["max_steps"]
    # the allocation is the stage's time limit (allowed 15% more, the demo's SFT overran its plan by 14%)
    assert by_name["sft"].config.max_minutes == pytest.approx(sft["allocation_s"] / 60, abs=0.01)
    assert by_name["sft"].key != keys["sft"] and by_name["grpo"].key != keys["grpo"]  # settings changed: new keys


def test_a_budget_too_small_for_one_step_is_refused(tiny_model_dir, tmp_path):
    stages = load_experiments(write(tmp_path / "e.yaml", experiment(tiny_model_dir)), tmp_path / "runs")["tiny"]
    with pytest.raises(MathrlError, match=r"less than one of its steps .*: the \d+ evaluations need ~[\d.]+ min at the 1 tokens/s measured here"):
        budget_pricing.make_plan(stages, 60, fake_calibration(decode=1.0), prompt_len=40, solution_len=10, n_questions=300)


def test_bad_budget_share_is_refused(tiny_model_dir, tmp_path):
    exp = experiment(tiny_model_dir)
    exp["stages"]["sft"]["budget_share"] = "lots"
    with pytest.raises(MathrlError, match="budget_share must be a positive number"):
        load_experiments(write(tmp_path / "e.yaml", exp), tmp_path / "runs")


def _stall_first_pass_at_each_shape(monkeypatch, stall: float) -> None:
    """Models loaded from now on sleep `stall` s in the first backbone call of each kind (several tokens,
    one token, training) at a batch of 4 rows: what a fresh process's first pass at a new shape pays."""
    import time

    from mathrl.engine import models

    real = models.load_model

    def load(*args, **kwargs):
        model, tok, info = real(*args, **kwargs)
        backbone, seen = model.base_model, set()
        inner = backbone.forward

        def forward(*a, **k):
            ids = k.get("input_ids", a[0] if a else None)
            shape = ids.shape if ids is not None else k["inputs_embeds"].shape[:2]
            key = (shape[1] == 1, backbone.training)
            if shape[0] == 4 and key not in seen:
                seen.add(key)
                time.sleep(stall)
            return inner(*a, **k)

        backbone.forward = forward
        return model, tok, info

    monkeypatch.setattr(models, "load_model", load)


def test_a_slow_first_pass_does_not_set_the_calibrated_rates(tiny_model_dir, monkeypatch):
    """With one pass per measurement the CPU demo's plan came out 25% over its wall time: its first
    16-row training step took 20 s and the next ones 15-17 s, and every SFT step was priced at the
    first (docs/evidence.md). Each measurement is now repeated and the fastest kept."""
    prompts = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"] * 4
    texts = [p + "2 + 3 = 5\n#### 5<|im_end|>" for p in prompts]
    cals = {}
    for repeats in (1, 2):
        monkeypatch.setattr(budget, "REPEATS", repeats, raising=False)
        _stall_first_pass_at_each_shape(monkeypatch, stall=0.5)
        cals[repeats] = budget.calibrate(str(tiny_model_dir), prompts, texts, dtype="fp32", decode_batch=4,
                                         train_batch=4)
    one, two = cals[1], cals[2]
    assert two.train_tokens_per_s > 3 * one.train_tokens_per_s
    # the stalled first call at 4 rows is the 1-token run's (generate's first forward): the prefill
    assert two.prefill_s_per_row * 4 < 0.5 < one.prefill_s_per_row * 4


def test_dry_run_with_a_budget_calibrates_prints_and_keeps_the_plan(tiny_model_dir, tmp_path):
    path = write(tmp_path / "e.yaml", experiment(tiny_model_dir))
    buf = io.StringIO()
    run_file(path, runs_dir=tmp_path / "runs", dry_run=True, budget="3m", console=Console(file=buf, width=250))
    text = buf.getvalue()
    assert "plan for a 3.0-minute budget" in text and "calibrated in" in text
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing
    stages = load_experiments(path, tmp_path / "runs")["tiny"]
    plan = budget.plan_experiment(stages, 180, tmp_path / "runs" / "tiny", Console(file=io.StringIO()))
    assert plan["calibration"]["decode_tokens_per_s"] > 0 and plan["calibration"]["train_tokens_per_s"] > 0
    assert plan["stages"]["sft"]["max_steps"] >= 1
    # a rerun with the same budget reuses the written plan (same settings, same cache keys)
    buf2 = io.StringIO()
    run_file(path, runs_dir=tmp_path / "runs", dry_run=True, budget="3m", console=Console(file=buf2, width=250))
    assert "calibrating" not in buf2.getvalue() and json.loads((tmp_path / "runs" / "tiny" / "plan.json").read_text()) == plan


def test_fast_trainers_count_shared_prompt_tokens_once(tiny_model_dir, tmp_path):
    stages = load_experiments(write(tmp_path / "e.yaml", experiment(tiny_model_dir)), tmp_path / "runs")["tiny"]
    by_name = {st.name: st for st in stages}
    cal = fake_calibration()
    # SFT: 4 rows of 51 tokens, the 30 shared ones computed once
    assert budget_pricing.step_seconds(by_name["sft"], cal, 40, 10, shared_len=30) == pytest.approx(budget_pricing.SFT_STEP_OVERHEAD * (4 * 51 - 3 * 30) / 100)
    # GRPO: 2 prompts x 2 generations of min(8, 11) tokens, regenerated for half the groups in each of
    # dynamic sampling's 2 refill rounds; each prompt's 40 tokens once per group in the training pass
    train = budget_pricing.GRPO_TRAIN_SHARE * (2 * 40 + 4 * 8) / 100
    assert budget_pricing.step_seconds(by_name["grpo"], cal, 40, 10) == pytest.approx(2 * 4 * 8 / 50 + train)


def test_rl_step_prices_refills_and_untrained_models_ramble(tiny_model_dir, tmp_path):
    """GRPO steps were priced at a third of their time when dynamic sampling refilled every round and
    the model (untrained here) ran to max_completion_length (docs/evidence.md, study 5)."""
    exp = experiment(tiny_model_dir)
    exp["stages"]["grpo"] |= {"from": "base", "max_completion_length": 60}
    stages = {st.name: st for st in load_experiments(write(tmp_path / "e.yaml", exp), tmp_path / "runs")["tiny"]}
    cal = fake_calibration()
    untrained = budget_pricing.step_seconds(stages["grpo"], cal, 40, 10, untrained=True)
    share = budget_pricing.GRPO_TRAIN_SHARE
    assert untrained == pytest.approx(2 * 4 * 60 / 50 + share * (2 * 40 + 4 * 60) / 100)  # 60 tokens, not 1.1 x 10
    stages["grpo"].config.dynamic_sampling = False
    assert budget_pricing.step_seconds(stages["grpo"], cal, 40, 10) == pytest.approx(4 * 11 / 50 + share * (2 * 40 + 4 * 11) / 100)


def test_a_time_limit_does_not_start_a_step_that_would_end_past_it(monkeypatch):
    """The demo's GRPO stage (4.8-minute limit, ~32-s steps) started its last step just before the limit
    and ended 31 s past it; a stage now stops when the next step, at the mean step time so far, would not fit."""
    from mathrl.train import common

    clock = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    limit = common.StepBudget(max_minutes=10 / 60)  # 10 s; every step takes 3 s
    steps = 0
    while True:
        clock[0] += 3.0
        steps += 1
        limit.horizon(steps, planned=100)
        if limit.out_of_time():
            break
    assert steps == 3 and clock[0] <= 10  # a 4th step would have ended at 12 s


def test_a_time_limit_stops_at_the_steps_its_schedule_was_refit_to(monkeypatch):
    """The demo's SFT (9.6-minute limit) refit its cosine to 52 steps at step 3, then ran 57: the last
    five at a learning rate of ~0. Steps that turn out faster than the first ones do not extend the run."""
    from mathrl.train import common

    clock = [0.0]
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    limit = common.StepBudget(max_minutes=20 / 60)  # 20 s; steps 1-3 take 3 s, later ones 1 s
    steps, horizon = 0, None
    while True:
        clock[0] += 3.0 if steps < 3 else 1.0
        steps += 1
        horizon = limit.horizon(steps, planned=100) or horizon
        if limit.out_of_time():
            break
    assert horizon == 6 and steps == 6  # at step 3: 11 s left at 3 s a step


# ---------------------------------------------------------------- issue: the budget misprices (a budget is a promise)


def _grpo_stage(tiny_model_dir, tmp_path, **settings):
    exp = experiment(tiny_model_dir)
    exp["stages"]["grpo"] |= {"dynamic_sampling": False, **settings}
    return {st.name: st for st in load_experiments(write(tmp_path / "e.yaml", exp), tmp_path / "runs")["tiny"]}["grpo"]


def test_grpo_step_prices_what_trl_runs_per_optimizer_step(tiny_model_dir, tmp_path):
    """TRL trains grad_accum micro-steps of per_device_train_batch_size (mathrl's batch_size, default
    prompts_per_step x num_generations) completions per optimizer step and generates that many: grad_accum
    1 and 4 were priced the same (96.9 s/step)."""
    cal = fake_calibration()
    # 2 prompts x 2 generations of min(8, 11) tokens: generation 4 x 8 / 50, training (2 x 40 + 4 x 8) / 100
    one = budget_pricing.step_seconds(_grpo_stage(tiny_model_dir, tmp_path), cal, 40, 10)
    assert one == pytest.approx(4 * 8 / 50 + budget_pricing.GRPO_TRAIN_SHARE * (2 * 40 + 4 * 8) / 100)
    assert budget_pricing.step_seconds(_grpo_stage(tiny_model_dir, tmp_path, grad_accum=4), cal, 40, 10) == pytest.approx(4 * one)
    # batch_size 8 completions per micro-step: 4 prompts x 2 generations, twice the rows of the default 4
    assert budget_pricing.step_seconds(_grpo_stage(tiny_model_dir, tmp_path, batch_size=8), cal, 40, 10) == pytest.approx(2 * one)


def test_grpo_num_iterations_reuses_generations_and_beta_prices_the_reference(tiny_model_dir, tmp_path):
    """num_iterations μ reuses each generation batch μ times (1/μ of a generation per step, one training
    pass per step), was priced as μ training passes; beta > 0's reference forward pass was not priced."""
    cal = fake_calibration()
    generate, train = 4 * 8 / 50, budget_pricing.GRPO_TRAIN_SHARE * (2 * 40 + 4 * 8) / 100
    mu2 = budget_pricing.step_seconds(_grpo_stage(tiny_model_dir, tmp_path, num_iterations=2), cal, 40, 10)
    # half a generation, one training pass, and the old policy's forward over the half batch generated
    # (a forward pass without gradient: a third of a training step's forward + backward)
    assert mu2 == pytest.approx(generate / 2 + train + train / 2 / 3)
    ref = budget_pricing.step_seconds(_grpo_stage(tiny_model_dir, tmp_path, beta=0.04), cal, 40, 10)
    assert ref == pytest.approx(generate + train + train / 3)  # the reference model's forward
    both = budget_pricing.step_seconds(_grpo_stage(tiny_model_dir, tmp_path, beta=0.04, num_iterations=2), cal, 40, 10)
    assert both == pytest.approx(generate / 2 + train + 2 * train / 2 / 3) and budget_pricing.FORWARD_SHARE == pytest.approx(1 / 3)


def _eval_only(exp: dict, **eval_settings) -> dict:
    exp["eval"] = {k: v for k, v in EVAL.items() if k != "limit"} | eval_settings
    return exp


def test_evaluations_are_priced_at_the_questions_they_run(tiny_model_dir, tmp_path, monkeypatch):
    """Without a limit an evaluation runs its task's whole split: GSM-Plus (10,552 questions) was priced
    at the training task's test size (300 here)."""
    monkeypatch.setattr(budget, "calibrate", lambda model, *a, **k: fake_calibration(decode=1000.0))
    tasks = ["gsm_plus", "linear_equations:2", {"task": "arithmetic", "task_config": "1", "task_args": {"test_size": 40}},
             {"task": "gsm_plus", "task_config": "testmini", "label": "mini"}]
    exp = _eval_only(experiment(tiny_model_dir), models=["base"], tasks=tasks)
    exp["eval"] = [exp["eval"], {**EVAL, "models": ["base"], "tasks": [{"task": "gsm_plus", "label": "plus25"}], "limit": 25}]
    path = write(tmp_path / "e.yaml", exp)
    stages = load_experiments(path, tmp_path / "runs")["tiny"]
    plan = budget.plan_experiment(stages, 1000 * 3600, tmp_path / "runs" / "tiny", Console(file=io.StringIO()))
    sizes = {"gsm_plus-gsm8k-chat-0shot": 10552, "linear_equations.2-gsm8k-chat-0shot": 500,
             "arithmetic.1-gsm8k-chat-0shot": 40, "mini-gsm8k-chat-0shot": 2400, "plus25-gsm8k-chat-0shot": 25}
    for setting, n in sizes.items():  # base model: the whole max_new_tokens (8) per question, 1000 tokens/s
        entry = plan["stages"][f"eval/base/{setting}"]
        assert entry["estimate_s"] == pytest.approx(budget_pricing.STAGE_OVERHEAD_S + n * 8 / 1000, abs=0.1), setting


def test_only_sft_trained_models_are_priced_at_the_solution_length(tiny_model_dir, tmp_path):
    """Every trained model's evaluation was priced at 1.3 x the SFT solution length, also GRPO from the
    base model, which writes like the base (to max_new_tokens); and GRPO on top of such a model was
    priced as if it continued an SFT policy."""
    exp = experiment(tiny_model_dir)
    exp["stages"]["rl"] = {"kind": "grpo", "from": "base", "prompts": 8, "prompts_per_step": 2, "num_generations": 2,
                           "max_completion_length": 60, "save_steps": 1000}
    exp["stages"]["rl2"] = dict(exp["stages"]["rl"], **{"from": "rl"})
    exp["eval"] = {**EVAL, "models": ["base", "sft", "grpo", "rl", "rl2"], "max_new_tokens": 64}
    stages = load_experiments(write(tmp_path / "e.yaml", exp), tmp_path / "runs")["tiny"]
    plan = budget_pricing.make_plan(stages, 3600, fake_calibration(), prompt_len=40, solution_len=10, n_questions=300)
    est = {n.split("/")[1]: e["estimate_s"] for n, e in plan["stages"].items() if n.startswith("eval/")}
    sft_like, base_like = budget_pricing.STAGE_OVERHEAD_S + 4 * 13 / 50, budget_pricing.STAGE_OVERHEAD_S + 4 * 64 / 50
    assert est == pytest.approx({"base": base_like, "sft": sft_like, "grpo": sft_like, "rl": base_like, "rl2": base_like},
                                abs=0.1)
    by_name = {st.name: st for st in stages}
    untrained = budget_pricing.step_seconds(by_name["rl2"], fake_calibration(), 40, 10, untrained=True)
    assert plan["stages"]["rl2"]["step_s"] == pytest.approx(untrained, abs=0.01)  # 60 tokens, not 1.5 x 10


def test_k_shot_prompts_are_priced_by_their_tokens_and_calibrated(tiny_model_dir, tmp_path, monkeypatch):
    """k-shot contexts were priced as 0-shot prompts: prefill by the row whatever its length, decoding
    at the rate of the short calibration prompts. Prompt tokens are now counted on the evaluation's own
    prompts (shots included; a prefix every question shares is prefilled once, as HFGenerator does) and
    decoding is measured again at the longest evaluation's context."""
    seen = {}

    def fake(model, *a, **k):
        seen.update(k)
        return dataclasses.replace(fake_calibration(decode=1000.0), prefill_s_per_row=0.5)

    monkeypatch.setattr(budget, "calibrate", fake)
    exp = _eval_only(experiment(tiny_model_dir), models=["base"], shots=[0, 3], limit=20,
                     variants={"shared": {}, "each": {"shot_selection": "lm-eval"}})
    stages = load_experiments(write(tmp_path / "e.yaml", exp), tmp_path / "runs")["tiny"]
    plan = budget.plan_experiment(stages, 1000 * 3600, tmp_path / "runs" / "tiny", Console(file=io.StringIO()))
    est = {"-".join(n.split("/")[-1].split("-")[3:]): e["estimate_s"] for n, e in plan["stages"].items()
           if n.startswith("eval/")}
    # 0-shot: about the calibration's rows (test questions, not the training ones it measured: ±5%)
    zero = budget_pricing.STAGE_OVERHEAD_S + 20 * (0.5 + 8 / 1000)
    assert est["0shot"] == pytest.approx(zero, rel=0.05) and est["0shot-each"] == est["0shot"]
    assert est["3shot-each"] > 2 * est["0shot"]  # every question prefills its own shots: several times the tokens
    assert est["0shot"] <= est["3shot"] < est["3shot-each"]  # shared shots: prefilled once
    shape = plan["stages"]["eval/base/arithmetic.1-gsm8k-chat-3shot-each"]["shape"]
    assert shape["questions"] == 20 and shape["prompt_tokens"] > 2 * plan["prompt_tokens"]
    assert shape["prompt_tokens"] - shape["unique_tokens"] < plan["prompt_tokens"]  # shared: the system prompt, no shot
    # the longest evaluation's prompts were handed to the calibration for a second decode measurement
    assert seen.get("long_prompts") and all("<|im_start|>assistant" in p[:-30] for p in seen["long_prompts"])


def test_calibration_measures_the_long_context_and_pricing_interpolates(tiny_model_dir):
    prompts = ["<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"] * 4
    long = ["<|im_start|>user\n" + "What is 12 + 30? 12 + 30 = 42. " * 12 + "What is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"]
    cal = budget.calibrate(str(tiny_model_dir), prompts, [p + "5" for p in prompts], dtype="fp32", decode_batch=4,
                           train_batch=4, long_prompts=long)
    assert cal.long_context_tokens > 3 * cal.context_tokens > 0 and cal.long_decode_tokens_per_s > 0
    assert cal.prefill_tokens_per_row == cal.context_tokens and cal.long_prefill_s_per_row > 0
    fake = dataclasses.replace(fake_calibration(decode=100.0), context_tokens=50, long_context_tokens=450,
                               long_decode_tokens_per_s=50.0)
    from mathrl.experiments.budget_pricing import decode_s_per_token

    assert decode_s_per_token(fake, 250) == pytest.approx((0.01 + 0.02) / 2)  # halfway: between the two rates
    assert decode_s_per_token(fake, 10) == pytest.approx(0.01)  # never cheaper than the short measurement


def test_plan_is_remade_when_any_stage_setting_changes(tiny_model_dir, tmp_path, monkeypatch):
    """plan.json was reused after stage settings changed (only the budget and the stage names were
    compared): a GRPO stage moved to grad_accum 4 kept the steps planned for 1."""
    calls = []
    monkeypatch.setattr(budget, "calibrate", lambda model, *a, **k: calls.append(model) or fake_calibration())
    exp, exp_dir = experiment(tiny_model_dir), tmp_path / "runs" / "tiny"

    def plan() -> dict:
        stages = load_experiments(write(tmp_path / "e.yaml", exp), tmp_path / "runs")["tiny"]
        return budget.plan_experiment(stages, 900, exp_dir, Console(file=io.StringIO()))

    first = plan()
    assert plan() == first and len(calls) == 1  # same settings: reused
    exp["stages"]["grpo"]["grad_accum"] = 4
    second = plan()
    assert len(calls) == 2 and second["stages"]["grpo"]["step_s"] > 3 * first["stages"]["grpo"]["step_s"]
    exp["eval"]["max_new_tokens"] = 16  # an evaluation's setting: its price changed, so did the training's share
    third = plan()
    assert len(calls) == 3 and third["stages"]["sft"]["allocation_s"] < second["stages"]["sft"]["allocation_s"]
    assert json.loads((exp_dir / "plan.json").read_text()) == third


def test_replan_gives_the_stages_not_started_the_time_left(tiny_model_dir, tmp_path):
    """Stages ran longer than planned (the evaluations have no time limit): what is left is re-planned
    from the time actually used, budget - elapsed, not from the first plan."""
    stages = load_experiments(write(tmp_path / "e.yaml", experiment(tiny_model_dir)), tmp_path / "runs")["tiny"]
    plan = budget_pricing.make_plan(stages, 600, fake_calibration(), prompt_len=40, solution_len=10, n_questions=300)
    entries = plan["stages"]
    grpo_evals = {n for n in entries if n.startswith("eval/grpo/")}
    pending = {"eval/sft/arithmetic.1-gsm8k-chat-0shot", "grpo"} | grpo_evals
    elapsed = 3.0 + entries["eval/base/arithmetic.1-gsm8k-chat-0shot"]["estimate_s"] + entries["sft"]["estimate_s"] + 90
    new = budget_pricing.replan(stages, plan, elapsed, pending, {"grpo"}, after="sft")
    left = 600 * (1 - budget_pricing.MARGIN) - elapsed - budget_pricing.REPORT_OVERHEAD_S - budget_pricing.STAGE_OVERHEAD_S - sum(
        entries[n]["estimate_s"] for n in pending - {"grpo"})
    grpo = new["stages"]["grpo"]
    assert grpo["allocation_s"] == pytest.approx(left, abs=0.2) and grpo["max_steps"] == int(left // grpo["step_s"])
    assert grpo["max_steps"] < entries["grpo"]["max_steps"] and new["stages"]["sft"] == entries["sft"]
    assert new["estimate_s"] <= 600 * (1 - budget_pricing.MARGIN) and new["replans"][-1]["after"] == "sft"
    # so far over that nothing fits: one step, said, and no error mid-run
    late = budget_pricing.replan(stages, plan, 590, pending, {"grpo"}, after="sft")
    assert late["stages"]["grpo"]["max_steps"] == 1 and late["stages"]["grpo"]["over_budget"]


def test_oversample_is_priced_as_a_share_of_one_generation_and_replaces_refill_rounds(tiny_model_dir, tmp_path):
    """Dynamic sampling: two refill rounds cost 1 + 2 x REFILL_SHARE generations; oversample 1.0 puts the
    candidates into the same call (1 + OVERSAMPLE_SHARE) and leaves the refill rounds little to do."""
    cal = fake_calibration()
    generate, train = 4 * 8 / 50, budget_pricing.GRPO_TRAIN_SHARE * (2 * 40 + 4 * 8) / 100
    refills = budget_pricing.step_seconds(_grpo_stage(tiny_model_dir, tmp_path, dynamic_sampling=True), cal, 40, 10)
    assert refills == pytest.approx(generate * (1 + 2 * budget_pricing.REFILL_SHARE) + train)
    over = budget_pricing.step_seconds(_grpo_stage(tiny_model_dir, tmp_path, dynamic_sampling=True, oversample=1.0),
                                       cal, 40, 10)
    assert over == pytest.approx(generate * (1 + budget_pricing.OVERSAMPLE_SHARE) + train) and over < refills
