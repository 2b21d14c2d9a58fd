#!/usr/bin/env bash
# The one-GPU recipe of docs/gpu.md on GSM8K: evaluate the base model → SFT → evaluate → GRPO from
# the SFT model → evaluate, then print one table. Every stage is a plain mathrl command (printed
# before it runs), so any of them can be rerun or changed by hand.
#
#   bash scripts/gpu_recipe.sh                                        # Qwen2.5-0.5B-Instruct, docs/gpu.md sizes
#   MODEL=Qwen/Qwen2.5-1.5B-Instruct SFT_METHOD=lora bash scripts/gpu_recipe.sh
#   MODEL=smollm2-135m LIMIT=200 BACKEND=hf SFT_LR=1e-4 SFT_MINUTES=1.5 GRPO_LR=3e-6 GRPO_MINUTES=2.5 bash scripts/gpu_recipe.sh
#       (docs/benchmarks.md "GPU", run 1)
#
# Settings (environment variables, defaults in brackets): MODEL [Qwen/Qwen2.5-0.5B-Instruct], RUNS
# [runs/gpu-recipe], FORMAT [gsm8k], LIMIT: evaluation questions, a seeded subset [all 1,319],
# MAX_NEW: evaluation token budget [256], EVAL_BATCH [64], BACKEND [auto: vLLM when installed],
# SFT_METHOD [full] (lora merges its adapter), SFT_SAMPLES [all 7,473], SFT_EPOCHS [1], SFT_LR [1e-5],
# SFT_BATCH [16], SFT_MINUTES [none], SFT_MAX_STEPS [-1], GRPO_STEPS [200], GRPO_MINUTES [none],
# GRPO_LR [1e-6], GRPO_GENERATIONS [8], GRPO_PROMPTS [8], GRPO_TOKENS [256], PYTHON [python].
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
RUNS=${RUNS:-runs/gpu-recipe}
FORMAT=${FORMAT:-gsm8k}
MAX_NEW=${MAX_NEW:-256}
EVAL_BATCH=${EVAL_BATCH:-64}
BACKEND=${BACKEND:-auto}
SFT_METHOD=${SFT_METHOD:-full}
SFT_EPOCHS=${SFT_EPOCHS:-1}
SFT_LR=${SFT_LR:-1e-5}
SFT_BATCH=${SFT_BATCH:-16}
SFT_MAX_STEPS=${SFT_MAX_STEPS:--1}
GRPO_STEPS=${GRPO_STEPS:-200}
GRPO_LR=${GRPO_LR:-1e-6}
GRPO_GENERATIONS=${GRPO_GENERATIONS:-8}
GRPO_PROMPTS=${GRPO_PROMPTS:-8}
GRPO_TOKENS=${GRPO_TOKENS:-256}
PYTHON=${PYTHON:-python}

common=(--task gsm8k --format "$FORMAT")
evaluate=(eval "${common[@]}" --max-new-tokens "$MAX_NEW" --batch-size "$EVAL_BATCH" --backend "$BACKEND")
[[ -n ${LIMIT:-} ]] && evaluate+=(--limit "$LIMIT")
sft=(sft --model "$MODEL" "${common[@]}" --method "$SFT_METHOD" --epochs "$SFT_EPOCHS" --lr "$SFT_LR"
     --batch-size "$SFT_BATCH" --max-steps "$SFT_MAX_STEPS" --output-dir "$RUNS/sft")
[[ -n ${SFT_SAMPLES:-} ]] && sft+=(--num-samples "$SFT_SAMPLES")
[[ -n ${SFT_MINUTES:-} ]] && sft+=(--max-minutes "$SFT_MINUTES")
[[ $SFT_METHOD != full ]] && sft+=(--merge)  # GRPO then trains the merged weights
grpo=(grpo --model "$RUNS/sft" "${common[@]}" --num-generations "$GRPO_GENERATIONS" --prompts-per-step "$GRPO_PROMPTS"
      --max-completion-length "$GRPO_TOKENS" --max-steps "$GRPO_STEPS" --lr "$GRPO_LR" --output-dir "$RUNS/grpo")
[[ -n ${GRPO_MINUTES:-} ]] && grpo+=(--max-minutes "$GRPO_MINUTES")

stage() {
    local name=$1 start=$SECONDS
    shift
    echo "== $name ($(date +%T)): mathrl $*"
    "$PYTHON" -m mathrl "$@"
    echo "== $name ($(date +%T)): $((SECONDS - start)) s"
}

stage base-eval "${evaluate[@]}" --model "$MODEL" --output-dir "$RUNS/eval-base"
stage sft "${sft[@]}"
stage sft-eval "${evaluate[@]}" --model "$RUNS/sft" --output-dir "$RUNS/eval-sft"
stage grpo "${grpo[@]}"
stage grpo-eval "${evaluate[@]}" --model "$RUNS/grpo" --output-dir "$RUNS/eval-grpo"

"$PYTHON" - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path

runs = Path(sys.argv[1])
print(f"{'model':6} {'n':>5} {'strict':>7} {'flexible':>8} {'tokens/s':>9} {'eval s':>7}")
for name in ("base", "sft", "grpo"):
    s = json.loads((runs / f"eval-{name}" / "summary.json").read_text())
    print(f"{name:6} {s['n']:5d} {s['accuracy_strict']:7.1%} {s['accuracy_flexible']:8.1%} "
          f"{s.get('generation', {}).get('tokens_per_second', '-'):>9} {s['wall_seconds']:7.1f}")
for name in ("sft", "grpo"):
    c = json.loads((runs / name / "mathrl_config.json").read_text())
    print(f"{name}: {c['global_step']} steps in {c['train_seconds']} s", {k: c[k] for k in
          ("tokens_per_second", "seconds_per_step", "reward_first", "reward_last") if c.get(k) is not None})
EOF
