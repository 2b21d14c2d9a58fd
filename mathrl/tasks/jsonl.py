"""Any user file of numeric-answer problems (SVAMP, GSM-Hard, your own): JSONL, JSON list or parquet.

Options (`--task-arg key=value`): `path` (test file, required), `train_path`, `question_field`
(default `question`), `answer_field` (default `answer`), `solution_field` (optional). An answer
written GSM8K-style ('... #### 42') is split into solution and final answer.
"""

from __future__ import annotations

from mathrl import grading
from mathrl.errors import MathrlError
from mathrl.files import read_records
from mathrl.tasks.base import Sample, Task, register, split_answer
from mathrl.tasks.gsm8k import clean_solution


@register("jsonl")
class JsonlTask(Task):
    configs = ("*",)

    def load_split(self, split: str) -> list[Sample]:
        key = "path" if split == "test" else "train_path"
        path = self.options.get(key) or (self.config if split == "test" and self.config != "*" else None)
        if not path:
            raise MathrlError(f"task jsonl: give the {split} file with --task-arg {key}=FILE")
        qf = self.options.get("question_field", "question")
        af = self.options.get("answer_field", "answer")
        sf = self.options.get("solution_field")
        samples = []
        for line, row in read_records(path):
            for f in (qf, af):
                if f not in row or row[f] in (None, ""):
                    raise MathrlError(f"{path}:{line}: missing field {f!r}")
            raw = grading.answer_text(row[af])
            solution, final = split_answer(raw)
            final_text = final if final is not None else raw
            gold = grading.normalize(final_text) if grading.is_plain_number(final_text) else None
            if gold is None:
                raise MathrlError(f"{path}:{line}: answer {final_text[:40]!r} is not a number")
            if sf and row.get(sf):
                solution = str(row[sf])
            elif final is None:
                solution = None
            samples.append(
                Sample(
                    id=str(row.get("id", f"{split}-{line - 1}")),
                    question=str(row[qf]).strip(),
                    answer=gold,
                    solution=clean_solution(solution) if solution else None,
                    meta={"raw_answer": raw} if final is not None else {},
                )
            )
        return samples
