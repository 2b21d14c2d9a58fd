"""Evaluation throughput: mathrl's batched HF generation vs a naive one-question-at-a-time loop.

Workload: the embedded SmolLM2-135M-Instruct, GSM8K test questions (the first --n, or a seeded
subset with --subset seeded), the gsm8k format with the chat template, 0-shot, greedy decoding,
--max-new-tokens per question. Three configurations, each timed --repeats times (median reported):

  naive      one question at a time, plain `model.generate`, bf16 (the baseline)
  mathrl-bf16  mathrl.engine.generation.HFGenerator, batched (--batch-size), bf16
  mathrl-fp32  the same in fp32

Generated tokens are counted up to (not including) the first end-of-sequence token, the same way
for all three. The naive loop may run on fewer questions (--naive-n): its rates are per token and
per question, so they compare with the batched ones. A fresh HFGenerator is made for every repeat,
so the shared-prefix KV computation is inside the timing.

    MATHRL_DATA_DIR=/path/to/gsm8k python benchmarks/eval_throughput.py
    python benchmarks/eval_throughput.py --n 64 --max-new-tokens 256 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from machine import Contention, cpu_name




def load_questions(args: argparse.Namespace) -> list[str]:
    from mathrl.tasks import get_task, subsample

    samples = get_task("gsm8k", data_dir=args.data_dir).load("test")
    if args.subset == "first":
        samples = samples[: args.n]
    else:
        samples = subsample(samples, args.n, args.seed)
    return [s.question for s in samples]


def build_prompts(questions: list[str], tokenizer: Any) -> list[str]:
    from mathrl.prompts.formats import Protocol, build_prompt

    proto = Protocol(format="gsm8k", chat_template=True, shots=0)
    return [build_prompt(q, proto, tokenizer) for q in questions]


def warm_up(model: Any, tokenizer: Any, prompt: str) -> None:
    """A few tokens through generate, untimed: first-call kernel selection and allocator growth."""
    import torch

    ids = tokenizer([prompt], add_special_tokens=False, return_tensors="pt").to(model.device)
    with torch.no_grad():
        model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)


def run_mathrl(model: Any, tokenizer: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from mathrl.engine.generation import HFGenerator, SamplingParams

    gen = HFGenerator(model, tokenizer, batch_size=args.batch_size, progress=False)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    t0 = time.perf_counter()
    outs = gen.generate(prompts, params)  # the chat template is already in the text
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "questions": len(prompts),
        "generated_tokens": sum(c[0].num_tokens for c in outs),
        "texts": [c[0].text for c in outs],
        "stats": dict(gen.stats),
    }


def run_naive(model: Any, tokenizer: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """The loop a user writes first: tokenize one prompt, generate, decode; no batching, no reuse."""
    import torch

    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id, model.generation_config.eos_token_id} - {None}
    eos_ids = sorted(eos)
    texts, generated = [], 0
    t0 = time.perf_counter()
    for p in prompts:
        enc = tokenizer([p], add_special_tokens=False, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids)
        seq = out[0, enc["input_ids"].shape[1] :].tolist()
        n = next((k for k, t in enumerate(seq) if t in eos), len(seq))
        generated += n
        texts.append(tokenizer.decode(seq[:n], skip_special_tokens=True))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "questions": len(prompts), "generated_tokens": generated, "texts": texts}


def summarize(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    tok_s = [r["generated_tokens"] / r["seconds"] for r in runs]
    q_s = [r["questions"] / r["seconds"] for r in runs]
    return {
        "name": name,
        "questions": runs[0]["questions"],
        "generated_tokens": [r["generated_tokens"] for r in runs],
        "seconds": [round(r["seconds"], 2) for r in runs],
        "tokens_per_s": [round(x, 1) for x in tok_s],
        "questions_per_s": [round(x, 3) for x in q_s],
        "median_tokens_per_s": statistics.median(tok_s),
        "median_questions_per_s": statistics.median(q_s),
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "other_cores_busy_each_run": [r.get("other_cores") for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="questions for the batched runs (default 64)")
    ap.add_argument("--naive-n", type=int, default=8, help="questions for the naive loop (default 8: it is slow; rates are per token and per question)")
    ap.add_argument("--subset", choices=("first", "seeded"), default="first",
                    help="first N test questions (default) or mathrl.tasks.subsample(N, --seed)")
    ap.add_argument("--seed", type=int, default=1234, help="seed for --subset seeded")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per configuration; the median is reported")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=None, help="GSM8K directory (else $MATHRL_DATA_DIR)")
    ap.add_argument("--skip-naive", action="store_true", help="no naive baseline (no ratios)")
    ap.add_argument("--skip-fp32", action="store_true", help="no fp32 run")
    ap.add_argument("--skip-bf16", action="store_true", help="no bf16 batched run")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed 8-token warm-up per dtype")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice, one per core)")
    ap.add_argument("--json", default=None, help="also write all measurements to this JSON file")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from mathrl.engine.models import cpu_has_fast_bf16, load_model

    if args.threads:
        torch.set_num_threads(args.threads)

    if not (args.data_dir or os.environ.get("MATHRL_DATA_DIR")):
        print("note: neither --data-dir nor MATHRL_DATA_DIR is set; GSM8K will be fetched from the hub", file=sys.stderr)
    questions = load_questions(args)
    n_naive = min(args.naive_n, len(questions))
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"fast bf16: {cpu_has_fast_bf16()}, cuda: {torch.cuda.is_available()}")
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"workload: {args.model}, GSM8K test {args.subset} {len(questions)} (naive: first {n_naive} of them), "
          f"gsm8k format + chat template, 0-shot, greedy, max_new_tokens={args.max_new_tokens}, "
          f"batch_size={args.batch_size}, repeats={args.repeats}")
    if hasattr(os, "getloadavg"):
        print(f"load average at start: {os.getloadavg()[0]:.2f}")

    plan = []
    if not args.skip_naive:
        plan.append(("naive", "bf16"))
    if not args.skip_bf16:
        plan.append(("mathrl-bf16", "bf16"))
    if not args.skip_fp32:
        plan.append(("mathrl-fp32", "fp32"))

    # Both models stay loaded and the repeats are interleaved (naive, bf16, fp32, naive, ...), so
    # that a load that comes and goes on a shared machine hits every configuration alike.
    loaded: dict[str, tuple[Any, Any, list[str]]] = {}
    for _, dtype in plan:
        if dtype not in loaded:
            model, tok, _ = load_model(args.model, dtype=dtype)
            prompts = build_prompts(questions, tok)
            if not args.no_warmup:
                warm_up(model, tok, prompts[0])
            loaded[dtype] = (model, tok, prompts)
    all_runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
    for r in range(args.repeats):
        for name, dtype in plan:
            model, tok, prompts = loaded[dtype]
            with Contention() as c:
                if name == "naive":
                    out = run_naive(model, tok, prompts[:n_naive], args)
                else:
                    out = run_mathrl(model, tok, prompts, args)
            out["other_cores"] = c.other_cores
            all_runs[name].append(out)
            print(f"  {name} run {r + 1}/{args.repeats}: {out['questions']} q, {out['generated_tokens']} tokens, "
                  f"{out['seconds']:.1f} s, {out['generated_tokens'] / out['seconds']:.1f} tok/s "
                  f"(other processes kept {out['other_cores']} cores busy)", flush=True)
    results: dict[str, dict[str, Any]] = {}
    texts: dict[str, list[str]] = {}
    for name, runs in all_runs.items():
        results[name] = summarize(name, runs)
        if "stats" in runs[0]:
            results[name]["generator_stats_first_run"] = runs[0]["stats"]
        texts[name] = runs[0]["texts"]

    base = results.get("naive")
    print()
    header = f"{'config':<13} {'questions':>9} {'gen tokens':>10} {'median s':>9} {'tok/s':>8} {'q/s':>7} {'tok/s vs naive':>15} {'q/s vs naive':>13}"
    print(header)
    print("-" * len(header))
    for name, res in results.items():
        rt = f"{res['median_tokens_per_s'] / base['median_tokens_per_s']:.2f}x" if base else "-"
        rq = f"{res['median_questions_per_s'] / base['median_questions_per_s']:.2f}x" if base else "-"
        res["ratio_tokens_per_s_vs_naive"] = None if not base else round(res["median_tokens_per_s"] / base["median_tokens_per_s"], 2)
        res["ratio_questions_per_s_vs_naive"] = None if not base else round(res["median_questions_per_s"] / base["median_questions_per_s"], 2)
        print(f"{name:<13} {res['questions']:>9} {statistics.median(res['generated_tokens']):>10.0f} {res['median_seconds']:>9.1f} "
              f"{res['median_tokens_per_s']:>8.1f} {res['median_questions_per_s']:>7.3f} {rt:>15} {rq:>13}")

    # Sanity: greedy outputs on the questions both ran (bf16 batched vs naive; fp32 vs bf16 batched).
    agreement = {}
    if "naive" in texts and "mathrl-bf16" in texts:
        same = sum(a == b for a, b in zip(texts["naive"], texts["mathrl-bf16"][:n_naive]))
        agreement["mathrl-bf16_vs_naive"] = f"{same}/{n_naive}"
    if "mathrl-bf16" in texts and "mathrl-fp32" in texts:
        same = sum(a == b for a, b in zip(texts["mathrl-bf16"], texts["mathrl-fp32"]))
        agreement["mathrl-fp32_vs_mathrl-bf16"] = f"{same}/{len(questions)}"
    if agreement:
        print("identical completions: " + ", ".join(f"{k} {v}" for k, v in agreement.items())
              + " (bf16 batching changes rounding, so some greedy paths diverge)")
    if "mathrl-bf16" in results:
        ok_abs = results["mathrl-bf16"]["median_tokens_per_s"] >= 300
        msg = f"targets: bf16 batched >= 300 tok/s: {'yes' if ok_abs else 'NO'}"
        if base:
            ok_rel = results["mathrl-bf16"]["ratio_tokens_per_s_vs_naive"] >= 5
            msg += f"; >= 5x naive: {'yes' if ok_rel else 'NO'}"
        print(msg)
    if hasattr(os, "getloadavg"):
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu": cpu_name(), "torch": torch.__version__,
                                               "transformers": transformers.__version__, "results": results,
                                               "agreement": agreement}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
