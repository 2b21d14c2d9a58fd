"""What both graders share (`grading` for numbers and extraction, `grading.math_answers` for MATH-style
answers), so that neither imports the other's internals: how long a number may be, and how a
phrase is reduced before words are compared."""

from __future__ import annotations

import re

# Numbers longer than this are not parsed: they are never right answers and Decimal/Fraction work
# on them grows with their length (a model can emit thousands of digits).
MAX_DIGITS = 64

TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox)\s*\{([^{}]*)\}")


def text_key(text: str) -> str:
    """A phrase reduced for comparison: \\text{} unwrapped, lower case, punctuation and extra spaces gone."""
    text = TEXT_COMMAND.sub(r"\1", text).lower()
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())
