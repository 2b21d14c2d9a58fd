"""Peak memory of a training stage on the embedded model, against the arithmetic floor.

Cases (each its own `mathrl` process, so no peak leaks from one into another):
  sft-full   `mathrl sft --method full`, batch 16, arithmetic 1-2 (the memory issue's reference)
  sft-lora   the same with `--method lora` (r 16, all linear layers)
  grpo       `mathrl grpo` at the demo's settings (16 prompts x 8 completions <= 96 tokens, oversample 1,
             no refill rounds, full fine-tuning) from `--grpo-model` (default: the embedded model)
  imports    `python -c "import mathrl.train.grpo"`: the interpreter, torch, transformers and TRL alone

For each: the process's peak RSS as `/usr/bin/time -v` reports it (the child's `ru_maxrss` from
`os.wait4`), the stage record's per-part peaks (`memory_parts`: which part of a step reaches the peak,
sampled every 5 ms), and the floor: the imports' RSS plus fp32 weights, gradients and AdamW's two
moments of what trains (4 + 4 + 8 bytes a parameter; LoRA: the frozen weights, and 16 bytes per adapter
parameter), GRPO's bf16 sampling copy (2 bytes a parameter), its KV cache for the rows of one generation
call at the longest completion, and one LM-head tile's fp32 log-softmax (1,024 positions x vocabulary).
What is above the floor is activations, logits, allocator caching and copies: the breakdown names the
part of the step where it appears.

Simplified: the floor's activations are not modelled (a few hundred MB at these shapes); RSS counts
pages touched, so freed memory that glibc keeps cached still counts (as it does for the OS).

    python benchmarks/memory.py --cases sft-full,sft-lora,grpo --steps 3 --grpo-model runs/demo/sft
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("imports", "sft-full", "sft-lora", "grpo")
GIB = 2**30
HEAD_TILE = 1024  # mathrl.train.fast_grpo._HEAD_CHUNK


def _command(case: str, out: Path, steps: int, grpo_model: str, extra: list[str]) -> list[str]:
    py = [sys.executable]
    if case == "imports":
        return py + ["-c", "import torch, transformers, trl, peft, mathrl.train.grpo, mathrl.train.sft"]
    common = ["--task", "arithmetic", "--task-config", "1-2", "--format", "gsm8k", "--max-steps", str(steps),
              "--save-steps", "100000", "--output-dir", str(out)]
    if case.startswith("sft"):
        return py + ["-m", "mathrl", "sft", "--model", "smollm2-135m", "--method", case.split("-")[1],
                     "--batch-size", "16", "--train-samples", "1024", "--learning-rate", "2e-4", *common, *extra]
    return py + ["-m", "mathrl", "grpo", "--model", grpo_model, "--method", "full", "--rewards", "correctness,format:0.5",
                 "--num-generations", "8", "--prompts-per-step", "16", "--max-completion-length", "96",
                 "--temperature", "0.7", "--beta", "0", "--loss-type", "dapo", "--learning-rate", "1e-5",
                 "--oversample", "1.0", "--max-refills", "0", *common, *extra]


def run_case(case: str, steps: int, grpo_model: str, workdir: Path, extra: tuple[str, ...] = ()) -> dict:
    """Peak RSS (GiB) of the case's process, its record's memory figures, wall seconds."""
    out = workdir / case
    cmd = _command(case, out, steps, grpo_model, list(extra))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{case}: exit {proc.returncode}\n{output[-3000:]}")
    result = {"case": case, "peak_rss_gb": round(usage.ru_maxrss * 1024 / GIB, 3),
              "wall_s": round(time.perf_counter() - start, 1)}
    record_path = out / "mathrl_config.json"
    if record_path.exists():
        record = json.loads(record_path.read_text())
        result["stage_peak_gb"] = record.get("memory", {}).get("peak_rss_gb")
        result["parts"] = record.get("memory_parts") or {}
        result["steps"] = record.get("global_step")
    return result


def floor_gb(case: str, imports_gb: float, grpo_model: str) -> dict[str, float]:
    """The arithmetic floor's parts in GiB (see the module docstring)."""
    from mathrl.engine import models

    model, _, _ = models.load_model("smollm2-135m" if case.startswith("sft") else grpo_model, "fp32")
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    parts = {"imports": imports_gb, "weights (fp32)": 4 * params / GIB}
    if case == "sft-lora":
        layers, hidden, inter = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
        kv = cfg.num_key_value_heads * (hidden // cfg.num_attention_heads)
        r = 16  # per linear layer: r x (in + out)
        lora = layers * r * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + inter) * 2 + (inter + hidden))
        parts["adapters: weights, grads, AdamW"] = 16 * lora / GIB
        return {k: round(v, 3) for k, v in parts.items()}
    parts["gradients (fp32)"] = 4 * params / GIB
    parts["AdamW moments (fp32)"] = 8 * params / GIB
    if case == "grpo":
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        rows, tokens = 16 * 8 * 2, 64 + 96  # oversample 1: twice the rows; prompt + longest completion
        parts["sampling copy (bf16)"] = 2 * params / GIB
        parts["KV cache (bf16, one call)"] = 2 * 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * rows * tokens / GIB
        parts["LM-head tile (fp32 log-softmax)"] = 4 * HEAD_TILE * cfg.vocab_size / GIB
    return {k: round(v, 3) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="sft-full,sft-lora,grpo", help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per training case")
    ap.add_argument("--grpo-model", default="smollm2-135m", help="GRPO's starting model (the demo's: its SFT output)")
    ap.add_argument("--args", default="", help="extra flags for every training case, e.g. '--micro-batch-size 32'")
    ap.add_argument("--workdir", default=None, help="where the runs write (default: a temp dir)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import cpu_flags, cpu_name

    def load_average() -> str:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())

    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case {unknown[0]!r}: choose from {', '.join(CASES)}")
    print(f"{cpu_name()} | flags {' '.join(cpu_flags()) or 'none of avx2/avx512_bf16/amx'} | {os.cpu_count()} cores"
          f" | load {load_average()}", flush=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mathrl-memory-"))
    imports = run_case("imports", 0, args.grpo_model, workdir)
    print(f"imports: peak RSS {imports['peak_rss_gb']:.2f} GiB", flush=True)
    for case in (c for c in cases if c != "imports"):
        res = run_case(case, args.steps, args.grpo_model, workdir, tuple(args.args.split()))
        floor = floor_gb(case, imports["peak_rss_gb"], args.grpo_model)
        total = sum(floor.values())
        print(f"\n{case} {args.args}: peak RSS {res['peak_rss_gb']:.2f} GiB (/usr/bin/time -v's figure; stage record "
              f"{res.get('stage_peak_gb')} GiB), {res.get('steps')} steps in {res['wall_s']} s, load {load_average()}")
        print(f"  floor {total:.2f} GiB = " + " + ".join(f"{k} {v:.2f}" for k, v in floor.items()))
        print(f"  above the floor: {res['peak_rss_gb'] - total:.2f} GiB ({res['peak_rss_gb'] / total:.2f}x the floor)")
        for part, value in sorted(res.get("parts", {}).items(), key=lambda kv: -kv[1]):
            print(f"  peak during {part.removeprefix('memory/'):<16} {value:.2f} GiB")


if __name__ == "__main__":
    main()
