"""The runs a report reads: evaluations (summary.json + results.jsonl, from `mathrl eval`) and training
runs (train_log.jsonl) found under run directories, each described by model, training method and
setting. An `experiment.json` manifest beside them (written by `mathrl run`) gives nicer model names
and training methods; without one they are inferred from the records, then from the names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.files import iter_jsonl
from mathrl.records import ResultRow
from mathrl.report import stats

METHODS = ("base", "sft", "grpo", "ppo")  # display order; anything else sorts after
MANIFESTS = ("experiment.json",)


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
    # trainer checkpoints and hidden dirs hold copies, not runs of their own; a sweep's validation
    # evaluations chose settings and are reported on their own (report.sweeps), not beside test results
    return any(p.startswith((".", "checkpoint-")) or p == "sweeps" for p in rel.parts)


def _find(root: Path, marker: str) -> list[Path]:
    if (root / marker).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(marker) if not _skipped(p.parent.relative_to(root)))


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
