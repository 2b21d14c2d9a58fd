"""Reward functions for RL (TRL's GRPOTrainer signature), all graded by `mathrl.grading`.

A reward is `fn(completions, **kwargs) -> list[float]`: `completions` are strings or conversational
message lists (the last message's content is read); dataset columns arrive as aligned kwargs lists,
the gold answer as `answer`. Built-in rewards never raise on any completion text and always return
one python float per completion. They read answers through the Format's extractors (the grader is
the single source of truth), so a reward and `mathrl eval` can never disagree about a completion.

Built-ins (names for a spec such as "correctness,format:0.5,closeness:0.2"):
  correctness           1.0 when the format's strict answer marker holds the gold answer, else 0.0
  correctness_flexible  the same on the last number in the completion (the format's flexible extractor)
  format_strict         1.0 when the whole completion has the format's shape, else 0.0: each template
                        marker exactly once and in order, non-blank working where the template has
                        {reasoning}, only whitespace between markers, exactly one strict answer whose
                        content is a plain number, and after it only what the template puts there
                        (e.g. "$." for boxed, "." for answer_is), whitespace and EOS tokens like <|im_end|>.
  format_soft           partial credit (Unsloth's match_format_approximately): +1/k for each of the k
                        template markers present exactly once, -1/k for each present more than once;
                        formats without markers (gsm8k, boxed, answer_is) count the strict answer
                        marker as their one marker: 1.0 once, 0.0 absent, -1.0 repeated.
  format                alias of format_soft
  closeness             1.0 when correct; else 0.5 * max(0, 1 - |pred - gold| / max(1, |gold|)); 0.0 with
                        no number or a non-numeric gold. pred: strict extraction, else flexible.
  length                0.0 up to 1000 characters, then linear down to -1.0 at 2000 characters and beyond;
                        other limits: `length_penalty(limit)`.
  overlong, repetition, cosine, think_format
                        shaping terms with parameters in brackets (`overlong[cache=16]`): DAPO's soft
                        overlong punishment, TRL's repetition penalty, cosine length scaling of the
                        correctness verdict, TRL's think format (mathrl.train.reward_shaping).

Adding a reward:
    from mathrl.train.rewards import register_reward

    @register_reward("brevity")                     # then --rewards "correctness,brevity:0.1"
    def brevity(completions, **kwargs):
        return [...]

    @register_reward("my_format", per_format=True)  # a factory: Format -> reward function
    def my_format(fmt): ...

or name a function by dotted path in the spec: "mypkg.rewards:brevity:0.1" (or "mypkg.rewards.brevity").
"""

from __future__ import annotations

import copy
import functools
import importlib
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from mathrl import grading
from mathrl.errors import MathrlError
from mathrl.engine.decoding import cut_at_stop
from mathrl.prompts.formats import Format, get_format
from mathrl.grading.verdict import grade_completion
from mathrl.train import reward_shaping

RewardFn = Callable[..., list]
DEFAULT_LENGTH_LIMIT = 1000  # characters: tokenizer-free, so the same number for every model

# Stands in for the working when a template is rendered to learn its shape; never in a real template.
_SENTINEL = "\x00reasoning\x00"
# End-of-sequence text a decode may keep (<|im_end|>, <|endoftext|>, </s>, <eos>, <end_of_turn>).
_EOS_RE = re.compile(r"<\|[^|<>\s]{1,40}\|>|</s>|<eos>|<end_of_turn>|<｜end▁of▁sentence｜>")


def _text(completion: Any) -> str:
    """A completion as text: a string, or the last message of a conversation (content parts joined)."""
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        last = completion[-1]
        completion = last.get("content") if isinstance(last, dict) else last
        if isinstance(completion, (list, tuple)):  # [{"type": "text", "text": ...}, ...]
            completion = "".join(p.get("text") or "" if isinstance(p, dict) else str(p) for p in completion)
    return completion if isinstance(completion, str) else ("" if completion is None else str(completion))


def _is_number(text: str | None) -> bool:
    """The whole string is one number as the grader reads it (`18`, `-2.5`, `$1,000`, `3/4`, `50%`)."""
    core = (text or "").strip()
    core = core[:-1].rstrip() if core.endswith("%") else core
    return bool(core) and grading.NUMBER_RE.fullmatch(core) is not None and grading.normalize(core) is not None


@functools.lru_cache(maxsize=None)
def _shape(fmt: Format) -> tuple[re.Pattern | None, tuple[str, ...], str] | None:
    """What a completion in `fmt` looks like, learnt by rendering the template (no per-format code).

    Returns (marker splitter, expected pieces before the strict answer, text allowed after it with
    whitespace removed); None when the template does not match its own strict pattern."""
    try:
        strict = re.compile(fmt.strict_pattern)
    except re.error as exc:
        raise MathrlError(f"format {fmt.name!r}: bad strict_pattern {fmt.strict_pattern!r}: {exc}") from exc
    markers = sorted(fmt.markers, key=len, reverse=True)  # longest first so no marker eats another
    splitter = re.compile("(" + "|".join(map(re.escape, markers)) + ")") if markers else None
    canonical = fmt.render(_SENTINEL, "7")
    m = strict.search(canonical)
    if m is None:
        return None
    head = tuple(splitter.split(canonical[: m.start()]) if splitter else [canonical[: m.start()]])
    return splitter, head, "".join(canonical[m.end() :].split())


def _strict(fmt: Format, text: str) -> str | None:
    return fmt.extract_strict(text)


# -- per-completion scores: (format, completion text, gold or None) -> float -------------------------


def _correctness(fmt: Format, text: str, gold: str | None, task: Any = None, answer_type: str | None = None) -> float:
    return float(grade_completion(fmt, task, text, gold, answer_type=answer_type)["correct_strict"])


def _correctness_flexible(fmt: Format, text: str, gold: str | None, task: Any = None,
                          answer_type: str | None = None) -> float:
    return float(grade_completion(fmt, task, text, gold, answer_type=answer_type)["correct_flexible"])


def _format_strict(fmt: Format, text: str, gold: str | None = None) -> float:
    if any(text.count(marker) != 1 for marker in fmt.markers):
        return 0.0
    shape = _shape(fmt)
    strict = re.compile(fmt.strict_pattern)
    matches = list(itertools.islice(strict.finditer(fmt.strict_region(text)), 2))
    if len(matches) != 1:
        return 0.0
    m = matches[0]
    if not _is_number(m.group(1) if strict.groups else m.group(0)):
        return 0.0
    if shape is None:  # a template that does not match its own pattern: one number is all we can ask
        return 1.0
    splitter, want_head, want_tail = shape
    got_head = splitter.split(text[: m.start()]) if splitter else [text[: m.start()]]
    if len(got_head) != len(want_head):
        return 0.0
    for i, (want, got) in enumerate(zip(want_head, got_head)):
        if i % 2:  # odd pieces of a capturing split are the markers themselves
            ok = want == got
        elif _SENTINEL in want:  # the working: any text but not blank
            ok = got.strip() != ""
        else:  # fixed template text (usually nothing): equal up to whitespace
            ok = want.split() == got.split()
        if not ok:
            return 0.0
    rest = "".join(_EOS_RE.sub(" ", text[m.end() :]).split())
    tail = iter(want_tail)  # what follows may drop, but not add or reorder, the template's characters
    return float(len(rest) <= len(want_tail) and all(c in tail for c in rest))


def _format_soft(fmt: Format, text: str, gold: str | None = None) -> float:
    def credit(count: int) -> float:
        return 1.0 if count == 1 else (-1.0 if count > 1 else 0.0)

    if fmt.markers:
        return sum(credit(text.count(marker)) for marker in fmt.markers) / len(fmt.markers)
    return credit(sum(1 for _ in itertools.islice(re.finditer(fmt.strict_pattern, text), 2)))


def _closeness(fmt: Format, text: str, gold: str | None) -> float:
    pred = _strict(fmt, text)
    pred = fmt.extract_flexible(text) if pred is None else pred
    if grading.answers_match(pred, gold):
        return 1.0
    if not _is_number(gold):  # partial credit only means something against a number
        return 0.0
    p, g = grading.parse_number(pred), grading.parse_number(gold)
    if p is None or g is None:
        return 0.0
    return float(0.5 * max(0, 1 - abs(p - g) / max(1, abs(g))))


def _length(limit: int, fmt: Format | None, text: str, gold: str | None = None) -> float:
    return 0.0 - min(1.0, max(0, len(text) - limit) / limit)  # 0.0 -, so no -0.0 in logs


class Reward:
    """A score bound to a format, called as TRL calls reward functions; picklable (no closures).

    Completions are first cut at `stops` (the protocol's stop strings), so a reward reads exactly the
    text evaluation grades; correctness rewards ask `task.check_answer` (None: the default checker)."""

    def __init__(self, name: str, score: Callable[..., float], fmt: Format | None, needs_answer: bool,
                 task: Any = None, stops: tuple[str, ...] = ()):
        self.__name__ = name  # TRL logs rewards under __name__
        self.score, self.fmt, self.needs_answer = score, fmt, needs_answer
        self.task, self.stops = task, tuple(stops)

    def bind(self, task: Any, stops: tuple[str, ...]) -> "Reward":
        bound = copy.copy(self)
        bound.task, bound.stops = task, tuple(stops)
        return bound

    def __call__(self, completions: Any, **kwargs: Any) -> list[float]:
        items = [completions] if isinstance(completions, str) else list(completions or [])
        texts = [cut_at_stop(_text(c), self.stops)[0] for c in items]
        golds = _golds(kwargs, len(texts), self.__name__) if self.needs_answer else [None] * len(texts)
        if self.score in (_correctness, _correctness_flexible):
            # a dataset's answer_type column (per sample: ASDiv's textual golds) reaches the grader
            kinds = kwargs.get("answer_type")
            kinds = list(kinds) if isinstance(kinds, (list, tuple)) and len(kinds) == len(texts) else [None] * len(texts)
            return [float(self.score(self.fmt, text, gold, self.task, kind)) for text, gold, kind in zip(texts, golds, kinds)]
        return [float(self.score(self.fmt, text, gold)) for text, gold in zip(texts, golds)]


def _golds(kwargs: dict[str, Any], n: int, name: str) -> list[str | None]:
    gold = kwargs.get("answer")
    if gold is None:
        raise MathrlError(f"reward {name!r} needs the gold answers: the dataset has no 'answer' column")
    gold = [gold] * n if isinstance(gold, (str, int, float)) else list(gold)
    if len(gold) != n:
        raise MathrlError(f"reward {name!r}: {len(gold)} answers for {n} completions")
    return [None if g is None else str(g) for g in gold]  # the grader takes text; columns may be ints


def length_penalty(limit: int = DEFAULT_LENGTH_LIMIT) -> Reward:
    """0.0 up to `limit` characters, then linear down to -1.0 at 2*limit and beyond."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise MathrlError(f"length penalty limit must be a positive number of characters, got {limit!r}")
    return Reward("length", functools.partial(_length, limit), None, needs_answer=False)


# -- registry -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSpec:
    name: str
    build: Callable[[Format], RewardFn]  # per format; format-free rewards ignore their argument
    description: str = ""
    builtin: bool = False


REWARDS: dict[str, RewardSpec] = {}


def _builtin(name: str, score: Callable[..., float], needs_answer: bool, description: str) -> None:
    REWARDS[name] = RewardSpec(name, functools.partial(Reward, name, score, needs_answer=needs_answer), description, True)


_builtin("correctness", _correctness, True, "1 if the strict answer matches the gold answer")
_builtin("correctness_flexible", _correctness_flexible, True, "1 if the last number matches the gold answer")
_builtin("format_strict", _format_strict, False, "1 if the whole completion has the format's shape")
_builtin("format_soft", _format_soft, False, "+-1/k per marker present once / repeated")
_builtin("format", _format_soft, False, "alias of format_soft")
_builtin("closeness", _closeness, True, "1 if correct, else up to 0.5 by relative distance")
REWARDS["length"] = RewardSpec("length", lambda fmt: length_penalty(), "-1..0 past 1000 characters", True)
for _name, (_params, _what) in reward_shaping.SHAPING.items():  # parameters in brackets: reward_shaping
    REWARDS[_name] = RewardSpec(_name, functools.partial(reward_shaping.ShapedReward, _name, _name, {}, text_of=_text,
                                                         correct=_correctness), _what, True)


def register_reward(name: str, *, per_format: bool = False, description: str = "") -> Callable:
    """Decorator: `@register_reward("name")` on a reward function, or with per_format=True on a factory
    taking the Format and returning one. Re-registering a user name replaces it; built-ins are kept."""
    if not name or re.search(r"[\s,:]", name):
        raise MathrlError(f"reward name {name!r} must be non-empty without spaces, commas or colons")
    if name in REWARDS and REWARDS[name].builtin:
        raise MathrlError(f"reward {name!r} is a built-in; register yours under another name")

    def deco(fn: Callable) -> Callable:
        if not callable(fn):
            raise MathrlError(f"reward {name!r}: {fn!r} is not callable")
        build = fn if per_format else (lambda fmt: fn)
        REWARDS[name] = RewardSpec(name, build, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


class _Renamed:
    """A user callable under another __name__ (TRL needs distinct names), without touching it."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.__name__ = fn, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _named(fn: Callable, name: str) -> Callable:
    if getattr(fn, "__name__", None) == name:
        return fn
    if isinstance(fn, Reward):
        fn = copy.copy(fn)
        fn.__name__ = name
        return fn
    return _Renamed(fn, name)


def _load_path(path: str) -> Callable:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise MathrlError(f"reward {path!r}: expected 'package.module:function' or 'package.module.function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - a missing module or one failing on import: say which
        raise MathrlError(f"reward {path!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise MathrlError(f"reward {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise MathrlError(f"reward {path!r}: {attr!r} in {module_name!r} is not callable (a {type(obj).__name__})")
    return obj


def get_reward(name: str, format_name: str | Format) -> RewardFn:
    """The reward called `name` built for a format, or the function at a dotted path."""
    fmt = format_name if isinstance(format_name, Format) else get_format(format_name)
    _shape(fmt)  # a bad strict_pattern fails here, naming the format, not in the middle of training
    shaped = reward_shaping.parse(name)  # overlong[cache=16], repetition, cosine, think_format
    if shaped is not None:
        return reward_shaping.ShapedReward(name, shaped[0], shaped[1], fmt, _text, _correctness)
    if name in REWARDS:
        return _named(REWARDS[name].build(fmt), name)
    if "." in name or ":" in name:
        return _load_path(name)
    raise MathrlError(
        f"unknown reward {name!r}; choose one of: {', '.join(REWARDS)}, or a dotted path 'package.module:function'"
    )


def parse_reward_spec(spec: str) -> list[tuple[str, float]]:
    """"correctness,format:0.5,mypkg.mod:fn:0.2" -> [(name, weight), ...]; weights default to 1.0."""
    entries = [e.strip() for e in (spec or "").split(",")]
    if not any(entries):
        raise MathrlError("no rewards given: expected e.g. 'correctness,format:0.5'")
    out = []
    for entry in entries:
        if not entry:
            raise MathrlError(f"empty entry in reward spec {spec!r}")
        name, sep, weight_text = (part.strip() for part in entry.rpartition(":"))
        if not sep:
            out.append((entry, 1.0))
            continue
        try:
            weight = float(weight_text)
        except ValueError:
            # "mypkg.mod:fn" is a dotted path without a weight, not a bad weight
            if "." in name and ":" not in name and weight_text.isidentifier():
                out.append((entry, 1.0))
                continue
            raise MathrlError(f"bad weight {weight_text!r} for reward {name!r} in {spec!r}: expected a number") from None
        if not name or not math.isfinite(weight):
            raise MathrlError(f"bad reward spec entry {entry!r} in {spec!r}: expected NAME or NAME:WEIGHT")
        out.append((name, weight))
    return out


def build_rewards(spec: str, format_name: str | Format, task: Any = None, stops: tuple[str, ...] | list[str] = (),
                  max_completion_length: int | None = None) -> tuple[list[RewardFn], list[float]]:
    """reward_funcs and reward_weights for TRL from a spec string; names made distinct for its logs.

    Built-in rewards are bound to `task` (its answer checker) and the protocol's `stops`, so they grade
    the text evaluation grades (shaping terms also to `max_completion_length`, their default length);
    user functions receive the completions as they are."""
    funcs: list[RewardFn] = []
    weights: list[float] = []
    for name, weight in parse_reward_spec(spec):
        fn = get_reward(name, format_name)
        if isinstance(fn, Reward):
            fn = fn.bind(task, tuple(stops))
        elif isinstance(fn, reward_shaping.ShapedReward):
            fn = fn.bind(task, tuple(stops), max_completion_length)
        label = base = getattr(fn, "__name__", type(fn).__name__)
        for i in itertools.count(2):  # "correctness,correctness:0.5" logs correctness and correctness_2
            if label not in {f.__name__ for f in funcs}:
                break
            label = f"{base}_{i}"
        funcs.append(_named(fn, label))
        weights.append(weight)
    return funcs, weights
