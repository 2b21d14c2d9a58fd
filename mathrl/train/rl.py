"""What the RL trainers (GRPO, PPO) share besides settings: training prompts, the format-marker check
and the reward-hacking alarm."""

from __future__ import annotations

import random
from typing import Any

from mathrl.errors import MathrlError
from mathrl.tasks import Sample, get_task


def training_prompts(cfg: Any) -> list[Sample]:
    task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
    try:
        pool = [s for s in task.load_train() if s.answer not in (None, "")]
    except MathrlError as e:
        raise MathrlError(f"{cfg.TRAINER} needs the task's train split: {e}") from None
    if not pool:
        raise MathrlError(f"task {cfg.task!r} has no train samples with gold answers; {cfg.TRAINER} needs them")
    if cfg.prompts is not None and cfg.prompts < len(pool):
        pool = random.Random(cfg.sample_seed).sample(pool, cfg.prompts)
    return pool


def check_markers(tokenizer: Any, markers: list[str]) -> None:
    """Every format marker must survive encode → decode, or the format reward could never fire."""
    for m in markers:
        ids = tokenizer(m, add_special_tokens=False)["input_ids"]
        if tokenizer.decode(ids) != m:
            raise MathrlError(f"format marker {m!r} does not survive this tokenizer (decodes to "
                              f"{tokenizer.decode(ids)!r}); choose another --format")


def hacking_alarm(rows: list[dict[str, Any]], window: int, rise: float = 0.2, flat: float = 0.02) -> str | None:
    """A message when, over the last `window` logged steps, format rewards rose by `rise` or more (mean of
    the second half minus the first) while correctness moved less than `flat` (the seeds' failure mode:
    format reward → 1, accuracy → 0). With dynamic sampling it reads the rewards of the batches as drawn
    (`dynamic/sampled/rewards/*`): the trained batches are selected for reward spread, which would hide
    a format reward saturating."""
    recent = [r for r in rows if any(k.startswith("rewards/") for k in r)][-window:]
    if window < 4 or len(recent) < window:
        return None
    source = "dynamic/sampled/rewards/" if all("dynamic/sampled/reward" in r for r in recent) else "rewards/"

    def trend(prefix: str) -> float | None:
        keys = {k for r in recent for k in r if k.startswith(f"{source}{prefix}") and k.endswith("/mean")}
        if not keys:
            return None
        series = [sum(r.get(k, 0.0) for k in keys) for r in recent]
        half = len(series) // 2
        return sum(series[half:]) / (len(series) - half) - sum(series[:half]) / half

    fmt, correct = trend("format"), trend("correctness")
    if fmt is None or correct is None or fmt < rise or abs(correct) >= flat:
        return None
    return (f"possible reward hacking: format reward rose by {fmt:+.2f} over the last {window} logged steps "
            f"while correctness changed by {correct:+.3f}")


def make_alarm_callback(window: int) -> Any:
    """Adds `alarm` to the step's logs (the log callback after it writes it) and prints a warning."""
    from transformers import TrainerCallback

    class RewardHackingAlarm(TrainerCallback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001 - transformers' signature
            if not logs or "reward" not in logs:
                return
            self.rows.append(dict(logs))
            message = hacking_alarm(self.rows, window)
            if message:
                logs["alarm"] = message
                print(f"warning: step {state.global_step}: {message}", flush=True)

    return RewardHackingAlarm()


# Above this many generated tokens a run without --max-minutes takes hours on a laptop CPU: a 135M
# model decodes ~60-200 tokens/s on 2 cores (AVX2 fp32 to AVX512-BF16; docs/benchmarks.md).
CPU_TOKENS_WARNING = 100_000
CPU_DECODE_TOKENS_PER_S = (60, 200)


def cpu_budget_note(completions_per_step: int, cfg: Any) -> str | None:
    """A one-line note for an RL run on CPU whose rollouts alone would take hours, or None: the
    defaults are GPU-sized, and on CPU `--max-minutes`, a budgeted experiment or a CPU config is the
    way to keep a run to minutes."""
    if cfg.max_minutes:
        return None
    tokens = cfg.max_steps * completions_per_step * cfg.max_completion_length
    if tokens <= CPU_TOKENS_WARNING:
        return None
    slow, fast = CPU_DECODE_TOKENS_PER_S
    kind = cfg.TRAINER.lower()
    return (f"note: {kind} on CPU: {cfg.max_steps} steps × {completions_per_step} completions × ≤ {cfg.max_completion_length} "
            f"tokens = up to {tokens:,} generated tokens, {tokens / fast / 3600:.1f}-{tokens / slow / 3600:.1f} h of rollouts "
            f"at {slow}-{fast} tokens/s (a 135M model on 2 cores); for minutes, pass --max-minutes or start from "
            f"configs/{kind}/arithmetic_cpu.yaml")


def reward_record(funcs: list[Any], weights: list[float]) -> list[dict[str, Any]]:
    """What the run record says of its rewards: each one's logged name, weight and, for shaping terms, the
    parameters it ran with (defaults filled in: `overlong`'s max is the run's max_completion_length)."""
    return [{"name": getattr(f, "__name__", type(f).__name__), "weight": float(w),
             **({"params": dict(f.params)} if isinstance(getattr(f, "params", None), dict) else {})}
            for f, w in zip(funcs, weights)]
