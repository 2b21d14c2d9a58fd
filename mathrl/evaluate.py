"""Evaluation: task samples → prompts → completions → verdicts → results.jsonl → summary.json.

Resumable: rows are appended (and fsynced) batch by batch; a rerun with the same settings skips the
(question, sample) pairs already in results.jsonl. summary.json and results.csv are rewritten
atomically at the end. The full protocol is stored beside the numbers.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mathrl import formats
from mathrl.errors import MathrlError
from mathrl.files import JsonlAppender, atomic_write_csv, atomic_write_json, load_partial_jsonl
from mathrl.formats import Format, Protocol
from mathrl.decoding import DecodingSettings
from mathrl.generation import Completion
from mathrl.stats import accuracy_interval, wilson_interval  # noqa: F401 - wilson_interval: the earlier home
from mathrl.tasks import Sample, Task, get_task, subsample
from mathrl.verdict import grade_completion


@dataclass
class EvalConfig:
    model: str = "smollm2-135m"
    task: str = "gsm8k"
    task_config: str | None = None
    task_args: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    split: str = "test"
    limit: int | None = None
    sample_seed: int = 1234
    protocol: Protocol = field(default_factory=Protocol)
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0
    batch_size: int = 32
    dtype: str = "auto"
    backend: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    output_dir: str = "runs/eval"
    overwrite: bool = False
    progress: bool = True

    def sampling(self) -> DecodingSettings:
        return DecodingSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                num_samples=self.num_samples, stop=formats.default_stop(self.protocol), seed=self.seed)

    def identity(self) -> dict[str, Any]:
        """Settings that change the numbers: a resume must match them exactly."""
        keep = ("model", "task", "task_config", "task_args", "split", "limit", "sample_seed", "max_new_tokens",
                "temperature", "top_p", "num_samples", "seed", "dtype", "revision")
        d = {k: getattr(self, k) for k in keep}
        d["protocol"] = asdict(self.protocol)
        return d


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mathrl", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "math-verify", "vllm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def select_shots(task: Task, protocol: Protocol, fmt: Format) -> list[tuple[str, str]]:
    if protocol.shots <= 0:
        return []
    try:
        pool = task.load_train()
    except MathrlError as e:
        raise MathrlError(f"--shots {protocol.shots} needs the task's train split: {e}") from None
    if len(pool) < protocol.shots:
        raise MathrlError(f"--shots {protocol.shots}: the train split has only {len(pool)} samples")
    if protocol.shot_selection == "first":
        chosen = pool[: protocol.shots]
    else:
        chosen = random.Random(protocol.shot_seed).sample(pool, protocol.shots)
    if protocol.shot_solution == "raw":
        return [(s.question, s.meta.get("raw_answer") or fmt.render(s.solution, s.answer)) for s in chosen]
    return [(s.question, fmt.render(s.solution, s.answer)) for s in chosen]


def summarize(rows: list[dict[str, Any]], num_samples: int) -> dict[str, Any]:
    """Accuracy over all completions; pass@k and maj@k over questions when k > 1."""
    n = len(rows)
    if n == 0:
        return {"n": 0}
    out: dict[str, Any] = {"n": len({r["id"] for r in rows}), "n_completions": n, "num_samples": num_samples}
    by_question: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_question.setdefault(r["id"], []).append(r)
    for kind in ("strict", "flexible"):
        acc, ci, name = accuracy_interval([[r[f"correct_{kind}"] for r in g] for g in by_question.values()])
        out[f"accuracy_{kind}"] = round(acc, 4)
        out[f"ci95_{kind}"] = ci
    out["ci95_method"] = name
    out["thinking_proportion"] = round(sum(r["has_reasoning"] for r in rows) / n, 4)
    out["answer_proportion"] = round(sum(r["has_answer"] for r in rows) / n, 4)
    out["mean_tokens"] = round(sum(r["num_tokens"] for r in rows) / n, 1)
    out["truncated_proportion"] = round(sum(r["finish_reason"] == "length" for r in rows) / n, 4)
    if num_samples > 1:
        for kind in ("strict", "flexible"):
            out[f"pass@{num_samples}_{kind}"] = round(sum(any(r[f"correct_{kind}"] for r in g) for g in by_question.values()) / len(by_question), 4)
            maj = 0
            for g in by_question.values():
                votes = Counter(r[f"pred_{kind}"] for r in g if r[f"pred_{kind}"] is not None)
                if votes:
                    top = votes.most_common(1)[0][0]
                    maj += any(r[f"pred_{kind}"] == top and r[f"correct_{kind}"] for r in g)
            out[f"maj@{num_samples}_{kind}"] = round(maj / len(by_question), 4)
    groups = Counter(r.get("level") for r in rows if r.get("level") is not None)
    if len(groups) > 1:
        out["accuracy_flexible_by_level"] = {
            str(lv): round(sum(r["correct_flexible"] for r in rows if r.get("level") == lv) / c, 4) for lv, c in sorted(groups.items())
        }
    return out


def _check_resume(out: Path, cfg: EvalConfig) -> list[dict[str, Any]]:
    saved = out / "run_config.json"
    results = out / "results.jsonl"
    if cfg.overwrite:
        for p in (results, saved, out / "summary.json", out / "results.csv"):
            p.unlink(missing_ok=True)
        return []
    if results.exists() and saved.exists():
        previous = json.loads(saved.read_text()).get("identity")
        if previous != json.loads(json.dumps(cfg.identity(), default=str)):
            raise MathrlError(f"{out} holds results from other settings; use another --output-dir or --overwrite")
        return load_partial_jsonl(results)
    return []


def run_eval(cfg: EvalConfig, model_bundle: tuple[Any, Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Evaluate and return the summary. `model_bundle` = (model, tokenizer, info) to reuse a loaded model."""
    from mathrl import generation, models

    t0 = time.perf_counter()
    task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
    fmt = cfg.protocol.resolved_format()
    params = cfg.sampling()
    params.validate()
    if cfg.batch_size < 1:
        raise MathrlError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    backend = generation.pick_backend(cfg.backend)  # a missing vLLM fails before anything is written
    samples = subsample(task.load(cfg.split), cfg.limit, cfg.sample_seed)
    shots = select_shots(task, cfg.protocol, fmt)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done_rows = _check_resume(out, cfg)
    atomic_write_json(out / "run_config.json", {"identity": cfg.identity(), "config": asdict(cfg)})
    done = {(r["id"], r["sample_idx"]) for r in done_rows}
    todo = [s for s in samples if any((s.id, k) not in done for k in range(cfg.num_samples))]

    gen_stats: dict[str, Any] = {}
    model_info: dict[str, Any] = {"name": cfg.model}
    if todo:
        if model_bundle is not None:
            model, tokenizer, model_info = model_bundle
        elif backend == "vllm":
            path, kind = models.resolve(cfg.model)
            model, tokenizer = None, models.load_tokenizer(path, cfg.revision, cfg.trust_remote_code)
            model_info = {"name": cfg.model, "kind": kind, "path": path, "revision": cfg.revision or models.model_revision(path, kind)}
        else:
            model, tokenizer, model_info = models.load_model(cfg.model, cfg.dtype, None, cfg.revision, cfg.trust_remote_code)
        prompts = [formats.build_prompt(s.question, cfg.protocol, tokenizer, shots) for s in todo]
        if backend == "vllm":
            gen = generation.VLLMGenerator(model_info["path"], tokenizer, cfg.dtype, cfg.seed)
        else:
            gen = generation.HFGenerator(model, tokenizer, cfg.batch_size, progress=cfg.progress)
        writer = JsonlAppender(out / "results.jsonl")
        for idx, comps in gen.stream(prompts, params):
            new_rows = []
            for i, cs in zip(idx, comps):
                new_rows += [_row(todo[i], prompts[i], k, c, fmt, task, params) for k, c in enumerate(cs) if (todo[i].id, k) not in done]
            writer.append(new_rows)
            done_rows += new_rows
        gen_stats = dict(gen.stats)
    elif (out / "summary.json").exists():  # nothing left to generate: keep what the last run recorded
        previous = json.loads((out / "summary.json").read_text())
        model_info, gen_stats = previous.get("model", model_info), previous.get("generation", {})
    else:  # all rows written but the summary was not (a kill right after the last batch)
        path, kind = models.resolve(cfg.model)
        model_info = {"name": cfg.model, "kind": kind, "path": path,
                      "revision": cfg.revision or models.model_revision(path, kind),
                      "dtype": str(models.pick_dtype(cfg.dtype)).replace("torch.", "")}
    wanted = {s.id for s in samples}
    rows = [r for r in done_rows if r["id"] in wanted]
    order = {s.id: i for i, s in enumerate(samples)}
    rows.sort(key=lambda r: (order[r["id"]], r["sample_idx"]))
    summary = summarize(rows, cfg.num_samples)
    wall = time.perf_counter() - t0
    summary.update(
        model=model_info,
        task=task.describe() | {"split": cfg.split, "limit": cfg.limit, "sample_seed": cfg.sample_seed},
        protocol=asdict(cfg.protocol) | {"stop": params.stop, "strict_pattern": fmt.strict_pattern, "flexible_pattern": fmt.flexible_pattern},
        decoding=params.effective() | {"backend": backend, "batch_size": cfg.batch_size},
        versions=library_versions(),
        wall_seconds=round(wall, 2),
    )
    if gen_stats.get("seconds") and todo:
        summary["generation"] = gen_stats | {
            "tokens_per_second": round(gen_stats["generated_tokens"] / gen_stats["seconds"], 1),
            "questions_per_second": round(len(todo) / gen_stats["seconds"], 3),
        }
    elif gen_stats:
        summary["generation"] = gen_stats
    atomic_write_json(out / "summary.json", summary)
    atomic_write_csv(out / "results.csv", rows)
    return summary


def _row(sample: Sample, prompt: str, k: int, comp: Completion, fmt: Format, task: Task,
         params: DecodingSettings) -> dict[str, Any]:
    row = {"id": sample.id, "sample_idx": k, "question": sample.question, "gold": sample.answer, "prompt": prompt,
           "completion": comp.text}
    row.update(grade_completion(fmt, task, comp.text, sample.answer, params.stop))
    row.update(num_tokens=comp.num_tokens, finish_reason=comp.finish_reason)
    if "level" in sample.meta:
        row["level"] = sample.meta["level"]
    return row
