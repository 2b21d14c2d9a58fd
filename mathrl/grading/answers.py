"""Answer types beyond plain numbers: how a gold answer is read and how a prediction is judged.

Each sample has one treatment (its `answer_type`), counted in summary.json:

- ``number``: a numeric gold; mathrl's numeric grader (1e-6 relative tolerance).
- ``math``: a MATH gold (LaTeX, or a number); the format's marker is read raw (``\\boxed{}`` with
  any nesting) and compared numerically when both sides are plain numbers, else with math-verify.
- ``text``: a textual gold (ASDiv ``Yes``, ``Mrs. Hilt``, ``3:30 p.m.``); normalised string match
  (`normalize_text`): case, dots, commas, quotes, ``*``/``$`` and a leading article or "that" are
  ignored, and an answer that starts with the gold followed by more words (``Yes, she can``) counts.
  Flexible reads the format's marker, else the last "the answer is …", else the last line.
- ``no_answer``: the question cannot be answered (GSM-Plus "critical thinking"); correct when the
  answer says so, matched by `NO_ANSWER_RE` (strict: the text after the format's marker; flexible:
  anywhere in the completion).
- ``excluded``: dropped when the task loads (counted by the task, never evaluated).

Integration with `mathrl.grading`: that module is being extended so that ``extract_strict``,
``extract_flexible`` and ``answers_match`` (and ``Format.extract_strict/extract_flexible``) take
``answer_type=`` in ("number", "math", "text"). `extract` and `match` below pass it when the
function accepts it and otherwise use the local fallbacks in this module, so this code runs on
either side of that change. ``no_answer`` stays here: it is a task rule, not a grader rule.
"""

from __future__ import annotations

import re
from typing import Any

from mathrl import grading
from mathrl.prompts.formats import FORMATS, Format

# Every answer type a task may give a sample: the grader's, plus the task rule for unanswerable questions.
TASK_ANSWER_TYPES = (*grading.ANSWER_TYPES, "no_answer")
NO_ANSWER = "[unanswerable]"  # Sample.answer of a no_answer item: never equal to a model's answer

# What "this question cannot be answered" looks like. Deliberately phrases, not single words:
# "none" or "unknown" alone are also ordinary answers ("none of them are left").
NO_ANSWER_RE = re.compile(
    r"cannot be (?:determined|answered|calculated|computed|solved|found)|can ?not be (?:determined|answered)"
    r"|can't be (?:determined|answered|calculated)|(?:is )?impossible to (?:determine|answer|calculate|tell|know)"
    r"|not enough information|insufficient (?:information|data)|(?:information|data) is (?:missing|insufficient)"
    r"|missing (?:information|data)|not (?:be )?(?:answerable|solvable)|unanswerable|not possible to (?:determine|answer|calculate)"
    r"|does not (?:give|provide|state|say|specify)|doesn't (?:give|provide|state|say|specify)",
    re.IGNORECASE,
)

# Strict markers that capture any text, for formats whose own marker captures a number only.
_TEXT_MARKERS = {
    "gsm8k": r"####\s*([^\n]+)",
    "answer_is": r"[Tt]he (?:final )?answer is:?\s*([^\n]+)",
}
_UNIT_RE = re.compile(r"\s*\([^()]*\)")  # ASDiv writes units in brackets: "9 (apples)"
_ARTICLE_RE = re.compile(r"^(?:that|the|a|an)\s+")


def normalize_text(text: str | None) -> str:
    """Lower case, no dots/commas/quotes/markdown, single spaces, no leading article."""
    t = grading.answer_text(text).lower().replace("’", "'")
    t = re.sub(r"\\text\{([^{}]*)\}", r"\1", t)
    t = re.sub(r"[.,!?;\"*`$]|'(?!s\b)", "", t)
    t = " ".join(t.split())
    return _ARTICLE_RE.sub("", t)


def says_unanswerable(text: str | None) -> bool:
    return bool(text) and NO_ANSWER_RE.search(grading.answer_text(text)) is not None


def _clean(raw: str) -> str:
    return raw.strip().strip("*").strip().rstrip(".").strip()


def raw_strict(fmt: Format, text: str | None) -> str | None:
    """The text the format's answer marker holds, unconverted (for math, text and no_answer)."""
    text = grading.answer_text(text)
    if not text:
        return None
    stock = FORMATS.get(fmt.name)
    pattern = fmt.strict_pattern
    if stock is not None and pattern == stock.strict_pattern:
        if "boxed" in pattern:  # the format's regex allows one level of braces; \frac{\sqrt{3}}{2} has two
            boxed = grading._boxed_contents(text)  # noqa: SLF001 - the one nesting-safe reader
            return _clean(boxed[0] if fmt.strict_take == "first" else boxed[-1]) if boxed else None
        pattern = _TEXT_MARKERS.get(fmt.name, pattern)
    try:
        found = [m.group(1) for m in re.finditer(pattern, text)]
    except (re.error, IndexError):
        return None
    if not found:
        return None
    return _clean(found[0] if fmt.strict_take == "first" else found[-1]) or None


def _raw_flexible(fmt: Format, text: str | None, answer_type: str) -> str | None:
    """Flexible reading: the last \\boxed{} anywhere; for text the format's marker, else the last
    line; for math the last number when nothing is boxed."""
    text = grading.answer_text(text)
    if not text:
        return None
    if answer_type == "no_answer":
        m = NO_ANSWER_RE.search(text)
        return m.group(0) if m else grading.extract_flexible(text)
    boxed = grading._boxed_contents(text)  # noqa: SLF001
    if boxed:
        return _clean(boxed[-1])
    if answer_type == "text":  # the format's marker, else the last "the answer is …", else the last line
        said = [m.group(1) for m in re.finditer(_TEXT_MARKERS["answer_is"], text)]
        lines = [line for line in text.splitlines() if line.strip()]
        return raw_strict(fmt, text) or (_clean(said[-1]) if said else None) or (_clean(lines[-1]) if lines else None)
    return grading.extract_flexible(text)


def extract(fmt: Format, text: str | None, kind: str, answer_type: str = "number") -> str | None:
    """The strict or flexible prediction of a completion for an answer of this type. Numbers go through the
    format's own extractors; other answers are read as text from the format's marker (whose own pattern
    may capture digits only), strict within the format's strict region."""
    if answer_type == "number":
        return fmt.extract_strict(text) if kind == "strict" else fmt.extract_flexible(text)
    if kind == "strict":
        return raw_strict(fmt, fmt.strict_region(grading.answer_text(text)))
    return _raw_flexible(fmt, text, answer_type)


def match(pred: str | None, gold: str | None, answer_type: str = "number") -> bool:
    """The verdict for a prediction against a gold answer of this type."""
    if pred is None:
        return False
    if answer_type == "no_answer":
        return says_unanswerable(pred)
    if answer_type == "text":
        return _text_match(pred, gold)
    return grading.answers_match(pred, gold, answer_type=answer_type)


def _text_match(pred: str, gold: str | None) -> bool:
    p, g = normalize_text(pred), normalize_text(gold)
    if not g:
        return False
    return p == g or (p.startswith(g) and not p[len(g)].isalnum())


def read_gold(value: Any, *, text: bool = False, none: bool = False) -> tuple[str, str] | None:
    """(gold, answer_type) of a raw gold value, or None when it is not usable.

    A number, possibly with a bracketed unit ("9 (apples)"), is a number; with `text`, anything
    else non-empty is text; with `none`, a missing gold (null, "", "None") means no_answer."""
    raw = grading.answer_text(value)
    if raw in ("", "None", "none", "null"):
        return (NO_ANSWER, "no_answer") if none else None
    bare = _UNIT_RE.sub("", raw).strip()
    if bare and grading.is_plain_number(bare):
        return grading.normalize(bare) or bare, "number"
    if text:
        return raw, "text"
    return None
