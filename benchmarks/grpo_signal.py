"""How much of a GRPO budget carries learning signal: dynamic sampling off vs on, at equal wall time.

Each setting trains GRPO for `--minutes` (mathrl's time cap; the step running when it expires finishes)
in its own process, from the same start model, then reads its train_log.jsonl:
  steps               optimizer steps done
  grad>0              fraction of steps whose gradient norm was not exactly 0
  spread (trained)    fraction of trained completions in groups with reward spread (1 - TRL's
                      frac_reward_zero_std, averaged over steps; groups are equal-sized)
  spread (drawn)      the same for the batch as first drawn (dynamic/zero_std_before; = trained when off)
  signal/min          trained completions with reward spread per minute of training
  extra prompts       replacement prompts generated (on)
  correct (drawn)     mean correctness reward of the batches as drawn: the policy's pass rate
Workload (default: the CPU demo's GRPO; sizes are flags for smoke runs): 4 prompts x 8 generations,
<= 96 new tokens, temperature 0.7, lr 3e-6,
DAPO loss, beta 0, rewards correctness,format:0.5, gsm8k format with the chat template, arithmetic 1-2.
The base model scores ~0% on arithmetic, so nearly every group is all-wrong; the signal shows best from
an SFT model (`--model runs/sft-arithmetic`).

    python benchmarks/grpo_signal.py --minutes 3                  # embedded smollm2-135m
    python benchmarks/grpo_signal.py --minutes 3 --model runs/sft-arithmetic --json signal.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine

SETTINGS = {"off": dict(dynamic_sampling=False), "on": dict(dynamic_sampling=True, max_refills=2),
            "pass_rate": dict(dynamic_sampling=True, max_refills=2, prompt_policy="pass_rate")}


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " ".join(sorted(set(re.findall(r"\b(avx2|avx512_bf16|amx\w*)\b", text)))) or "none of avx2/avx512_bf16/amx"


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _mathrl_path() -> str:
    import mathrl  # the checkout measured: set PYTHONPATH to it when another one is installed

    return str(Path(mathrl.__file__).parent)


def run_one(setting: str, minutes: float, model: str, task: str, seed: int, prompts: int, generations: int,
            tokens: int) -> dict:
    """Train one setting in this process; summarise its log."""
    from mathrl import config as cfgmod
    from mathrl.train.grpo import GRPORunConfig, run_grpo

    task_name, _, task_config = task.partition(":")
    with tempfile.TemporaryDirectory() as tmp:
        values = dict(model=model, task=task_name, task_config=task_config or None, format="gsm8k", chat_template=True,
                      rewards="correctness,format:0.5", num_generations=generations, prompts_per_step=prompts,
                      max_completion_length=tokens, temperature=0.7, beta=0.0, loss_type="dapo", learning_rate=3e-6,
                      max_steps=10_000, max_minutes=minutes, save_steps=100_000, seed=seed, output_dir=tmp,
                      **SETTINGS[setting])
        busy0, own0, t0 = machine.machine_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        record = run_grpo(cfgmod.build(GRPORunConfig, values))
        busy1, own1, wall = machine.machine_busy_seconds(), _own_cpu_seconds(), time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(tmp) / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "grad_norm" in r]
    gens = [r for r in rows if "frac_reward_zero_std" in r]

    def mean(values: list[float]) -> float | None:
        return round(sum(values) / len(values), 4) if values else None

    trained = mean([1 - r["frac_reward_zero_std"] for r in gens])
    drawn = mean([1 - r.get("dynamic/zero_std_before", r["frac_reward_zero_std"]) for r in gens])
    completions = prompts * generations * len(gens)
    seconds = record["train_seconds"]
    correct_key = "dynamic/sampled/rewards/correctness/mean" if setting != "off" else "rewards/correctness/mean"
    return {"setting": setting, "steps": len(steps), "train_seconds": seconds,
            "s_per_step": round(seconds / max(1, len(steps)), 2),
            "frac_steps_grad_nonzero": mean([float(r["grad_norm"] != 0) for r in steps]),
            "frac_completions_spread_trained": trained, "frac_completions_spread_drawn": drawn,
            "spread_completions_per_minute": round(completions * (trained or 0) / (seconds / 60), 1) if seconds else None,
            "extra_prompts": sum(r.get("dynamic/extra_prompts", 0) for r in gens),
            "correct_drawn": mean([r[correct_key] for r in gens if correct_key in r]),
            # cores other processes kept busy while this ran (machine busy time minus this process's, per second)
            "others_cores_busy": round(max(0.0, (busy1 - busy0 - (own1 - own0)) / wall), 2) if busy0 is not None else None}


def _own_cpu_seconds() -> float:
    import resource

    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall time per setting")
    ap.add_argument("--model", default="smollm2-135m", help="start model: smollm2-135m or an SFT output dir")
    ap.add_argument("--task", default="arithmetic:1-2", help="task[:config]")
    ap.add_argument("--settings", default="off,on", help=f"comma-separated, from {', '.join(SETTINGS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=96)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one setting, print JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.minutes, args.model, args.task, args.seed,
                                             args.prompts_per_step, args.num_generations, args.max_completion_length)))
        return
    names = args.settings.split(",")
    if any(n not in SETTINGS for n in names):
        raise SystemExit(f"settings must come from {', '.join(SETTINGS)}")
    header = {"cpu": machine.cpu_name(), "flags": cpu_flags(), "load_before": load(), "model": args.model,
              "task": args.task, "minutes": args.minutes, "seed": args.seed, "mathrl": _mathrl_path(),
              "workload": f"{args.prompts_per_step} prompts x {args.num_generations} generations x "
                          f"<= {args.max_completion_length} tokens"}
    print(f"{header['cpu']} [{header['flags']}]; {header['load_before']}; mathrl from {header['mathrl']}", flush=True)
    results = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--minutes", str(args.minutes), "--model",
                               args.model, "--task", args.task, "--seed", str(args.seed),
                               "--prompts-per-step", str(args.prompts_per_step), "--num-generations",
                               str(args.num_generations), "--max-completion-length", str(args.max_completion_length)],
                              stdout=subprocess.PIPE, text=True, check=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT "):]) | {"load_after": load()})
        print(f"  {name}: {results[-1]}", flush=True)
    print(f"\nGRPO signal at equal wall time ({args.minutes} min each), {args.model} on {args.task}, {header['workload']}")
    cols = [("setting", "setting", "{}"), ("steps", "steps", "{}"), ("s/step", "s_per_step", "{}"),
            ("grad>0", "frac_steps_grad_nonzero", "{:.2f}"), ("spread trained", "frac_completions_spread_trained", "{:.2f}"),
            ("spread drawn", "frac_completions_spread_drawn", "{:.2f}"), ("signal/min", "spread_completions_per_minute", "{}"),
            ("extra prompts", "extra_prompts", "{}"), ("correct drawn", "correct_drawn", "{:.3f}"),
            ("others' cores", "others_cores_busy", "{}")]
    print("  ".join(f"{c[0]:>14}" for c in cols))
    for r in results:
        print("  ".join(f"{(c[2].format(r[c[1]]) if r[c[1]] is not None else '-'):>14}" for c in cols))
    print(f"load after: {load()}")
    if args.json:
        args.json.write_text(json.dumps({**header, "results": results}, indent=2))


if __name__ == "__main__":
    main()
