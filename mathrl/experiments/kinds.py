"""Stage kinds: the registry of what a stage can be (eval, sft, grpo, ppo), each a module with a
settings class and a run function, imported only when a stage of that kind is built or run."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from mathrl import config as cfgmod
from mathrl.errors import MathrlError

# Stage kind → (module, settings class, run function). Imported lazily: a kind whose module is not
# there (GRPO, PPO before they land, or missing GPU extras) only fails the stages that use it.
KINDS: dict[str, tuple[str, str, str]] = {
    "eval": ("mathrl.eval.evaluate", "EvalConfig", "run_eval"),
    "sft": ("mathrl.train.sft", "SFTRunConfig", "run_sft"),
    "grpo": ("mathrl.train.grpo", "GRPORunConfig", "run_grpo"),
    "ppo": ("mathrl.train.ppo", "PPORunConfig", "run_ppo"),
}

def training_kinds() -> list[str]:
    return [k for k in KINDS if k != "eval"]


class KindUnavailable(MathrlError):
    """A stage kind whose module cannot be imported here."""


def load_kind(kind: str) -> tuple[type, Callable[..., dict[str, Any]]]:
    if kind not in KINDS:
        raise MathrlError(f"unknown stage kind {kind!r}; choose one of: {', '.join(training_kinds())}")
    module, cls_name, fn_name = KINDS[kind]
    try:
        mod = importlib.import_module(module)
        return getattr(mod, cls_name), getattr(mod, fn_name)
    except (ImportError, AttributeError) as e:
        raise KindUnavailable(f"stage kind {kind!r} is not available in this install ({module}: {e})") from None


def setting_names(kind: str) -> set[str] | None:
    """Keys a stage of this kind accepts; None when its module is unavailable."""
    try:
        cls, _ = load_kind(kind)
    except KindUnavailable:
        return None
    if kind == "eval":
        from mathrl.eval.evaluate import eval_setting_names

        return eval_setting_names()
    return {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "RENAMED", {}))


def build_config(kind: str, settings: dict[str, Any], source: str) -> Any:
    cls, _ = load_kind(kind)
    if kind != "eval":
        return cfgmod.build(cls, settings, source)
    from mathrl.eval.evaluate import eval_config
    from mathrl.tasks import get_task

    cfg = eval_config(settings, source)  # the same builder as `mathrl eval` (protocol presets included)
    get_task(cfg.task, cfg.task_config, **cfg.task_args)  # checks the name and config; loads nothing
    return cfg
