"""A task knows its data and its gold answers; nothing about prompts or models."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mathrl import grading
from mathrl.errors import MathrlError
from mathrl.grading.answers import extract as extract_answer, match as match_answer


def split_answer(text: str) -> tuple[str, str | None]:
    """(worked solution, final answer text) of an answer in the GSM8K convention (`… #### 42`), also
    how other harnesses write golds."""
    head, sep, tail = text.rpartition("####")
    if not sep:
        return text.strip(), None
    return head.strip(), tail.strip()


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
    """Subclasses set `name`, `configs` and implement `load_split`.

    `answer_type` (number, math, text; see mathrl.grading.answers) is the task's kind of gold answer;
    a sample whose gold is of another kind says so in `meta["answer_type"]`. Evaluation and
    `mathrl grade` get every verdict from `grade` → `extract` and `check_answer`."""

    name: str = ""
    configs: tuple[str, ...] = ("default",)
    splits: tuple[str, ...] = ("train", "test")
    answer_type: str = "number"
    default_format: str = "gsm8k"  # the format a suite uses for this task unless told otherwise

    def __init__(self, config: str | None = None, **options: Any):
        self.config = config or self.configs[0]
        if self.configs and "*" not in self.configs and self.config not in self.configs:
            raise MathrlError(f"task {self.name!r} has no config {self.config!r}; choose one of: {', '.join(self.configs)}")
        self.options = options
        self.source: dict[str, Any] = {}  # where the last split came from (file, or hub id/config/split)
        self.excluded: dict[str, int] = {}  # reason → samples dropped at load time (a documented rule)
        # the sample id of each row of the last split's source, in order, dropped rows included (so a
        # row position, lm-eval's doc_id, names the right sample); None: the samples are the rows
        self.doc_ids: list[str] | None = None
        self.dropped: dict[str, str] = {}  # sample id → the `excluded` reason it was dropped for

    def load_split(self, split: str) -> list[Sample]:
        raise NotImplementedError

    def load(self, split: str) -> list[Sample]:
        if split not in self.splits:
            raise MathrlError(f"task {self.name!r} has no split {split!r}; choose one of: {', '.join(self.splits)}")
        return self.load_split(split)

    def load_train(self) -> list[Sample]:
        return self.load("train")

    def load_shots(self, evaluated_split: str = "test") -> list[Sample]:
        """The pool few-shot exemplars come from when `evaluated_split` is evaluated: the train split
        (a task whose validation slice is cut from its published train file returns that whole file for
        test evaluations, so shots are drawn as other harnesses draw them)."""
        return self.load_train()

    def load_test(self) -> list[Sample]:
        return self.load("test")

    def read_gold(self, value: Any) -> tuple[str, str] | None:
        """(gold, answer type) of a gold answer as another harness wrote it ("#### 1,000", 18.0,
        "\\sqrt{2}"), or None when there is none. Not a plain number: math (math-verify decides)."""
        raw = grading.answer_text(value)
        if not raw:
            return None
        final = split_answer(raw)[1]
        text = final if final is not None else raw
        return (grading.normalize(text) or text, "number") if grading.is_plain_number(text) else (text, "math")

    def sample_answer_type(self, sample: Sample) -> str:
        return sample.meta.get("answer_type", self.answer_type)

    def extract(self, fmt: Any, text: str | None, kind: str, answer_type: str | None = None) -> str | None:
        """The `kind` ("strict" or "flexible") prediction in `text`, read as `answer_type`."""
        return extract_answer(fmt, text, kind, answer_type or self.answer_type)

    def check_answer(self, pred: str | None, gold: str, answer_type: str | None = None) -> bool:
        return match_answer(pred, gold, answer_type or self.answer_type)

    def grade(self, fmt: Any, completion: str, gold: str, answer_type: str | None = None) -> dict[str, Any]:
        """Strict and flexible predictions and verdicts of one completion."""
        kind = answer_type or self.answer_type
        strict, flexible = self.extract(fmt, completion, "strict", kind), self.extract(fmt, completion, "flexible", kind)
        return {"pred_strict": strict, "pred_flexible": flexible,
                "correct_strict": self.check_answer(strict, gold, kind), "correct_flexible": self.check_answer(flexible, gold, kind)}

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "config": self.config, "answer_type": self.answer_type,
               **{k: v for k, v in self.options.items() if v is not None}}
        if self.source:
            out["source"] = dict(self.source)
        if self.excluded:
            out["excluded"] = dict(self.excluded)
        return out


GENERATED_SPLITS = ("train", "validation", "test")


def generated_split(question: str) -> str:
    """The split a generated question belongs to, from a hash of its text alone (bucket 0 of 10: test,
    1: validation, the rest: train). It depends on no config, level, seed or size, so no train
    question of a generator can ever be a test (or validation) question of any of its configs."""
    bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def held_for_validation(question: str, parts: int = 15) -> bool:
    """Whether a question of a fixed train file is one of its validation questions: bucket 0 of `parts`
    by a hash of its text (GSM8K: 465 of the 7,473 train questions). A hash rather than a position, so
    the same questions are held out whether the file comes from the hub or a local copy, in any order."""
    return int.from_bytes(hashlib.blake2b(question.strip().encode(), digest_size=8).digest(), "big") % parts == 0


def generate_split(split: str, n: int, draw: Callable[[int], tuple[str, Callable[[], Sample]]],
                   what: str) -> list[Sample]:
    """`n` distinct samples of `split`, rejection-sampled from `draw(i)` (the i-th sample's candidate:
    its question and how to build the sample): a question that belongs to another split
    (`generated_split`) or repeats one already kept is dropped. Too small a generator for `n` is an
    error, not a hang."""
    if split not in GENERATED_SPLITS:
        raise MathrlError(f"{what}: no split {split!r}; choose one of: {', '.join(GENERATED_SPLITS)}")
    samples: list[Sample] = []
    seen: set[str] = set()
    misses = 0
    while len(samples) < n:
        question, build = draw(len(samples))
        if question in seen or generated_split(question) != split:
            misses += 1
            if misses > 20_000:
                raise MathrlError(f"{what}: found only {len(samples)} distinct {split} questions, not {n}; "
                                  f"ask for fewer or widen the generator's ranges")
            continue
        misses = 0
        seen.add(question)
        samples.append(build())
    return samples


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


def load_hub(hub_id: str, config: str | None, split: str, task: str, advice: str) -> list[dict[str, Any]]:
    """Rows of a hub dataset through `datasets`; any failure is one line naming it and the way out."""
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # noqa: BLE001 - any hub/network failure gets the same advice
        where = f"{config}/{split}" if config else split
        raise MathrlError(f"{task}: could not load {hub_id} ({where}) from the hub: {type(e).__name__}; {advice}") from None
    return list(ds)


def subsample(samples: list[Sample], n: int | None, seed: int) -> list[Sample]:
    """A seeded random subset in original order; the same ids for every model."""
    if n is None or n >= len(samples):
        return samples
    if n <= 0:
        raise MathrlError(f"--limit must be positive, got {n}")
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]
