"""Sweeps: choose a training stage's settings on the validation split; only the winner meets the test set.

    sweep:
      grpo:                                    # a training stage of this experiment
        grid: {learning_rate: [1e-5, 2e-5]}    # every combination → points p0, p1, ... in grid order, or
        points:                                # named points: name → the settings it changes
          lr1: {learning_rate: 1.0e-5}
          lr2: {learning_rate: 2.0e-5}
        select: {metric: strict, min_improvement: 0.01, prefer: first}
        eval: {limit: 500, max_new_tokens: 128}   # settings of each point's validation evaluation

Each point `P` becomes a training stage `grpo@P` (the stage's settings with the point's on top) and an
evaluation of it on the task's **validation** split, `eval/grpo@P/<setting>-validation`, kept in
`runs/<experiment>/sweeps/grpo/` (not in the report's comparison: validation numbers are for choosing).
The model the points start from is evaluated there too (`eval/grpo@start/<model>/<setting>-validation`): a
reference row in the decision (`start`) with each point's paired difference from it (`vs_start`), never a
candidate.
Until every swept stage has its winner, the experiment holds only what the sweeps need: the stages after
a swept stage and **every test evaluation** are held back, so no test question is read before the choice.
Once all of a sweep's validation evaluations are done, the winner is chosen and written atomically to
`runs/<experiment>/sweeps/grpo.json` (each point's settings, validation accuracy with its 95% interval,
cost, the rule, the winner and why); the experiment is then expanded again with `grpo@<winner>` standing
in for `grpo` (in `from:` and `eval.models`), and runs on. The report shows every sweep.

The rule (`select`): a point's score is its validation accuracy (`metric`: strict | flexible; the mean
over seeds with `seeds`). The points within `min_improvement` (a fraction: 0.01 = 1 point) of the best
score are eligible — a point must beat a preferred one by at least that much to win — and among them the
first by `prefer`: `first` (the order listed) or `cheaper` (the fewest measured training seconds per
optimizer step). Every point trains under the swept stage's own budget settings (`max_steps`,
`max_minutes`, `epochs`, `train_samples`): a point that changes them is refused, so points are compared at
equal steps or, with `max_minutes`, equal time.

Simplified, and stated: a sweep under an experiment-wide `budget:` is refused (the planner would have to
price stages that are not expanded yet; give the swept stage `max_minutes` instead); each point is
evaluated in one setting (the sweep's `eval` must make one cell per point); a decision is reused while the
experiment's training settings, seeds and sweep are unchanged (their hash is stored), and otherwise made
again from the points, which are cached like any stage.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.files import atomic_write_json

# What a point may not change: the stage's identity and its budget (points are compared at equal budget).
NOT_SWEPT = ("kind", "from", "model", "output_dir", "resume", "seed", "budget_share", "max_steps", "max_minutes",
             "epochs", "train_samples", "num_samples")
PREFER = ("first", "cheaper")
METRICS = ("strict", "flexible")
POINT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a point names a directory: <stage>@<point>


@dataclass
class Sweep:
    stage: str
    points: dict[str, dict[str, Any]]  # point name → the settings it changes
    metric: str = "strict"
    min_improvement: float = 0.0
    prefer: str = "first"
    eval: dict[str, Any] | None = None

    def point_stage(self, point: str) -> str:
        return f"{self.stage}@{point}"

    def rule(self) -> dict[str, Any]:
        return {"metric": self.metric, "min_improvement": self.min_improvement, "prefer": self.prefer}


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MathrlError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def _points(spec: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    if ("grid" in spec) == ("points" in spec):
        raise MathrlError(f"{where}: give either grid (every combination) or points (named), not {'both' if 'grid' in spec else 'neither'}")
    if "grid" in spec:
        grid = _mapping(spec["grid"], f"{where}.grid")
        values = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
        if not grid or any(not v for v in values.values()):
            raise MathrlError(f"{where}.grid: give each setting a non-empty list of values")
        points = {f"p{i}": dict(zip(values, combo)) for i, combo in enumerate(itertools.product(*values.values()))}
    else:
        raw = spec["points"]
        if isinstance(raw, list):
            raw = {f"p{i}": p for i, p in enumerate(raw)}
        points = {str(k): _mapping(v or {}, f"{where}.points.{k}") for k, v in _mapping(raw, f"{where}.points").items()}
    if len(points) < 2:
        raise MathrlError(f"{where}: a sweep needs at least two points, got {len(points)}")
    for name, overlay in points.items():
        if not POINT_RE.fullmatch(name):
            raise MathrlError(f"{where}.points: point {name!r}: use letters, digits, '-', '_' and '.'")
        for key in overlay:
            if key in NOT_SWEPT:
                raise MathrlError(f"{where}.points.{name}: {key!r} cannot differ between points (identity or budget: "
                                  "points are compared at the stage's own budget)")
    return points


def parse(block: Any, stage_specs: dict[str, Any], where: str) -> dict[str, Sweep]:
    """The experiment's `sweep:` block → stage name → Sweep (checked; nothing is built)."""
    if block is None:
        return {}
    where = f"{where}.sweep"
    out = {}
    for stage, spec in _mapping(block, where).items():
        swhere = f"{where}.{stage}"
        if stage not in stage_specs:
            raise MathrlError(f"{swhere}: no training stage {stage!r} in this experiment (stages: {', '.join(stage_specs)})")
        spec = _mapping(spec, swhere)
        for key in spec:
            if key not in ("grid", "points", "select", "eval"):
                raise MathrlError(f"{swhere}: unknown key {key!r} (expected grid or points, select, eval)")
        select = _mapping(spec.get("select") or {}, f"{swhere}.select")
        for key in select:
            if key not in ("metric", "min_improvement", "prefer"):
                raise MathrlError(f"{swhere}.select: unknown key {key!r} (expected metric, min_improvement, prefer)")
        sw = Sweep(stage, _points(spec, swhere), select.get("metric", "strict"), select.get("min_improvement", 0.0),
                   select.get("prefer", "first"), _mapping(spec.get("eval") or {}, f"{swhere}.eval"))
        if sw.metric not in METRICS:
            raise MathrlError(f"{swhere}.select.metric must be one of {', '.join(METRICS)}, got {sw.metric!r}")
        if sw.prefer not in PREFER:
            raise MathrlError(f"{swhere}.select.prefer must be one of {', '.join(PREFER)}, got {sw.prefer!r}")
        m = sw.min_improvement
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m < 1:
            raise MathrlError(f"{swhere}.select.min_improvement must be a fraction in [0, 1) (0.01 = 1 point), got {m!r}")
        for key in ("models", "output_dir", "overwrite"):
            if key in sw.eval:
                raise MathrlError(f"{swhere}.eval: {key!r} is set by the sweep (its points, on validation)")
        if sw.eval.get("split", "validation") != "validation":
            raise MathrlError(f"{swhere}.eval: split is always validation in a sweep, got {sw.eval['split']!r}")
        out[stage] = sw
    return out


def fingerprint(spec: dict[str, Any]) -> str:
    """Hash of what a decision depends on: defaults, stages, seeds and the sweep (not the test eval grid)."""
    view = {k: spec.get(k) for k in ("defaults", "stages", "seeds", "sweep")}
    return hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()


def decision_path(exp_dir: Path, stage: str) -> Path:
    return exp_dir / "sweeps" / f"{stage}.json"


def read_winner(exp_dir: Path, sw: Sweep, fp: str) -> str | None:
    """The winner recorded for this sweep, when the record matches the experiment as it is now."""
    path = decision_path(exp_dir, sw.stage)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec.get("winner") if rec.get("fingerprint") == fp and rec.get("winner") in sw.points else None


def rewrite(stage_specs: dict[str, Any], sweeps: dict[str, Sweep],
            winners: dict[str, str]) -> tuple[dict[str, Any], set[str], dict[str, str]]:
    """Stages with each swept stage replaced by its points; (the new specs, the stages held back until a
    sweep decides, swept stage → its winner's stage name for `from:` and `eval.models`)."""
    out: dict[str, Any] = {}
    held: set[str] = set()
    alias = {s: sweeps[s].point_stage(w) for s, w in winners.items()}
    for name, spec in stage_specs.items():
        src = spec.get("from") if isinstance(spec, dict) else None
        if src in held:
            held.add(name)
            continue
        if isinstance(spec, dict) and src in alias:
            spec = dict(spec) | {"from": alias[src]}
        if name in sweeps:
            for point, overlay in sweeps[name].points.items():
                out[sweeps[name].point_stage(point)] = dict(spec) | overlay
            if name not in winners:
                held.add(name)
            continue
        out[name] = spec
    return out, held, alias


def _refuse_budget(sweeps: dict[str, Sweep], budget: Any, where: str) -> None:
    if sweeps and budget:
        raise MathrlError(f"{where}: a sweep under an experiment budget is not supported; give the swept stage "
                          "max_minutes (every point gets the same)")


def prepare(spec: dict[str, Any], stage_specs: dict[str, Any], exp_dir: Path,
            where: str) -> tuple[dict[str, Sweep], dict[str, Any], set[str], dict[str, str]]:
    """(sweeps, stage specs with swept stages replaced by their points, the stages held back until a
    sweep has chosen, swept stage → its winner's stage)."""
    sweeps = parse(spec.get("sweep"), stage_specs, where)
    _refuse_budget(sweeps, spec.get("budget"), where)
    fp = fingerprint(spec)
    winners = {s: w for s in sweeps if (w := read_winner(exp_dir, sweeps[s], fp)) is not None}
    return (sweeps, *rewrite(stage_specs, sweeps, winners))


def decide(sw: Sweep, evals: dict[str, list[Any]], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The decision record: per point its validation summaries (one per seed) and training records."""
    rows = []
    for point, overlay in sw.points.items():
        summaries = evals[point]
        accs = [s[f"accuracy_{sw.metric}"] for s in summaries]
        train = [records.get(r, {}) for r in sorted({s["_train_stage"] for s in summaries})]
        steps = sum((t.get("result") or {}).get("global_step") or 0 for t in train)
        seconds = sum((t.get("result") or {}).get("train_seconds") or t.get("seconds") or 0 for t in train)
        rows.append({"point": point, "stage": sw.point_stage(point), "settings": overlay,
                     "validation": {"n": summaries[0].get("n"), "accuracy": sum(accs) / len(accs),
                                    "per_seed": accs, "ci95": [s.get(f"ci95_{sw.metric}") for s in summaries]},
                     "train_seconds": round(seconds, 1), "steps": steps,
                     "seconds_per_step": round(seconds / steps, 2) if steps else None})
    best = max(r["validation"]["accuracy"] for r in rows)
    eligible = [r for r in rows if r["validation"]["accuracy"] == best
                or best - r["validation"]["accuracy"] < sw.min_improvement]
    if sw.prefer == "cheaper":
        eligible.sort(key=lambda r: math.inf if r["seconds_per_step"] is None else r["seconds_per_step"])
    win = eligible[0]
    top = max(rows, key=lambda r: r["validation"]["accuracy"])
    why = (f"highest validation {sw.metric} accuracy {best:.1%} ({top['point']}); within "
           f"{sw.min_improvement * 100:g} points of it: {', '.join(r['point'] for r in eligible)}; "
           f"prefer {sw.prefer} → {win['point']} ({win['validation']['accuracy']:.1%})")
    out = {"stage": sw.stage, "rule": sw.rule(), "points": rows, "winner": win["point"], "why": why,
           "decided": datetime.now(timezone.utc).isoformat()}
    start = evals.get("")
    if start:  # reported beside the points, never a candidate: did training from it help at all?
        accs = [s[f"accuracy_{sw.metric}"] for s in start]
        out["start"] = {"model": start[0]["_train_stage"], "validation": {
            "n": start[0].get("n"), "accuracy": sum(accs) / len(accs), "per_seed": accs,
            "ci95": [s.get(f"ci95_{sw.metric}") for s in start]}}
        for row in rows:
            row["vs_start"] = _vs_start(evals[row["point"]], start, sw.metric)
    return out


def _vs_start(point: list[dict[str, Any]], start: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The point's paired difference from the start model on the same validation questions (bootstrap interval,
    exact McNemar), with one seed each; None with seeds (replicas pair up less simply)."""
    if len(point) != 1 or len(start) != 1:
        return None
    from mathrl.report.stats import paired_comparison

    paths = [Path(s["_dir"]) / "results.jsonl" for s in (start[0], point[0])]
    if not all(p.exists() for p in paths):
        return None
    a, b = ([json.loads(x) for x in p.read_text().splitlines() if x.strip()] for p in paths)
    pc = paired_comparison(a, b, metric=metric)
    return {"diff": round(pc["diff_b_minus_a"], 4), "ci95": [round(pc["diff_ci_low"], 4), round(pc["diff_ci_high"], 4)],
            "gained": pc["c"], "lost": pc["b"], "p_value": pc["p_value"]}


def decide_ready(spec: dict[str, Any], sweeps: dict[str, Sweep], stages: list[Any], exp_dir: Path,
                 console: Any) -> list[str]:
    """Choose the winner of every undecided sweep whose validation evaluations are all done; write each
    decision; return the swept stages decided now."""
    fp = fingerprint(spec)
    decided = []
    for sw in sweeps.values():
        if read_winner(exp_dir, sw, fp) is not None:
            continue
        mine = [st for st in stages if st.kind == "eval" and st.sweep_point and st.sweep_point[0] == sw.stage]
        if not mine:
            continue  # its points are held back behind another sweep
        evals: dict[str, list[Any]] = {p: [] for p in sw.points} | {"": []}  # "": the model the points start from
        records: dict[str, dict[str, Any]] = {}
        for st in mine:
            rec, path = _read(st.out / "stage.json"), st.out / "summary.json"
            if (rec or {}).get("status") != "done" or not path.exists():
                break
            train = st.deps[0] if st.deps else "base"
            evals[st.sweep_point[1]].append(json.loads(path.read_text()) | {"_train_stage": train, "_dir": str(st.out)})
            records[train] = _read(exp_dir / train / "stage.json") or {}
        else:
            record = decide(sw, evals, records) | {"fingerprint": fp}
            atomic_write_json(decision_path(exp_dir, sw.stage), record)
            console.print(f"[bold]sweep {sw.stage}: {record['why']}[/bold] ({decision_path(exp_dir, sw.stage)})")
            decided.append(sw.stage)
    return decided


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def of_experiment(path: str | Path, name: str, budget: Any = None) -> tuple[dict[str, Any], dict[str, Sweep]]:
    """(the experiment's spec as written, its sweeps) from an experiment file; a sweep under a budget
    (the file's or the command line's) is refused."""
    from mathrl import config as cfgmod

    spec = dict((cfgmod.load_yaml(path).get("experiments") or {}).get(name) or {})
    sweeps = parse(spec.get("sweep"), dict(spec.get("stages") or {}), f"{path}: experiments.{name}")
    _refuse_budget(sweeps, budget, f"{path}: experiments.{name}")
    return spec, sweeps


def print_status(spec: dict[str, Any], sweeps: dict[str, Sweep], exp_dir: Path, console: Any) -> None:
    """One line per sweep: its winner, or what waits for it."""
    fp = fingerprint(spec)
    for sw in sweeps.values():
        winner = read_winner(exp_dir, sw, fp)
        if winner is not None:
            console.print(f"sweep {sw.stage}: winner {winner} ({decision_path(exp_dir, sw.stage)}); "
                          f"{sw.point_stage(winner)} stands in for {sw.stage}")
        else:
            console.print(f"sweep {sw.stage}: {len(sw.points)} points ({', '.join(sw.points)}) on validation; "
                          f"the test evaluations and the stages after {sw.stage} wait for its winner")
