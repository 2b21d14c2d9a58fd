"""Report: compare the runs found under run directories (`runs`), write CSV/PNG/HTML.

    build_report([Path("runs/demo")], Path("runs/demo/report"))  ->  comparison.csv, paired.csv,
    report.json, report.md, accuracy_bar.png, accuracy_grouped.png, eval_template_scatter.png, curves_<run>.png,
    report.html

Evaluations are directories with summary.json + results.jsonl (from `mathrl eval`), training runs
directories with train_log.jsonl; `mathrl.report.runs` finds and describes them.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.files import atomic_write_csv, atomic_write_json, atomic_write_text
from mathrl.records import accuracy_interval
from mathrl.report import stats
from mathrl.report.runs import METHODS, EvalRun, TrainRun, discover

METRICS = ("strict", "flexible")
COMPARISON_COLUMNS = ("label", "model", "group", "seed", "method", "task", "format", "chat_template", "shots", "setting", "n",
                      "accuracy_strict", "ci_low_strict", "ci_high_strict", "accuracy_flexible", "ci_low_flexible",
                      "ci_high_flexible", "interval", "thinking_proportion", "answer_proportion", "mean_tokens",
                      "truncated_proportion", "tokens_per_second", "path")
PAIRED_COLUMNS = ("task", "eval_a", "eval_b", "varies", "n_shared", "metric", "accuracy_a", "accuracy_b", "diff_b_minus_a",
                  "diff_ci_low", "diff_ci_high", "p_value", "a_right_b_wrong", "a_wrong_b_right")


def _has_reasoning_markers(format_name: Any) -> bool:
    """Whether a thinking proportion means anything: only formats with explicit reasoning markers (tags,
    think) say where working is; in the others any text before the answer would count."""
    from mathrl.prompts.formats import FORMATS

    fmt = FORMATS.get(str(format_name))
    return fmt is not None and bool(fmt.reasoning_start and fmt.reasoning_end)


# ---------------------------------------------------------------- tables

def comparison_rows(evals: list[EvalRun]) -> list[dict[str, Any]]:
    """One row per evaluation: accuracy over every completion with `records.accuracy_interval` — the same
    number and 95% interval as the evaluation's summary.json and the runner's table (Wilson for one
    completion per question, a question-cluster normal interval for several; named in `interval`)."""
    out = []
    for ev in evals:
        p, s = ev.protocol, ev.summary
        row: dict[str, Any] = {"label": ev.label, "model": ev.model, "group": ev.replica_of or ev.model,
                               "seed": ev.seed, "method": ev.method, "task": ev.task,
                               "format": p.get("format"), "chat_template": p.get("chat_template"),
                               "shots": p.get("shots", 0), "setting": ev.setting, "n": len(ev.rows)}
        for metric in METRICS:
            acc, (low, high), name = accuracy_interval(
                [[bool(r.get(f"correct_{metric}")) for r in g] for g in (ev.samples or {q: [r] for q, r in ev.rows.items()}).values()])
            row |= {f"accuracy_{metric}": round(acc, 4), f"ci_low_{metric}": round(low, 4),
                    f"ci_high_{metric}": round(high, 4), "interval": name}
        row |= {"thinking_proportion": s.get("thinking_proportion") if _has_reasoning_markers(p.get("format")) else None,
                "answer_proportion": s.get("answer_proportion"),
                "mean_tokens": s.get("mean_tokens"), "truncated_proportion": s.get("truncated_proportion"),
                "tokens_per_second": s.get("generation", {}).get("tokens_per_second"), "path": str(ev.path)}
        out.append(row)
    return out


def paired_rows(evals: list[EvalRun], metric: str, n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """McNemar and a paired bootstrap for every two evaluations of one task sharing questions."""
    out = []
    for a, b in combinations(evals, 2):
        if a.task != b.task or not a.rows.keys() & b.rows.keys():
            continue
        res = stats.paired_comparison(a.rows.values(), b.rows.values(), metric, n_resamples, seed)
        # McNemar's b and c, named so a reader of the CSV needs no textbook
        discordant = {"a_right_b_wrong": res.pop("b"), "a_wrong_b_right": res.pop("c")}
        # what differs between the two: a one-factor comparison is the easiest to read
        varies = "+".join(k for k, x, y in (("model", a.model, b.model), ("setting", a.setting, b.setting)) if x != y)
        out.append({"task": a.task, "eval_a": a.label, "eval_b": b.label, "varies": varies or "nothing",
                    **res, **discordant})
    return out


def _first_last(rows: list[dict[str, Any]], key: str | None) -> tuple[float, float] | None:
    values = [r[key] for r in rows if key and isinstance(r.get(key), (int, float))]
    return (values[0], values[-1]) if values else None


def _mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def training_rows(trains: list[TrainRun]) -> list[dict[str, Any]]:
    """What each trainer measures: SFT its loss and the tokens it saw; GRPO/PPO the mean reward and the
    sampled completions' correctness first → last step (with dynamic sampling, of the batches as drawn),
    the share of groups with no reward spread, the last KL. None where a trainer has no such figure."""
    out = []
    for tr in trains:
        steps = [r for r in tr.log if "step" in r]
        alarms = [f"step {r.get('step', '?')}: {a}" for r in tr.log for a in _as_list(r.get("alarm"))]
        keys = {k for r in steps for k in r}
        correct = next((k for k in sorted(keys) if k.startswith("dynamic/sampled/rewards/correctness") and k.endswith("/mean")),
                       next((k for k in sorted(keys) if k.startswith("rewards/correctness") and k.endswith("/mean")), None))
        reward = "dynamic/sampled/reward" if "dynamic/sampled/reward" in keys else "reward"
        rl = tr.method in ("grpo", "ppo") or "reward" in keys
        kls = [r["kl"] for r in steps if isinstance(r.get("kl"), (int, float))]
        out.append({"label": tr.label, "method": tr.method, "steps": max((r["step"] for r in steps), default=0),
                    "train_seconds": tr.record.get("train_seconds"),
                    "loss": None if rl else _first_last(steps, "loss"),
                    "train_tokens": None if rl else tr.record.get("train_tokens"),
                    "reward": _first_last(steps, reward) if rl else None,
                    "sampled_accuracy": _first_last(steps, correct) if rl else None,
                    "zero_spread": (_mean_of(steps, "dynamic/zero_std_before") if "dynamic/zero_std_before" in keys
                                    else _mean_of(steps, "frac_reward_zero_std")) if rl else None,
                    "kl": kls[-1] if rl and kls else None,
                    "peak_rss_gb": (tr.record.get("memory") or {}).get("peak_rss_gb"),
                    "alarms": alarms, "path": str(tr.path)})
    return out


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Path:
    if rows:
        atomic_write_csv(path, rows)
    else:  # a header alone still tells a script the file is valid and empty
        atomic_write_text(path, ",".join(columns) + "\n")
    return path


def _sort_key(ev: EvalRun) -> tuple:
    rank = METHODS.index(ev.method) if ev.method in METHODS else len(METHODS)
    return (ev.task, rank, ev.model, ev.setting, ev.label)


# ---------------------------------------------------------------- the report

def build_report(run_dirs: list[Path], output_dir: Path, metric: str = "strict", n_resamples: int = 2000,
                 seed: int = 0, max_questions: int = 1000, flips: list[str] | None = None,
                 flips_n: int = 5) -> dict[str, Any]:
    """Discover runs under `run_dirs`, write every report file into `output_dir`, return the tables
    and the paths written. `metric` (strict|flexible) drives the plots and paired tests; the
    comparison table always has both."""
    from mathrl.report import html as report_html, plots as report_plots, seeds as report_seeds, sweeps as report_sweeps

    if metric not in METRICS:
        raise MathrlError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if n_resamples < 1:
        raise MathrlError(f"--bootstrap must be at least 1, got {n_resamples}")
    run_dirs = [Path(d) for d in run_dirs]
    evals, trains = discover(run_dirs)
    if not evals and not trains:
        where = ", ".join(str(d) for d in run_dirs)
        raise MathrlError(f"no evaluations (summary.json + results.jsonl) or training logs (train_log.jsonl) found under {where}")
    evals.sort(key=_sort_key)
    trains.sort(key=lambda t: (METHODS.index(t.method) if t.method in METHODS else len(METHODS), t.label))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    comparison = comparison_rows(evals)
    paired = paired_rows(evals, metric, n_resamples, seed)
    training = training_rows(trains)
    seeds, pooled = report_seeds.seed_rows(comparison), report_seeds.pooled_rows(evals, metric)
    tables = [("comparison.csv", comparison, COMPARISON_COLUMNS), ("paired.csv", paired, PAIRED_COLUMNS)]
    if seeds:  # only experiments with a seeds axis have these
        tables += [("seeds.csv", seeds, report_seeds.SEED_COLUMNS), ("pooled.csv", pooled, report_seeds.POOLED_COLUMNS)]
    files = {name: str(_write_csv(out / name, rows, cols)) for name, rows, cols in tables}
    plots = report_plots.write_all(out, comparison, trains, metric)
    files |= {p.name: str(p) for p in plots.values() if p is not None}
    data = {"metric": metric, "bootstrap": {"resamples": n_resamples, "confidence": 0.95, "seed": seed},
            "run_dirs": [str(d) for d in run_dirs], "comparison": comparison, "paired": paired, "training": training,
            "seeds": seeds, "pooled": pooled, "sweeps": [d for r in run_dirs for d in report_sweeps.load_decisions(r)]}
    atomic_write_json(out / "report.json", data)
    files["report.json"] = str(out / "report.json")
    from mathrl.report import markdown as report_markdown

    atomic_write_text(out / "report.md", report_markdown.render(data))
    files["report.md"] = str(out / "report.md")
    if flips:
        from mathrl.report import flips as report_flips

        atomic_write_text(out / "flips.md", report_flips.to_markdown(report_flips.flips(evals, flips, metric, flips_n)))
        files["flips.md"] = str(out / "flips.md")
    html_path = report_html.write_html(out / "report.html", data, evals, plots, max_questions)
    files["report.html"] = str(html_path)
    return data | {"files": files, "html": str(html_path), "output_dir": str(out)}
