"""Turn any text into an answer, and compare it with a gold answer.

This module is the single source of truth for answers: evaluation, `mathrl grade` and every RL
reward call it. Nothing here raises on any input string, and nothing evaluates model text as code:
GSM8K's calculator strings such as ``<<3*4=12>>`` are read as text, never computed.

Answer types (the `answer_type` argument; "number" is the default everywhere):

- ``number``: one number. Read in these notations: ``18``, ``-7`` / ``−7``, ``+3``, ``$18``,
  ``-$5`` / ``$-5``, ``1,000`` / ``1{,}000`` / ``1,\\!000`` / ``1\\,000`` / ``1,00,000`` (Indian),
  ``2.5`` / ``.5``, ``3e5`` / ``1E-3``, ``3/4``, ``\\frac{3}{4}`` / ``\\dfrac34`` / ``\\tfrac 3 4``, mixed
  numbers ``5 1/2`` and ``3\\frac{1}{2}``, ``50%`` (read as 50). Integer golds compare exactly; a
  non-integer gold matches a prediction within half a unit of the 6th decimal (``0.333333`` is 1/3).
- ``math``: a MATH-style LaTeX answer, kept as written by the extractors and compared by
  `mathrl.grading.math_answers` (numbers as numbers, else Math-Verify in a time-limited worker process).
- ``text``: a word or phrase, compared after lower-casing and dropping punctuation and spacing.

Simplified on purpose, each a reading a person could dispute:
- A sign parted from its number by a space (``- 5``) counts only at the start of an answer string
  (after a strict marker, or what `normalize` is given); in running text ``10 - 5`` is a subtraction.
- ``5 1/2`` is a mixed number only when the fraction is proper and the gap is 1-2 spaces or tabs;
  ``6 12/4`` is 6 then 3.
- Comma groups: ``1,2,3`` and ``3,14`` are lists (each part its own number; no European decimals);
  a digit-comma run with a group of 3+ digits that is no valid grouping (``1,2345``, ``1,234,56``,
  ``1234,567``) is no number at all, rather than a truncated one.
- Scientific notation needs digits on both sides of ``e`` and no letter after (``3 eggs``, ``5e``,
  ``3e5x`` are not); exponents have at most 2 digits. ``3 \\times 10^5`` is read as 3, then 10, then 5.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Iterator

from mathrl.errors import MathrlError
from mathrl.grading.base import MAX_DIGITS, text_key

ANSWER_TYPES = ("number", "math", "text")
# Half a unit of the 6th decimal: the rounding `format_number` applies to non-integers, so an
# extracted "0.333333" still matches a gold of 1/3. Absolute, so a large gold gets no slack.
DECIMAL_TOL = Fraction(1, 2 * 10**6)

# The number grammar, written once: NUMBER_RE (named groups, for reading values) and STRICT_NUMBER
# (the same pattern unnamed, as the formats' strict capture group) are both built from it.
_SEP = r"(?:,|\{,\}|,\\!|\\,)"  # thousands separators: 1,000  1{,}000  1,\!000  1\,000
# Western groups of 3, or Indian 2s then a 3 (bounded: an unbounded run would rescan "11,11,11…"
# once per item, quadratic); anything else is a bare digit run, checked by `_read`.
_INT = rf"\d{{1,3}}(?:{_SEP}\d{{3}})+(?!\d)|\d{{1,2}}(?:{_SEP}\d{{2}}){{1,6}}{_SEP}\d{{3}}(?!\d)|\d+"
_ARG = r"\{\s*[-−]?\d+(?:\.\d+)?\s*\}|\d"  # \frac{12}{5} or \frac12 (single digits without braces)
_BODY = (
    rf"(?P<lw>\d+ ?)?\\[dt]?frac\s*(?P<ln>{_ARG})\s*(?P<ld>{_ARG})"
    r"|(?<![\d/.])(?P<sw>\d+[ \t]{1,2})?(?P<sn>\d+)\s*/\s*(?P<sd>\d+)(?![\d/]|\.\d)"
    rf"|(?P<num>(?:(?P<int>{_INT})(?:\.\d+)?|\.\d+)(?:[eE][-+−]?\d+(?![A-Za-z]))?)"
)
# A sign glued to its number, not a hyphen after a word, digit or bracket ("3-5", "item-5" give 5);
# optionally currency, and a sign after it ("$-5"). Fractions are tried before plain numbers so
# "3/4" is seen whole.
NUMBER_RE = re.compile(r"(?P<sign>(?<![\w)\]}])[-−+])?(?:(?P<cur>\$\s?)(?P<sign2>[-−])?)?(?:" + _BODY + ")")
# Strict capture for "#### N" / "The answer is N": also "- 5" (sign, one space, number); never the
# front of a longer digit-comma run ("#### 1,2345" has no strict answer rather than a truncated one).
STRICT_NUMBER = r"((?:[-−+]\s)?" + re.sub(r"\(\?P<\w+>", "(?:", NUMBER_RE.pattern) + rf")(?!\d|{_SEP}\d)"
# A regex for the boxed format's rewards (they need one); the extractors read any strict pattern that
# starts with \\boxed with the stack parser below instead, since no regex matches any nesting depth.
BOXED_PATTERN = r"\\(?:boxed|fbox)\s*\{((?:[^{}]|\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\})*)\}"
# GSM8K calculator annotations: <<48/2=24>>. Dropped before the flexible extractor looks for the
# last number, so "<<2*3=6>>" followed by nothing does not yield the 6 inside the brackets alone.
CALC_RE = re.compile(r"<<[^<>]{0,200}>>")

_NEXT_GROUP = re.compile(rf"{_SEP}(\d+)")
_RUN = re.compile(rf"(?:{_SEP}\d+)+(?:\.\d+)?")
_HAS_SEP = re.compile(_SEP)
_LEADING_SIGN = re.compile(r"^[\s{]*([-−+])\s+(?=[$\d.\\])")  # "- 5", also inside \boxed{{- 5}}
_PERCENT = re.compile(r"\s*\\?%$")


def _check_type(answer_type: str) -> None:
    if answer_type not in ANSWER_TYPES:
        raise MathrlError(f"unknown answer_type {answer_type!r}; choose one of: {', '.join(ANSWER_TYPES)}")


def _decimal(text: str) -> Fraction | None:
    for sep in ("{,}", ",\\!", "\\,", ","):
        text = text.replace(sep, "")
    text = text.replace("−", "-").replace("{", "").replace("}", "").strip()
    mantissa, _, exp = text.lower().partition("e")
    if len(mantissa) > MAX_DIGITS or len(exp.lstrip("+-")) > 2:
        return None
    try:
        return Fraction(Decimal(text))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None


def _read_fraction(m: re.Match, whole: str, num: str, den: str) -> tuple[Fraction | None, int]:
    n, d = _decimal(m.group(num)), _decimal(m.group(den))
    if n is None or d is None or d == 0 or len(m.group(0)) > 3 * MAX_DIGITS:
        return None, m.end()
    if m.group(whole) is None:
        return n / d, m.end()
    if 0 < n < d and n.denominator == d.denominator == 1:  # a proper fraction: a mixed number
        return int(m.group(whole)) + n / d, m.end()
    return _decimal(m.group(whole)), m.end(whole)  # "6 12/4": the 6 alone; 12/4 is read next


def _read(m: re.Match, text: str) -> tuple[Fraction | None, int]:
    """The value of a NUMBER_RE match (None: unreadable), and where the next number may start."""
    negative = sum(1 for g in ("sign", "sign2") if (m.group(g) or "+") in "-−") % 2 == 1
    if m.group("ln") is not None:
        value, end = _read_fraction(m, "lw", "ln", "ld")
    elif m.group("sn") is not None:
        value, end = _read_fraction(m, "sw", "sn", "sd")
    else:
        value, end = _decimal(m.group("num")), m.end()
        int_part = m.group("int")
        nxt = _NEXT_GROUP.match(text, m.end("int")) if int_part is not None else None
        if nxt and (len(nxt.group(1)) >= 3 or _HAS_SEP.search(int_part)):  # "1,2345", "1,234,56"
            return None, _RUN.match(text, m.end("int")).end()
    return (None if value is None else -value if negative else value), end


def _scan(text: str) -> Iterator[tuple[int, int, Fraction | None]]:
    """(start, end, value) of every number in `text`, left to right; value None when unreadable."""
    pos = 0
    while (m := NUMBER_RE.search(text, pos)) is not None:
        value, end = _read(m, text)
        yield m.start(), end, value
        pos = max(end, m.start() + 1)


def format_number(value: Fraction) -> str:
    """Canonical text for a number: `18`, `-2.5`, `0.333333` (6 significant decimals at most)."""
    if value.denominator == 1:
        return str(value.numerator)
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    text = format(exact.quantize(Decimal("0.000001")) if abs(exact) < 10**12 else exact, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


_BOXED_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...} / \\fbox{...}, nested braces allowed, in order of opening.

    One pass with a stack, so unclosed or deeply nested braces cost linear time."""
    stack: list[tuple[bool, int]] = []
    found: list[tuple[int, str]] = []
    for m in _BOXED_TOKENS.finditer(text):
        tok = m.group(0)
        if tok == "}":
            if stack:
                boxed, start = stack.pop()
                if boxed:
                    found.append((start, text[start : m.start()]))
        else:
            stack.append((tok != "{", m.end()))
    return [content for _, content in sorted(found)]


def _as_text(value: object) -> str:
    """Model output and gold answers arrive as str, int, float or None from various harnesses.
    Floats are written in positional notation: str(1e-05) would read as 1."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return format(Decimal(repr(value)), "f")
    return str(value)


def answer_text(value: object) -> str:
    """A gold answer from a data file (string or JSON number) as text the grader reads."""
    return _as_text(value).strip()


def parse_number(text: str | None) -> Fraction | None:
    """The first number in `text` (boxed content first), or None when it is unreadable. Never raises."""
    text = _as_text(text)
    if not text:
        return None
    try:
        boxed = _boxed_contents(text)
        text = _LEADING_SIGN.sub(r"\1", boxed[-1] if boxed else text, count=1)
        return next((value for _, _, value in _scan(text)), None)
    except (RecursionError, ValueError, OverflowError, MemoryError):
        return None


def normalize(text: str | None) -> str | None:
    """Canonical number text for an answer string, or None when it holds no number."""
    value = parse_number(text)
    return None if value is None else format_number(value)


def plain_value(text: str | None) -> Fraction | None:
    """The value when `text` is one number and nothing else ('18', '-$5', '50%', '\\frac{3}{4}')."""
    text = _PERCENT.sub("", _LEADING_SIGN.sub(r"\1", _as_text(text).strip(), count=1))
    m = NUMBER_RE.fullmatch(text)
    if m is None:
        return None
    value, end = _read(m, text)
    return value if end == len(text) else None


def is_plain_number(text: str) -> bool:
    """True for '18', '-2.5', '$1,000', '50%', '3/4', '\\frac{3}{4}': one number and nothing else."""
    return plain_value(text) is not None


def _answer_text(text: str | None, answer_type: str) -> str | None:
    """An extracted answer in the form its type compares: canonical number, or stripped text."""
    if answer_type == "number":
        return normalize(text)
    text = _as_text(text).strip()
    return text or None


def extract_flexible(text: str | None, pattern: str | None = None, answer_type: str = "number") -> str | None:
    """The answer without relying on the format's marker.

    number: the last number (or the last match of `pattern`), normalised. math: the last \\boxed{}
    content, else the last number as written. text: the last \\boxed{} content, else the last
    non-empty line (simplified: no attempt to find the answer phrase inside it)."""
    _check_type(answer_type)
    text = _as_text(text)
    if not text:
        return None
    try:
        if pattern:
            matches = [m.group(0) for m in re.finditer(pattern, text)]
            return _answer_text(matches[-1], answer_type) if matches else None
        if answer_type != "number":
            boxed = _boxed_contents(text)
            if boxed:
                return _answer_text(boxed[-1], answer_type)
            if answer_type == "text":
                lines = [line for line in text.splitlines() if line.strip()]
                return _answer_text(lines[-1], answer_type) if lines else None
        text = CALC_RE.sub(" ", text)
        last = None
        for start, end, value in _scan(text):
            if value is not None:
                last = (start, end, value)
        if last is None:
            return None
        return format_number(last[2]) if answer_type == "number" else text[last[0] : last[1]].strip()
    except (RecursionError, ValueError, OverflowError, MemoryError, re.error):
        return None


def _is_boxed_pattern(pattern: str) -> bool:
    return pattern.startswith((r"\\boxed", r"\\(?:boxed|fbox)"))


def extract_strict(text: str | None, pattern: str, take: str = "last", answer_type: str = "number") -> str | None:
    """The answer inside the format's own marker (`pattern` has one capture group).

    A pattern starting with \\boxed means "the boxed answer": read with a stack parser (any nesting
    depth, \\boxed or \\fbox). number: the marker's content normalised; math/text: stripped text."""
    _check_type(answer_type)
    text = _as_text(text)
    if not text:
        return None
    try:
        if isinstance(pattern, str) and _is_boxed_pattern(pattern):
            matches = _boxed_contents(text)
        else:
            matches = [m.group(1) for m in re.finditer(pattern, text)]
    except (re.error, IndexError, TypeError, RecursionError):
        return None
    if not matches:
        return None
    return _answer_text(matches[0] if take == "first" else matches[-1], answer_type)


def numbers_equal(pred: Fraction, gold: Fraction) -> bool:
    """Integer golds exactly; non-integer golds to within half a unit of the 6th decimal."""
    if pred == gold:
        return True
    return gold.denominator != 1 and abs(pred - gold) <= DECIMAL_TOL


def answers_match(pred: str | None, gold: str | None, answer_type: str = "number") -> bool:
    """Is the prediction the gold answer? See the module docstring for each answer type's rule.

    number: a gold that is one number needs a numeric prediction (`numbers_equal`); any other gold
    (\\sqrt{2}) is compared as math."""
    _check_type(answer_type)
    if pred is None or gold is None:
        return False
    pred, gold = _as_text(pred), _as_text(gold)
    if answer_type == "text":
        key = text_key(gold)
        return bool(key) and text_key(pred) == key
    if answer_type == "number":
        g = plain_value(gold)
        if g is not None:
            p = parse_number(pred)
            return p is not None and numbers_equal(p, g)
    import mathrl.grading.math_answers as grading_math  # imported when first needed: most golds are numbers

    p, g = grading_math.clean(pred), grading_math.clean(gold)
    pv, gv = plain_value(p), plain_value(g)
    if pv is not None and gv is not None:  # two plain numbers, once the display-only LaTeX is gone
        return numbers_equal(pv, gv)
    return grading_math.math_equal(pred, gold)
