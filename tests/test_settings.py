"""Settings classes: help on every field, one validation, flags derived from the fields, renamed names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from mathrl import config as cfgmod
from mathrl.cli import app
from mathrl.cli.options import settings_command
from mathrl.errors import MathrlError
from mathrl.eval.evaluate import EvalConfig, eval_config
from mathrl.prompts.formats import Protocol
from mathrl.train.grpo import GRPORunConfig
from mathrl.train.ppo import PPORunConfig
from mathrl.train.sft import SFTRunConfig

CLASSES = (SFTRunConfig, GRPORunConfig, PPORunConfig, EvalConfig, Protocol)
runner = CliRunner()


@pytest.mark.parametrize("cls", CLASSES)
def test_every_field_has_help(cls):
    assert [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")] == []


@pytest.mark.parametrize("cls", (SFTRunConfig, GRPORunConfig, PPORunConfig))
def test_one_dtype_rule(cls):
    with pytest.raises(MathrlError, match="dtype must be one of auto, bf16, fp16, fp32, got 'half'"):
        cls(dtype="half").validate()
    if cls is PPORunConfig:  # documented: PPO's loop has no loss scaling
        with pytest.raises(MathrlError, match="fp16 is not supported by PPO"):
            cls(dtype="fp16").validate()
    else:
        cls(dtype="fp16").validate()


def test_trainers_keep_their_own_defaults():
    assert (SFTRunConfig().learning_rate, GRPORunConfig().learning_rate, PPORunConfig().learning_rate) == (1e-4, 1e-5, 3e-6)
    assert (SFTRunConfig().max_steps, GRPORunConfig().prompts_per_step, PPORunConfig().prompts_per_step) == (-1, 4, 32)
    assert "--lr" in runner.invoke(app, ["sft", "--help"], terminal_width=200).output


@pytest.mark.parametrize("cls, new", [(SFTRunConfig, "train_samples"), (GRPORunConfig, "prompts"),
                                      (PPORunConfig, "prompts")])
def test_num_samples_is_a_deprecated_alias(cls, new, capsys):
    cfg = cfgmod.build(cls, {"num_samples": 4})
    assert getattr(cfg, new) == 4
    cfgmod.build(cls, {"num_samples": 4})
    err = capsys.readouterr().err
    assert err.count("deprecated") <= 1  # once per process


def test_eval_config_resolves_protocol_presets(tmp_path):
    values = cfgmod.load_yaml(Path(__file__).parent.parent / "configs" / "eval" / "lm_eval_gsm8k.yaml")
    cfg = eval_config(values | {"output_dir": str(tmp_path)})
    assert (cfg.protocol.name, cfg.protocol.shots, cfg.protocol.chat_template) == ("lm-eval-gsm8k", 5, False)
    assert eval_config({"protocol": "lm-eval-gsm8k", "shots": 3}).protocol.shots == 3  # given keys over the preset
    with pytest.raises(MathrlError, match="unknown protocol 'nope'"):
        eval_config({"protocol": "nope"})
    assert eval_config({"num_samples": 2, "temperature": 0.5}).completions_per_question == 2


def test_eval_config_flag_old_meaning_still_works(tmp_path):
    res = runner.invoke(app, ["eval", "--task", "nope", "--config", "1-2", "--output-dir", str(tmp_path)])
    assert "unknown task 'nope'" in str(res.exception)
    assert "--config TASK_CONFIG` is deprecated" in res.output


def test_a_new_field_reaches_help_yaml_and_the_runner(tmp_path, monkeypatch):
    """One edit (a field) and the flag, the YAML key and the experiment setting exist."""
    import mathrl.train.grpo as grpo_mod
    from mathrl.experiments import kinds, schema as experiment

    cls = dataclasses.make_dataclass("GRPOPlus", [("dynamic_sampling", bool, dataclasses.field(
        default=False, metadata={"help": "refill groups without reward spread"}))], bases=(GRPORunConfig,))
    seen = {}
    test_app = typer.Typer()
    test_app.command("grpo")(settings_command("grpo", "GRPO.", (cls,), lambda given: seen.update(given)))
    test_app.command("other")(lambda: None)  # two commands: invoked by name
    assert runner.invoke(test_app, ["grpo", "--help"]).exit_code == 0
    params = {p.name: p for p in typer.main.get_command(test_app).commands["grpo"].params}
    flag = params["dynamic_sampling"]  # as --help lists it (rich truncates long names in a narrow terminal)
    assert (flag.opts, flag.secondary_opts, flag.help) == (["--dynamic-sampling"], ["--no-dynamic-sampling"],
                                                            "refill groups without reward spread [default: false]")
    assert runner.invoke(test_app, ["grpo", "--dynamic-sampling", "--lr", "0.1"]).exit_code == 0
    assert seen == {"dynamic_sampling": True, "learning_rate": 0.1}

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("dynamic_sampling: true\n")
    bad.write_text("dynamic_sampling: sometimes\n")
    assert cfgmod.resolve(cls, good, {}).dynamic_sampling is True
    with pytest.raises(MathrlError, match="'dynamic_sampling' should be bool"):
        cfgmod.resolve(cls, bad, {})

    monkeypatch.setattr(grpo_mod, "GRPOPlus", cls, raising=False)
    monkeypatch.setitem(kinds.KINDS, "grpo", ("mathrl.train.grpo", "GRPOPlus", "run_grpo"))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"experiments": {"x": {"stages": {"g": {"kind": "grpo", "dynamic_sampling": True}}}}}))
    stages = experiment.load_experiments(exp, tmp_path / "runs")["x"]
    assert stages[0].config.dynamic_sampling is True
    exp.write_text(yaml.safe_dump({"experiments": {"x": {"stages": {"g": {"kind": "grpo", "dynamic_samplin": True}}}}}))
    with pytest.raises(MathrlError, match="did you mean 'dynamic_sampling'"):
        experiment.load_experiments(exp, tmp_path / "runs")


def test_help_groups_options_by_the_settings_class_that_declares_them():
    from mathrl.cli import app

    def section(text: str, title: str) -> str:
        start = text.index(f"─ {title} ─")
        nxt = text.find("╭─", start + 1)
        return text[start: nxt if nxt > 0 else len(text)]

    out = runner.invoke(app, ["grpo", "--help"], terminal_width=200).output
    assert "--num-generations" in section(out, "GRPO") and "--num-generations" not in section(out, "Training")
    assert "--temperature" in section(out, "RL: sampling and rewards")
    assert "--learning-rate" in section(out, "Training") and "--task-config" in section(out, "Model and task")
    out = runner.invoke(app, ["eval", "--help"], terminal_width=200).output
    assert "--shots" in section(out, "Prompt protocol") and "--max-new-tokens" in section(out, "Evaluation")
