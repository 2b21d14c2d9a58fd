"""One verdict for a completion: what evaluation records, `mathrl grade` prints and rewards pay.

`grade_completion` cuts the text at the protocol's stop strings (where evaluation's generation ends)
and asks the Task to grade it (`Task.grade`: the Format's strict and flexible extractors read as the
task's answer type, then `Task.check_answer`, so a task that overrides either grades training and
evaluation alike). The correctness rewards call this function, so for every completion and protocol
the reward equals the evaluation verdict (property-tested in tests/test_verdict.py).
"""

from __future__ import annotations

from typing import Any, Sequence

from mathrl.engine.decoding import cut_at_stop
from mathrl.prompts.formats import Format


def grade_completion(fmt: Format, task: Any, completion: str, gold: str | None, stops: Sequence[str] = (),
                     answer_type: str | None = None) -> dict[str, Any]:
    """pred_strict, pred_flexible, correct_strict, correct_flexible, has_reasoning, has_answer.

    `task` None grades as the base Task does (numbers, `grading.answers_match`); `answer_type` None: the
    task's own."""
    if task is None:
        from mathrl.tasks.base import Task

        task = Task()
    text, _ = cut_at_stop(completion or "", stops)
    verdict = task.grade(fmt, text, gold, answer_type)
    return verdict | {"has_reasoning": fmt.has_reasoning(text), "has_answer": verdict["pred_strict"] is not None}
