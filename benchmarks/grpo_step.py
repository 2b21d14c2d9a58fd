"""GRPO step time on the embedded model: stock TRL `GRPOTrainer` vs mathrl, same workload, one run.

Workload (the issue's reference): 4 prompts x 8 generations, <= 48 new tokens, temperature 1.0,
beta 0, learning rate 1e-6, rewards correctness + format. Settings:
  trl              stock GRPOTrainer at TRL's defaults (baseline), weights in --dtype (bf16 autocast only
                   with bf16 weights)
  mathrl           mathrl's GRPO (FastGRPOTrainer), weights in --dtype
  mathrl-auto      mathrl's default dtype: fp32 master weights + bf16 autocast where bf16 is fast
  mathrl-lora      mathrl with LoRA r16, weights in --dtype
  mathrl-dynamic   mathrl with dynamic sampling on (its default: groups without reward spread are
                   regenerated, up to 2 rounds), weights in --dtype: more generation per step
Dynamic sampling is off in the other mathrl settings, so every setting generates 32 completions a step.
`--dtype auto` (the default) is the dtype mathrl picks on this machine: bf16 on a CPU with
AVX512-BF16/AMX, fp32 on an AVX2-only one (where bf16 is emulated and 10-30x slower); the earlier
bf16-CPU table in docs/benchmarks.md used `--dtype bf16`. Each setting runs in its own process (no
shared caches); the first step is warm-up and not counted. Prints the CPU flags and the cores other
processes kept busy during each setting.

    python benchmarks/grpo_step.py --steps 5 --task gsm8k --settings trl,mathrl
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = ("trl", "mathrl", "mathrl-auto", "mathrl-lora", "mathrl-dynamic")


def _workload(task: str) -> dict:
    task_name, _, task_config = task.partition(":")
    return dict(model="smollm2-135m", task=task_name, task_config=task_config or None, format="gsm8k",
                rewards="correctness,format:0.5", num_generations=8, prompts_per_step=4, max_completion_length=48,
                temperature=1.0, beta=0.0, learning_rate=1e-6, save_steps=10_000, num_samples=256, seed=0,
                # one generation pass per step, as stock TRL does; `mathrl-dynamic` adds the refills
                dynamic_sampling=False)


def weights_dtype(dtype: str) -> str:
    """--dtype as a concrete name: `auto` → what mathrl picks on this machine (bf16 or fp32)."""
    from machine import auto_dtype

    return dtype if dtype != "auto" else auto_dtype()


def run_one(setting: str, steps: int, task: str, dtype: str = "auto") -> dict:
    """Step times (seconds) of one setting, measured in this process, and the other processes' load."""
    from machine import Contention
    from transformers import TrainerCallback

    from mathrl import config as cfgmod
    from mathrl.train.grpo import GRPORunConfig, build_trainer

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):  # noqa: ANN002, ANN003
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003
            times.append(time.perf_counter() - self.t)
            print(f"  {setting} step {len(times)}: {times[-1]:.2f} s", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        values = dict(_workload(task), max_steps=steps + 1, output_dir=tmp,
                      dtype="auto" if setting == "mathrl-auto" else weights_dtype(dtype),
                      method="lora" if setting == "mathrl-lora" else "full",
                      dynamic_sampling=setting == "mathrl-dynamic")
        cfg = cfgmod.build(GRPORunConfig, values)
        if setting == "trl":
            trainer = stock_trainer(cfg)
        else:
            trainer, _, _ = build_trainer(cfg)
        trainer.add_callback(StepTimer())
        with Contention() as busy:
            trainer.train()
    return {"steps": times[1:], "dtype": values["dtype"], "other_cores": busy.other_cores}


def stock_trainer(cfg: object) -> object:
    """TRL's GRPOTrainer with its own defaults; only the workload settings are passed."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from mathrl.prompts import formats
    from mathrl.engine import models
    from mathrl.train.rewards import build_rewards
    from mathrl.train.rl import training_prompts

    model, tok, _ = models.load_model(cfg.model, cfg.dtype)
    proto = cfg.protocol()
    data = Dataset.from_list([{"prompt": formats.build_prompt(s.question, proto, tok), "answer": s.answer}
                              for s in training_prompts(cfg)])
    funcs, weights = build_rewards(cfg.rewards, cfg.format)
    args = GRPOConfig(output_dir=cfg.output_dir, per_device_train_batch_size=32, num_generations=8,
                      max_completion_length=48, temperature=1.0, beta=0.0, learning_rate=cfg.learning_rate,
                      max_steps=cfg.max_steps, reward_weights=weights, use_cpu=True, save_strategy="no",
                      report_to="none", seed=0,
                      # TRL turns bf16 autocast on by default; over fp32 weights on a CPU without fast bf16 that
                      # would time emulated bf16, so it follows the weights (as the earlier bf16 runs had it)
                      bf16=cfg.dtype == "bf16")
    return GRPOTrainer(model=model, args=args, train_dataset=data, reward_funcs=funcs, processing_class=tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="measured steps per setting (after one warm-up step)")
    ap.add_argument("--task", default="gsm8k", help="task[:config] whose train prompts are used, e.g. arithmetic:1")
    ap.add_argument("--settings", default="trl,mathrl", help=f"comma-separated, from {', '.join(SETTINGS)}")
    ap.add_argument("--baseline", default="trl")
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                    help="weights of trl, mathrl and mathrl-lora; auto: what mathrl picks on this machine")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one setting, print JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.steps, args.task, args.dtype)))
        return
    import os

    from machine import cpu_flags, cpu_name
    names = args.settings.split(",")
    bad = [n for n in names if n not in SETTINGS]
    if bad or args.baseline not in names:
        raise SystemExit(f"settings must come from {SETTINGS} and include the baseline {args.baseline!r}")
    flags = " ".join(cpu_flags()) or "none of avx2/avx512_bf16/amx"
    load_start = os.getloadavg()
    results = {}
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--task", args.task,
                               "--dtype", args.dtype], stdout=subprocess.PIPE, text=True, check=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        results[name] = json.loads(line[len("RESULT "):])
    base = statistics.median(results[args.baseline]["steps"])
    print(f"\nGRPO step time, task {args.task}, 4 prompts x 8 generations x <=48 tokens, {args.steps} steps each")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, flags: {flags}; load average (1 min) at start "
          f"{load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"{'setting':<14}{'weights':>8}{'median s/step':>15}{'min':>8}{'max':>8}{'speed-up vs ' + args.baseline:>22}"
          f"{'other cores':>13}")
    rows = []
    for name, res in results.items():
        times = res["steps"]
        med = statistics.median(times)
        rows.append({"setting": name, "dtype": res["dtype"], "median_s": round(med, 2), "min_s": round(min(times), 2),
                     "max_s": round(max(times), 2), "speedup": round(base / med, 2), "steps": times,
                     "other_cores": res["other_cores"]})
        print(f"{name:<14}{res['dtype']:>8}{med:>15.2f}{min(times):>8.2f}{max(times):>8.2f}{base / med:>21.2f}x"
              f"{res['other_cores'] if res['other_cores'] is not None else '?':>13}")
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "baseline": args.baseline, "cpu": cpu_name(), "flags": flags,
                                         "load_start": load_start, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
