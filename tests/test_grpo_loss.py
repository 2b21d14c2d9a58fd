"""GRPO's loss knobs (mathrl.train.grpo_loss): TRL's fields passed through unchanged, the fast path's loss and
gradients equal stock TRL's for every loss type x importance-sampling level, and the advantage estimators."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from mathrl.errors import MathrlError
from mathrl.train.fast_grpo import FastGRPOTrainer
from mathrl.train.grpo import GRPORunConfig, build_trainer
from mathrl.train.grpo_loss import LOSS_TYPES, TRL_FIELDS, compute_advantages
from test_grpo import _captured_batch, make_cfg


def test_every_passed_field_is_a_trl_field_with_trls_default():
    trl = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    ours = {f.name: f for f in dataclasses.fields(GRPORunConfig)}
    for name in TRL_FIELDS:
        assert name in trl, f"{name} is not a field of the installed TRL's GRPOConfig"
        assert ours[name].default == trl[name].default, name
        assert ours[name].metadata.get("help"), name
    help_text = trl["loss_type"].metadata["help"]
    assert all(f"'{t}'" in help_text for t in LOSS_TYPES)  # TRL documents every loss type we offer


def test_the_knobs_reach_trl(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, tmp_path, loss_type="cispo", epsilon_high=5.0, importance_sampling_level="sequence",
                   top_entropy_quantile=0.5, entropy_coef=0.01, delta=None, multi_objective_aggregation="normalize_then_sum",
                   dynamic_sampling=False)
    trainer, _, _ = build_trainer(cfg)
    assert (trainer.loss_type, trainer.epsilon_high, trainer.importance_sampling_level, trainer.top_entropy_quantile) == (
        "cispo", 5.0, "sequence", 0.5)
    assert trainer.args.entropy_coef == 0.01 and trainer.multi_objective_aggregation == "normalize_then_sum"


@pytest.mark.parametrize("kw, message", [
    ({"loss_type": "cispo"}, "epsilon-high"),
    ({"loss_type": "luspo"}, "importance-sampling-level sequence"),
    ({"loss_type": "ppo"}, "loss_type must be one of"),
    ({"importance_sampling_level": "word"}, "importance_sampling_level"),
    ({"delta": 1.1}, "delta"),
    ({"advantage": "reinforce_pp"}, "scale-rewards batch"),
    ({"advantage": "rloo", "multi_objective_aggregation": "normalize_then_sum"}, "normalize_then_sum"),
    ({"advantage": "gae"}, "advantage must be one of"),
    ({"sync_ref_model": True}, "beta > 0"),
    ({"top_entropy_quantile": 1.5}, "top_entropy_quantile"),
])
def test_settings_trl_would_misread_are_refused_in_one_line(tiny_model_dir, tmp_path, kw, message):
    with pytest.raises(MathrlError, match=message) as e:
        make_cfg(tiny_model_dir, tmp_path, **kw).validate()
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def captured(tiny_model_dir, tmp_path_factory):
    """One real step's batch, with old and reference log-probs moved off the policy's so that ratios differ
    from 1 (clipping, the sequence-level ratio and the KL term all bite)."""
    tmp = tmp_path_factory.mktemp("captured")
    trainer, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp, max_completion_length=12, dynamic_sampling=False))
    inputs = _captured_batch(trainer)
    model = trainer.model
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, inputs["completion_ids"].size(1))
    g = torch.Generator().manual_seed(0)
    inputs["old_per_token_logps"] = logps + 0.3 * torch.randn(logps.shape, generator=g)
    inputs["ref_per_token_logps"] = logps + 0.2 * torch.randn(logps.shape, generator=g)
    inputs["advantages"] = torch.randn(logps.size(0), generator=g)  # both signs, every row
    return inputs


def _fast_and_stock(trainer, inputs):
    model = trainer.model
    assert isinstance(trainer, FastGRPOTrainer) and trainer._fast_path_ok(model.train(), False, {})
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by TRL's loop
    out = []
    for impl in (FastGRPOTrainer._get_per_token_logps_and_entropies, GRPOTrainer._get_per_token_logps_and_entropies):
        model.zero_grad()
        trainer._get_per_token_logps_and_entropies = impl.__get__(trainer)
        loss = trainer._compute_loss(model, inputs)
        loss.backward()
        del trainer._get_per_token_logps_and_entropies
        out.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    return out


COMBOS = [(t, level) for t in LOSS_TYPES for level in ("token", "sequence") if not (t == "luspo" and level == "token")]


@pytest.mark.parametrize("loss_type, level", COMBOS)
def test_fast_path_loss_and_gradients_equal_stock_trl(tiny_model_dir, tmp_path, captured, loss_type, level):
    extra = {"epsilon_high": 5.0} if loss_type == "cispo" else {}
    cfg = make_cfg(tiny_model_dir, tmp_path, max_completion_length=12, loss_type=loss_type,
                   importance_sampling_level=level, **extra)
    trainer, _, _ = build_trainer(cfg)
    (fast_loss, fast_grads), (ref_loss, ref_grads) = _fast_and_stock(trainer, captured)
    torch.testing.assert_close(fast_loss, ref_loss, atol=1e-5, rtol=1e-4)
    assert fast_grads.keys() == ref_grads.keys() and any(g.abs().sum() > 0 for g in ref_grads.values())
    for k in ref_grads:  # fp32; tolerance as in test_grpo's fast-vs-stock test
        torch.testing.assert_close(fast_grads[k], ref_grads[k], atol=1e-5, rtol=1e-3, msg=k)


@pytest.mark.parametrize("kw", [{"epsilon_high": 0.28}, {"delta": 1.5}, {"top_entropy_quantile": 0.2},
                                {"beta": 0.04}, {"beta": 0.04, "use_bias_correction_kl": False},
                                {"num_iterations": 2}, {"entropy_coef": 0.01}, {"off_policy_mask_threshold": 0.05},
                                {"dynamic_sampling": False, "epsilon_high": 0.28}])
def test_fast_path_equals_stock_trl_for_each_knob(tiny_model_dir, tmp_path, captured, kw):
    trainer, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp_path, max_completion_length=12, **kw))
    (fast_loss, fast_grads), (ref_loss, ref_grads) = _fast_and_stock(trainer, captured)
    torch.testing.assert_close(fast_loss, ref_loss, atol=1e-5, rtol=1e-4)
    for k in ref_grads:
        torch.testing.assert_close(fast_grads[k], ref_grads[k], atol=1e-5, rtol=1e-3, msg=k)


def test_the_knobs_change_the_loss(tiny_model_dir, tmp_path, captured):
    """The equality above is not two no-ops: each knob moves TRL's loss on this batch."""
    def loss(**kw):
        trainer, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp_path, max_completion_length=12, **kw))
        trainer.current_gradient_accumulation_steps = 1
        return trainer._compute_loss(trainer.model.train(), captured).item()

    plain = loss()
    for kw in ({"epsilon_high": 0.28}, {"importance_sampling_level": "sequence"}, {"loss_type": "sapo"},
               {"top_entropy_quantile": 0.2}, {"beta": 0.04}):
        assert loss(**kw) != pytest.approx(plain, rel=1e-6), kw


def test_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    rloo = compute_advantages(r, 4, "rloo", "none")
    # r_i minus the mean of the other three: 1 - 1/3, 0 - 2/3; group 2: 1 - 2/3, 0 - 1
    want = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1 / 3, 1 / 3, 1 / 3, -1.0]
    torch.testing.assert_close(rloo, torch.tensor(want))
    centered = [0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]
    mu, sd = statistics.mean(centered), statistics.stdev(centered)
    torch.testing.assert_close(compute_advantages(r, 4, "reinforce_pp", "batch"),
                               torch.tensor([(c - mu) / (sd + 1e-4) for c in centered]))
    # an unscorable completion: out of its group's baseline, advantage 0
    r2 = torch.tensor([1.0, float("nan"), 0.0, 0.0])
    torch.testing.assert_close(compute_advantages(r2, 4, "rloo", "none"), torch.tensor([1.0, 0.0, -0.5, -0.5]))


@pytest.mark.parametrize("advantage, scale", [("group", "group"), ("group", "batch"), ("group", "none"),
                                              ("rloo", "none"), ("rloo", "group"), ("reinforce_pp", "batch")])
def test_a_step_trains_on_the_estimators_advantages(tiny_model_dir, tmp_path, advantage, scale):
    """The advantages TRL's loss receives are compute_advantages' of the step's rewards (for `group`, that is
    TRL's own computation: the formulas share its conventions)."""
    trainer, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp_path, prompts_per_step=2, num_generations=4,
                                           advantage=advantage, scale_rewards=scale, rewards="distinct_chars"))
    seen, scored = [], []
    calc, score = trainer._calculate_rewards, trainer._generate_and_score_completions
    trainer._calculate_rewards = lambda *a: seen.append(calc(*a)) or seen[-1]
    trainer._generate_and_score_completions = lambda inputs: scored.append(score(inputs)) or scored[-1]
    trainer.train()
    rewards = seen[-1][:, 0]
    assert rewards.view(-1, 4).std(1).min() > 0  # every group has spread: the estimators differ
    # before TRL shuffles the batch for its passes: rows in generation order, groups together
    torch.testing.assert_close(scored[-1]["advantages"], compute_advantages(rewards, 4, advantage, scale), atol=1e-5,
                               rtol=1e-4)


RECIPES = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "grpo" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_each_shipped_recipe_loads_validates_and_cites_its_paper(path):
    from mathrl import config as cfgmod

    cfg = cfgmod.resolve(GRPORunConfig, path, {})
    cfg.validate()
    text = path.read_text()
    assert "arXiv:" in text and "NOT swept" in text  # where the values come from, and that nothing chose them here
    assert f"configs/grpo/recipes/{path.name}" in text


def test_the_readme_table_names_every_recipe():
    readme = (RECIPES[0].parents[3] / "README.md").read_text()
    table = readme[readme.index("**GRPO recipes**"):]
    for path in RECIPES:
        cfg = __import__("yaml").safe_load(path.read_text())
        recipe = path.read_text().split("# ---- the recipe\n")[1]
        for key in __import__("yaml").safe_load(recipe):
            if key != "output_dir":
                assert f"`{key}: " in table, (path.name, key)
        assert cfg["output_dir"].endswith(path.stem)


def test_grpo_help_lists_the_loss_knobs_in_their_panel():
    from typer.testing import CliRunner

    from mathrl.cli import app

    out = CliRunner().invoke(app, ["grpo", "--help"], env={"COLUMNS": "200"}).output
    panel = out[out.index("GRPO: loss, clipping, KL, advantages"):]
    for flag in ("--loss-type", "--importance-sampling-level", "--epsilon-high", "--delta", "--top-entropy-quantile",
                 "--advantage", "--use-bias-correction-kl", "--vespo-k-pos", "--sync-ref-model"):
        assert flag in panel, flag


def test_new_knobs_at_their_defaults_keep_cached_stages_valid(tiny_model_dir, tmp_path):
    """Stage keys hash every training setting; the knobs added this round leave a stage's key as it was
    while at their defaults (the run is the one cached before), and change it once set."""
    import yaml

    from mathrl.experiments.schema import load_experiments
    from mathrl.train.grpo_loss import GRPOLossSettings

    def key(**grpo):
        f = tmp_path / "exp.yaml"
        f.write_text(yaml.safe_dump({"experiments": {"e": {
            "defaults": {"model": str(tiny_model_dir), "task": "arithmetic", "task_config": "1"},
            "stages": {"rl": {"kind": "grpo", **grpo}}}}}))
        (stage,) = [s for s in load_experiments(f, tmp_path / "runs")["e"] if s.name == "rl"]
        return stage.key, stage

    plain, stage = key()
    blob_fields = {f.name for f in dataclasses.fields(stage.config)}
    assert set(GRPOLossSettings.UNHASHED_AT_DEFAULT) <= blob_fields
    # the key a stage with these settings had before the knobs existed: its settings without them
    import hashlib
    import json

    from mathrl.experiments.schema import NOT_HASHED

    before = {k: v for k, v in dataclasses.asdict(stage.config).items()
              if k not in (*GRPOLossSettings.UNHASHED_AT_DEFAULT, "max_memory", "top_k", "min_p", "repetition_penalty",
                           *NOT_HASHED)}
    before = {{"prompts": "num_samples"}.get(k, k): v for k, v in before.items()}  # hashed under its old name
    blob = json.dumps({"kind": "grpo", "settings": before, "deps": {}}, sort_keys=True, default=str)
    assert plain == hashlib.sha256(blob.encode()).hexdigest()
    assert key(advantage="group", epsilon_high=None)[0] == plain  # defaults written out: same key
    assert key(epsilon_high=0.28)[0] != plain and key(advantage="rloo", scale_rewards="none")[0] != plain
    assert key(max_memory="8GB")[0] != plain
