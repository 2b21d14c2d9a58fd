"""Training commands (`mathrl sft`, `mathrl grpo`, `mathrl ppo`): options derived from each trainer's
settings class (`cli.options`); flags override a YAML `--config`, and None means "not given"."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import typer

from mathrl.cli.options import config_option, settings_command
from mathrl.distributed import is_main_process

# command → (module of the settings class, settings class, module of the run function, run function, description)
TRAINERS: dict[str, tuple[str, str, str, str, str]] = {
    "sft": ("mathrl.train.sft", "SFTRunConfig", "mathrl.train.sft", "run_sft",
            "Supervised fine-tuning on a task's worked solutions (TRL SFTTrainer; full, LoRA or QLoRA)."),
    "grpo": ("mathrl.train.grpo", "GRPORunConfig", "mathrl.train.grpo", "run_grpo",
             "GRPO with verifiable rewards (TRL GRPOTrainer; mathrl's faster trainer on the HF path, vLLM on GPUs)."),
    "ppo": ("mathrl.train.settings", "PPORunConfig", "mathrl.train.ppo", "run_ppo",
            "PPO with rule-based rewards: value head, GAE, per-token KL to the start model, clipped updates."),
}


def _summary(kind: str, record: dict[str, Any], output_dir: str) -> None:
    if kind == "sft":
        typer.echo(f"trained {record['global_step']} steps on {record['num_samples']} samples in {record['train_seconds']} s; "
                   f"final loss {record['train_loss']}; model in {output_dir}")
        return
    typer.echo(f"trained {record['global_step']} {kind.upper()} steps in {record['train_seconds']} s "
               f"({record['seconds_per_step']} s/step); reward {record['reward_first']} -> {record['reward_last']}; "
               f"model in {output_dir}")
    for alarm in record["alarms"][-1:]:
        typer.secho(f"warning: {alarm}", fg="yellow", err=True)


def trainer_command(kind: str) -> Callable[..., None]:
    module, cls_name, run_module, fn_name, doc = TRAINERS[kind]
    cls = getattr(importlib.import_module(module), cls_name)  # the options are built from it

    def body(given: dict[str, Any], config: str | None) -> None:
        from mathrl import config as cfgmod

        cfg = cfgmod.resolve(cls, config, given)
        record = getattr(importlib.import_module(run_module), fn_name)(cfg)
        if is_main_process():
            _summary(kind, record, cfg.output_dir)

    return settings_command(kind, doc, (cls,), body,
                            (config_option(f"YAML of {kind.upper()} settings (configs/{kind}/); flags override it."),))
