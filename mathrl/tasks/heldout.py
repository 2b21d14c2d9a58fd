"""Held-out math test sets, one table row each: SVAMP, GSM-Hard, ASDiv, MAWPS, GSM-Plus, MATH-500, MATH.

Every task loads from the hub through `datasets` by default (the dataset id, config and split are
in `SPECS` and in `describe()`, so in summary.json), or from a local directory (--data-dir or
MATHRL_DATA_DIR) holding `DIR/<task>/test.jsonl` (a suite's data directory: one folder per task) or
`DIR/test.jsonl` when DIR is the task's own folder (named as the task or one of its aliases).
`.json` lists and `.parquet` files are read too.

Fields are mapped by name: question = the first of question/problem/input, after Body/body when
there is one (SVAMP, ASDiv: "Body Question"); gold = the first of answer/target/Answer/result (MATH:
the last \\boxed{} of the reference solution, as lm-eval's hendrycks_math does); solution = the
`solution` field when present. A malformed row is a one-line error naming file:line and the field.

Gold answers are read by `answers.read_gold`: numbers (a bracketed unit dropped: ASDiv "9 (apples)")
are `number`; ASDiv's and GSM-Plus's other golds are `text`; GSM-Plus's missing golds ("critical
thinking" items) are `no_answer`; every MATH / MATH-500 gold is `math` (numbers included). `--task-arg
exclude=text,no_answer` drops those kinds instead (counted in summary.json under treatments).

Simplified: ids are the dataset's own id field where it has one, else the row position (counted
before `exclude=` drops rows; `doc_ids` keeps every row's id in order, for lm-eval's doc_id), so a
local copy must keep the hub's row order for ids to agree across the two sources. Only the test split is
offered (MATH also has train), as these sets exist to measure generalisation, not to train on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl import grading
from mathrl.errors import MathrlError
from mathrl.files import read_records
from mathrl.grading.answers import read_gold
from mathrl.tasks.base import Sample, Task, data_dir, load_hub, register

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


@dataclass(frozen=True)
class Spec:
    name: str
    title: str  # one line for `mathrl tasks`
    hub_id: str
    hub_split: str  # the hub split holding the test set (GSM-Hard has only "train", ASDiv "validation")
    licence: str
    question: tuple[str, ...] = ("question", "Question", "problem", "input")
    body: tuple[str, ...] = ("Body", "body")
    gold: tuple[str, ...] = ("answer", "target", "Answer", "result", "result_float")
    gold_from_solution: bool = False  # MATH: the last \boxed{} of `solution`
    answer_type: str = "number"
    text_golds: bool = False  # golds that are not numbers are kept as text (else: an error)
    no_answer_golds: bool = False  # a missing gold means "cannot be answered"
    id_field: str | None = None
    meta: dict[str, tuple[str, ...]] = field(default_factory=dict)  # meta key → source fields
    default_format: str = "gsm8k"
    aliases: tuple[str, ...] = ()  # other names of the task's own data folder


SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("svamp", "SVAMP: one-step word problems with varied structure (Patel et al. 2021)",
         "ChilleD/SVAMP", "test", "MIT", id_field="ID", meta={"problem_type": ("Type",)}),
    Spec("gsm_hard", "GSM-Hard: GSM8K with larger, rarer numbers (Gao et al. 2022, PAL)",
         "reasoning-machines/gsm-hard", "train", "MIT", aliases=("gsm-hard", "gsmhard")),
    Spec("asdiv", "ASDiv: diverse elementary word problems; some golds are text (Miao et al. 2020)",
         "EleutherAI/asdiv", "validation", "CC BY-NC 4.0", text_golds=True, meta={"problem_type": ("solution_type",)}),
    Spec("mawps", "MAWPS: elementary word problems, Calc-X test split (Koncel-Kedziorski et al. 2016)",
         "MU-NLPC/Calc-mawps", "test", "MIT (Calc-X release; check upstream MAWPS sources)", id_field="id"),
    Spec("gsm_plus", "GSM-Plus: eight perturbations of every GSM8K test question (Li et al. 2024)",
         "qintongli/GSM-Plus", "test", "CC BY-SA 4.0", text_golds=True, no_answer_golds=True,
         meta={"perturbation_type": ("perturbation_type",)}, aliases=("gsm-plus", "gsmplus")),
    Spec("math500", "MATH-500: the 500-problem MATH test subset of Lightman et al. 2023",
         "HuggingFaceH4/MATH-500", "test", "MIT", answer_type="math", id_field="unique_id",
         meta={"level": ("level",), "subject": ("subject",)}, default_format="boxed", aliases=("math-500", "math_500")),
    Spec("math", "MATH: 5,000 competition problems, 7 subjects, levels 1-5 (Hendrycks et al. 2021)",
         "EleutherAI/hendrycks_math", "test", "MIT", answer_type="math", gold_from_solution=True, id_field="unique_id",
         meta={"level": ("level",), "subject": ("type", "subject")}, default_format="boxed", aliases=("hendrycks_math",)),
)}


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in row), None)


def last_boxed(solution: str) -> str | None:
    """The last \\boxed{...} (or "\\boxed 5") of a worked solution, nested braces allowed."""
    boxed = grading._boxed_contents(solution)  # noqa: SLF001 - the one nesting-safe reader
    spaced = list(re.finditer(r"\\boxed ([^\s$]+)", solution))
    if spaced and (not boxed or spaced[-1].start() > solution.rfind("\\boxed{")):
        return spaced[-1].group(1)
    return boxed[-1].strip() if boxed else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z]+", "_", text.lower().replace("&", "and")).strip("_")


def _level(value: Any) -> Any:
    """MATH writes "Level 3", MATH-500 writes 3: both become 3 ("Level ?" stays as it is)."""
    m = re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", str(value))
    return int(m.group(1)) if m else value


class HeldoutTask(Task):
    """One table row of SPECS; the subclasses below only bind `spec`."""

    spec: Spec
    splits = ("test",)

    def __init__(self, config: str | None = None, **options: Any):
        super().__init__(config, **options)
        excluded = options.get("exclude") or ()
        self.exclude = set(excluded.split(",") if isinstance(excluded, str) else excluded)
        bad = self.exclude - {"text", "no_answer", "math", "number"}
        if bad:
            raise MathrlError(f"task {self.name}: exclude={','.join(sorted(bad))}? choose from text, no_answer, math, number")

    # -- where the rows come from
    def hub_parts(self) -> list[tuple[str | None, str]]:
        """(hub config, hub split) pairs whose rows make up the test set."""
        return [(None, self.spec.hub_split)]

    def local_stem(self) -> str:
        return "test"

    def keep_row(self, row: dict[str, Any]) -> bool:
        return True

    def _local_file(self, root: Path) -> Path:
        stem, names = self.local_stem(), {self.name, *self.spec.aliases}
        folders = [root / self.name] + [root / a for a in self.spec.aliases]
        if root.name.lower() in names:
            folders.insert(0, root)
        for folder in folders:
            for suffix in (".jsonl", ".json", ".parquet"):
                if (folder / f"{stem}{suffix}").exists():
                    return folder / f"{stem}{suffix}"
        raise MathrlError(f"{self.name}: no {stem} data in {root} (looked for {root / self.name / (stem + '.jsonl')}, "
                          f"or {stem}.jsonl in {root} when that folder is named {self.name})")

    def _rows(self) -> list[tuple[str, int, dict[str, Any]]]:
        root = data_dir(self.options.get("data_dir"))
        if root is not None:
            path = self._local_file(root)
            self.source = {"path": str(path)}
            return [(str(path), n, row) for n, row in read_records(path)]
        parts = self.hub_parts()
        self.source = {"hub": self.spec.hub_id}
        advice = f"point --data-dir or MATHRL_DATA_DIR at a directory with {self.name}/{self.local_stem()}.jsonl"
        out = []
        for config, split in parts:
            out += [(f"{self.spec.hub_id}:{config or split}", i + 1, row)
                    for i, row in enumerate(load_hub(self.spec.hub_id, config, split, self.name, advice))]
        return out

    # -- one row → one sample
    def _question(self, where: str, row: dict[str, Any]) -> str:
        qkey = _first(row, self.spec.question)
        if qkey is None or row[qkey] in (None, ""):
            raise MathrlError(f"{where}: missing field {qkey or self.spec.question[0]!r} (or {', '.join(self.spec.question[1:])})")
        question = str(row[qkey]).strip()
        bkey = _first(row, self.spec.body)
        if bkey is not None and row[bkey]:
            question = f"{str(row[bkey]).strip()} {question}"
        return question

    def _gold(self, where: str, row: dict[str, Any]) -> tuple[str, str, str]:
        """(gold, answer type, the gold as the dataset writes it)."""
        spec, gkey = self.spec, "solution"
        if spec.gold_from_solution:
            if not row.get("solution"):
                raise MathrlError(f"{where}: missing field 'solution'")
            raw = last_boxed(str(row["solution"]))
            if raw is None:
                raise MathrlError(f"{where}: field 'solution' has no \\boxed{{}} final answer")
        else:
            gkey = _first(row, spec.gold)
            if gkey is None:
                raise MathrlError(f"{where}: missing field {spec.gold[0]!r} (or {', '.join(spec.gold[1:])})")
            raw = row[gkey]
            if gkey == "result" and not grading.is_plain_number(grading.answer_text(raw)) and "result_float" in row:
                raw = row["result_float"]  # Calc-X writes some results as expressions; the float is the value
        read = self.read_gold(raw)
        if read is None:
            text = grading.answer_text(raw)
            raise MathrlError(f"{where}: field {gkey!r} {'is empty' if text == '' else repr(text[:40]) + ' is not a number'}")
        return (*read, grading.answer_text(raw))

    def read_gold(self, value: Any) -> tuple[str, str] | None:
        if self.spec.answer_type == "math":
            # kept as written ("\\frac{5}{6}", not 0.833333); numeric golds too are math: a prediction
            # "\\sqrt{2}" must not be read as its first number when the gold is 2
            text = grading.answer_text(value)
            return (text, "math") if text else None
        return read_gold(value, text=self.spec.text_golds, none=self.spec.no_answer_golds)

    def load_split(self, split: str) -> list[Sample]:
        samples, self.excluded, self.doc_ids, self.dropped = [], {}, [], {}
        prefix = self.name if self.config == "default" else f"{self.name}-{self.config}"
        for index, (source, line, row) in enumerate(r for r in self._rows() if self.keep_row(r[2])):
            where = f"{source}:{line}"
            question = self._question(where, row)
            gold, kind, raw = self._gold(where, row)
            ident = row.get(self.spec.id_field) if self.spec.id_field else None
            sample_id = f"{prefix}-{ident if ident not in (None, '') else index}"
            self.doc_ids.append(sample_id)
            if kind in self.exclude:
                self.excluded[kind] = self.excluded.get(kind, 0) + 1
                self.dropped[sample_id] = kind
                continue
            meta: dict[str, Any] = {"answer_type": kind, "raw_answer": raw}
            for key, fields in self.spec.meta.items():
                src = _first(row, fields)
                if src is not None and row[src] is not None:
                    meta[key] = _level(row[src]) if key == "level" else row[src]
            samples.append(Sample(id=sample_id, question=question,
                                  answer=gold, solution=str(row["solution"]).strip() if row.get("solution") else None,
                                  meta=meta))
        if not samples and not self.excluded:
            raise MathrlError(f"{self.name} ({self.config}): no samples in {self.source.get('path') or self.spec.hub_id}")
        return samples

    def describe(self) -> dict[str, Any]:
        parts = self.hub_parts()
        return super().describe() | {"hub_id": self.spec.hub_id, "hub_configs": [c for c, _ in parts],
                                     "hub_split": parts[0][1], "licence": self.spec.licence}


def _make(spec: Spec, base: type[HeldoutTask] = HeldoutTask, **attrs: Any) -> type[HeldoutTask]:
    cls = type(f"{spec.name.title().replace('_', '')}Task", (base,), {
        "spec": spec, "answer_type": spec.answer_type, "default_format": spec.default_format,
        "__doc__": spec.title, "__module__": __name__, **attrs})
    return register(spec.name)(cls)


class _GSMPlus(HeldoutTask):
    """Configs: test (10,552 questions) and testmini (2,400), the dataset's two splits."""

    def hub_parts(self) -> list[tuple[str | None, str]]:
        return [(None, self.config)]

    def local_stem(self) -> str:
        return self.config


class _MATH(HeldoutTask):
    """Config all (the 5,000 test problems) or one subject; hub: one dataset config per subject."""

    def hub_parts(self) -> list[tuple[str | None, str]]:
        return [(s, "test") for s in (MATH_SUBJECTS if self.config == "all" else (self.config,))]

    def keep_row(self, row: dict[str, Any]) -> bool:
        subject = row.get("type") or row.get("subject")
        return self.config == "all" or (subject is not None and _slug(str(subject)) == self.config)


for _spec in SPECS.values():
    if _spec.name == "gsm_plus":
        _make(_spec, _GSMPlus, configs=("test", "testmini"))
    elif _spec.name == "math":
        _make(_spec, _MATH, configs=("all", *MATH_SUBJECTS))
    else:
        _make(_spec)
