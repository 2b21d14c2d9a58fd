"""Where a GRPO step's time goes, each part as a fraction of its limit measured on the spot.

Runs `mathrl grpo` (in this process) for --steps + 1 steps at the settings of a GRPO config file
(default: the demo's recipe, `configs/grpo/arithmetic_cpu.yaml`: 16 prompts x 8 completions, <= 96
tokens), from --model, and reads the per-step breakdown the trainer logs (`timing/*`,
mathrl.train.step_timing). The first step is warm-up and not counted. Limits, measured here:

* generation: the decode ceiling of `decode_ceiling.py` — the summed time of every linear layer's GEMM
  for the rows decoding, per token — at the step's mean number of rows, times the generated tokens.
  Prefill, attention, sampling and rows that finish early are what the engine adds on top.
* training passes (forward + backward): 6 x non-embedding parameters x the tokens the passes must
  run (every distinct prompt once, every real completion token) + 6 x LM-head parameters x the
  completion tokens, over the GEMM peak of the model's linear shapes at the batch's token count.
  The forward alone is given 1/3 of that work.

The fraction printed is limit time / measured time (1.0 = at the limit).

    python benchmarks/grpo_breakdown.py --model runs/demo/sft --steps 3
    python benchmarks/grpo_breakdown.py --model runs/demo/sft --set micro_batch_size=32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from machine import Contention, cpu_flags, cpu_name, gemm_peak_gflops, gemm_seconds, linear_shapes

PARTS = ("generate", "refill", "rewards", "old_logprobs", "reference", "forward", "backward", "optimizer", "other")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def run(config: str, model: str, steps: int, overrides: dict) -> tuple[list[dict], object, dict]:
    import yaml

    from mathrl import config as cfgmod
    from mathrl.train.grpo import GRPORunConfig, run_grpo

    values = yaml.safe_load(Path(config).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        values.update(model=model, max_steps=steps + 1, max_minutes=None, save_steps=10_000, output_dir=tmp,
                      **overrides)
        cfg = cfgmod.build(GRPORunConfig, values)
        with Contention() as busy:
            record = run_grpo(cfg)
        rows = [json.loads(x) for x in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "timing/forward" in r][1:]
    return rows, cfg, {"other_cores": busy.other_cores, "record_timing": record["timing"]}


def limits(cfg, rows: list[dict]) -> dict[str, float]:
    """Seconds each part would take at this machine's measured GEMM rates (see the module docstring)."""
    import torch

    from mathrl.engine import models

    model, tok, _ = models.load_model(cfg.model, cfg.weight_dtype())
    dtype = torch.bfloat16 if cfg.half_compute(models.cpu_has_fast_bf16()) else torch.float32
    shapes = linear_shapes(model)
    head = model.get_output_embeddings()
    head_params = head.in_features * head.out_features
    body = [s for s in shapes if s != (head.in_features, head.out_features)]
    body_params = sum(k * n for k, n in body)
    completions = cfg.completions_per_step() * cfg.grad_accum
    groups = completions // cfg.num_generations
    from mathrl.train.rl import training_prompts
    from mathrl.prompts import formats

    proto = cfg.protocol()
    prompt_tokens = statistics.mean(len(tok(formats.build_prompt(s.question, proto, tok), add_special_tokens=False)
                                        ["input_ids"]) for s in training_prompts(cfg)[:64])
    mean_len = statistics.mean(r["completions/mean_length"] for r in rows)
    drawn = completions * (1 + statistics.mean(r.get("dynamic/extra_prompts", 0) for r in rows) / max(1, groups))
    # decode: a GEMM step at the mean occupancy (half the rows, as rows finish) per generated token
    per_row = gemm_seconds(shapes, max(1, completions // 2), dtype, repeats=3) / max(1, completions // 2)
    gen_tokens = mean_len * completions
    refill_tokens = mean_len * (drawn - completions)
    train_tokens = groups * prompt_tokens + completions * mean_len
    peak = gemm_peak_gflops(shapes, int(train_tokens / cfg.micro_batches()), dtype) * 1e9
    train_flops = 6 * body_params * train_tokens + 6 * head_params * completions * mean_len
    del model
    return {"generate": gen_tokens * per_row, "refill": refill_tokens * per_row, "forward": train_flops / 3 / peak,
            "backward": 2 * train_flops / 3 / peak, "_train_tokens": train_tokens, "_prompt_tokens": prompt_tokens,
            "_mean_completion": mean_len, "_peak_gflops": peak / 1e9, "_dtype": str(dtype).replace("torch.", "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/grpo/arithmetic_cpu.yaml")
    ap.add_argument("--model", required=True, help="the policy to start from (e.g. the demo's SFT model)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a GRPO setting")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    overrides = dict((k, _value(v)) for k, v in (s.split("=", 1) for s in args.set))
    load_start = os.getloadavg()
    rows, cfg, extra = run(args.config, args.model, args.steps, overrides)
    lim = limits(cfg, rows)
    med = {p: statistics.median(r[f"timing/{p}"] for r in rows) for p in PARTS}
    step = statistics.median(r["step_time"] for r in rows) + med["optimizer"]
    print(f"\nGRPO step breakdown: {args.config} {overrides or ''}, from {args.model}; {len(rows)} measured steps")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, flags: {' '.join(cpu_flags()) or 'none of avx2/avx512_bf16/amx'};"
          f" compute {lim['_dtype']}; load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}; "
          f"other processes kept {extra['other_cores']} cores busy")
    print(f"step: {cfg.completions_per_step() * cfg.grad_accum} completions, mean {lim['_mean_completion']:.1f} tokens, "
          f"prompt ~{lim['_prompt_tokens']:.0f} tokens; training passes run {lim['_train_tokens']:.0f} tokens "
          f"({cfg.micro_batches()} micro-batch(es)); GEMM peak at that size {lim['_peak_gflops']:.0f} GFLOP/s")
    print(f"{'part':<14}{'median s':>10}{'share':>8}{'limit s':>10}{'of limit':>10}")
    out = []
    for p in PARTS:
        limit = lim.get(p)
        frac = limit / med[p] if limit is not None and med[p] > 0 else None
        out.append({"part": p, "median_s": round(med[p], 3), "share": round(med[p] / step, 3),
                    "limit_s": None if limit is None else round(limit, 3), "fraction": None if frac is None else round(frac, 3)})
        print(f"{p:<14}{med[p]:>10.2f}{med[p] / step:>8.1%}{'' if limit is None else f'{limit:.2f}':>10}"
              f"{'' if frac is None else f'{frac:.0%}':>10}")
    print(f"{'step':<14}{step:>10.2f}")
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "overrides": overrides, "model": args.model, "cpu": cpu_name(),
                                         "flags": cpu_flags(), "load_start": load_start, **extra, "limits": lim,
                                         "parts": out, "step_s": step, "steps": rows}, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
