"""Reward shaping for GRPO: length, repetition and format terms from the RL literature, as pure functions, and
`ShapedReward`, which calls them as TRL calls a reward (registered as built-ins in `mathrl.train.rewards`).

Parameters go in brackets in the reward spec, `;`-separated, e.g.
    --rewards "correctness,overlong[cache=16]:1.0,repetition[ngram=3;max_penalty=-1.0]:0.5"
and the name TRL logs (`rewards/<name>/mean`) and the run record keep them; unknown or invalid ones are a
one-line error. Lengths are in tokens (the completion's ids, as TRL passes them); texts are cut at the
protocol's stop strings first, like every mathrl reward, so they read what evaluation grades.

  overlong     DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13): 0 up to
               max - cache tokens, then linear down to -1 at max, -1 beyond. max: the run's
               max_completion_length unless given; cache: 20% of max unless given (DAPO: 4096 of 20480).
  repetition   TRL 1.16's `get_repetition_penalty_reward` (Yeo et al. 2025, arXiv:2502.03373): max_penalty x
               the share of repeated token n-grams (1 - distinct / total), 0 below n tokens.
  cosine       Yeo et al. 2025's cosine length scaling of correctness (TRL's `get_cosine_scaled_reward`):
               correct completions from max_correct (short) down to min_correct (at max length), wrong ones
               from min_wrong (short) up to max_wrong (long); correctness is mathrl's verdict (the
               `correctness` reward's), never a second grader.
  think_format TRL's `think_format_reward`: 1 when the completion holds exactly one <think>...</think>
               block and starts with it, else 0.
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any, Callable

from mathrl.engine.decoding import cut_at_stop
from mathrl.errors import MathrlError

# name -> (parameter defaults, description); None: filled in when the reward is bound to a run
SHAPING: dict[str, tuple[dict[str, Any], str]] = {
    "overlong": ({"max": None, "cache": None}, "DAPO soft overlong punishment: 0..-1 over the last `cache` tokens"),
    "repetition": ({"ngram": 3, "max_penalty": -1.0}, "max_penalty x the share of repeated token n-grams"),
    "cosine": ({"max": None, "min_correct": 0.5, "max_correct": 1.0, "min_wrong": -1.0, "max_wrong": -0.5},
               "correctness scaled by length on a cosine (short right answers best, long wrong ones least bad)"),
    "think_format": ({}, "1 if the completion starts with exactly one <think>...</think> block"),
}
_THINK = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL | re.MULTILINE)  # TRL 1.16's pattern


def soft_overlong(length: int, max_len: int, cache: int) -> float:
    if length <= max_len - cache:
        return 0.0
    if length <= max_len:
        return ((max_len - cache) - length) / cache
    return -1.0


def repetition(ids: list[int], ngram: int, max_penalty: float) -> float:
    if len(ids) < ngram:
        return 0.0
    grams = list(zip(*[ids[i:] for i in range(ngram)]))
    share = 1 - len(set(grams)) / len(grams)
    return float(share * max_penalty) if share else 0.0


def cosine(correct: bool, length: int, max_len: int, min_correct: float, max_correct: float, min_wrong: float,
           max_wrong: float) -> float:
    progress = min(length, max_len) / max_len
    lo, hi = (min_correct, max_correct) if correct else (max_wrong, min_wrong)  # wrong: longer is less bad
    return float(lo + 0.5 * (hi - lo) * (1.0 + math.cos(progress * math.pi)))


def think_format(text: str) -> float:
    return 1.0 if _THINK.match(text) else 0.0


def parse(name: str) -> tuple[str, dict[str, Any]] | None:
    """'overlong[cache=16]' -> ('overlong', {'cache': 16}); None when `name` is not a shaping reward."""
    base, bracket, rest = name.partition("[")
    if base not in SHAPING:
        return None
    defaults = SHAPING[base][0]
    params: dict[str, Any] = {}
    if bracket:
        if not rest.endswith("]"):
            raise MathrlError(f"reward {name!r}: parameters go in brackets, e.g. {base}[key=value;key=value]")
        for item in filter(None, (p.strip() for p in rest[:-1].split(";"))):
            key, eq, value = (s.strip() for s in item.partition("="))
            if not eq or key not in defaults:
                raise MathrlError(f"reward {name!r}: unknown parameter {key!r}; {base} takes "
                                  f"{', '.join(defaults) or 'none'}")
            try:
                params[key] = int(value) if key in ("max", "cache", "ngram") else float(value)
            except ValueError:
                raise MathrlError(f"reward {name!r}: {key}={value!r} is not a number") from None
    return base, params


class ShapedReward:
    """One shaping term, called as TRL calls rewards; picklable (module functions only, no closures).
    `text_of` reads a completion's text; `correct` is the correctness reward's score (cosine needs it)."""

    def __init__(self, name: str, kind: str, params: dict[str, Any], fmt: Any, text_of: Callable[[Any], str],
                 correct: Callable[..., float] | None = None):
        self.__name__, self.kind, self.fmt = name, kind, fmt
        self.params = {**SHAPING[kind][0], **params}
        self.text_of, self.correct = text_of, correct
        self.task, self.stops = None, ()

    def bind(self, task: Any, stops: tuple[str, ...], max_completion_length: int | None = None) -> "ShapedReward":
        """A copy for one run: its task (for the verdict), stop strings, and `max` / `cache` filled in."""
        bound = copy.copy(self)
        bound.task, bound.stops, bound.params = task, tuple(stops), dict(self.params)
        p = bound.params
        if "max" in p and p["max"] is None:
            p["max"] = max_completion_length
        if self.kind in ("overlong", "cosine") and not (isinstance(p["max"], int) and p["max"] > 0):
            raise MathrlError(f"reward {self.__name__!r} needs a positive max length in tokens: give {self.kind}[max=N] "
                              f"or run it where max_completion_length is known (GRPO, PPO)")
        if self.kind == "overlong":
            p["cache"] = max(1, round(0.2 * p["max"])) if p["cache"] is None else p["cache"]
            if not 0 < p["cache"] <= p["max"]:
                raise MathrlError(f"reward {self.__name__!r}: cache must be in [1, max={p['max']}], got {p['cache']}")
        if self.kind == "repetition" and p["ngram"] < 1:
            raise MathrlError(f"reward {self.__name__!r}: ngram must be at least 1, got {p['ngram']}")
        return bound

    def __call__(self, completions: Any, completion_ids: Any = None, **kwargs: Any) -> list[float]:
        items = [completions] if isinstance(completions, str) else list(completions or [])
        texts = [cut_at_stop(self.text_of(c), self.stops)[0] for c in items]
        p = self.params
        if self.kind == "think_format":
            return [think_format(t) for t in texts]
        if completion_ids is None or len(completion_ids) != len(texts):
            raise MathrlError(f"reward {self.__name__!r} counts tokens: it needs TRL's completion_ids")
        if self.kind == "repetition":
            return [repetition(list(ids), p["ngram"], p["max_penalty"]) for ids in completion_ids]
        lengths = [len(ids) for ids in completion_ids]
        if self.kind == "overlong":
            return [soft_overlong(n, p["max"], p["cache"]) for n in lengths]
        golds, kinds = kwargs.get("answer"), kwargs.get("answer_type")
        if golds is None:
            raise MathrlError(f"reward {self.__name__!r} needs the gold answers: the dataset has no 'answer' column")
        kinds = list(kinds) if isinstance(kinds, (list, tuple)) and len(kinds) == len(texts) else [None] * len(texts)
        right = [self.correct(self.fmt, t, None if g is None else str(g), self.task, k) == 1.0
                 for t, g, k in zip(texts, golds, kinds)]
        return [cosine(r, n, p["max"], p["min_correct"], p["max_correct"], p["min_wrong"], p["max_wrong"])
                for r, n in zip(right, lengths)]
