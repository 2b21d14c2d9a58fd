"""`mathrl run`: run an experiment file's stages in order, cached, resumable, one directory each.

Every stage writes into `runs/<experiment>/<stage>/` and keeps `stage.json` there: resolved
settings, cache key, the keys and finish times of its inputs, status (running, done, failed,
interrupted), timings, a small result and the one-line error of a failure. On a rerun a stage is

- done: same key, finished, and its inputs are the very runs it was built from → skipped;
- partial: same key, not finished → resumed (eval reruns into the same directory and skips the
  rows it has; training passes resume=True when a checkpoint-* directory exists);
- stale: another key (a setting or an input changed) → the old directory is moved aside to
  `runs/.stale/<experiment>/<stage>@<old key>/` (kept, never mixed, never in the report) and the
  stage recomputed;
- todo: no directory yet.

A failed stage is recorded and its dependants are blocked; independent stages still run. The
manifest `runs/<experiment>/experiment.json` lists every stage with its kind, method, model label,
eval setting, output directory (relative to the experiment directory) and status, for the report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mathrl import memory
from mathrl.errors import MathrlError
from mathrl.experiments import budget as budgets, memory_check, sweep as sweeps_
from mathrl.experiments.kinds import load_kind
from mathrl.experiments.schema import Stage, experiment_budget, load_experiments, rebuild
from mathrl.files import atomic_write_json

_clock = time.perf_counter  # the budget's clock (a test's fake one stands in)
DONE = ("cached", "ran", "resumed")  # outcomes after which dependants may run
KNOWN_TEST_SIZES = {"gsm8k": 1319, "arithmetic": 300, "linear_equations": 500, "svamp": 300, "gsm_hard": 1319,
                    "asdiv": 2305, "mawps": 520, "gsm_plus": 10552, "math500": 500, "math": 5000}  # dry-run estimate only (hub sizes)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def read_record(stage: Stage) -> dict[str, Any] | None:
    path = stage.out / "stage.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None  # a torn record is treated as unknown contents: the directory is moved aside


def plan_status(stages: list[Stage]) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Stage name → (done | partial | todo | stale, its stage.json)."""
    plan: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for st in stages:
        rec = read_record(st)
        if not st.out.exists():
            status = "todo"
        elif rec is None or rec.get("key") != st.key:
            status = "stale"
        elif rec.get("status") != "done":
            status = "partial"
        else:
            # An input rerun since (its finish time changed) means this result was built from another one.
            same_inputs = all(plan[d][0] == "done" and (plan[d][1] or {}).get("finished") == rec.get("inputs", {}).get(d)
                              for d in st.deps)
            status = "done" if same_inputs else "stale"
        plan[st.name] = (status, rec)
    return plan


def estimate(st: Stage) -> str:
    """A rough cost in the units of the table caption; '?' where the settings do not say."""
    s = st.config.__dict__ if st.config is not None else st.settings
    if st.kind == "eval":
        task_args = s.get("task_args") or {}
        n = s.get("limit") or task_args.get("test_size") or KNOWN_TEST_SIZES.get(s.get("task"))
        k = s.get("completions_per_question") or s.get("num_samples", 1)
        return f"{n or 'all'} q{f' × {k}' if k > 1 else ''} × {s.get('max_new_tokens', 512)} tok"
    if st.kind == "sft":
        per_step = s.get("batch_size", 16) * s.get("grad_accum", 1)
        n = s.get("train_samples") or s.get("num_samples") or {"full": 1024, "rl_prep": 256}.get(s.get("stage"))
        steps = s.get("max_steps", -1)
        if steps is None or steps <= 0:
            if not n:
                return f"{s.get('epochs', 1)} ep × all samples"
            steps = math.ceil(n * s.get("epochs", 1) / per_step)
        return f"{steps} steps × {per_step} seq"
    per_prompt = "rollouts_per_prompt" if st.kind == "ppo" else "num_generations"
    steps, prompts, gens, length = (s.get(k, "?") for k in ("max_steps", "prompts_per_step", per_prompt,
                                                             "max_completion_length"))
    epochs = f" × {s['ppo_epochs']} epochs" if st.kind == "ppo" and "ppo_epochs" in s else ""
    return f"{steps} steps × {prompts}×{gens} gen × {length} tok{epochs}"


def print_plan(name: str, stages: list[Stage], plan: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"experiment {name}: {len(stages)} stages",
                  caption="cost: eval = questions × max new tokens; sft = optimizer steps × sequences per step; "
                          "grpo/ppo = steps × prompts×generations × max completion tokens")
    for col in ("#", "stage", "kind", "depends on", "status", "est. cost"):
        table.add_column(col, overflow="fold")  # long eval names wrap rather than lose their setting
    for i, st in enumerate(stages, 1):
        status, rec = plan[st.name]
        if status == "partial" and rec and rec.get("status") == "failed":
            status += " (failed before)"
        table.add_row(str(i), st.name, st.kind, ", ".join(st.deps) or "-", status, estimate(st))
    console.print(table)
    for kind in sorted({st.kind for st in stages if st.unavailable}):
        console.print(f"[yellow]{kind}: settings not validated (module missing)[/yellow]")


def move_aside(st: Stage, runs_dir: Path, experiment: str, old_key: str | None) -> Path | None:
    if not st.out.exists():
        return None
    if {p.name for p in st.out.iterdir()} <= {"stage.json", "error.log"}:  # a failure before any output: nothing to keep
        shutil.rmtree(st.out)
        return None
    dest = runs_dir / ".stale" / experiment / f"{st.name}@{(old_key or 'unknown')[:10]}"
    if dest.exists():  # the same old result moved aside before: keep the earlier copy's name free
        dest = dest.with_name(f"{dest.name}-{int(time.time())}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(st.out), str(dest))
    return dest


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return text if isinstance(e, MathrlError) else f"{type(e).__name__}: {text}"


def _result(kind: str, out: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("n", "accuracy_strict", "accuracy_flexible") if kind == "eval" else \
        ("global_step", "train_loss", "train_seconds")
    return {k: out[k] for k in keys if isinstance(out, dict) and k in out}


def run_stage(st: Stage, status: str, rec: dict[str, Any] | None, inputs: dict[str, Any], runs_dir: Path,
              experiment: str, console: Any) -> tuple[str, dict[str, Any]]:
    """Run (or resume) one stage; returns (outcome, its new stage.json)."""
    if status == "stale":
        moved = move_aside(st, runs_dir, experiment, (rec or {}).get("key"))
        if moved:
            console.print(f"[dim]settings changed: previous result moved to {moved}[/dim]")
    resuming = status == "partial"
    record = {"name": st.name, "kind": st.kind, "key": st.key, "status": "running",
              "depends_on": {d: inputs[d]["key"] for d in st.deps},
              "inputs": {d: inputs[d]["finished"] for d in st.deps},
              "config": dataclasses.asdict(st.config) if st.config is not None else st.settings,
              "started": _now(), "attempts": (rec or {}).get("attempts", 0) + 1 if resuming else 1}
    start = time.perf_counter()
    try:
        _, fn = load_kind(st.kind)
        if st.config is None:
            raise MathrlError(st.unavailable or f"stage kind {st.kind!r} is not available")
        cfg = st.config
        if hasattr(cfg, "resume"):  # trainers continue from their last checkpoint
            cfg = dataclasses.replace(cfg, resume=any(st.out.glob("checkpoint-*")))
        st.out.mkdir(parents=True, exist_ok=True)
        (st.out / "error.log").unlink(missing_ok=True)  # an earlier attempt's traceback: not this attempt's
        atomic_write_json(st.out / "stage.json", record)
        memory.release()  # what the previous stage freed, before this stage's peak starts
        memory.reset_peak()
        out = fn(cfg)
    except KeyboardInterrupt:
        record.update(status="interrupted", seconds=round(time.perf_counter() - start, 1))
        if st.out.exists():
            atomic_write_json(st.out / "stage.json", record)
        raise
    except Exception as e:  # noqa: BLE001 - any failure is recorded; independent stages go on
        record.update(status="failed", error=_one_line(e), seconds=round(time.perf_counter() - start, 1),
                      memory=memory.peak())
        st.out.mkdir(parents=True, exist_ok=True)
        if not isinstance(e, MathrlError):
            (st.out / "error.log").write_text(traceback.format_exc())
            record["traceback"] = str(st.out / "error.log")
        atomic_write_json(st.out / "stage.json", record)
        console.print(f"[red]stage {st.name} failed: {record['error']}[/red]"
                      + (f" (traceback in {record['traceback']})" if "traceback" in record else ""))
        return "failed", record
    record.update(status="done", finished=_now(), seconds=round(time.perf_counter() - start, 1),
                  result=_result(st.kind, out), memory=memory.peak())
    atomic_write_json(st.out / "stage.json", record)
    return ("resumed" if resuming else "ran"), record


def write_manifest(experiment: str, stages: list[Stage], states: dict[str, str], runs_dir: Path, source: str) -> None:
    exp_dir = runs_dir / experiment
    entries = {}
    for st in stages:
        entries[st.name] = {
            "kind": st.kind, "method": st.method, "model": st.model_label, "eval": st.eval_setting,
            "setting": (st.eval_setting or {}).get("setting"),
            "output_dir": str(st.out.relative_to(exp_dir)), "depends_on": st.deps, "status": states[st.name],
            "key": st.key, "replica_of": st.replica_of, "seed": st.seed,
        }
    atomic_write_json(exp_dir / "experiment.json",
                      {"experiment": experiment, "file": source, "updated": _now(), "stages": entries})


def still_to_run(later: list[Stage], status: dict[str, tuple[str, Any]],
                 outcomes: dict[str, str]) -> tuple[set[str], set[str]]:
    """(stages of `later` that will run: not cached, not blocked by a failure; the training stages among
    them that have not started: todo or stale, so a plan may still resize them)."""
    doomed = {n for n, o in outcomes.items() if o in ("failed", "blocked")}
    pending, open_ = set(), set()
    for st in later:
        if any(d in doomed for d in st.deps):
            doomed.add(st.name)
        elif status[st.name][0] != "done":
            pending.add(st.name)
            if st.kind != "eval" and status[st.name][0] in ("todo", "stale"):
                open_.add(st.name)
    return pending, open_


def run_experiment(experiment: str, stages: list[Stage], runs_dir: Path, source: str, console: Any,
                   only_eval: bool = False, on_stage_end: Callable[[str, set[str], set[str]], None] | None = None,
                   ) -> dict[str, str]:
    """Stage name → outcome: cached | ran | resumed | failed | blocked | not selected. After each stage
    that ran (or failed), `on_stage_end(its name, stages still to run, training stages not started)`."""
    plan = plan_status(stages)
    selected = [st for st in stages if st.kind == "eval" or not only_eval]
    outcomes = {st.name: ("cached" if plan[st.name][0] == "done" else "not selected") for st in stages}
    states = {st.name: plan[st.name][0] for st in stages}  # the manifest's view: done/partial/todo/stale/...
    records = {st.name: plan[st.name][1] or {} for st in stages}
    write_manifest(experiment, stages, states, runs_dir, source)
    for i, st in enumerate(selected, 1):
        head = f"stage {i}/{len(selected)} {st.name} ({st.kind})"
        status = plan[st.name][0]
        missing = [d for d in st.deps if outcomes[d] not in DONE]
        if missing:
            why = ", ".join(f"{d} ({outcomes[d]})" for d in missing)
            outcomes[st.name] = states[st.name] = "blocked"
            console.print(f"[yellow]{head}: blocked, needs {why}[/yellow]")
            continue
        if status == "done":
            console.print(f"[dim]{head}: done (cached)[/dim]")
            continue
        console.rule(f"{head}{' · resuming' if status == 'partial' else ''}")
        inputs = {d: {"key": records[d].get("key"), "finished": records[d].get("finished")} for d in st.deps}
        states[st.name] = "running"
        write_manifest(experiment, stages, states, runs_dir, source)
        outcome, records[st.name] = run_stage(st, status, plan[st.name][1], inputs, runs_dir, experiment, console)
        outcomes[st.name] = outcome
        states[st.name] = "done" if outcome in DONE else outcome
        write_manifest(experiment, stages, states, runs_dir, source)
        if on_stage_end is not None:
            on_stage_end(st.name, *still_to_run(selected[i:], plan, outcomes))
    write_manifest(experiment, stages, states, runs_dir, source)
    return outcomes


def print_outcomes(experiment: str, stages: list[Stage], outcomes: dict[str, str], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"experiment {experiment}")
    for col in ("stage", "kind", "outcome", "seconds", "result / error"):
        table.add_column(col, overflow="fold")
    for st in stages:
        rec = read_record(st) or {}
        outcome = outcomes[st.name]
        res = rec.get("result", {})
        if outcome == "failed":
            detail = rec.get("error", "")
        elif "accuracy_strict" in res:
            detail = (f"strict {res['accuracy_strict']:.1%} · flexible {res.get('accuracy_flexible', 0):.1%}"
                      f" (n={res.get('n')})")
        else:
            detail = " · ".join(f"{k.replace('_', ' ')} {v}" for k, v in res.items())
        style = {"failed": "red", "blocked": "yellow"}.get(outcome, "")
        table.add_row(st.name, st.kind, f"[{style}]{outcome}[/{style}]" if style else outcome,
                      str(rec.get("seconds", "")) if outcome in ("ran", "resumed", "failed") else "", detail)
    console.print(table)


def print_accuracy(stages: list[Stage], console: Any) -> None:
    from rich.table import Table

    table = Table(title="accuracy (95% interval)")
    for col in ("model", "method", "setting", "n", "strict", "flexible"):
        table.add_column(col, justify="right" if col in ("n", "strict", "flexible") else "left", overflow="fold")
    for st in stages:
        path = st.out / "summary.json"
        if st.kind != "eval" or not path.exists() or (read_record(st) or {}).get("status") != "done":
            continue
        s = json.loads(path.read_text())

        def pct(kind: str) -> str:
            ci = s.get(f"ci95_{kind}")
            if f"accuracy_{kind}" not in s:
                return "-"
            return f"{s[f'accuracy_{kind}']:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")

        table.add_row(st.model_label, st.method, st.eval_setting["setting"], str(s.get("n", 0)), pct("strict"),
                      pct("flexible"))
    if table.row_count:
        console.print(table)


def make_report(exp_dir: Path, console: Any) -> bool:
    """Build runs/<experiment>/report/; False when the report failed (results are kept either way)."""
    try:
        from mathrl.report.build import build_report
    except ImportError as e:
        console.print(f"[yellow]note: no report: mathrl.report is not available here ({e})[/yellow]")
        return True
    try:
        res = build_report([exp_dir], exp_dir / "report", metric="strict")
        if res.get("seeds"):  # the accuracy table shows each replica; the spread across seeds is said here
            from mathrl.report.console import print_seeds

            print_seeds(res, console)
    except Exception as e:  # noqa: BLE001 - a report failure must not hide the finished stages
        console.print(f"[red]report failed: {_one_line(e)}[/red]")
        return False
    html = exp_dir / "report" / "report.html"
    console.print(f"report: {html}" if html.exists() else f"report written to {exp_dir / 'report'}")
    return True


def run_file(path: str | Path, experiments: list[str] | None = None, *, only_eval: bool = False,
             only_report: bool = False, dry_run: bool = False, runs_dir: str | Path = "runs",
             console: Any = None, budget: str | None = None, replan: bool = False) -> dict[str, dict[str, str]]:
    """Plan, run and report every selected experiment; returns experiment → stage → outcome
    (cached, ran, resumed, failed, blocked, not selected; dry-run: the plan's statuses)."""
    if console is None:
        from rich.console import Console

        console = Console()
    if only_eval and only_report:
        raise MathrlError("--only-eval and --only-report exclude each other")
    runs_dir = Path(runs_dir)
    loaded = load_experiments(path, runs_dir, experiments)  # every experiment parses before anything runs
    results: dict[str, dict[str, str]] = {}
    for name, stages in loaded.items():
        exp_dir = runs_dir / name
        began = _clock()
        plan = None
        wanted_budget = budget or experiment_budget(path, name)
        spec, sweeps = sweeps_.of_experiment(path, name, wanted_budget)
        if wanted_budget and not only_report:
            plan = budgets.plan_experiment(stages, budgets.parse_duration(wanted_budget), exp_dir, console, replan,
                                           write=not dry_run)
            budgets.apply_plan(stages, plan)
            rebuild(stages, str(path))
            budgets.print_budget(plan, console)
        if not (only_report or only_eval):  # a stage that cannot fit stops the run before anything runs
            memory_check.preflight(stages, console)
        if sweeps:
            sweeps_.print_status(spec, sweeps, exp_dir, console)
        if dry_run:
            plan = plan_status(stages)
            print_plan(name, stages, plan, console)
            results[name] = {n: status for n, (status, _) in plan.items()}
            continue
        if only_report:
            plan = plan_status(stages)
            write_manifest(name, stages, {n: s for n, (s, _) in plan.items()}, runs_dir, str(path))
            outcomes = {n: ("cached" if s == "done" else "not selected") for n, (s, _) in plan.items()}
        else:
            replanner = budgets.Replanner(stages, plan, began, exp_dir, str(path), console, _clock) if plan is not None else None
            outcomes = run_experiment(name, stages, runs_dir, str(path), console, only_eval=only_eval,
                                      on_stage_end=replanner)
            # a sweep that has chosen releases what waited for it: expand again and run on (done stages are cached)
            while sweeps and sweeps_.decide_ready(spec, sweeps, stages, exp_dir, console):
                stages = load_experiments(path, runs_dir, [name])[name]
                sweeps_.print_status(spec, sweeps, exp_dir, console)
                again = run_experiment(name, stages, runs_dir, str(path), console, only_eval=only_eval)
                # what ran before the decision stays "ran" (cached only on this pass)
                outcomes = {n: outcomes.get(n, o) if o == "cached" else o for n, o in again.items()}
            plan = replanner.plan if replanner is not None else None
            print_outcomes(name, stages, outcomes, console)
        print_accuracy(stages, console)
        if any(st.kind == "eval" and (st.out / "summary.json").exists() for st in stages):
            if not make_report(exp_dir, console):
                outcomes["report"] = "failed"
        else:
            console.print("no finished evaluations yet: no report")
        if plan is not None and not only_report and all(o in ("ran", "resumed") for o in outcomes.values()):
            plan["actual"] = budgets.report_actual(plan, _clock() - began, console)
            atomic_write_json(exp_dir / "plan.json", plan)
        results[name] = outcomes
    return results


def failed(results: dict[str, dict[str, str]]) -> list[str]:
    """'experiment/stage' of every failed or blocked stage."""
    return [f"{e}/{s}" for e, outs in results.items() for s, o in outs.items() if o in ("failed", "blocked")]
