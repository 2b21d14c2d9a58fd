"""Report: find evaluations and training runs under run directories, compare them, write CSV/PNG/HTML.

    build_report([Path("runs/demo")], Path("runs/demo/report"))  ->  comparison.csv, paired.csv,
    report.json, report.md, accuracy_bar.png, accuracy_grouped.png, eval_template_scatter.png, curves_<run>.png,
    report.html

Evaluations are directories with summary.json + results.jsonl (from `mathrl eval`), training runs
directories with train_log.jsonl. A `stages.json` / `experiment.json` manifest beside them (written by
`mathrl run`) gives nicer model names and training methods; without one they are inferred.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from mathrl.report import stats
from mathrl.errors import MathrlError
from mathrl.records import ResultRow
from mathrl.files import atomic_write_csv, atomic_write_json, atomic_write_text, iter_jsonl

METRICS = ("strict", "flexible")
METHODS = ("base", "sft", "grpo", "ppo")  # display order; anything else sorts after
MANIFESTS = ("stages.json", "experiment.json")
COMPARISON_COLUMNS = ("label", "model", "group", "seed", "method", "task", "format", "chat_template", "shots", "setting", "n",
                      "accuracy_strict", "ci_low_strict", "ci_high_strict", "accuracy_flexible", "ci_low_flexible",
                      "ci_high_flexible", "interval", "thinking_proportion", "answer_proportion", "mean_tokens",
                      "truncated_proportion", "tokens_per_second", "path")
PAIRED_COLUMNS = ("task", "eval_a", "eval_b", "varies", "n_shared", "metric", "accuracy_a", "accuracy_b", "diff_b_minus_a",
                  "diff_ci_low", "diff_ci_high", "p_value", "a_right_b_wrong", "a_wrong_b_right")


@dataclass
class EvalRun:
    label: str
    path: Path
    summary: dict[str, Any]
    rows: dict[str, dict[str, Any]]  # question id -> first sample (what paired tests compare)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # question id -> every sample
    model: str = ""
    method: str = "unknown"
    setting: str = ""
    replica_of: str | None = None  # with an experiment's seeds axis: the stage this model's stage replicates
    seed: int | None = None

    @property
    def task(self) -> str:
        t = self.summary.get("task", {})
        return ":".join(str(x) for x in (t.get("name", "?"), t.get("config"), t.get("split", "test")) if x is not None)

    @property
    def protocol(self) -> dict[str, Any]:
        return self.summary.get("protocol", {})

    def verdicts(self, metric: str) -> list[bool]:
        return [bool(r.get(f"correct_{metric}")) for r in self.rows.values()]


@dataclass
class TrainRun:
    label: str
    path: Path
    log: list[dict[str, Any]]
    record: dict[str, Any] = field(default_factory=dict)
    method: str = "unknown"


# ---------------------------------------------------------------- discovery

def _skipped(rel: Path) -> bool:
    # trainer checkpoints and hidden dirs hold copies, not runs of their own
    return any(p.startswith((".", "checkpoint-")) for p in rel.parts)


def _find(root: Path, marker: str) -> list[Path]:
    if (root / marker).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(marker) if not _skipped(p.parent.relative_to(root)))


def _has_reasoning_markers(format_name: Any) -> bool:
    """Whether a thinking proportion means anything: only formats with explicit reasoning markers (tags,
    think) say where working is; in the others any text before the answer would count."""
    from mathrl.prompts.formats import FORMATS

    fmt = FORMATS.get(str(format_name))
    return fmt is not None and bool(fmt.reasoning_start and fmt.reasoning_end)


def _label(root: Path, d: Path) -> str:
    return d.name if d == root else d.relative_to(root).as_posix()


def read_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """Stage name (and output_dir) -> {kind, model, method, setting, ...} from a runner manifest
    (`mathrl run` writes experiment.json), or {} when absent. Accepts {"stages": {name: {...}}},
    {"stages": [{"name": ..., ...}]} or {name: {...}}."""
    for name in MANIFESTS:
        path = root / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise MathrlError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        stages = data.get("stages", data) if isinstance(data, dict) else data
        if isinstance(stages, list):
            stages = {str(s.get("name")): s for s in stages if isinstance(s, dict) and s.get("name")}
        if isinstance(stages, dict):
            out = {str(k): v for k, v in stages.items() if isinstance(v, dict)}
            # a stage's directory may differ from its name: index by output_dir as well
            return out | {str(v["output_dir"]).strip("/"): v for v in out.values() if v.get("output_dir")}
    return {}


def load_eval(path: Path, label: str) -> EvalRun:
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MathrlError(f"{path / 'summary.json'}:{e.lineno}: invalid JSON ({e.msg})") from None
    # load_partial_jsonl tolerates a torn last line of a killed run, but repairs the file in place;
    # a report must never write into an evaluation, so read strictly (errors name file and line)
    rows = []
    for lineno, r in iter_jsonl(path / "results.jsonl"):
        ResultRow.from_dict(r, f"{path / 'results.jsonl'}:{lineno}")  # checks the fields the report reads
        rows.append(r)
    samples: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        samples.setdefault(str(r.get("id")), []).append(r)
    return EvalRun(label, path, summary, stats.first_sample_by_id(rows), samples)


def load_train(path: Path, label: str) -> TrainRun:
    log = load_partial_jsonl_readonly(path / "train_log.jsonl")
    record: dict[str, Any] = {}
    if (path / "mathrl_config.json").is_file():
        try:
            record = json.loads((path / "mathrl_config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            record = {}  # a half-written record must not stop the report of everything else
    return TrainRun(label, path, log, record, _method_from_record(record) or _method_from_name(label))


def load_partial_jsonl_readonly(path: Path) -> list[dict[str, Any]]:
    """Rows of a log that may still be growing: stop at the first torn or malformed line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def discover(run_dirs: list[Path]) -> tuple[list[EvalRun], list[TrainRun]]:
    evals: list[EvalRun] = []
    trains: list[TrainRun] = []
    manifest: dict[str, dict[str, Any]] = {}
    for root in run_dirs:
        root = Path(root)
        if not root.is_dir():
            raise MathrlError(f"{root}: no such directory")
        manifest |= read_manifest(root)
        evals += [load_eval(d, _label(root, d)) for d in _find(root, "summary.json") if (d / "results.jsonl").is_file()]
        trains += [load_train(d, _label(root, d)) for d in _find(root, "train_log.jsonl")]
    _dedupe_labels(evals)
    _dedupe_labels(trains)
    for ev in evals:
        _describe(ev, trains, manifest)
    for tr in trains:
        tr.method = (manifest.get(tr.label) or {}).get("method") or tr.method
    return evals, trains


def _dedupe_labels(runs: list[Any]) -> None:
    # several RUN_DIRs can hold the same relative names (two experiments' sft-eval): add the parent
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if seen[r.label] > 1:
            r.label = f"{r.path.parent.name}/{r.label}"


# ---------------------------------------------------------------- model, method, setting

def _method_from_name(text: str) -> str | None:
    words = re.split(r"[^a-z0-9]+", text.lower())
    for method in ("grpo", "ppo", "sft", "base"):
        if any(w == method or w.startswith(method) for w in words):
            return method
    return None


def _method_from_record(record: dict[str, Any]) -> str | None:
    """Training method from a mathrl_config.json record: an explicit trainer name, else the config's
    telltale settings (GRPO has generations per prompt and rewards; SFT a loss on solutions)."""
    for key in ("trainer", "algorithm", "training_method"):
        if str(record.get(key, "")).lower() in METHODS:
            return str(record[key]).lower()
    cfg = record.get("config", {})
    if not isinstance(cfg, dict) or not cfg:
        return None
    if "ppo" in str(cfg.get("trainer", "")).lower() or "vf_coef" in cfg:
        return "ppo"
    if any(k in cfg for k in ("num_generations", "reward_funcs", "rewards", "beta")):
        return "grpo"
    if "loss" in cfg:
        return "sft"
    return None


def _describe(ev: EvalRun, trains: list[TrainRun], manifest: dict[str, dict[str, Any]]) -> None:
    """Fill model, method and setting: the manifest first, then the model record, then names."""
    info = ev.summary.get("model", {})
    name = str(info.get("name") or info.get("path") or "?")
    stage = manifest.get(ev.label) or manifest.get(ev.label.split("/")[0]) or {}
    trained = _training_dir(info, trains)
    record: dict[str, Any] = {}
    if trained is not None:
        record = trained.record
    elif info.get("kind") == "local" and info.get("path"):
        rec_path = Path(str(info["path"])) / "mathrl_config.json"
        if rec_path.is_file():
            try:
                record = json.loads(rec_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                record = {}
    ev.model = str(stage.get("model") or (trained.label if trained else None)
                   or (Path(name).name if info.get("kind") == "local" else name))
    ev.method = str(stage.get("method") or (trained.method if trained and trained.method != "unknown" else None)
                    or _method_from_record(record) or _method_from_name(name) or _method_from_name(ev.label)
                    or ("base" if info.get("kind") in ("embedded", "hub") else "unknown"))
    p = ev.protocol
    default = f"{p.get('format', '?')} · {'chat' if p.get('chat_template', True) else 'no chat'} · {p.get('shots', 0)}-shot"
    ev.setting = str(stage.get("setting") or default)
    ev.replica_of, ev.seed = stage.get("replica_of"), stage.get("seed")


def _training_dir(info: dict[str, Any], trains: list[TrainRun]) -> TrainRun | None:
    path = info.get("path")
    if not path:
        return None
    target = Path(str(path)).resolve()
    return next((t for t in trains if t.path.resolve() == target), None)


# ---------------------------------------------------------------- tables

def comparison_rows(evals: list[EvalRun]) -> list[dict[str, Any]]:
    """One row per evaluation: accuracy over every completion with `stats.accuracy_interval` — the same
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
            acc, (low, high), name = stats.accuracy_interval(
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
    from mathrl.report import html as report_html
    from mathrl.report import plots as report_plots
    from mathrl.report import seeds as report_seeds

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
            "seeds": seeds, "pooled": pooled}
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
