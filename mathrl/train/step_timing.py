"""Where a GRPO step's time goes: `timing/*` keys in train_log.jsonl, one value per optimizer step.

Keys, in seconds of this process, summed over the step's micro-batches (a logging window of several
steps logs their mean):

  timing/generate      the first sampling pass over the step's prompts (prefill + decode)
  timing/refill        dynamic sampling's replacement rounds (sampling candidate groups)
  timing/rewards       the reward functions (grading) over every completion drawn
  timing/old_logprobs  no-grad policy pass for importance ratios (only when TRL needs one:
                       num_iterations > 1 or generation out of step with the optimizer)
  timing/reference     no-grad reference-model pass (beta > 0)
  timing/forward       the policy's forward pass with gradients, and the loss
  timing/backward      the backward pass (a micro-batch's training_step minus everything above)
  timing/optimizer     gradient clipping and the optimizer step
  timing/other         the rest of the step: TRL's padding, advantages, metrics, buffering

Each part also logs `memory/<part>`: the process's peak RSS in GiB while it ran (the largest over the
step's micro-batches; `mathrl.memory.window_peak_gb`), so a step's peak can be traced to the part that
reaches it. `memory/other` covers the gaps between parts (TRL's bookkeeping). CPU only: on CUDA the
record's `peak_cuda_gb` is the device figure.

Simplified: wall-clock time of this process. On CUDA each boundary synchronises the device first,
which costs a little overlap; on CPU nothing changes. `timing/backward` is what is left of a
micro-batch after generation, scoring and the forward, so a part that runs outside the named hooks
(e.g. accelerate's gradient synchronisation under DDP) is counted there.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from transformers import TrainerCallback

from mathrl import memory

PARTS = ("generate", "refill", "rewards", "old_logprobs", "reference", "forward", "backward", "optimizer", "other")


def _now() -> float:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepClock:
    """Seconds per part for the optimizer step in progress. A part timed inside another counts once, in
    the outer one (the fast path's generation falling back to TRL's is still one `generate`)."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self._open: str | None = None
        self.micro_total = 0.0  # the step's training_step calls, end to end
        self.memory: dict[str, float] = {}  # peak RSS (GiB) per part this step

    def close_window(self, owner: str) -> None:
        """The peak RSS since the last boundary belongs to `owner` (the part that ran in between)."""
        peak = memory.window_peak_gb()
        if peak is not None:
            self.memory[owner] = max(self.memory.get(owner, 0.0), peak)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        if self._open is not None:  # inside another part: that part owns the time
            yield
            return
        self.close_window("other")
        self._open, start = name, _now()
        try:
            yield
        finally:
            self.parts[name] += _now() - start
            self.close_window(name)
            self._open = None

    def flush(self) -> dict[str, float]:
        """The finished step's `timing/*` metrics; starts the next step."""
        named = sum(v for k, v in self.parts.items() if k not in ("backward", "optimizer", "other"))
        backward = self.parts.get("backward", 0.0)
        out = {f"timing/{k}": round(self.parts.get(k, 0.0), 4) for k in PARTS if k not in ("backward", "other")}
        out["timing/backward"] = round(backward, 4)
        out["timing/other"] = round(max(0.0, self.micro_total - named - backward), 4)
        out |= {f"memory/{k}": v for k, v in self.memory.items()}
        self.parts.clear()
        self.memory.clear()
        self.micro_total = 0.0
        return out


def median_parts(log_rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per part, the median over the logged steps (the run record's `timing`)."""
    import statistics

    out = {}
    for part in PARTS:
        values = [r[f"timing/{part}"] for r in log_rows if f"timing/{part}" in r]
        if values:
            out[f"timing/{part}"] = round(statistics.median(values), 3)
    return out


class _OptimizerTimer(TrainerCallback):
    """Times clip-to-step (transformers calls on_pre_optimizer_step after clipping; the clip is counted
    from the last micro-batch's end) and hands the step's parts to TRL's metrics before it logs."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self._start: float | None = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        self._start = _now()

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        clock = self.trainer.step_clock
        clock.close_window("optimizer")  # clipping and the step, since the last micro-batch ended
        if self._start is not None:
            clock.parts["optimizer"] += _now() - self._start
        metrics = self.trainer._metrics["train"]
        for key, value in clock.flush().items():
            metrics[key].append(value)


class StepTimingMixin:
    """Put first in a GRPOTrainer subclass's bases (mathrl.train.fast_grpo.FastGRPOTrainer does): every
    hook below wraps TRL's own method and changes nothing it computes."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.step_clock = StepClock()
        self._refilling = False  # dynamic sampling sets it around its replacement rounds
        self.add_callback(_OptimizerTimer(self))

    def training_step(self, model, inputs, num_items_in_batch):  # noqa: ANN001
        clock = self.step_clock
        clock.close_window("other")
        start = _now()
        before = sum(clock.parts.values())
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            clock.close_window("backward")  # since the forward (or, without one, the step's last part) ended
            elapsed = _now() - start
            clock.micro_total += elapsed
            clock.parts["backward"] += max(0.0, elapsed - (sum(clock.parts.values()) - before))

    def _generate_single_turn(self, *args, **kwargs):  # noqa: ANN002, ANN003
        with self.step_clock.part("refill" if self._refilling else "generate"):
            return super()._generate_single_turn(*args, **kwargs)

    def _calculate_rewards(self, *args, **kwargs):  # noqa: ANN002, ANN003
        with self.step_clock.part("rewards"):
            return super()._calculate_rewards(*args, **kwargs)

    def compute_loss(self, *args, **kwargs):  # noqa: ANN002, ANN003
        with self.step_clock.part("forward"):
            return super().compute_loss(*args, **kwargs)

    def _generate_and_score_completions(self, inputs):  # noqa: ANN001
        self._nograd_passes = 0
        return super()._generate_and_score_completions(inputs)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if torch.is_grad_enabled():  # the training forward: counted by compute_loss
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        # TRL's scoring pass runs the old-policy pass (when it needs one, by its own rule) and then the
        # reference pass (beta > 0: the reference model, or the policy with its LoRA adapters off)
        generate_every = self.args.steps_per_generation * self.num_iterations
        old_needed = (self.args.gradient_accumulation_steps % generate_every != 0
                      or (self.use_vllm and getattr(self, "vllm_importance_sampling_correction", False)))
        first = getattr(self, "_nograd_passes", 0) == 0
        self._nograd_passes = getattr(self, "_nograd_passes", 0) + 1
        ref = model is not self.model and model is getattr(self, "ref_model", None)
        name = "reference" if ref or not (old_needed and first) else "old_logprobs"
        with self.step_clock.part(name):
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
