"""Evaluation decoding as a fraction of this machine's fp32 ceiling, measured on the spot.

The ceiling: one decode step of the embedded SmolLM2-135M at batch B is, for its matmuls, a GEMM of
B rows through every linear layer (q, k, v, o, gate, up, down × layers) and the LM head. Each of those
GEMMs is timed alone here (torch.nn.functional.linear, the model's dtype, its exact shapes, median
of --repeats), and their sum is the fastest a decode step can be on this machine with these kernels:
ceiling tokens/s = B ÷ that sum. Attention over the KV cache, norms, sampling and Python are left
out of the ceiling (they are what the measured path adds).

The measured rate: `mathrl.engine.generation.HFGenerator` (the evaluation path) on B arithmetic prompts,
decode steps only — the time of a 1 + N-token run minus that of a 1-token run (the prefill),
divided into the tokens generated (the same split as `mathrl.experiments.budget.calibrate`). Rows that end
early leave the batch (the engine compacts it); the occupancy printed says how full it stayed, and
the ceiling is for a full batch, so the fraction is conservative when occupancy is below 1.

    python benchmarks/decode_ceiling.py                 # batch 32, 32 decode steps, 5 repeats
    python benchmarks/decode_ceiling.py --batch 64 --steps 64 --json out.json

Prints the CPU flags, the load before and during the run, both rates and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from machine import Contention, cpu_flags, cpu_name, gemm_seconds, linear_shapes


def measured_decode(model, tok, batch: int, steps: int, repeats: int) -> float:
    from mathrl.prompts import formats
    from mathrl.engine.decoding import DecodingSettings
    from mathrl.engine.generation import HFGenerator
    from mathrl.tasks import get_task

    samples = get_task("arithmetic", "1-2").load_test()[:batch]
    proto = formats.Protocol(format="gsm8k")
    prompts = [formats.build_prompt(s.question, proto, tok) for s in samples]
    gen = HFGenerator(model, tok, batch_size=batch, progress=False, segment_tokens=16)
    gen.generate(prompts[:2], DecodingSettings(max_new_tokens=2))
    rates, occupancy = [], []
    for _ in range(repeats):
        timed = []
        for new in (1, 1 + steps):
            start = time.perf_counter()
            outs = gen.generate(prompts, DecodingSettings(max_new_tokens=new))
            timed.append((time.perf_counter() - start, sum(c[0].num_tokens for c in outs)))
        (prefill_s, first), (both_s, total) = timed
        rates.append((total - first) / max(both_s - prefill_s, 1e-9))
        occupancy.append((total - first) / (batch * steps))  # < 1: rows that ended early left the batch
    return statistics.median(rates), statistics.median(occupancy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="auto", help="auto | fp32 | bf16 (auto: what mathrl eval picks here)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from mathrl.engine import models

    model, tok, info = models.load_model("smollm2-135m", args.dtype)
    dtype = next(model.parameters()).dtype
    shapes = linear_shapes(model)
    with Contention() as load:
        ceiling = args.batch / gemm_seconds(shapes, args.batch, dtype, args.repeats)
        measured, occupancy = measured_decode(model, tok, args.batch, args.steps, args.repeats)
    flags = ",".join(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")) or "none"
    res = {"cpu": cpu_name(), "flags": flags, "threads": torch.get_num_threads(), "dtype": str(dtype),
           "batch": args.batch, "decode_steps": args.steps, "linear_layers": len(shapes),
           "ceiling_tokens_per_s": round(ceiling, 1), "measured_tokens_per_s": round(measured, 1),
           "fraction_of_ceiling": round(measured / ceiling, 3), "row_occupancy": round(occupancy, 3),
           "other_cores_busy": load.other_cores}
    print(f"{res['cpu']} ({flags}), {res['threads']} threads, {dtype}, batch {args.batch}: "
          f"GEMM ceiling {ceiling:.0f} tok/s, HFGenerator decode {measured:.0f} tok/s = {measured / ceiling:.0%} of it "
          f"(median of {args.repeats}; rows still decoding: {occupancy:.0%} of batch × steps); "
          f"other processes kept {load.other_cores} cores busy")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
