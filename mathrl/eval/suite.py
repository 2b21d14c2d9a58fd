"""Suites: one model evaluated on a named list of tasks, one sub-directory per task, and suite.json.

`mathrl eval --suite generalisation --model M --output-dir D` runs `run_eval` once per task into
`D/<task>/` (each resumable on its own, so a rerun skips finished tasks and finishes a half-done
one) with the model loaded once, on first need, and reused (`run_eval(cfg, model_bundle=...)`;
with vLLM each task builds its own engine). After every task `D/suite.json` is rewritten
atomically: per task n, strict and flexible accuracy with 95% Wilson intervals, the treatment
counts (number / math / text / no_answer / excluded) and where its files are.

Each suite entry may carry a format: the suite's default for that task (math500 and math: `boxed`,
the others `gsm8k`, from `Task.default_format`). An explicit --format or --protocol applies to every
task instead. --limit applies to each task, seeded (--sample-seed), like `mathrl eval`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.eval.evaluate import EvalConfig, run_eval, same_settings
from mathrl.provenance import library_versions
from mathrl.files import atomic_write_json
from mathrl.tasks import TASKS, get_task


@dataclass(frozen=True)
class SuiteTask:
    task: str
    config: str | None = None
    format: str | None = None  # None: the task's default_format

    @property
    def label(self) -> str:
        """Directory and table name: the task, or task.config."""
        return self.task + (f".{self.config}" if self.config else "")

    def resolved_format(self) -> str:
        return self.format or TASKS[self.task].default_format


SUITES: dict[str, tuple[SuiteTask, ...]] = {
    "generalisation": (SuiteTask("gsm8k"), SuiteTask("svamp"), SuiteTask("gsm_hard"), SuiteTask("asdiv"),
                       SuiteTask("mawps"), SuiteTask("gsm_plus"), SuiteTask("math500", format="boxed")),
}


def parse_tasks(spec: str | list[str]) -> tuple[SuiteTask, ...]:
    """'gsm8k,math:algebra,svamp' (or a list of such names) → suite entries, checked against TASKS."""
    items = [t.strip() for part in ([spec] if isinstance(spec, str) else spec) for t in str(part).split(",") if t.strip()]
    if not items:
        raise MathrlError("--suite-tasks: give at least one task, e.g. gsm8k,svamp")
    out = []
    for item in items:
        name, _, config = item.partition(":")
        if name not in TASKS:
            raise MathrlError(f"--suite-tasks: unknown task {name!r}; choose from: {', '.join(sorted(TASKS))}")
        out.append(SuiteTask(name, config or None))
    labels = [e.label for e in out]
    if len(set(labels)) != len(labels):
        raise MathrlError(f"--suite-tasks: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))} given twice")
    return tuple(out)


def resolve(suite: str | None, tasks: str | list[str] | None) -> tuple[str, tuple[SuiteTask, ...]]:
    """(suite name, entries) from --suite and/or --suite-tasks (a custom list: name 'custom')."""
    if tasks:
        return suite or "custom", parse_tasks(tasks)
    if suite not in SUITES:
        raise MathrlError(f"unknown suite {suite!r}; choose one of: {', '.join(SUITES)} (or --suite-tasks a,b,c)")
    return suite, SUITES[suite]


def task_configs(base: EvalConfig, entries: tuple[SuiteTask, ...], out_dir: str | Path,
                 format_given: bool = False) -> list[tuple[SuiteTask, EvalConfig]]:
    """One EvalConfig per entry: the base settings, that task, its format unless one was given."""
    out = []
    for entry in entries:
        protocol = base.protocol if format_given else dataclasses.replace(base.protocol, format=entry.resolved_format())
        out.append((entry, dataclasses.replace(base, task=entry.task, task_config=entry.config, protocol=protocol,
                                               output_dir=str(Path(out_dir) / entry.label))))
    return out


class LazyModel:
    """(model, tokenizer, info) loaded on the first call only: a rerun whose tasks are all done
    never loads the model."""

    def __init__(self, cfg: EvalConfig):
        self.cfg, self.bundle, self.loads = cfg, None, 0

    def __call__(self) -> tuple[Any, Any, dict[str, Any]]:
        if self.bundle is None:
            from mathrl.engine import models

            self.bundle = models.load_model(self.cfg.model, self.cfg.dtype, None, self.cfg.revision, self.cfg.trust_remote_code)
            self.loads += 1
        return self.bundle


def _was_done(cfg: EvalConfig) -> bool:
    out = Path(cfg.output_dir)
    return not cfg.overwrite and (out / "summary.json").exists() and same_settings(out, cfg)


def _entry_result(entry: SuiteTask, cfg: EvalConfig, summary: dict[str, Any], status: str) -> dict[str, Any]:
    keep = ("n", "accuracy_strict", "ci95_strict", "accuracy_flexible", "ci95_flexible", "treatments", "wall_seconds")
    return {"task": entry.task, "config": entry.config, "format": cfg.protocol.format, "status": status,
            "output_dir": entry.label, **{k: summary[k] for k in keep if k in summary},
            "source": summary.get("task", {}).get("source"), "hub_id": summary.get("task", {}).get("hub_id")}


def run_suite(base: EvalConfig, suite: str | None = None, tasks: str | list[str] | None = None, *,
              format_given: bool = False, on_task: Any = None) -> dict[str, Any]:
    """Evaluate `base.model` on every task of the suite into base.output_dir; returns suite.json's content.

    Every task's data (and shots) are loaded first, so an unknown task, a missing file or a
    malformed row fails before any generation; then tasks run in order, suite.json after each."""
    from mathrl.engine import generation

    name, entries = resolve(suite, tasks)
    root = Path(base.output_dir)
    plan = task_configs(base, entries, root, format_given)
    for entry, cfg in plan:  # fail early: bad names, missing data, malformed rows
        task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
        task.load(cfg.split)
        if cfg.protocol.shots > 0:
            try:
                task.load_train()
            except MathrlError as e:
                raise MathrlError(f"suite task {entry.label}: --shots {cfg.protocol.shots} needs a train split: {e}") from None
    backend = generation.pick_backend(base.backend)
    model = None if backend == "vllm" else LazyModel(base)
    doc: dict[str, Any] = {"suite": name, "tasks_requested": [e.label for e in entries], "model": {"name": base.model},
                           "limit": base.limit, "sample_seed": base.sample_seed, "split": base.split, "tasks": {}}
    t0 = time.perf_counter()
    for entry, cfg in plan:
        status = "done earlier" if _was_done(cfg) else "ran"
        summary = run_eval(cfg, model_bundle=model)
        doc["model"] = summary.get("model", doc["model"])
        doc["tasks"][entry.label] = _entry_result(entry, cfg, summary, status)
        doc.update(complete=len(doc["tasks"]) == len(entries), wall_seconds=round(time.perf_counter() - t0, 2),
                   protocol=dataclasses.asdict(base.protocol) | {"format": "per task (see tasks.*.format)"},
                   versions=library_versions())
        atomic_write_json(root / "suite.json", doc)  # after every task: a kill loses at most the running task's batch
        if on_task:
            on_task(entry.label, doc["tasks"][entry.label])
    return doc


_SHORT = {"number": "num", "no_answer": "none", "excluded": "excl"}  # treatment names in the table


def print_suite(doc: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(caption="answers: questions per treatment (num, text, math, none = no answer, excl = excluded)",
                  title=f"{doc['model'].get('name')} on suite {doc['suite']} ({doc['split']}, limit {doc['limit']})")
    for col, justify in (("task", "left"), ("format", "left"), ("n", "right"), ("strict", "right"),
                         ("flexible", "right"), ("answers", "left"), ("status", "left")):
        table.add_column(col, justify=justify, no_wrap=col in ("strict", "flexible"))

    def pct(r: dict[str, Any], kind: str) -> str:
        if f"accuracy_{kind}" not in r:
            return "-"
        lo, hi = r.get(f"ci95_{kind}", [0, 0])
        return f"{r[f'accuracy_{kind}']:.1%} [{lo:.0%}-{hi:.0%}]"

    for label, r in doc["tasks"].items():
        answers = ", ".join(f"{n} {_SHORT.get(k, k)}" for k, n in r.get("treatments", {}).items() if n)
        table.add_row(label, r["format"], str(r.get("n", 0)), pct(r, "strict"), pct(r, "flexible"), answers, r["status"])
    console.print(table)
