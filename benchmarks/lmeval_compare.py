"""mathrl vs lm-evaluation-harness 0.4 on the same GSM8K questions: wall time, accuracy, agreement.

lm-eval runs from its own virtual environment (not mathrl's), given with --lmeval-bin:

    python3 -m venv /tmp/lmeval-venv
    /tmp/lmeval-venv/bin/pip install torch==2.13.0          # first: a bare torch pulls a CUDA build
    /tmp/lmeval-venv/bin/pip install 'lm-eval[hf]<0.5' transformers

What it does, in --workdir (a fresh temp dir by default; nothing is written into the repo):
  1. writes an lm-eval task yaml with the settings of lm-eval's own tasks/gsm8k/gsm8k.yaml, except
     that the data come from the local train/test jsonl (dataset_path: json). --sampler default
     (the default) keeps the stock shots: lm-eval draws 5 train rows per question with one seeded
     Random(1234), which mathrl's `lm-eval-gsm8k` preset reproduces; --sampler first_n adds
     fewshot_config.sampler: first_n (the first 5 train rows for every question), compared with
     mathrl's `lm-eval-gsm8k-first5`;
  2. runs `lm_eval --model hf ... --limit N --num_fewshot 5 --log_samples`, timed (lm-eval's
     --limit takes the first N test rows);
  3. runs `mathrl eval --protocol lm-eval-gsm8k` on the same first N test rows, timed: mathrl's
     --limit is a seeded random subset, so instead it is pointed (--data-dir) at a directory that
     holds test.jsonl = the first N test rows and train.jsonl = a symlink to the real train file.
     (--mathrl-task jsonl uses `--task jsonl --task-arg path=... --task-arg train_path=...`
     instead; its shots equal lm-eval's only where the jsonl task keeps the raw answer text in
     meta["raw_answer"], which the prompt check below shows);
  4. compares per question: prompt text, completion text, strict and flexible verdicts; regrades
     lm-eval's completions with mathrl's grader to separate grading from generation differences;
  5. profiles mathrl's generation in-process (HFGenerator.stats plus a max_new_tokens=1 run to time
     the shared-prefix and per-question prompt work).

    MATHRL_DATA_DIR=/work/shared/data/gsm8k python benchmarks/lmeval_compare.py --n 64

--prompts-only runs no model: it builds lm-eval's own prompts for the local task offline (lm-eval's
TaskManager, set_fewshot_seed(1234), build_all_requests(limit=N), as its evaluator does) with both
samplers and compares them, question by question, with mathrl's prompts under the matching preset.
It needs lm_eval importable by --lmeval-python (default: this interpreter when it has lm_eval, else
the python beside --lmeval-bin):

    python benchmarks/lmeval_compare.py --prompts-only --n 64 --data-dir /path/to/gsm8k
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lmeval_prompts import PRESET, compare_prompts, write_task_yaml
from machine import cpu_name, machine_busy_seconds


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


OTHER_CORES: dict[str, float | None] = {}


def run_timed(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    """Run a command, return its wall time; note how many cores other processes kept busy meanwhile."""
    print(f"$ {' '.join(cmd)}", flush=True)
    busy0, own0, t0 = machine_busy_seconds(), children_cpu_seconds(), time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - t0
    busy1, own1 = machine_busy_seconds(), children_cpu_seconds()
    other = None if busy0 is None or busy1 is None else round(max(0.0, (busy1 - busy0) - (own1 - own0)) / seconds, 2)
    OTHER_CORES[log.stem] = other
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        raise SystemExit(f"command failed (exit {proc.returncode}), log {log}:\n{tail}")
    print(f"  done in {seconds:.1f} s, {own1 - own0:.0f} CPU-s; other processes kept {other} cores busy (log: {log})", flush=True)
    return seconds



def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def lmeval_version(lmeval_bin: str) -> str:
    py = Path(lmeval_bin).parent / "python"
    try:
        out = subprocess.run([str(py), "-c", "from importlib.metadata import version as v; print(v('lm_eval'), v('torch'), v('transformers'))"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_lmeval_samples(out_dir: Path, task_name: str) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """{doc_id: {context, completion, strict, flexible, pred_*}} and the results json of the run."""
    sample_files = sorted(glob.glob(str(out_dir / "**" / f"samples_{task_name}_*.jsonl"), recursive=True))
    result_files = sorted(glob.glob(str(out_dir / "**" / "results_*.json"), recursive=True))
    if not sample_files or not result_files:
        raise SystemExit(f"no lm-eval samples/results under {out_dir}")
    per_doc: dict[int, dict[str, Any]] = {}
    for row in read_jsonl(Path(sample_files[-1])):
        d = per_doc.setdefault(row["doc_id"], {})
        args = row.get("arguments")
        if isinstance(args, dict):  # {"gen_args_0": {"arg_0": context, "arg_1": gen_kwargs}}
            d["context"] = next(iter(args.values()))["arg_0"]
        elif isinstance(args, list):
            d["context"] = args[0][0]
        d["completion"] = row["resps"][0][0]
        kind = "strict" if row.get("filter") == "strict-match" else "flexible" if row.get("filter") == "flexible-extract" else None
        if kind:
            d[kind] = bool(row["exact_match"])
            d[f"pred_{kind}"] = row["filtered_resps"][0]
    return per_doc, json.loads(Path(result_files[-1]).read_text())


def profile_mathrl(args: argparse.Namespace, data_dir: Path, total_gen_seconds: float | None) -> dict[str, Any]:
    """Where mathrl's generation time goes: shared prefix, per-question prompt tokens, decoding.

    In-process runs with max_new_tokens=1 on the prompts the CLI used, after one warm-up run: a
    fresh generator (prefix forward + all per-question prefills) and the same generator again (its
    prefix KV is cached, so only the per-question prefills). Decoding is what the CLI run's
    generation spent beyond the first of these.
    """
    from mathrl.prompts import formats
    from mathrl.eval.evaluate import question_shots
    from mathrl.engine.generation import HFGenerator, SamplingParams, common_prefix_length
    from mathrl.engine.models import load_model
    from mathrl.tasks import get_task

    proto = formats.Protocol(**formats.preset(PRESET[args.sampler]))
    task = get_task("gsm8k", data_dir=str(data_dir))
    samples = task.load("test")
    shots = question_shots(task, proto, proto.resolved_format(), samples)
    model, tok, _ = load_model(args.model, dtype=args.dtype)
    prompts = [formats.build_prompt(s.question, proto, tok, shots[s.id]) for s in samples]
    ids = tok(prompts, add_special_tokens=not proto.chat_template)["input_ids"]
    lens = [len(x) for x in ids]
    shared = common_prefix_length(ids)
    params = SamplingParams(max_new_tokens=1, stop=formats.default_stop(proto))

    HFGenerator(model, tok, args.batch_size, progress=False).generate(prompts, params)  # warm-up
    gen = HFGenerator(model, tok, args.batch_size, progress=False)
    t0 = time.perf_counter()
    gen.generate(prompts, params)
    with_prefix = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen.generate(prompts, params)
    suffix_only = time.perf_counter() - t0
    prof: dict[str, Any] = {
        "questions": len(prompts),
        "prompt_tokens_total": sum(lens),
        "prompt_tokens_mean": round(sum(lens) / len(lens), 1),
        "shared_prefix_tokens": shared,
        "per_question_tokens_total": sum(lens) - shared * len(lens),
        "per_question_tokens_mean": round((sum(lens) - shared * len(lens)) / len(lens), 1),
        "prefill_with_prefix_s": round(with_prefix, 2),
        "prefill_per_question_only_s": round(suffix_only, 2),
        "prefix_forward_s": round(with_prefix - suffix_only, 2),
        "generator_stats": dict(gen.stats),
    }
    if total_gen_seconds:
        prof["cli_generation_s"] = round(total_gen_seconds, 2)
        prof["decoding_s"] = round(total_gen_seconds - with_prefix, 2)
    return prof


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="first N GSM8K test questions (default 64)")
    ap.add_argument("--data-dir", default=os.environ.get("MATHRL_DATA_DIR"), help="GSM8K dir with train.jsonl/test.jsonl (default $MATHRL_DATA_DIR)")
    ap.add_argument("--lmeval-bin", default="/tmp/lmeval-venv/bin/lm_eval", help="lm_eval executable of the separate venv")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=256, help="lm-eval's HF max_gen_toks default is 256")
    ap.add_argument("--sampler", choices=("default", "first_n"), default="default",
                    help="lm-eval shot sampler: default (stock gsm8k.yaml: seeded random per question = mathrl's lm-eval-gsm8k) "
                         "or first_n (= lm-eval-gsm8k-first5)")
    ap.add_argument("--prompts-only", action="store_true", help="no model: compare lm-eval's own prompts with mathrl's, both samplers")
    ap.add_argument("--lmeval-python", default=None, help="python with lm_eval for --prompts-only (see above)")
    ap.add_argument("--mathrl-task", choices=("gsm8k", "jsonl"), default="gsm8k")
    ap.add_argument("--workdir", default=None, help="where the yaml, data subset and outputs go (default: a new temp dir)")
    ap.add_argument("--skip-lmeval", action="store_true", help="reuse the lm-eval output already in --workdir")
    ap.add_argument("--skip-mathrl", action="store_true", help="reuse the mathrl output already in --workdir")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    args = ap.parse_args(argv)
    if not args.data_dir:
        raise SystemExit("give --data-dir or set MATHRL_DATA_DIR (a directory with GSM8K train.jsonl and test.jsonl)")
    src = Path(args.data_dir).resolve()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lmeval-compare-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if str(work).startswith(str(Path(__file__).resolve().parents[1]) + os.sep):
        raise SystemExit("--workdir must be outside the repository (it holds a copy of GSM8K rows)")

    from mathrl.grading import answers_match
    from mathrl.engine.models import resolve
    from mathrl.prompts.formats import Protocol, preset

    # The first N test rows, and the train split beside them (a symlink, not a copy).
    subset = work / "gsm8k_first"
    subset.mkdir(exist_ok=True)
    with (src / "test.jsonl").open() as f:
        rows = [line for line in (next(f, "") for _ in range(args.n)) if line.strip()]
    (subset / "test.jsonl").write_text("".join(rows))
    train_link = subset / "train.jsonl"
    if not train_link.exists():
        train_link.symlink_to(src / "train.jsonl")

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(work / "hf_datasets_cache"), TOKENIZERS_PARALLELISM="false")
    if args.prompts_only:
        result = compare_prompts(args, src, work, env)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0 if all(result[s]["identical"] == args.n for s in PRESET) else 1

    task_name = "gsm8k_local"
    tasks_dir = work / "tasks"
    write_task_yaml(tasks_dir, task_name, src, args.sampler)
    model_dir = resolve(args.model)[0]
    lm_out = work / "lmeval_out"
    timings: dict[str, float] = {}
    if not args.skip_lmeval:
        lm_dtype = "bfloat16" if args.dtype == "bf16" else "float32"
        cmd = [args.lmeval_bin, "--model", "hf", "--model_args", f"pretrained={model_dir},dtype={lm_dtype}",
               "--tasks", task_name, "--include_path", str(tasks_dir), "--device", "cpu",
               "--batch_size", str(args.batch_size), "--limit", str(args.n), "--num_fewshot", "5",
               "--gen_kwargs", f"max_gen_toks={args.max_new_tokens}",
               "--log_samples", "--output_path", str(lm_out)]
        timings["lmeval_wall_s"] = run_timed(cmd, work / "lmeval.log", env)

    mr_out = work / "mathrl_out"
    if not args.skip_mathrl:
        cmd = [sys.executable, "-m", "mathrl", "eval", "--model", args.model, "--protocol", PRESET[args.sampler],
               "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
               "--dtype", args.dtype, "--output-dir", str(mr_out), "--overwrite"]
        if args.mathrl_task == "gsm8k":
            cmd += ["--task", "gsm8k", "--data-dir", str(subset)]
        else:
            cmd += ["--task", "jsonl", "--task-arg", f"path={subset / 'test.jsonl'}", "--task-arg", f"train_path={src / 'train.jsonl'}"]
        timings["mathrl_wall_s"] = run_timed(cmd, work / "mathrl.log", env)

    lm_docs, lm_results = load_lmeval_samples(lm_out, task_name)
    mr_summary = json.loads((mr_out / "summary.json").read_text())
    mr_rows = read_jsonl(mr_out / "results.jsonl")
    # ids end in the test row index: gsm8k-main-test-<i> (gsm8k task) or test-<i> (jsonl task)
    mr_by_doc = {int(r["id"].rsplit("-", 1)[1]): r for r in mr_rows}
    docs = sorted(set(lm_docs) & set(mr_by_doc))
    n = len(docs)

    fmt = Protocol(**preset(PRESET[args.sampler])).resolved_format()
    cmp: dict[str, Any] = {"n": n}
    cmp["prompts_identical"] = sum(lm_docs[d].get("context") == mr_by_doc[d]["prompt"] for d in docs)
    cmp["completions_identical"] = sum(lm_docs[d]["completion"] == mr_by_doc[d]["completion"] for d in docs)
    cmp["completions_identical_after_strip"] = sum(lm_docs[d]["completion"].strip() == mr_by_doc[d]["completion"].strip() for d in docs)
    for kind in ("strict", "flexible"):
        lm_k = sum(lm_docs[d][kind] for d in docs)
        mr_k = sum(bool(mr_by_doc[d][f"correct_{kind}"]) for d in docs)
        cmp[f"lmeval_{kind}"] = lm_k
        cmp[f"mathrl_{kind}"] = mr_k
        cmp[f"verdicts_differ_{kind}"] = sum(lm_docs[d][kind] != bool(mr_by_doc[d][f"correct_{kind}"]) for d in docs)
        # lm-eval's completions graded by mathrl: tells grading differences from generation differences
        regraded = [answers_match(getattr(fmt, f"extract_{kind}")(lm_docs[d]["completion"]), mr_by_doc[d]["gold"]) for d in docs]
        cmp[f"lmeval_regraded_by_mathrl_{kind}"] = sum(regraded)
        cmp[f"grader_disagreements_{kind}"] = sum(r != lm_docs[d][kind] for r, d in zip(regraded, docs))
    lm_total = lm_results.get("total_evaluation_time_seconds")
    gen = mr_summary.get("generation", {})

    prof = None
    if not args.no_profile:
        print("profiling mathrl generation (max_new_tokens=1 runs) ...", flush=True)
        prof = profile_mathrl(args, subset, gen.get("seconds"))

    # ---- report
    def pct(k: int) -> str:
        return f"{k}/{n} = {k / n:.1%}" if n else "-"

    print()
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; lm-eval venv: lm_eval/torch/transformers {lmeval_version(args.lmeval_bin)}")
    print(f"questions: first {n} GSM8K test rows, 5-shot ({'first 5 train rows' if args.sampler == 'first_n' else 'lm-eval default sampler (seeded, per question)'}), "
          f"greedy, max {args.max_new_tokens} new tokens, batch {args.batch_size}, {args.dtype}; workdir {work}")
    w = 34
    print(f"{'':<{w}} {'lm-eval':>14} {'mathrl':>14}")
    lm_wall, mr_wall = timings.get("lmeval_wall_s"), timings.get("mathrl_wall_s")
    fmt_s = lambda x: f"{x:.1f} s" if x else "-"  # noqa: E731
    print(f"{'wall time (whole command)':<{w}} {fmt_s(lm_wall):>14} {fmt_s(mr_wall):>14}")
    oc = lambda k: "-" if OTHER_CORES.get(k) is None else f"{OTHER_CORES[k]:.2f}"  # noqa: E731
    print(f"{'cores busy with other processes':<{w}} {oc('lmeval'):>14} {oc('mathrl'):>14}")
    print(f"{'evaluation time (own report)':<{w}} {fmt_s(float(lm_total) if lm_total else None):>14} {fmt_s(mr_summary.get('wall_seconds')):>14}")
    print(f"{'strict accuracy':<{w}} {pct(cmp['lmeval_strict']):>14} {pct(cmp['mathrl_strict']):>14}")
    print(f"{'flexible accuracy':<{w}} {pct(cmp['lmeval_flexible']):>14} {pct(cmp['mathrl_flexible']):>14}")
    if lm_wall and mr_wall:
        cmp["speed_ratio_wall"] = round(lm_wall / mr_wall, 2)
        print(f"speed ratio (lm-eval wall / mathrl wall): {cmp['speed_ratio_wall']:.2f}x  (target >= 3x)")
    if lm_total and mr_summary.get("wall_seconds"):
        cmp["speed_ratio_eval"] = round(float(lm_total) / mr_summary["wall_seconds"], 2)
        print(f"speed ratio (own evaluation times): {cmp['speed_ratio_eval']:.2f}x")
    print(f"prompts identical: {cmp['prompts_identical']}/{n}; completions identical: {cmp['completions_identical']}/{n} "
          f"({cmp['completions_identical_after_strip']}/{n} ignoring surrounding whitespace)")
    print(f"questions whose verdicts differ: strict {cmp['verdicts_differ_strict']}, flexible {cmp['verdicts_differ_flexible']}")
    print(f"lm-eval's completions regraded by mathrl: strict {pct(cmp['lmeval_regraded_by_mathrl_strict'])}, "
          f"flexible {pct(cmp['lmeval_regraded_by_mathrl_flexible'])} "
          f"(grader disagreements: strict {cmp['grader_disagreements_strict']}, flexible {cmp['grader_disagreements_flexible']})")
    if gen:
        print(f"mathrl generation: {gen.get('generated_tokens')} tokens in {gen.get('seconds', 0):.1f} s = "
              f"{gen.get('tokens_per_second')} tok/s; prompt tokens {gen.get('prompt_tokens')}, shared prefix {gen.get('prefix_tokens')}")
    if prof:
        print("mathrl time profile:")
        print(f"  prompt tokens: {prof['prompt_tokens_total']} ({prof['prompt_tokens_mean']}/question), of which shared prefix "
              f"{prof['shared_prefix_tokens']} (computed once) and per-question {prof['per_question_tokens_total']} "
              f"({prof['per_question_tokens_mean']}/question)")
        print(f"  shared prefix forward:      {prof['prefix_forward_s']:.2f} s")
        print(f"  per-question prompt prefill: {prof['prefill_per_question_only_s']:.2f} s (incl. KV copy and 1 decode step per batch)")
        if "decoding_s" in prof:
            print(f"  decoding (CLI generation {prof['cli_generation_s']:.1f} s minus the above): {prof['decoding_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "timings": timings, "other_cores_busy": OTHER_CORES, "comparison": cmp, "profile": prof,
                                               "lmeval_total_evaluation_time_seconds": lm_total,
                                               "mathrl_summary": {k: mr_summary.get(k) for k in ("accuracy_strict", "accuracy_flexible", "wall_seconds", "generation", "versions")},
                                               "workdir": str(work)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
