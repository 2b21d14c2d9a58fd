"""One verdict for a completion: what evaluation records, `mathrl grade` prints and rewards pay.

`grade_completion` cuts the text at the protocol's stop strings (where evaluation's generation ends),
reads the strict and flexible answers through the Format's extractors and asks the Task whether they
match its gold answer (`Task.check_answer`, so a task that overrides it grades training and
evaluation alike). The correctness rewards call this function, so for every completion and protocol
the reward equals the evaluation verdict (property-tested in tests/test_verdict.py).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from mathrl.decoding import cut_at_stop
from mathrl.formats import Format


def bounded(fmt: Format, text: str) -> str:
    """The text with what follows the last closing marker dropped, when every strict match must end with
    that marker: matches are unchanged, but `<SOLUTION>(.*?)</SOLUTION>` over thousands of unclosed
    `<SOLUTION>` otherwise scans to the end from each one (seconds on 100k characters)."""
    last = fmt.markers[-1] if fmt.markers else None
    if last and fmt.strict_pattern.endswith(re.escape(last)) and "|" not in fmt.strict_pattern:
        end = text.rfind(last)
        return text[: end + len(last)] if end >= 0 else ""
    return text


def _check(task: Any, pred: str | None, gold: str | None) -> bool:
    if task is not None:
        return bool(task.check_answer(pred, gold))
    from mathrl import grading

    return grading.answers_match(pred, gold)


def grade_completion(fmt: Format, task: Any, completion: str, gold: str | None,
                     stops: Sequence[str] = ()) -> dict[str, Any]:
    """pred_strict, pred_flexible, correct_strict, correct_flexible, has_reasoning, has_answer.

    `task` None grades with the default numeric checker (`grading.answers_match`)."""
    text, _ = cut_at_stop(completion or "", stops)
    strict = fmt.extract_strict(bounded(fmt, text))
    flexible = fmt.extract_flexible(text)
    return {
        "pred_strict": strict,
        "pred_flexible": flexible,
        "correct_strict": _check(task, strict, gold),
        "correct_flexible": _check(task, flexible, gold),
        "has_reasoning": fmt.has_reasoning(text),
        "has_answer": strict is not None,
    }
