"""A task knows its data and its gold answers; nothing about prompts or models."""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mathrl import grading
from mathrl.errors import MathrlError


@dataclass
class Sample:
    id: str
    question: str
    answer: str  # gold final answer, normalised (grading.normalize)
    solution: str | None = None  # worked solution without the final-answer line, when the task has one
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Task:
    """Subclasses set `name`, `configs` and implement `load_split`."""

    name: str = ""
    configs: tuple[str, ...] = ("default",)
    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, config: str | None = None, **options: Any):
        self.config = config or self.configs[0]
        if self.configs and "*" not in self.configs and self.config not in self.configs:
            raise MathrlError(f"task {self.name!r} has no config {self.config!r}; choose one of: {', '.join(self.configs)}")
        self.options = options

    def load_split(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def load(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise MathrlError(f"task {self.name!r} has no split {split!r}; choose one of: {', '.join(self.splits)}")
        return self.load_split(split)

    def load_train(self) -> list[Sample]:
        return self.load("train")

    def load_test(self) -> list[Sample]:
        return self.load("test")

    def extract_answer(self, text: str) -> str | None:
        return grading.extract_flexible(text)

    def check_answer(self, pred: str | None, gold: str) -> bool:
        return grading.answers_match(pred, gold)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config, **{k: v for k, v in self.options.items() if v is not None}}


TASKS: dict[str, type[Task]] = {}


def register(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: `@register("my_task")` makes `--task my_task` available."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def get_task(name: str, config: str | None = None, **options: Any) -> Task:
    if name not in TASKS:
        raise MathrlError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[name](config, **{k: v for k, v in options.items() if v is not None})


def data_dir(explicit: str | os.PathLike | None) -> Path | None:
    """--data-dir, else the MATHRL_DATA_DIR environment variable, else None (use the hub)."""
    value = explicit or os.environ.get("MATHRL_DATA_DIR")
    return Path(value) if value else None


def subsample(samples: list[Sample], n: int | None, seed: int) -> list[Sample]:
    """A seeded random subset in original order; the same ids for every model."""
    if n is None or n >= len(samples):
        return samples
    if n <= 0:
        raise MathrlError(f"--limit must be positive, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]
