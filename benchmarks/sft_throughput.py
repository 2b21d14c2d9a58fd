"""SFT training throughput on the embedded model: mathrl's fast SFT path vs stock TRL, full vs LoRA,
fp32 vs bf16, in one run.

Settings are METHOD-DTYPE (mathrl's default FastSFTTrainer: each batch's shared prompt prefix runs
once, padding is not computed) or stock-METHOD-DTYPE (TRL's own SFTTrainer, the same workload). The
named baseline is `stock-full-fp32`: stock TRL, full fine-tuning, fp32. Prints the median training
tokens/s per setting (real tokens of the rows, prompt included, as TRL counts them; steps after the
first two), the ratio to the baseline, the share of this CPU's GEMM peak that 6·N·tokens FLOPs would reach
(N = model parameters; LoRA skips weight gradients and the fast path skips the prefix's repeats, so
for them it is an upper bound), the cores other processes kept busy, and the CPU flags. The peak is
measured on the spot (`machine.gemm_peak_gflops`: every linear layer of the model as a GEMM at the
batch's token count, in the setting's compute dtype: fp32, or bf16 where `auto` picks it) unless
`--ceiling-gflops` names one.
`--rounds R` runs the settings R times in turn (A B A B ...), so a change in machine load hits all.

    python benchmarks/sft_throughput.py --steps 6 --settings stock-full-fp32,full-fp32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from machine import Contention, cpu_flags, cpu_name

from mathrl import config as cfgmod
from mathrl.train.common import read_log
from mathrl.train.sft import SFTRunConfig, build_trainer

BASELINE = "stock-full-fp32"
METHODS, DTYPES = ("full", "lora"), ("fp32", "auto", "bf16")  # auto: fp32 master weights + bf16 autocast where fast


def parse_setting(name: str) -> tuple[str, str, bool]:
    """'stock-lora-auto' -> ('lora', 'auto', False); 'full-fp32' -> ('full', 'fp32', True)."""
    stock = name.startswith("stock-")
    method, _, dtype = name.removeprefix("stock-").partition("-")
    if method not in METHODS or dtype not in DTYPES:
        raise SystemExit(f"unknown setting {name!r}: [stock-]METHOD-DTYPE with METHOD in {METHODS}, DTYPE in {DTYPES}")
    return method, dtype, not stock


def workload(name: str, steps: int, batch_size: int, output_dir: str) -> SFTRunConfig:
    method, dtype, fast = parse_setting(name)
    return cfgmod.build(SFTRunConfig, dict(
        model="smollm2-135m", task="arithmetic", task_config="1-2", num_samples=batch_size * (steps + 2),
        batch_size=batch_size, max_steps=steps + 2, method=method, dtype=dtype, fast=fast, learning_rate=1e-4,
        save_steps=10_000, max_length=256, output_dir=output_dir))


def work_counts(steps: int, batch_size: int) -> dict:
    """Per batch of the workload, without training (so machine load does not enter): tokens the backbone
    runs and positions the LM head projects, fast path vs stock TRL on a CPU (without Triton its fused
    head projects every position, prompt and padding included)."""
    from collections import Counter

    from mathrl.train.sft_fast import CPU_CALL_TOKENS, MIN_PREFIX, plan_batch

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(workload("full-fp32", steps, batch_size, tmp))[0]
    data, total = trainer.train_dataset, Counter()
    for start in range(0, len(data), batch_size):
        b = trainer.data_collator([data[i] for i in range(start, min(start + batch_size, len(data)))])
        prefix, _, run = plan_batch(b["input_ids"], b["attention_mask"], b["labels"], MIN_PREFIX, CPU_CALL_TOKENS)
        labelled = b["labels"][:, 1:] != -100
        total.update(batches=1, prefix=prefix, real=int(b["attention_mask"].sum()), fast_backbone=run,
                     stock_backbone=b["input_ids"].numel(), fast_head=int(labelled.sum()), stock_head=labelled.numel())
    return {"batches": total["batches"], "mean_shared_prefix": total["prefix"] / total["batches"],
            "real_tokens_vs_padded": total["real"] / total["stock_backbone"],
            "backbone_tokens_vs_stock": total["fast_backbone"] / total["stock_backbone"],
            "lm_head_positions_vs_stock": total["fast_head"] / total["stock_head"]}


def measure(name: str, steps: int, batch_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _, _, _ = build_trainer(workload(name, steps, batch_size, tmp))
        params = sum(p.numel() for p in trainer.model.parameters())
        with Contention() as busy:
            trainer.train()
        rows = [r for r in read_log(Path(tmp) / "train_log.jsonl") if "tokens_per_second" in r]
    record = trainer.fast_path_record() if hasattr(trainer, "fast_path_record") else None
    return {"setting": name, "rates": [r["tokens_per_second"] for r in rows][1:],  # the first includes warm-up
            "params": params, "other_cores": busy.other_cores, "fast_path": record}


def compute_dtype(name: str) -> str:
    """The dtype a setting's matmuls run in: fp32, or bf16 (bf16 weights, or `auto` on a fast-bf16 CPU)."""
    from machine import auto_dtype

    dtype = parse_setting(name)[1]
    return auto_dtype() if dtype == "auto" else dtype


def measured_peaks(dtypes: set[str], rows: int) -> dict[str, float]:
    """GEMM GFLOP/s of the embedded model's linear layers at `rows` rows, per compute dtype."""
    import torch

    from machine import gemm_peak_gflops, linear_shapes
    from mathrl.engine import models

    model = models.load_model("smollm2-135m", "fp32")[0]
    shapes = linear_shapes(model)
    table = {"fp32": torch.float32, "bf16": torch.bfloat16}
    return {d: gemm_peak_gflops(shapes, rows, table[d]) for d in sorted(dtypes)}


def summarize(name: str, runs: list[dict], ceiling_gflops: float) -> dict:
    rates = [x for r in runs for x in r["rates"]]
    tps = statistics.median(rates)
    return {"setting": name, "tokens_per_s": tps, "min": min(rates), "max": max(rates), "steps_measured": len(rates),
            "ceiling_gflops": round(ceiling_gflops, 1),
            "ceiling_share": 6 * runs[0]["params"] * tps / (ceiling_gflops * 1e9),
            "other_cores": max((r["other_cores"] for r in runs if r["other_cores"] is not None), default=None),
            "fast_path": runs[-1]["fast_path"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="measured optimizer steps per setting and round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--settings", default="stock-full-fp32,full-fp32,full-auto,lora-auto")
    ap.add_argument("--rounds", type=int, default=1, help="run the settings this many times, in turn")
    ap.add_argument("--ceiling-gflops", type=float, default=None,
                    help="matmul peak of this machine (default: measured here, per compute dtype)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--work-only", action="store_true", help="only count the work per batch (seconds, any load)")
    args = ap.parse_args()
    names = args.settings.split(",")
    for n in names:
        parse_setting(n)
    if args.work_only:
        work = work_counts(args.steps, args.batch_size)
        print(f"work per batch of {args.batch_size}, fast path / stock TRL on CPU, over {work['batches']} batches: "
              f"backbone tokens {work['backbone_tokens_vs_stock']:.3f}, LM-head positions "
              f"{work['lm_head_positions_vs_stock']:.3f} (mean shared prefix {work['mean_shared_prefix']:.1f} tokens; "
              f"real tokens are {work['real_tokens_vs_padded']:.3f} of the padded batch)")
        return
    import torch

    flags = " ".join(cpu_flags()) or "none of avx2/avx512_bf16/amx"
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, flags: {flags}, torch threads {torch.get_num_threads()} (OMP_NUM_THREADS=1 on a shared machine: contended threads stall)")
    load_start = os.getloadavg()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            runs[n].append(measure(n, args.steps, args.batch_size))
    rows = args.batch_size * 96  # about a batch's tokens: arithmetic rows are ~82 tokens at batch 16
    peaks = ({d: args.ceiling_gflops for d in ("fp32", "bf16")} if args.ceiling_gflops
             else measured_peaks({compute_dtype(n) for n in names}, rows))
    results = [summarize(n, runs[n], peaks[compute_dtype(n)]) for n in names]
    base = next((r for r in results if r["setting"] == BASELINE), results[0])
    print(f"\nSFT throughput, smollm2-135m, arithmetic 1-2, batch {args.batch_size}, max length 256, "
          f"median of {args.steps} steps x {args.rounds} round(s) per setting")
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}; GEMM peak "
          + ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in peaks.items())
          + ("" if args.ceiling_gflops else f" (measured here, {rows} rows)"))
    print(f"{'setting':16s} {'tokens/s':>9s} {'min-max':>13s} {'vs ' + base['setting']:>20s} {'GEMM peak':>13s} "
          f"{'other cores':>12s} {'prefix':>7s} {'backbone tokens':>16s}")
    for r in results:
        r["ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        fp = r["fast_path"] or {}
        print(f"{r['setting']:16s} {r['tokens_per_s']:9.1f} {r['min']:6.1f}-{r['max']:<6.1f} {r['ratio']:19.2f}x "
              f"{r['ceiling_share']:12.1%} {r['other_cores'] if r['other_cores'] is not None else '?':>12} "
              f"{fp.get('mean_shared_prefix') or '-':>7} {fp.get('backbone_tokens_vs_stock') or 1.0:>16}")
    print("prefix: mean shared prefix tokens per batch; backbone tokens: tokens run / stock's padded batch")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "flags": cpu_flags(), "load_start": load_start,
                                         "load_end": os.getloadavg(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
