"""Evaluation: task samples → prompts → completions → verdicts → results.jsonl → summary.json.

Resumable: rows are appended (and fsynced) batch by batch; a rerun with the same settings skips the
(question, sample) pairs already in results.jsonl. summary.json and results.csv are rewritten
atomically at the end. The full protocol is stored beside the numbers.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from mathrl import memory
from mathrl.prompts import formats
from mathrl.config import TaskSettings, opt
from mathrl.errors import MathrlError
from mathrl.records import ResultRow, accuracy_interval
from mathrl.files import JsonlAppender, atomic_write_csv, atomic_write_json, load_partial_jsonl
from mathrl.prompts.formats import Format, Protocol
from mathrl.engine.decoding import DecodingSettings, SamplingFilters
from mathrl.engine.generation import Completion
from mathrl.provenance import library_versions
from mathrl.tasks import Sample, Task, get_task, subsample
from mathrl.grading.verdict import grade_completion


@dataclass
class EvalConfig(SamplingFilters, TaskSettings):
    """`mathrl eval` settings. Flat settings (YAML, flags, experiment files) also take the Protocol's
    fields and `protocol: PRESET`; `eval_config` builds this from them."""

    split: str = opt("test", "split to evaluate")
    limit: int | None = opt(None, "evaluate a seeded random subset of this many questions")
    sample_seed: int = opt(1234, "seed of the limit subset (same questions for every model)")
    protocol: Protocol = field(default_factory=Protocol, metadata={"help": "how questions are asked and read back"})
    max_new_tokens: int = opt(512, "generation budget per completion")
    temperature: float = opt(0.0, "0 = greedy")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    completions_per_question: int = opt(1, "completions per question (pass@k, maj@k); needs temperature > 0")
    seed: int = opt(0, "sampling seed")
    batch_size: int = opt(32, "sequences per generation batch")
    batch_memory_gb: float | None = opt(1.0, "cap (GB) on a batch's KV cache + prefill activations; None: none")
    dtype: str = opt("auto", "auto (bf16 where fast, else fp32) | bf16 | fp16 | fp32")
    backend: str = opt("auto", "auto (vllm with a GPU when installed, else hf) | hf | vllm")
    revision: str | None = opt(None, "hub revision (commit, branch or tag)")
    trust_remote_code: bool = opt(False, "allow model repositories to run their own code")
    output_dir: str = opt("runs/eval", "where results.jsonl, results.csv and summary.json go")
    overwrite: bool = opt(False, "discard earlier results in output_dir instead of resuming")
    progress: bool = opt(True, "show a progress bar")

    RENAMED: ClassVar[dict[str, str]] = {"num_samples": "completions_per_question"}

    def sampling(self) -> DecodingSettings:
        return DecodingSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                                num_samples=self.completions_per_question, stop=formats.default_stop(self.protocol),
                                seed=self.seed, **self.filters())

    def identity(self) -> dict[str, Any]:
        """Settings that change the numbers: a resume must match them exactly."""
        keep = ("model", "task", "task_config", "task_args", "split", "limit", "sample_seed", "max_new_tokens",
                "temperature", "top_p", "num_samples", "seed", "dtype", "revision")
        d = {k: getattr(self, k) for k in keep if k != "num_samples"}
        d["num_samples"] = self.completions_per_question  # the stored identity keeps its name: old runs resume
        d["protocol"] = asdict(self.protocol)
        neutral = SamplingFilters().filters()  # added since: only when set, so earlier runs still resume
        d.update({k: v for k, v in self.filters().items() if v != neutral[k]})
        return d


def eval_setting_names() -> set[str]:
    """Keys flat eval settings take: EvalConfig's, the Protocol's, `protocol` (a preset) and renamed ones."""
    own = {f.name for f in fields(EvalConfig)}
    return own | {f.name for f in fields(Protocol)} | set(EvalConfig.RENAMED)


def eval_config(settings: dict[str, Any], source: str = "options") -> EvalConfig:
    """EvalConfig from flat settings (a YAML file with flags over it, or an experiment's eval cell):
    `protocol: PRESET` gives the preset's protocol fields, and protocol keys given beside it override them."""
    from mathrl import config as cfgmod

    settings = dict(settings)
    names = eval_setting_names()
    for key in settings:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            raise MathrlError(f"{source}: unknown eval setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    preset = settings.pop("protocol", None)
    proto_keys = {f.name for f in fields(Protocol)}
    proto_values = (formats.preset(preset) if preset else {}) | {k: v for k, v in settings.items() if k in proto_keys}
    proto = cfgmod.build(Protocol, proto_values, source)
    cfg = cfgmod.build(EvalConfig, {k: v for k, v in settings.items() if k not in proto_keys}, source)
    cfg.protocol = proto
    formats.get_format(proto.format)
    return cfg


def _shot_pool(task: Task, protocol: Protocol, split: str = "test") -> list[Sample]:
    try:
        pool = task.load_shots(split)
    except MathrlError as e:
        raise MathrlError(f"--shots {protocol.shots} needs the task's train split: {e}") from None
    if len(pool) < protocol.shots:
        raise MathrlError(f"--shots {protocol.shots}: the train split has only {len(pool)} samples")
    return pool


def _written(shots: list[Sample], protocol: Protocol, fmt: Format) -> list[tuple[str, str]]:
    if protocol.shot_solution == "raw":
        return [(s.question, s.meta.get("raw_answer") or fmt.render(s.solution, s.answer)) for s in shots]
    return [(s.question, fmt.render(s.solution, s.answer)) for s in shots]


SHOT_SELECTIONS = ("random", "first", "lm-eval")


def select_shots(task: Task, protocol: Protocol, fmt: Format, split: str = "test") -> list[tuple[str, str]]:
    """The shots every question shares (shot_selection random or first), for an evaluation of `split`."""
    if protocol.shot_selection not in SHOT_SELECTIONS:
        raise MathrlError(f"unknown shot_selection {protocol.shot_selection!r}; choose one of: {', '.join(SHOT_SELECTIONS)}")
    if protocol.shots <= 0:
        return []
    if protocol.shot_selection == "lm-eval":
        raise MathrlError("shot_selection lm-eval draws shots per question: use question_shots")
    pool = _shot_pool(task, protocol, split)
    if protocol.shot_selection == "first":
        chosen = pool[: protocol.shots]
    else:
        chosen = random.Random(protocol.shot_seed).sample(pool, protocol.shots)
    return _written(chosen, protocol, fmt)


def lmeval_draws(pool_size: int, k: int, n_docs: int, seed: int, same_split: bool = False) -> list[list[int]]:
    """Indices of the shots lm-evaluation-harness 0.4's default sampler gives docs 0..n_docs-1.

    lm-eval makes one `random.Random(fewshot_seed)` per task and calls `rnd.sample(pool, k)` for each
    doc in order, so doc i's shots depend on every draw before it; --limit N only cuts the loop
    after N docs. When the shots come from the evaluated split it draws k + 1 and drops the doc
    itself (`ContextSampler.sample` / `rm_eval_doc`). `random.sample`'s picks depend only on the
    population's size, so drawing from range(pool_size) gives lm-eval's choices."""
    rnd = random.Random(seed)
    out = []
    for doc in range(n_docs):
        if not same_split:
            out.append(rnd.sample(range(pool_size), k))
            continue
        drawn = [j for j in rnd.sample(range(pool_size), k + 1) if j != doc][:k]
        if len(drawn) < k:  # lm-eval resamples from the pool without the doc (only with duplicates)
            drawn = rnd.sample([j for j in range(pool_size) if j != doc], k)
        out.append(drawn)
    return out


def question_shots(task: Task, protocol: Protocol, fmt: Format, samples: list[Sample],
                   split_samples: list[Sample] | None = None, split: str = "test") -> dict[str, list[tuple[str, str]]]:
    """Sample id → its shots. `split_samples` is the whole evaluated split in order (the lm-eval
    sampler's draws follow each question's position there, not its place in a --limit subset)."""
    if protocol.shot_selection != "lm-eval" or protocol.shots <= 0:
        shared = select_shots(task, protocol, fmt, split)
        return {s.id: shared for s in samples}
    pool = _shot_pool(task, protocol, split)
    position = {s.id: i for i, s in enumerate(split_samples if split_samples is not None else samples)}
    wanted = [position[s.id] for s in samples]
    same = {s.id for s in pool[:1]} <= set(position)  # shots drawn from the evaluated split itself
    draws = lmeval_draws(len(pool), protocol.shots, max(wanted, default=-1) + 1, protocol.shot_seed, same)
    return {s.id: _written([pool[j] for j in draws[i]], protocol, fmt) for s, i in zip(samples, wanted)}


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
    out.update(breakdown(rows))
    return out


BREAKDOWN_KEYS = ("level", "subject", "perturbation_type", "answer_type")  # sample meta copied into rows


def treatment_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Questions per answer treatment (number, math, text, no_answer; see mathrl.grading.answers)."""
    first = {r["id"]: r.get("answer_type", "number") for r in rows}
    return dict(sorted(Counter(first.values()).items()))


def breakdown(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (strict, flexible) per value of each metadata key the rows carry, and the treatment
    counts. A key with a single value is left out: its one group is the whole run."""
    out: dict[str, Any] = {"treatments": treatment_counts(rows)} if rows else {}
    by: dict[str, Any] = {}
    for key in BREAKDOWN_KEYS:
        groups: dict[Any, list[dict[str, Any]]] = {}
        for r in rows:
            if r.get(key) is not None:
                groups.setdefault(r[key], []).append(r)
        if len(groups) < 2:
            continue
        by[key] = {str(v): {"n": len({r["id"] for r in g}),
                            "strict": round(sum(bool(r["correct_strict"]) for r in g) / len(g), 4),
                            "flexible": round(sum(bool(r["correct_flexible"]) for r in g) / len(g), 4)}
                   for v, g in sorted(groups.items(), key=lambda kv: str(kv[0]))}
    if by:
        out["accuracy_by"] = by
    if "level" in by:  # the key written before accuracy_by existed
        out["accuracy_flexible_by_level"] = {lv: g["flexible"] for lv, g in by["level"].items()}
    return out


def same_settings(out: Path, cfg: EvalConfig) -> bool:
    """True when `out` was written by a run whose identity (the settings that change numbers) is cfg's."""
    saved = Path(out) / "run_config.json"
    previous = json.loads(saved.read_text()).get("identity") if saved.exists() else None
    return previous == json.loads(json.dumps(cfg.identity(), default=str))


def _check_resume(out: Path, cfg: EvalConfig) -> list[dict[str, Any]]:
    saved = out / "run_config.json"
    results = out / "results.jsonl"
    if cfg.overwrite:
        for p in (results, saved, out / "summary.json", out / "results.csv"):
            p.unlink(missing_ok=True)
        return []
    if results.exists() and saved.exists():
        if not same_settings(out, cfg):
            raise MathrlError(f"{out} holds results from other settings; use another --output-dir or --overwrite")
        return load_partial_jsonl(results)
    return []


def _load(cfg: EvalConfig, backend: str, model_bundle: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, model info): the bundle given (a callable loads on first use, so a suite skips
    finished tasks unloaded), vLLM's tokenizer only (vLLM loads the model itself), or the HF model."""
    from mathrl.engine import models

    if model_bundle is not None:
        return model_bundle() if callable(model_bundle) else model_bundle
    if backend == "vllm":
        path, kind = models.resolve(cfg.model)
        return None, models.load_tokenizer(path, cfg.revision, cfg.trust_remote_code), {
            "name": cfg.model, "kind": kind, "path": path, "revision": cfg.revision or models.model_revision(path, kind)}
    return models.load_model(cfg.model, cfg.dtype, None, cfg.revision, cfg.trust_remote_code)


def run_eval(cfg: EvalConfig, model_bundle: Any = None) -> dict[str, Any]:
    """Evaluate and return the summary. `model_bundle` = (model, tokenizer, info) to reuse a loaded
    model, or a callable returning one, called only when there is something left to generate."""
    from mathrl.engine import generation

    t0 = time.perf_counter()
    memory.reset_peak()
    task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
    fmt = cfg.protocol.resolved_format()
    params = cfg.sampling()
    params.validate()
    if cfg.batch_size < 1:
        raise MathrlError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.batch_memory_gb is not None and cfg.batch_memory_gb <= 0:  # before any model loads
        raise MathrlError(f"--batch-memory-gb must be positive, got {cfg.batch_memory_gb}")
    backend = generation.pick_backend(cfg.backend)  # a missing vLLM fails before anything is written
    split_samples = task.load(cfg.split)
    samples = subsample(split_samples, cfg.limit, cfg.sample_seed)
    shots = question_shots(task, cfg.protocol, fmt, samples, split_samples, cfg.split)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    done_rows = _check_resume(out, cfg)
    atomic_write_json(out / "run_config.json", {"identity": cfg.identity(), "config": asdict(cfg)})
    done = {(r["id"], r["sample_idx"]) for r in done_rows}
    todo = [s for s in samples if any((s.id, k) not in done for k in range(cfg.completions_per_question))]

    gen_stats: dict[str, Any] = {}
    model_info: dict[str, Any] = {"name": cfg.model}
    if todo:
        model, tokenizer, model_info = _load(cfg, backend, model_bundle)
        prompts = [formats.build_prompt(s.question, cfg.protocol, tokenizer, shots[s.id]) for s in todo]
        if backend == "vllm":
            gen = generation.VLLMGenerator(model_info["path"], tokenizer, cfg.dtype, cfg.seed)
        else:
            gen = generation.HFGenerator(model, tokenizer, cfg.batch_size, progress=cfg.progress,
                                         memory_gb=cfg.batch_memory_gb)
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
        model_info = _model_info(cfg)
    wanted = {s.id for s in samples}
    rows = [r for r in done_rows if r["id"] in wanted]
    order = {s.id: i for i, s in enumerate(samples)}
    rows.sort(key=lambda r: (order[r["id"]], r["sample_idx"]))
    summary = summarize(rows, cfg.completions_per_question)
    if rows:  # dropped at load time by a documented rule (e.g. exclude=no_answer), whole split, before --limit
        summary["treatments"]["excluded"] = sum(task.excluded.values())
    wall = time.perf_counter() - t0
    summary.update(
        model=model_info,
        task=task.describe() | {"split": cfg.split, "limit": cfg.limit, "sample_seed": cfg.sample_seed},
        protocol=asdict(cfg.protocol) | {"stop": params.stop, "strict_pattern": fmt.strict_pattern, "flexible_pattern": fmt.flexible_pattern},
        decoding=params.effective() | {"backend": backend, "batch_size": cfg.batch_size,
                                       "batch_memory_gb": cfg.batch_memory_gb},
        versions=library_versions(),
        wall_seconds=round(wall, 2),
        memory=memory.peak(),
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


def _model_info(cfg: EvalConfig) -> dict[str, Any]:
    """What summary.json says of the model, without loading it."""
    from mathrl.engine import models

    path, kind = models.resolve(cfg.model)
    return {"name": cfg.model, "kind": kind, "path": path, "revision": cfg.revision or models.model_revision(path, kind),
            "dtype": str(models.pick_dtype(cfg.dtype)).replace("torch.", "")}


def _row(sample: Sample, prompt: str, k: int, comp: Completion, fmt: Format, task: Task,
         params: DecodingSettings) -> dict[str, Any]:
    answer_type = task.sample_answer_type(sample)
    verdict = grade_completion(fmt, task, comp.text, sample.answer, params.stop, answer_type)
    meta = {key: sample.meta.get(key) for key in BREAKDOWN_KEYS[:-1]}
    return ResultRow(id=sample.id, sample_idx=k, question=sample.question, gold=sample.answer, prompt=prompt,
                     completion=comp.text, **verdict, num_tokens=comp.num_tokens, finish_reason=comp.finish_reason,
                     answer_type=answer_type, **meta).to_dict()
