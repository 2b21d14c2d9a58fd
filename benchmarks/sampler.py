"""The inverse-CDF sampler: exactness and cost of four versions in the same run: float32 softmax and
cumulative sum (the first, inexact: the baseline), float64 softmax and sum (exact, slow), float32 softmax
with one float64-accumulated sum, and the two-level search over float32 block masses (mathrl now).

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


def float64_sampler(scores: torch.Tensor) -> torch.Tensor:
    """The sampler of 2026-11 to 2026-12-02: float64 softmax and cumulative sum."""
    cdf = torch.softmax(scores.double(), dim=-1).cumsum_(-1)
    u = torch.rand(cdf.size(0), 1, dtype=torch.float64) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)
    return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


CDFS = {  # the distribution each version implements, as its cumulative sums
    "float32": lambda s: torch.softmax(s.float(), -1).cumsum(-1).double(),
    "float64": lambda s: torch.softmax(s.double(), -1).cumsum(-1),
    "f64sum": lambda s: torch.softmax(s.float(), -1).cumsum(-1, dtype=torch.float64),
    "mathrl": lambda s: InverseCDFSampler.probabilities(s).cumsum(-1),
}


def f64_sum_sampler(scores: torch.Tensor) -> torch.Tensor:
    """The sampler of 2026-12-02 to 2026-12-03: float32 softmax, one float64 cumulative sum over the vocabulary."""
    cdf = torch.softmax(scores.float(), dim=-1).cumsum(-1, dtype=torch.float64)
    u = torch.rand(cdf.size(0), 1, dtype=torch.float64) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)
    return scores.fill_(float("-inf")).scatter_(-1, token, 0.0)


def implied_tv(scores: torch.Tensor, version: str) -> float:
    exact = torch.softmax(scores.double(), -1)
    cdf = CDFS[version](scores)
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
    for name, fn, version in (("float32 (first; baseline)", float32_sampler, "float32"),
                              ("float64 (until 2026-12-02)", float64_sampler, "float64"),
                              ("f32 softmax, f64 sum (12-02)", f64_sum_sampler, "f64sum"),
                              ("two-level f64 search (now)", lambda s: InverseCDFSampler()(None, s), "mathrl")):
        fn(scores.clone())  # warm-up
        times = []
        for _ in range(args.repeats):
            batch = scores.clone()  # mathrl's sampler writes its answer over the scores
            t0 = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - t0)
        rows.append((name, implied_tv(scores, version), statistics.median(times) * 1e3))
    base = rows[0][2]
    print(f"{'sampler':28s} {'TV to softmax':>14s} {'median ms/call':>15s} {'vs baseline':>12s}")
    for name, tv, ms in rows:
        print(f"{name:28s} {tv:14.2e} {ms:15.2f} {ms / base:11.2f}x")


if __name__ == "__main__":
    main()
