"""Command-line options derived from the settings dataclasses, as TRL's HfArgumentParser does.

A field `max_completion_length: int` is the option `--max-completion-length`; its help is the field's
`metadata["help"]`. Every option defaults to None, meaning "not given", so a `--config FILE.yaml`
is overridden only by the flags actually given. By type:

    bool                 --x/--no-x
    int, float, str      --x VALUE
    dict (task_args)     --x key=value or --x '{"json": ...}', repeatable (merged)
    list[str] (stop)     --x VALUE, repeatable
    list[str] | str      --x a,b,c: a list; the field's keyword default (all-linear) stays a string

`ALIASES` keeps the spellings the commands had before options were derived (`--lr`, `--fast/--stock`,
`--task-arg`). A field added to a settings class becomes an option here with no other edit.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from mathrl.cli.common import parse_json_option, parse_kv

ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("--learning-rate", "--lr"),
    "value_learning_rate": ("--value-learning-rate", "--value-lr"),
    "fast": ("--fast/--stock",),
    "task_args": ("--task-arg", "--task-args"),
}
SKIP = ("progress", "name")  # progress: for callers in Python; a protocol's name: set by its preset
# `--help` groups options by the settings class that declares them (its base-most declaration: a
# trainer that only redeclares a default keeps the shared field in the shared panel)
PANELS: dict[str, str] = {
    "TaskSettings": "Model and task", "PromptSettings": "Prompt", "SamplingFilters": "Sampling filters", "Protocol": "Prompt protocol",
    "TrainSettings": "Training", "HFSettings": "Training (TRL)", "RLSettings": "RL: sampling and rewards",
    "EvalConfig": "Evaluation", "SFTRunConfig": "SFT", "GRPORunConfig": "GRPO", "GRPOLossSettings": "GRPO: loss, clipping, KL, advantages", "PPORunConfig": "PPO",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kind(tp: Any) -> tuple[str, Any]:
    """('bool'|'scalar'|'dict'|'list'|'list_or_str', python type) of a field's type, None stripped."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
        typing.Union, types.UnionType) else [tp]
    origins = {typing.get_origin(a) or a for a in args}
    if origins == {list, str}:
        return "list_or_str", str
    tp = args[0]
    origin = typing.get_origin(tp) or tp
    if origin is dict:
        return "dict", dict
    if origin in (list, tuple):
        return "list", list
    return ("bool", bool) if tp is bool else ("scalar", tp if tp in (int, float, str) else str)


def derived_fields(*classes: type, skip: tuple[str, ...] = SKIP) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Field name → (field, its resolved type), over the classes in order (the first class wins)."""
    out: dict[str, tuple[dataclasses.Field, Any]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in skip and f.name not in out and not dataclasses.is_dataclass(hints[f.name]):
                out[f.name] = (f, hints[f.name])
    return out


def panel(name: str, classes: tuple[type, ...]) -> str | None:
    """The help panel of a field: the base-most class (over `classes` in order) that declares it."""
    for cls in classes:
        for k in reversed(cls.__mro__):
            if name in vars(k).get("__annotations__", {}):
                return PANELS.get(k.__name__, k.__name__)
    return None


def _parameter(name: str, f: dataclasses.Field, tp: Any, panel_name: str | None = None) -> inspect.Parameter:
    kind, py = _kind(tp)
    decls = ALIASES.get(name) or ((f"{_flag(name)}/--no-{name.replace('_', '-')}",) if kind == "bool" else (_flag(name),))
    help_text = f.metadata.get("help", "")
    if kind in ("dict", "list"):
        help_text += " (repeatable)"
    default = f.default if f.default is not dataclasses.MISSING else None
    if default not in (None, ""):  # the class's own default: what "not given" means
        help_text += f" [default: {str(default).lower() if isinstance(default, bool) else default}]"
    annotation = {"dict": Optional[list[str]], "list": Optional[list[str]], "list_or_str": Optional[str]}.get(kind, Optional[py])
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(None, *decls, help=help_text, show_default=False,
                                                  rich_help_panel=panel_name))


def _dict_items(items: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if item.lstrip().startswith("{"):
            out.update(parse_json_option(item, flag))
        else:
            out.update(parse_kv([item], flag))
    return out


def given_settings(values: dict[str, Any], fields: dict[str, tuple[dataclasses.Field, Any]]) -> dict[str, Any]:
    """The settings the flags actually gave, converted to the fields' types."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or name not in fields:
            continue
        f, tp = fields[name]
        kind, _ = _kind(tp)
        flag = (ALIASES.get(name) or (_flag(name),))[0]
        if kind == "dict":
            value = _dict_items(value, flag)
        elif kind == "list":
            value = list(value)
        elif kind == "list_or_str" and value != f.default:
            value = [v for v in value.split(",") if v]
        out[name] = value
    return out


def config_option(help_text: str) -> inspect.Parameter:
    return inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                             default=typer.Option(None, "--config", help=help_text))


def settings_command(name: str, doc: str, classes: tuple[type, ...], body: Callable[..., None],
                     extra: tuple[inspect.Parameter, ...] = ()) -> Callable[..., None]:
    """A Typer command whose options are the classes' fields plus `extra`; `body(given, **extra_values)`
    receives the flags given (converted) and the extra parameters' values."""
    fields = derived_fields(*classes)
    params = list(extra) + [_parameter(n, f, tp, panel(n, classes)) for n, (f, tp) in fields.items()]
    # renamed settings keep their old flag, hidden, with a notice when used
    renamed = {old: new for cls in classes for old, new in getattr(cls, "RENAMED", {}).items() if new in fields}
    for old, new in renamed.items():
        p = _parameter(new, *fields[new])
        params.append(p.replace(name=old, default=typer.Option(None, _flag(old), hidden=True)))
    extra_names = {p.name for p in extra}

    def command(**kwargs: Any) -> None:
        from mathrl.config import deprecated_name

        for old, new in renamed.items():
            value = kwargs.pop(old)
            if value is not None:
                deprecated_name(_flag(old), _flag(new))
                kwargs[new] = value if kwargs.get(new) is None else kwargs[new]
        body(given_settings({k: v for k, v in kwargs.items() if k not in extra_names}, fields),
             **{k: kwargs[k] for k in extra_names})

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined] - read by Typer
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = command.__qualname__ = name
    command.__doc__ = doc
    return command


def is_yaml_file(value: str) -> bool:
    return Path(value).suffix in (".yaml", ".yml") or Path(value).is_file()
