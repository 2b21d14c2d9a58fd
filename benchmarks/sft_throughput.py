"""SFT training throughput on the embedded model: full vs LoRA, bf16 vs fp32, in one run.

Prints the median training tokens/s per setting (steps after the first two), the ratio to the named
baseline (full fine-tuning in fp32) and the share of this CPU's bf16 ceiling that 6·N·tokens FLOPs
reach (N = model parameters; LoRA skips weight gradients, so its ceiling share is an upper bound).

    python benchmarks/sft_throughput.py --steps 6 --settings full-auto,full-bf16,full-fp32,lora-auto
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from mathrl import config as cfgmod
from mathrl.train.common import read_log
from mathrl.train.sft import SFTRunConfig, build_trainer

SETTINGS = {  # name: (method, dtype)
    "full-fp32": ("full", "fp32"),  # baseline
    "full-auto": ("full", "auto"),  # fp32 master weights + bf16 autocast (the default)
    "full-bf16": ("full", "bf16"),  # bf16 weights
    "lora-auto": ("lora", "auto"),
    "lora-bf16": ("lora", "bf16"),
}


def measure(name: str, steps: int, batch_size: int, ceiling_gflops: float) -> dict:
    method, dtype = SETTINGS[name]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfgmod.build(SFTRunConfig, dict(
            model="smollm2-135m", task="arithmetic", task_config="1-2", num_samples=batch_size * (steps + 2),
            batch_size=batch_size, max_steps=steps + 2, method=method, dtype=dtype, learning_rate=1e-4,
            save_steps=10_000, max_length=256, output_dir=tmp))
        trainer, _, _, _ = build_trainer(cfg)
        params = sum(p.numel() for p in trainer.model.parameters())
        trainer.train()
        rows = [r for r in read_log(Path(tmp) / "train_log.jsonl") if "tokens_per_second" in r]
    rates = [r["tokens_per_second"] for r in rows][1:]  # the first logged rate includes warm-up
    tps = statistics.median(rates)
    return {"setting": name, "tokens_per_s": tps, "steps_measured": len(rates),
            "ceiling_share": 6 * params * tps / (ceiling_gflops * 1e9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="measured optimizer steps per setting")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--settings", default="full-fp32,full-auto,full-bf16,lora-auto,lora-bf16")
    ap.add_argument("--ceiling-gflops", type=float, default=750.0, help="bf16 matmul peak of this machine")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    results = [measure(n, args.steps, args.batch_size, args.ceiling_gflops) for n in names]
    base = next((r for r in results if r["setting"] == "full-fp32"), results[0])
    print(f"\nSFT throughput, smollm2-135m, arithmetic 1-2, batch {args.batch_size}, median of {args.steps} steps")
    print(f"{'setting':12s} {'tokens/s':>9s} {'vs ' + base['setting']:>14s} {'bf16 ceiling':>13s}")
    for r in results:
        r["ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"{r['setting']:12s} {r['tokens_per_s']:9.1f} {r['ratio']:13.2f}x {r['ceiling_share']:12.1%}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
