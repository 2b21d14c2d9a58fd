"""Settings dataclasses from YAML plus command-line overrides, with validation that names the culprit."""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mathrl.errors import MathrlError

T = TypeVar("T")


def opt(default: Any = None, help: str = "", **kw: Any) -> Any:  # noqa: A002 - the metadata key HfArgumentParser uses
    """A field with its help; list/dict defaults become factories."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


# Settings renamed since (a class's RENAMED: old → new) are still read, with one notice per name.
_warned: set[str] = set()


def deprecated_name(old: str, new: str, where: str = "") -> None:
    """One line on stderr, once per process and name."""
    if old not in _warned:
        _warned.add(old)
        print(f"warning: {where}{old!r} is deprecated; use {new!r}", file=sys.stderr, flush=True)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def build(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Instantiate dataclass `cls` from `values`; unknown keys and wrong types are clear errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    clean = {}
    renamed = getattr(cls, "RENAMED", {})
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in renamed and key not in names:
            deprecated_name(key, renamed[key], f"{source}: ")
            key = renamed[key]
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MathrlError(f"{source}: unknown key {key!r}{hint}")
        if isinstance(value, int) and not isinstance(value, bool) and hints[key] is float:
            value = float(value)
        if not _type_ok(value, hints[key]):
            raise MathrlError(f"{source}: {key!r} should be {_type_name(hints[key])}, got {value!r}")
        clean[key] = value
    obj = cls(**clean)
    validate = getattr(obj, "validate", None)
    if validate:
        validate()
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    path = Path(path)
    if not path.exists():
        raise MathrlError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise MathrlError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise MathrlError(f"{path}: expected a mapping of settings")
    return data


def resolve(cls: type[T], config_path: str | Path | None, overrides: dict[str, Any]) -> T:
    """YAML file first, then every override that is not None (command-line flags)."""
    values = load_yaml(config_path)
    source = str(config_path) if config_path else "options"
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build(cls, values, source)


@dataclass
class TaskSettings:
    """Model and task: the first fields of every command's settings (`EvalConfig`, the trainers')."""

    model: str = opt("smollm2-135m", "local directory (e.g. a training output), hub id (org/name) or built-in smollm2-135m")
    task: str = opt("gsm8k", "task name (see `mathrl tasks`); trainers use its train split")
    task_config: str | None = opt(None, "task config: gsm8k main|socratic, arithmetic levels 1-3, linear_equations 2|3")
    task_args: dict[str, Any] = opt({}, "task options key=value, e.g. path=file.jsonl")
    data_dir: str | None = opt(None, "local data directory (else $MATHRL_DATA_DIR, else the hub)")
