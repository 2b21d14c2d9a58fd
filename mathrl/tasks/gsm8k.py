"""GSM8K (openai/gsm8k): grade-school word problems; gold = the number after '####'.

Loads from a local directory (--data-dir or MATHRL_DATA_DIR) holding `train.jsonl`/`test.jsonl`
(and `*_socratic.jsonl`), or the hub's parquet layout (`main/test-*.parquet`), or the parent of such a
`gsm8k/` folder (the layout of a suite's data directory); otherwise from the hub through `datasets`.

Splits: `test` (1,319), `validation` and `train`. GSM8K publishes no validation split: here it is the
fixed slice of the train file whose questions hash into bucket 0 of 15 (`base.held_for_validation`;
465 questions of the 7,473), and `train` is the other 7,008, so training never sees a validation
question. Sample ids keep the train file's line (`gsm8k-main-validation-<row>`).
"""

from __future__ import annotations

import re
from pathlib import Path

from mathrl import grading
from mathrl.errors import MathrlError
from mathrl.files import read_records
from mathrl.tasks.base import Sample, Task, data_dir, held_for_validation, load_hub, register, split_answer

HUB_ID = "openai/gsm8k"


def clean_solution(text: str) -> str:
    """Solution text without calculator annotations (<<4*3=12>>), which models need not imitate."""
    return grading.CALC_RE.sub("", text)


@register("gsm8k")
class GSM8K(Task):
    configs = ("main", "socratic")
    splits = ("train", "validation", "test")

    def _local_files(self, root: Path, split: str) -> list[Path]:
        stem = split if self.config == "main" else f"{split}_socratic"
        # root is the GSM8K folder itself, or (as for a suite) the parent holding a gsm8k/ folder
        candidates = [root / f"{stem}.jsonl", root / f"{stem}.json", root / self.config / f"{split}.jsonl",
                      root / "gsm8k" / f"{stem}.jsonl"]
        candidates += sorted((root / self.config).glob(f"{split}-*.parquet"))
        return [p for p in candidates if p.exists()]

    def _rows(self, split: str) -> list[tuple[str, int, dict]]:
        root = data_dir(self.options.get("data_dir"))
        if root is not None:
            files = self._local_files(root, split)
            if not files:
                raise MathrlError(
                    f"gsm8k ({self.config}): no {split} split in {root} (looked for "
                    f"{'train' if split == 'train' else 'test'}{'' if self.config == 'main' else '_socratic'}.jsonl "
                    f"or {self.config}/{split}-*.parquet)"
                )
            self.source = {"path": str(files[0])}
            return [(str(files[0]), n, row) for n, row in read_records(files[0])]
        self.source = {"hub": HUB_ID, "hub_split": split}
        rows = load_hub(HUB_ID, self.config, split, "gsm8k",
                        "point --data-dir or MATHRL_DATA_DIR at a directory with train.jsonl and test.jsonl")
        return [(HUB_ID, i + 1, row) for i, row in enumerate(rows)]

    def describe(self) -> dict:
        return super().describe() | {"hub_id": HUB_ID, "hub_configs": [self.config], "licence": "MIT"}

    def load_shots(self, evaluated_split: str = "test") -> list[Sample]:
        """Shots for a test evaluation come from the whole train file, in its order, as lm-eval draws them
        (its `first_n` and seeded samplers index the published split); a validation evaluation takes them
        from `train` only, so no validation question is ever its own exemplar."""
        return self.load_train() if evaluated_split == "validation" else self._load("train", keep=None)

    def load_split(self, split: str) -> list[Sample]:
        return self._load("train", keep=False) if split == "train" else (
            self._load("train", keep=True, name="validation") if split == "validation" else self._load(split, keep=None))

    def _load(self, file_split: str, keep: bool | None, name: str | None = None) -> list[Sample]:
        """Rows of `file_split`'s file: all (keep None), or those held (True) / not held (False) for validation."""
        split, samples = name or file_split, []
        for source, line, row in self._rows(file_split):
            if keep is not None and keep != held_for_validation(str(row.get("question", ""))):
                continue
            if "question" not in row or "answer" not in row:
                missing = "question" if "question" not in row else "answer"
                raise MathrlError(f"{source}:{line}: missing field {missing!r}")
            solution, final = split_answer(str(row["answer"]))
            gold = grading.normalize(final) if final else None
            if gold is None:
                raise MathrlError(f"{source}:{line}: answer has no '#### <number>' final answer")
            samples.append(
                Sample(
                    id=f"gsm8k-{self.config}-{split}-{line - 1}",
                    question=str(row["question"]).strip(),
                    answer=gold,
                    solution=clean_solution(solution),
                    meta={"raw_answer": str(row["answer"])},
                )
            )
        return samples
