"""`mathrl grade`: regrade completions produced anywhere (other harnesses, older runs).

Each line needs a completion; its gold answer comes either from the line itself (`answer`, else
`gold`, or --gold-field), read by the task's own gold reader (so `--task asdiv` knows "9 (apples)"
is 9 and "Mrs. Hilt" is text, `--task gsm_plus` that a missing gold means "cannot be answered"), or,
with --data-dir, from the task's test split: lines are matched to samples by `id` (mathrl's sample
id) or `doc_id` (a 0-based row position in the source test split, as lm-eval's sample logs write it,
counted before `exclude=` drops rows; a line naming a dropped row is an error), and the
sample's answer type and metadata (level, subject, perturbation type) come along, so the summary
breaks accuracy down as `mathrl eval` does. A completion may be a string or, as in lm-eval's
`resps`, a list whose first string is taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.eval.evaluate import BREAKDOWN_KEYS, breakdown
from mathrl.records import wilson_interval
from mathrl.files import iter_jsonl
from mathrl.prompts.formats import get_format
from mathrl.tasks import Sample, Task, get_task


def _completion(value: Any) -> str:
    while isinstance(value, list) and value:  # lm-eval: resps = [[text]]
        value = value[0]
    return "" if value is None or isinstance(value, list) else str(value)


def _sample_for(row: dict[str, Any], task: Task, by_id: dict[str, Sample], samples: list[Sample], where: str) -> Sample:
    """The sample a line names: by mathrl's `id`, else by lm-eval's `doc_id`, a row position in the
    task's source split counted before `exclude=` dropped rows (`task.doc_ids`). A line naming a
    dropped row is an error: its gold is not in the loaded test set."""
    ident = None if row.get("id") is None else str(row["id"])
    if ident is not None and ident in by_id:
        return by_id[ident]
    doc = row.get("doc_id")
    if isinstance(doc, int) and not isinstance(doc, bool):
        ids = task.doc_ids if task.doc_ids is not None else [s.id for s in samples]
        if not 0 <= doc < len(ids):
            raise MathrlError(f"{where}: doc_id {doc} is not a row of the task's test split (rows 0-{len(ids) - 1})")
        ident = ids[doc]
        if ident in by_id:
            return by_id[ident]
    if ident is not None and ident in task.dropped:
        named = f"doc_id {doc} ({ident})" if isinstance(doc, int) else f"id {ident}"
        raise MathrlError(f"{where}: {named} was excluded by exclude={task.dropped[ident]}; "
                          f"grade without that exclude= kind, or leave such lines out")
    raise MathrlError(f"{where}: no 'id' or 'doc_id' naming one of the task's {len(samples)} test samples")


def regrade(input: str | Path, task_name: str = "gsm8k", format_name: str = "gsm8k", *, completion_field: str = "completion",
            gold_field: str | None = None, data_dir: str | None = None, task_config: str | None = None,
            task_args: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(each line with pred_*/correct_*/answer_type added, summary)."""
    task: Task = get_task(task_name, task_config, data_dir=data_dir, **(task_args or {}))
    fmt = get_format(format_name)
    samples = task.load_test() if data_dir else []
    by_id = {s.id: s for s in samples}
    rows = []
    for line, row in iter_jsonl(input):
        where = f"{input}:{line}"
        if completion_field not in row:
            raise MathrlError(f"{where}: missing field {completion_field!r}")
        extra: dict[str, Any] = {}
        if data_dir:
            sample = _sample_for(row, task, by_id, samples, where)
            gold, kind = sample.answer, task.sample_answer_type(sample)
            extra = {"id": sample.id, "gold": gold} | {k: sample.meta[k] for k in BREAKDOWN_KEYS[:-1] if k in sample.meta}
        else:
            gf = gold_field or ("answer" if "answer" in row else "gold")
            if gf not in row:
                raise MathrlError(f"{where}: missing field {gf!r}")
            read = task.read_gold(row[gf])
            if read is None:
                raise MathrlError(f"{where}: missing field {gf!r}" if row[gf] in (None, "") else
                                  f"{where}: field {gf!r} is not a gold answer task {task.name} can grade")
            gold, kind = read
        verdict = task.grade(fmt, _completion(row[completion_field]), gold, kind)
        rows.append(row | extra | verdict | {"answer_type": kind})
    return rows, summarize_grades(rows, task)


def summarize_grades(rows: list[dict[str, Any]], task: Task) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {"n": n}
    for kind in ("strict", "flexible"):
        k = sum(bool(r[f"correct_{kind}"]) for r in rows)
        out[f"accuracy_{kind}"] = round(k / n, 4) if n else 0.0
        out[f"ci95_{kind}"] = wilson_interval(k, n)
    rows = [r | {"id": r.get("id", i)} for i, r in enumerate(rows)]  # breakdown counts questions by id
    out.update(breakdown(rows))
    if "treatments" in out and task.excluded:
        out["treatments"]["excluded"] = sum(task.excluded.values())
    return out


def describe_treatments(summary: dict[str, Any]) -> str:
    """One line: how many items each rule judged and how they scored, e.g. for `mathrl grade`."""
    counts = summary.get("treatments", {})
    by_type = summary.get("accuracy_by", {}).get("answer_type", {})
    parts = []
    for kind, n in counts.items():
        if kind == "excluded":
            parts.append(f"{n} excluded")
        elif kind in by_type:
            parts.append(f"{n} {kind} (strict {by_type[kind]['strict']:.1%}, flexible {by_type[kind]['flexible']:.1%})")
        else:
            parts.append(f"{n} {kind}")
    return "answers: " + ", ".join(parts) if parts else ""
