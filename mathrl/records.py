"""Typed records: one row of an evaluation's results.jsonl, and the accuracy with its interval.

`ResultRow` is what `mathrl eval` writes (one line per question × sample) and what the report,
`mathrl regrade` and resumption read back. Required fields are checked on reading, so a file from
another tool or an older version fails with the file, line and missing field named, not deep inside
a statistic. Optional fields: `answer_type` (files before it existed hold numbers) and the task's
breakdown keys (`level`, `subject`, `perturbation_type`), written only when the sample has them.

`accuracy_interval` is the one accuracy-with-interval function: summary.json, the runner's table and
the report's comparison all give the same number and interval for the same rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np

from mathrl.errors import MathrlError


@dataclass
class ResultRow:
    id: str  # the task's question id (stable across runs: the key for pairing and resuming)
    sample_idx: int  # 0 … completions_per_question - 1
    question: str
    gold: str | None  # the normalised gold answer
    prompt: str  # the exact text put to the model
    completion: str  # as generated, before cutting at stop strings
    pred_strict: str | None  # the format's answer marker read as the answer type; None: no answer
    pred_flexible: str | None  # the last number (or answer-type value) anywhere in the completion
    correct_strict: bool
    correct_flexible: bool
    has_reasoning: bool  # the format's reasoning section is there (tags/think: its markers)
    has_answer: bool  # the strict extractor found an answer
    num_tokens: int  # generated tokens
    finish_reason: str  # stop (EOS or stop string) | length (max_new_tokens)
    answer_type: str = "number"  # number | math | text
    level: Any = None
    subject: Any = None
    perturbation_type: Any = None

    OPTIONAL = ("level", "subject", "perturbation_type")

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        for key in self.OPTIONAL:
            if row[key] is None:
                del row[key]
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "results.jsonl") -> "ResultRow":
        names = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.name != "answer_type" and f.name not in cls.OPTIONAL]
        missing = [k for k in required if k not in row]
        if missing:
            raise MathrlError(f"{where}: a result row without {', '.join(missing)} (not written by `mathrl eval`?)")
        for key in ("correct_strict", "correct_flexible"):
            if not isinstance(row[key], bool):
                raise MathrlError(f"{where}: {key} must be true or false, got {row[key]!r}")
        return cls(**{k: v for k, v in row.items() if k in names})


def wilson_interval(k: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score interval of k successes in n independent trials (one verdict per question)."""
    if n == 0:
        return [0.0, 0.0]
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def accuracy_interval(per_question: Sequence[Sequence[bool]], z: float = 1.96) -> tuple[float, list[float], str]:
    """(accuracy over all completions, its 95% interval, the interval's name), the questions being the units.

    One completion per question: Wilson. Several (pass@k runs): samples of one question are correlated,
    so the interval is over questions — the normal interval of the mean of per-question accuracies
    (a cluster-robust interval); treating the n x k samples as independent would make it too narrow."""
    groups = [list(map(bool, g)) for g in per_question if len(g)]
    if not groups:
        return 0.0, [0.0, 0.0], "none"
    total = sum(len(g) for g in groups)
    accuracy = sum(sum(g) for g in groups) / total
    if all(len(g) == 1 for g in groups):
        return accuracy, wilson_interval(sum(g[0] for g in groups), len(groups), z), "wilson"
    means = np.array([sum(g) / len(g) for g in groups])
    se = float(means.std(ddof=1) / math.sqrt(len(means))) if len(means) > 1 else 0.0
    return accuracy, [round(max(0.0, accuracy - z * se), 4), round(min(1.0, accuracy + z * se), 4)], "question_cluster_normal"
