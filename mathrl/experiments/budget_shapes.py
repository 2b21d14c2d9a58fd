"""What the budget prices, measured from the data: prompt and solution lengths of the training task,
and per evaluation the questions it will run and the prompt tokens its questions take (k-shot
contexts included), tokenized with the base model's tokenizer.

An evaluation's questions are its `limit`, else the size of its task's split: counted from the data
when the task reads it here (a local file, a generator), else the published size of the hub dataset
(`HUB_SIZES`): planning downloads nothing. Its prompts are built as `mathrl eval` builds them
(`formats.build_prompt` with `evaluate.question_shots`) for up to `PROMPT_SAMPLE` of its questions;
where the task's data is not here, the training task's questions (and shots) stand in for them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from mathrl.experiments.budget_pricing import MIN_SHARED_PREFIX
from mathrl.errors import MathrlError

PROMPT_SAMPLE = 32  # questions whose prompts are built and tokenized per evaluation
# an evaluation whose prompts are this much longer than the calibration's (k-shot contexts) gets a
# second decode measurement at its length (budget.calibrate's long_prompts)
LONG_CONTEXT_RATIO, LONG_CONTEXT_MIN = 1.5, 64
_MATH_SUBJECTS = {"algebra": 1187, "counting_and_probability": 474, "geometry": 479, "intermediate_algebra": 903,
                  "number_theory": 540, "prealgebra": 871, "precalculus": 546}
# (task, config or None for any, split) → questions of the hub dataset (test sets as the tasks read them)
HUB_SIZES: dict[tuple[str, str | None, str], int] = {
    ("gsm8k", None, "test"): 1319, ("gsm8k", None, "train"): 7473, ("svamp", None, "test"): 300,
    ("gsm_hard", None, "test"): 1319, ("asdiv", None, "test"): 2305, ("mawps", None, "test"): 520,
    ("gsm_plus", "test", "test"): 10552, ("gsm_plus", "testmini", "test"): 2400, ("math500", None, "test"): 500,
    ("math", "all", "test"): 5000, **{("math", s, "test"): n for s, n in _MATH_SUBJECTS.items()},
}


@dataclass
class Shapes:
    base: str  # the model calibrated
    prompts: list[str]  # training-task prompts (the calibration's decode rows)
    texts: list[str]  # prompt + solution (the calibration's training rows)
    prompt_len: float
    solution_len: float
    test_size: int  # the training task's test split: the fallback for an evaluation that cannot be sized
    shared_len: int
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage → questions, prompt/unique tokens
    long_prompts: list[str] = field(default_factory=list)  # the longest evaluation's prompts, when much longer


def hub_tasks() -> set[str]:
    from mathrl.tasks.heldout import SPECS

    return {"gsm8k", *SPECS}


def hub_size(task: Any, split: str) -> int | None:
    return HUB_SIZES.get((task.name, task.config, split)) or HUB_SIZES.get((task.name, None, split))


class TaskCache:
    """Tasks and their loaded splits, shared by every evaluation that reads the same data."""

    def __init__(self) -> None:
        self.tasks: dict[str, Any] = {}
        self.splits: dict[tuple[str, str], list[Any] | None] = {}

    def task(self, cfg: Any) -> tuple[str, Any]:
        from mathrl.tasks import get_task

        key = json.dumps([cfg.task, cfg.task_config, cfg.task_args, cfg.data_dir], sort_keys=True, default=str)
        if key not in self.tasks:
            task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
            load, memo = task.load, {}

            def cached(split: str, load: Any = load, memo: dict[str, Any] = memo) -> list[Any]:
                if split not in memo:
                    memo[split] = load(split)
                return memo[split]

            task.load = cached  # shots (load_train) and questions are read once per task
            self.tasks[key] = task
        return key, self.tasks[key]

    def split(self, cfg: Any, split: str) -> tuple[Any, list[Any] | None]:
        """(task, the split's samples), the samples None when they are not here (hub data is not
        downloaded to plan) or do not load (the evaluation will say why)."""
        from mathrl.tasks.base import data_dir

        key, task = self.task(cfg)
        if (key, split) not in self.splits:
            samples = None
            if not (task.name in hub_tasks() and data_dir(cfg.data_dir) is None):
                try:
                    samples = task.load(split)
                except MathrlError:
                    samples = None
            self.splits[key, split] = samples
        return task, self.splits[key, split]


def question_count(cfg: Any, task: Any, samples: list[Any] | None, fallback: int) -> int:
    """Questions an evaluation runs: its split's size (counted, else the hub's), at most `limit`."""
    size = len(samples) if samples is not None else hub_size(task, cfg.split)
    if size is None:
        size = cfg.limit or fallback
    return min(size, cfg.limit) if cfg.limit else size


def _shots(cfg: Any, tasks: list[tuple[Any, list[Any] | None]], chosen: list[Any]) -> dict[str, Any]:
    from mathrl.eval.evaluate import question_shots

    fmt = cfg.protocol.resolved_format()
    for task, split in tasks:  # the evaluation's own task, else the stand-in's train split
        try:
            return question_shots(task, cfg.protocol, fmt, chosen, split)
        except MathrlError:
            continue
    return {}


def prompt_shape(cfg: Any, tok: Any, task: Any, samples: list[Any] | None, proxy: Any,
                 proxy_samples: list[Any]) -> tuple[dict[str, float], list[str]] | None:
    """({prompt_tokens, unique_tokens}, prompts) of the evaluation's prompts; None when they cannot be built."""
    from mathrl.prompts import formats
    from mathrl.engine.decoding import encode_prompts
    from mathrl.engine.generation import common_prefix_length
    from mathrl.tasks import subsample

    src = samples if samples else proxy_samples
    if not src:
        return None
    chosen = subsample(src, min(PROMPT_SAMPLE, len(src)), cfg.sample_seed)
    shot_tasks = [(task, src)] if samples else []
    shots = _shots(cfg, shot_tasks + [(proxy, None)], chosen)
    try:
        prompts = [formats.build_prompt(s.question, cfg.protocol, tok, shots.get(s.id, ())) for s in chosen]
    except MathrlError:
        return None
    ids = encode_prompts(tok, prompts)
    mean = sum(map(len, ids)) / max(1, len(ids))
    shared = common_prefix_length(ids)
    shared = shared if shared >= MIN_SHARED_PREFIX else 0
    return {"prompt_tokens": round(mean, 1), "unique_tokens": round(mean - shared, 1)}, prompts


def eval_shapes(stages: list[Any], tok: Any, proxy: Any, proxy_samples: list[Any], fallback: int,
                cache: TaskCache | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """(stage → {questions, prompt_tokens, unique_tokens}, stage → the prompts measured) of every
    evaluation. `proxy`, `proxy_samples`: the training task and questions that stand in where an
    evaluation's data is not here; `fallback`: the questions of an evaluation that cannot be sized."""
    cache = cache or TaskCache()
    shapes: dict[str, dict[str, Any]] = {}
    prompts: dict[str, list[str]] = {}
    built: dict[str, Any] = {}
    for st in stages:
        if st.kind != "eval" or st.config is None:
            continue
        cfg = st.config
        task, samples = cache.split(cfg, cfg.split)
        key = json.dumps([cache.task(cfg)[0], cfg.split, cfg.limit, cfg.sample_seed,
                          dataclasses.asdict(cfg.protocol)], sort_keys=True, default=str)
        if key not in built:  # every model evaluated on one setting gets the same prompts
            built[key] = prompt_shape(cfg, tok, task, samples, proxy, proxy_samples)
        if built[key] is None:
            continue
        shape, prompts[st.name] = built[key]
        shapes[st.name] = {"questions": question_count(cfg, task, samples, fallback), **shape}
    return shapes, prompts


def data_shapes(stages: list[Any]) -> Shapes:
    """The training task's lengths (first training stage's task and protocol, tokenizer only) and every
    evaluation's shape."""
    from mathrl.prompts import formats
    from mathrl.engine import models
    from mathrl.engine.decoding import encode_prompts
    from mathrl.engine.generation import common_prefix_length

    first = next((st for st in stages if st.kind != "eval"), None)
    if first is None or first.config is None:
        raise MathrlError("a budget needs at least one training stage whose settings are valid")
    cfg = first.config
    base = next((st.config.model for st in stages if st.kind == "eval" and not st.deps), cfg.model)
    cache = TaskCache()
    _, task = cache.task(cfg)
    protocol = cfg.protocol()
    fmt = protocol.resolved_format()
    tok = models.load_tokenizer(models.resolve(base)[0])
    train = [s for s in task.load_train()[:64] if s.solution]
    if not train:
        raise MathrlError(f"task {cfg.task!r} has no worked solutions to size the plan with")
    prompts = [formats.build_prompt(s.question, protocol, tok) for s in train]
    solutions = [fmt.render(s.solution, s.answer) for s in train]
    ids = encode_prompts(tok, prompts)
    p_len = sum(map(len, ids)) / len(prompts)
    s_len = sum(len(x) for x in tok(solutions, add_special_tokens=False)["input_ids"]) / len(solutions)
    test = task.load_test()
    shapes, eval_prompts = eval_shapes(stages, tok, task, test or train, len(test), cache)
    longest = max(shapes, key=lambda n: shapes[n]["prompt_tokens"], default=None)
    long_prompts = []
    if longest and shapes[longest]["prompt_tokens"] >= max(LONG_CONTEXT_RATIO * p_len, p_len + LONG_CONTEXT_MIN):
        long_prompts = eval_prompts[longest]
    return Shapes(base, prompts, [p + s for p, s in zip(prompts, solutions)], p_len, s_len, len(test),
                  common_prefix_length(ids), shapes, long_prompts)
