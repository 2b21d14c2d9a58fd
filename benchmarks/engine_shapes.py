"""Prefill and decode at the evaluation engine's long-prompt shapes, by attention kernel and KV cache.

(1) Prefill of `--prefill-rows` x `--prefill-len` tokens (one forward, no grad, causal, 10% left padding)
    as a fraction of this machine's matmul peak measured on the spot at the same rows (machine.py's
    `gemm_peak_gflops`): achieved GFLOP/s counts the linear layers (2·N·tokens) and the causal
    attention (2·2·L²/2·d·heads per row per layer), padding included.
(2) One decode step of `--batch` rows at `--caches` cached tokens (median of `--steps`, transformers'
    DynamicCache); the ratio of the longest to the shortest cache says how a step's cost grows with it.
(0) With --layer-sweep: one layer's attention, copy-free kernel vs SDPA, forward and forward+backward at
    the shapes that set cpu_attention's per-call rule (then exits).
(3) Why the cache stays DynamicCache on CPU: one layer's decode attention at the longest cache over
    contiguous K/V (what DynamicCache's cat-on-append hands attention) vs over the strided views a
    preallocated cache would hand it (torch's CPU bmm copies them first), and the cat itself.
Kernels: `mathrl_gqa` (the copy-free decode kernel alone, mathrl's CPU bf16 default before per-call
routing: `--kernels` picks it through a registered alias) and `mathrl_cpu` (per call: SDPA for prefill,
the copy-free kernel for decode); fp32 runs use sdpa.

    python benchmarks/engine_shapes.py                       # bf16 on a bf16-capable CPU, else fp32
    python benchmarks/engine_shapes.py --dtype fp32 --kernels sdpa
"""

from __future__ import annotations

import argparse
import statistics
import time

from machine import Contention, cpu_flags, cpu_name, gemm_peak_gflops, linear_shapes


def register_gqa_only() -> str:
    """The decode kernel for every call, as before per-call routing (the baseline for prefill)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    from mathrl.engine import cpu_attention

    AttentionInterface.register("mathrl_gqa", cpu_attention.gqa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register("mathrl_gqa", eager_mask)
    return "mathrl_gqa"


def prefill_seconds(model, rows: int, length: int, repeats: int) -> float:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20_000, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[:, : length // 10] = 0
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_seconds(model, batch: int, cached: int, steps: int) -> float:
    """Median time of one decode step at `cached` tokens (the cache is cropped back after each step)."""
    import torch
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 20_000, (batch, cached), generator=g)
    step_ids = torch.randint(100, 20_000, (batch, 1), generator=g)
    mask = torch.ones(batch, cached + 1, dtype=torch.long)
    cache = DynamicCache(config=model.config)
    times = []
    with torch.no_grad():
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        for _ in range(steps + 1):
            start = time.perf_counter()
            model(input_ids=step_ids, attention_mask=mask, cache=cache, use_cache=True)
            times.append(time.perf_counter() - start)
            cache.crop(-1)
    return statistics.median(times[1:])


def layer_attention_ms(cfg, batch: int, cached: int, dtype, repeats: int = 30) -> dict[str, float]:
    """One layer's decode attention (the copy-free kernel) over contiguous vs strided K/V, and one cat."""
    import torch

    from mathrl.engine.cpu_attention import gqa_attention_forward

    kv, heads = cfg.num_key_value_heads, cfg.num_attention_heads
    dim = cfg.hidden_size // heads
    module = torch.nn.Module()
    module.training = False
    q = torch.randn(batch, heads, 1, dim, dtype=dtype)
    buf = torch.randn(batch, kv, cached + 256, dim, dtype=dtype)
    strided, contiguous = buf[:, :, :cached], buf[:, :, :cached].contiguous()
    step = torch.randn(batch, kv, 1, dim, dtype=dtype)
    mask = torch.zeros(batch, 1, 1, cached, dtype=dtype)

    def ms(fn) -> float:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        return statistics.median(runs[3:]) * 1000

    return {"contiguous": ms(lambda: gqa_attention_forward(module, q, contiguous, contiguous, mask, 0.125)),
            "strided": ms(lambda: gqa_attention_forward(module, q, strided, strided, mask, 0.125)),
            "cat": ms(lambda: torch.cat([contiguous, step], dim=2))}


LAYER_SHAPES = [(32, 100, True), (32, 150, False), (32, 200, False), (32, 250, True), (8, 300, False),
                (16, 512, True), (16, 1024, True)]  # (rows, tokens, also time forward alone)


def layer_sweep(cfg, dtype, repeats: int) -> None:
    """One layer's attention (10% left padding, additive mask), `gqa` vs transformers' SDPA, ms."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from mathrl.engine.cpu_attention import gqa_attention_forward

    module = torch.nn.Module()
    module.training, module.num_key_value_groups = False, cfg.num_attention_heads // cfg.num_key_value_heads
    dim = cfg.hidden_size // cfg.num_attention_heads

    def ms(fn, rows: int, length: int, backward: bool) -> float:
        q = torch.randn(rows, cfg.num_attention_heads, length, dim, dtype=dtype, requires_grad=backward)
        k, v = (torch.randn(rows, cfg.num_key_value_heads, length, dim, dtype=dtype, requires_grad=backward)
                for _ in range(2))
        pad = torch.zeros(rows, length, dtype=torch.bool)
        pad[:, : length // 10] = True
        allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & ~pad[:, None, :]
        mask = torch.zeros(rows, 1, length, length, dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
        runs = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            out, _ = fn(module, q, k, v, mask, scaling=dim ** -0.5)
            if backward:
                out.float().sum().backward()
            runs.append(time.perf_counter() - start)
        return statistics.median(runs[1:]) * 1000

    print("rows x tokens   forward gqa / sdpa (ms)   forward+backward gqa / sdpa (ms)")
    for rows, length, forward in LAYER_SHAPES:
        fwd = (f"{ms(gqa_attention_forward, rows, length, False):8.1f} / {ms(sdpa_attention_forward, rows, length, False):8.1f}"
               if forward else " " * 19)
        both = (f"{ms(gqa_attention_forward, rows, length, True):8.1f} / {ms(sdpa_attention_forward, rows, length, True):8.1f}"
                if length <= 512 else "")
        print(f"{rows:4d} x {length:5d}   {fwd}       {both}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--kernels", default="mathrl_gqa,mathrl_cpu")
    ap.add_argument("--prefill-rows", type=int, default=16)
    ap.add_argument("--prefill-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--caches", default="100,1000")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layer-sweep", action="store_true", help="only the per-layer kernel sweep (0)")
    args = ap.parse_args()

    import torch

    from mathrl.engine import cpu_attention, models

    model, _, _ = models.load_model("smollm2-135m", args.dtype, device="cpu")
    dtype = next(model.parameters()).dtype
    cpu_attention.register()
    register_gqa_only()
    cfg = model.config
    if args.layer_sweep:
        with Contention() as load:
            layer_sweep(cfg, dtype, args.repeats)
        flags = ",".join(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")) or "none"
        print(f"{cpu_name()} ({flags}), {dtype}; other processes kept {load.other_cores} cores busy")
        return
    rows, length = args.prefill_rows, args.prefill_len
    shapes = linear_shapes(model)
    lm_head = shapes[-1]
    linear_flops = 2 * rows * length * sum(k * n for k, n in shapes[:-1]) + 2 * rows * lm_head[0] * lm_head[1]
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attn_flops = cfg.num_hidden_layers * rows * 2 * length * length * head_dim * cfg.num_attention_heads
    caches = [int(c) for c in args.caches.split(",")]
    flags = ",".join(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")) or "none"
    print(f"{cpu_name()} ({flags}), {torch.get_num_threads()} threads, {dtype}")
    with Contention() as load:
        peak = gemm_peak_gflops(shapes[:-1], rows * length // 4, dtype)  # a quarter of the rows: same regime, less time
        print(f"matmul peak at these shapes: {peak:.0f} GFLOP/s")
        for kernel in args.kernels.split(","):
            model.set_attn_implementation(kernel)
            t = prefill_seconds(model, rows, length, args.repeats)
            achieved = (linear_flops + attn_flops) / t / 1e9
            print(f"prefill {rows} x {length}, {kernel:10s}: {t:6.2f} s  {rows * length / t:7.0f} tok/s  "
                  f"{achieved:5.0f} GFLOP/s = {achieved / peak:.0%} of peak")
            ts = [decode_seconds(model, args.batch, c, args.steps) for c in caches]
            steps = "  ".join(f"{c}: {s * 1000:6.1f} ms" for c, s in zip(caches, ts))
            print(f"decode batch {args.batch}, {kernel:10s}: {steps}  (x{ts[-1] / ts[0]:.2f} from {caches[0]} to "
                  f"{caches[-1]} cached)")
        layer = layer_attention_ms(cfg, args.batch, caches[-1], dtype)
        print(f"one layer's decode attention at {caches[-1]} cached: contiguous K/V {layer['contiguous']:.2f} ms, "
              f"strided views {layer['strided']:.2f} ms; one cat of K {layer['cat']:.2f} ms")
    print(f"other processes kept {load.other_cores} cores busy")


if __name__ == "__main__":
    main()
