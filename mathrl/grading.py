"""Turn any text into a number-or-nothing, and compare it with a gold answer.

This module is the single source of truth for answers: evaluation, `mathrl grade` and every RL
reward call it. Nothing here raises on any input string, and nothing evaluates model text as code:
GSM8K's calculator strings such as ``<<3*4=12>>`` are read as text, never computed.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# Numbers longer than this are not parsed: they are never right answers and Decimal/Fraction work
# on them grows with their length (a model can emit thousands of digits).
MAX_DIGITS = 64
REL_TOL = 1e-6

# A number as people write it: optional sign glued to it (not a hyphen after a word or digit, so
# "3-5" gives 5; "3 - 5" gives 5 too), optional currency, digits with thousands separators or
# plain, optional decimals. The match starts at the sign, "$" or first digit, so a fraction after a
# space ("is 3/4") is seen whole by the fraction alternative, which is tried first.
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_SIGNED = rf"(?:(?<![\w\)\]])[-−+](?=[$\d.]))?(?:\$\s?)?(?:{_NUM})"
_LATEX_FRAC = r"(?P<lneg>-\s*)?\\[dt]?frac\s*\{\s*(?P<ln>-?\d+)\s*\}\s*\{\s*(?P<ld>-?\d+)\s*\}"
_SLASH_FRAC = r"(?<![\d/.])(?P<sn>-?\d+)\s*/\s*(?P<sd>\d+)(?![\d/]|\.\d)"
NUMBER_RE = re.compile(rf"{_LATEX_FRAC}|{_SLASH_FRAC}|(?P<num>{_SIGNED})")
# GSM8K calculator annotations: <<48/2=24>>. Dropped before the flexible extractor looks for the
# last number, so "<<2*3=6>>" followed by nothing does not yield the 6 inside the brackets alone.
CALC_RE = re.compile(r"<<[^<>]{0,200}>>")


def _to_fraction(token: str) -> Fraction | None:
    cleaned = token.replace(",", "").replace("$", "").replace("−", "-").replace(" ", "")
    if len(cleaned) > MAX_DIGITS:
        return None
    try:
        return Fraction(Decimal(cleaned))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None


def _match_value(m: re.Match) -> Fraction | None:
    if m.group("num") is not None:
        return _to_fraction(m.group("num"))
    if m.group("ln") is not None:
        num, den, sign = m.group("ln"), m.group("ld"), -1 if m.group("lneg") else 1
    else:
        num, den, sign = m.group("sn"), m.group("sd"), 1
    if len(num) + len(den) > MAX_DIGITS or int(den) == 0:
        return None
    return sign * Fraction(int(num), int(den))


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
    """The first number in `text` (boxed content first), or None. Never raises."""
    text = _as_text(text)
    if not text:
        return None
    try:
        boxed = _boxed_contents(text)
        if boxed:
            text = boxed[-1]
        for m in NUMBER_RE.finditer(text):
            value = _match_value(m)
            if value is not None:
                return value
    except (RecursionError, ValueError, OverflowError):
        return None
    return None


def normalize(text: str | None) -> str | None:
    """Canonical number text for an answer string, or None when it holds no number."""
    value = parse_number(text)
    return None if value is None else format_number(value)


def extract_flexible(text: str | None, pattern: str | None = None) -> str | None:
    """Last number in the completion (or the last match of `pattern`), normalised."""
    text = _as_text(text)
    if not text:
        return None
    try:
        if pattern:
            matches = [m.group(0) for m in re.finditer(pattern, text)]
            return normalize(matches[-1]) if matches else None
        text = CALC_RE.sub(" ", text)
        values = [v for v in (_match_value(m) for m in NUMBER_RE.finditer(text)) if v is not None]
        return format_number(values[-1]) if values else None
    except (RecursionError, ValueError, OverflowError, re.error):
        return None


def extract_strict(text: str | None, pattern: str, take: str = "last") -> str | None:
    """The number inside the format's own answer marker (`pattern` has one capture group)."""
    text = _as_text(text)
    if not text:
        return None
    try:
        matches = [m.group(1) for m in re.finditer(pattern, text)]
    except (re.error, IndexError):
        return None
    if not matches:
        return None
    return normalize(matches[0] if take == "first" else matches[-1])


def answers_match(pred: str | None, gold: str | None) -> bool:
    """Numeric comparison with a small relative tolerance; math-verify when gold is not a number."""
    if pred is None or gold is None:
        return False
    pred, gold = _as_text(pred), _as_text(gold)
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None and is_plain_number(gold):
        return p == g or abs(p - g) <= REL_TOL * max(1, abs(g))
    return _math_verify(pred, gold)


def is_plain_number(text: str) -> bool:
    """True for '18', '-2.5', '$1,000', '50%', '3/4', '\\frac{3}{4}': one number and nothing else."""
    text = _as_text(text).strip().rstrip("%").strip()
    m = NUMBER_RE.fullmatch(text)
    return m is not None


# math-verify parses LaTeX with sympy: huge powers or factorials can take forever, so inputs are
# capped in size and both steps get a time limit (enforced where signals work: the main thread).
_MV_MAX_CHARS = 200


def _math_verify(pred: str, gold: str) -> bool:
    if len(pred) > _MV_MAX_CHARS or len(gold) > _MV_MAX_CHARS or "!" in pred + gold or (pred + gold).count("^") > 2:
        return False
    try:
        from math_verify import parse, verify

        gold_parsed = parse(gold if "$" in gold else f"${gold}$", parsing_timeout=2)
        pred_parsed = parse(pred if "$" in pred else f"${pred}$", parsing_timeout=2)
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=2))
    except Exception:  # noqa: BLE001 - the grader must never raise on model text
        return False
