"""CPU decode step time by attention kernel, with a long KV cache (the 5-shot GSM8K case).

For each kernel: prefill a batch of `--batch` rows of `--cache` tokens once, then time `--steps`
single-token decode steps on that cache (the cache is cropped back before each step, so every step
sees the same length). Prints the median step time and the ratio to the named baseline, `eager`
(transformers' eager attention, mathrl's CPU bf16 default before `mathrl_gqa`).

    python benchmarks/decode_attention.py --batch 32 --cache 750 --steps 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mathrl.engine import cpu_attention
from mathrl.engine import models


def time_decode(model, impl: str, batch: int, cache_len: int, steps: int) -> float:
    from transformers import DynamicCache

    model.set_attn_implementation(impl)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20_000, (batch, cache_len), generator=g)
    step_ids = torch.randint(100, 20_000, (batch, 1), generator=g)
    mask = torch.ones(batch, cache_len + 1, dtype=torch.long)
    times = []
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, cache=cache, use_cache=True)
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            model(input_ids=step_ids, attention_mask=mask, cache=cache, use_cache=True)
            times.append(time.perf_counter() - t0)
            cache.crop(-1)  # back to the prompt length
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cache", type=int, default=750)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--kernels", default="eager,mathrl_gqa,sdpa")
    args = ap.parse_args()
    cpu_attention.register()
    model, _, _ = models.load_model(args.model, args.dtype, device="cpu")
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}")
    results = {k: time_decode(model, k, args.batch, args.cache, args.steps) for k in args.kernels.split(",")}
    base = results.get("eager")
    print(f"decode step, {args.model} {args.dtype}, batch {args.batch}, cache {args.cache}, median of {args.steps}")
    for k, t in results.items():
        ratio = f"{base / t:.2f}x vs eager" if base else ""
        print(f"{k:12s} {t * 1000:8.1f} ms  {args.batch / t:7.1f} tokens/s  {ratio}")


if __name__ == "__main__":
    main()
