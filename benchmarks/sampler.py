"""The inverse-CDF sampler: exactness and cost, float64 (mathrl now) against float32 (before), same run.

For a decode step of B rows over a V-token vocabulary (default 32 x 49,152, SmolLM2's), prints:
- the total-variation distance between the distribution each sampler implements (its CDF steps) and the
  exact softmax (float64), and the smallest token probability it can draw;
- the median time of one sampling call over --repeats calls, and the ratio to the float32 baseline.

    python benchmarks/sampler.py --rows 32 --vocab 49152 --repeats 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from machine import cpu_name

from mathrl.engine.decoding import InverseCDFSampler


def float32_sampler(scores: torch.Tensor) -> torch.Tensor:
    """The sampler before the fix: float32 cumulative sums and uniforms."""
    cdf = torch.softmax(scores.float(), dim=-1).cumsum_(-1)
    u = torch.rand(cdf.size(0), 1) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)
    return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def implied_tv(scores: torch.Tensor, dtype: torch.dtype) -> float:
    exact = torch.softmax(scores.double(), -1)
    cdf = torch.softmax(scores.to(dtype) if dtype == torch.float64 else scores.float(), -1).cumsum(-1).double()
    implied = torch.diff(cdf, prepend=cdf.new_zeros(cdf.size(0), 1)) / cdf[:, -1:]
    return float(0.5 * (implied - exact).abs().sum(-1).max())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=49_152)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    torch.manual_seed(0)
    scores = torch.randn(args.rows, args.vocab) * 3.0  # a peaked LM-like distribution with a long tail
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")})
    print(f"machine: {cpu_name()} ({os.cpu_count()} cores; flags {' '.join(flags)}); load {os.getloadavg()[0]:.2f}")
    print(f"{args.rows} rows x {args.vocab} tokens, {args.repeats} calls each")
    rows = []
    for name, fn, dtype in (("float32 (before; baseline)", float32_sampler, torch.float32),
                            ("float64 (mathrl)", lambda s: InverseCDFSampler()(None, s), torch.float64)):
        fn(scores)  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(scores)
            times.append(time.perf_counter() - t0)
        rows.append((name, implied_tv(scores, dtype), statistics.median(times) * 1e3))
    base = rows[0][2]
    print(f"{'sampler':28s} {'TV to softmax':>14s} {'median ms/call':>15s} {'vs baseline':>12s}")
    for name, tv, ms in rows:
        print(f"{name:28s} {tv:14.2e} {ms:15.2f} {ms / base:11.2f}x")


if __name__ == "__main__":
    main()
