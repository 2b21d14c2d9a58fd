"""GRPO with verifiable rewards on TRL's GRPOTrainer (FastGRPOTrainer on the HF path, vLLM on GPUs).

Prompts are exactly the evaluation prompts (`formats.build_prompt`), the rewards are mathrl's graders
(`mathrl.train.rewards`), so a reward of 1 means `mathrl eval` would count the answer correct.
Per step the log holds each reward's mean and std, the total reward, the fraction of groups with
zero reward spread, completion lengths, the clipped ratio, KL (beta > 0), entropy and step time, plus
an `alarm` field when the format reward rises while correctness stays flat (reward hacking).
With dynamic sampling (the default) those describe the batch trained on, after groups without reward
spread were replaced; `dynamic/*` keys give the batch as drawn (see mathrl.train.dynamic_sampling).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from mathrl.prompts import formats
from mathrl.train import rl
from mathrl.train.rl import check_markers, cpu_budget_note, make_alarm_callback, training_prompts
from mathrl.train.grpo_loss import GRPOLossSettings
from mathrl.train.settings import PROMPT_POLICIES, HFSettings, RLSettings, opt
from mathrl.errors import MathrlError
from mathrl.tasks import Sample, get_task


@dataclass
class GRPORunConfig(GRPOLossSettings, RLSettings, HFSettings):
    """GRPO settings: the shared training and RL fields (`train/settings.py`), the loss (`train/grpo_loss.py`)
    and the group, micro-batches and dynamic sampling."""

    num_generations: int = opt(8, "completions per prompt (the GRPO group)")
    batch_size: int | None = opt(None, "completions per device step; None: prompts_per_step x num_generations")
    micro_batch_size: int | None = opt(None, "completions per forward/backward pass: a step's completions are split "
                                       "into micro-batches of whole groups whose gradients add up to the same update "
                                       "(less memory, same maths); None: the whole step in one pass")
    dynamic_sampling: bool = opt(True, "DAPO dynamic sampling: within a step, groups whose completions all got the same "
                                 "reward (zero advantage, no gradient) are replaced by groups for other training prompts, "
                                 "generated and scored, for up to max_refills rounds; the step trains on the refilled "
                                 "batch (same size)")
    max_refills: int = opt(2, "dynamic sampling: replacement rounds per step (0: only measure)")
    oversample: float = opt(0.0, "dynamic sampling: replacement candidates drawn in the same generation call as the "
                            "step's own groups, as a fraction of them (1.0: as many again); refill rounds still run "
                            "for groups left without reward spread")
    method: str = opt("full", "full | lora | qlora (CUDA + bitsandbytes: 4-bit base weights, LoRA in bf16)")
    prompt_policy: str = opt("uniform", "uniform: replacements drawn uniformly (seeded); pass_rate: a per-prompt record of "
                             "correctness steers the step's prompts and replacements toward prompts neither always nor "
                             "never solved (needs dynamic_sampling and a correctness reward)")
    vllm: str = opt("auto", "auto (with CUDA and vllm installed) | on | off")
    vllm_mode: str = opt("colocate", "colocate | server (start `trl vllm-serve` first)")
    vllm_server_url: str | None = opt(None, "server mode: `trl vllm-serve`'s URL; None: http://0.0.0.0:8000")
    # defaults that differ from the shared ones
    fast: bool = opt(True, "shared-prompt log-probs and generation (FastGRPOTrainer); False: stock TRL")
    output_dir: str = opt("runs/grpo", "where the model, log and reward curves go")

    TRAINER: ClassVar[str] = "GRPO"
    METHODS: ClassVar[tuple[str, ...]] = ("full", "lora", "qlora")

    def completions_per_step(self) -> int:
        return self.batch_size or self.prompts_per_step * self.num_generations

    def micro_batches(self) -> int:
        """Forward/backward passes per `completions_per_step()` completions."""
        return self.completions_per_step() // (self.micro_batch_size or self.completions_per_step())

    def checks(self) -> list[tuple[bool, str]]:
        per_step = self.completions_per_step()
        return super().checks() + [
            (self.num_generations >= 2, f"num_generations must be at least 2 (GRPO compares a group), got {self.num_generations}"),
            (per_step % self.num_generations == 0,
             f"batch_size {per_step} is not divisible by num_generations {self.num_generations}"),
            (self.micro_batch_size is None or (self.micro_batch_size >= 1 and self.micro_batch_size % self.num_generations == 0
                                               and per_step % self.micro_batch_size == 0),
             f"micro_batch_size {self.micro_batch_size} must be a multiple of num_generations {self.num_generations} "
             f"that divides the {per_step} completions of a step"),
            (self.vllm in ("auto", "on", "off"), f"vllm must be auto, on or off, got {self.vllm!r}"),
            (self.vllm_mode in ("colocate", "server"), f"vllm_mode must be colocate or server, got {self.vllm_mode!r}"),
            (self.max_refills >= 0, f"max_refills must be >= 0, got {self.max_refills}"),
            (self.oversample >= 0, f"oversample must be >= 0, got {self.oversample}"),
            (self.prompt_policy in PROMPT_POLICIES, f"prompt_policy must be one of {', '.join(PROMPT_POLICIES)}, got {self.prompt_policy!r}"),
            (self.prompt_policy != "pass_rate" or self.dynamic_sampling,
             "prompt_policy pass_rate works inside dynamic sampling; drop --no-dynamic-sampling or use uniform"),
        ]

    def validate(self) -> None:
        super().validate()
        if self.prompt_policy == "pass_rate":
            from mathrl.train.rewards import build_rewards

            funcs, _ = build_rewards(self.rewards, self.format)
            if not any(f.__name__.startswith("correctness") for f in funcs):
                raise MathrlError(f"prompt_policy pass_rate measures pass rates with a correctness reward; "
                                  f"--rewards {self.rewards!r} has none")


def _use_vllm(cfg: GRPORunConfig) -> bool:
    from mathrl.engine.generation import require_vllm, vllm_available

    if cfg.vllm == "on":
        require_vllm("--vllm on")
    return cfg.vllm != "off" and vllm_available()


def build_trainer(cfg: GRPORunConfig) -> tuple[Any, list[Sample], dict[str, Any]]:
    """(TRL GRPOTrainer ready to train, training prompts, base model info)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from mathrl.engine import models
    from mathrl.train.rewards import build_rewards
    from mathrl.train import common
    from mathrl.engine.decoding import text_for_tokenizer
    from mathrl.distributed import is_main_process
    from mathrl.train.dynamic_sampling import DynamicFastGRPOTrainer, DynamicGRPOTrainer
    from mathrl.train.fast_grpo import FastGRPOTrainer, fast_path_supported
    from mathrl.train.progress import quiet_progress
    from mathrl.train.memory_plan import fit_grpo
    from mathrl.train.grpo_loss import AdvantageMixin

    cfg.validate()
    vllm = _use_vllm(cfg)  # before loading anything: a missing vLLM is a one-line error
    samples = training_prompts(cfg)
    protocol = cfg.protocol()
    decoding = cfg.decoding(protocol)
    task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
    reward_funcs, weights = build_rewards(cfg.rewards, cfg.format, task, decoding.stop, cfg.max_completion_length)
    # before the weights load: micro-batches when the step's pass would not fit, a stop when nothing does
    cfg, memory_plan = fit_grpo(cfg, samples, protocol, sampling_copy=cfg.fast and models.cpu_has_fast_bf16())
    model, tokenizer, info = common.load_training_model(cfg)
    check_markers(tokenizer, protocol.resolved_format().markers)
    # TRL tokenizes string prompts with special tokens on: hand it text that gives evaluation's ids
    dataset = Dataset.from_list([{"prompt": text_for_tokenizer(tokenizer, formats.build_prompt(s.question, protocol, tokenizer)),
                                  "answer": s.answer, "answer_type": task.sample_answer_type(s)} for s in samples])
    on_cuda = common.cuda_available()
    note = None if on_cuda else cpu_budget_note(cfg.completions_per_step() * cfg.grad_accum, cfg)
    if note and is_main_process():
        print(note, flush=True)
    fast_bf16 = on_cuda or models.cpu_has_fast_bf16()
    hf_args = common.hf_trainer_arguments(cfg, on_cuda, fast_bf16)
    # micro-batches are TRL's own accumulation: one generation of per_device x steps_per_generation (= the
    # accumulation steps) completions per optimizer step, trained in slices of per_device
    hf_args["gradient_accumulation_steps"] = cfg.grad_accum * cfg.micro_batches()
    args = GRPOConfig(
        output_dir=cfg.output_dir, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch_size or cfg.completions_per_step(),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
        top_k=cfg.top_k, min_p=cfg.min_p or None, repetition_penalty=cfg.repetition_penalty,  # stock TRL's sampler
        reward_weights=weights, **cfg.trl_kwargs(), use_vllm=vllm, vllm_mode=cfg.vllm_mode, vllm_server_base_url=cfg.vllm_server_url,
        log_completions=cfg.log_completions, **hf_args,
    )
    models.set_attention(model, cfg.half_compute(fast_bf16))  # half compute: mathrl_cpu on CPU, flash-attn on CUDA
    peft_config = common.peft_config(cfg)
    plot_keys = ("reward", *(f"rewards/{f.__name__}/mean" for f in reward_funcs), "completions/mean_length",
                 "kl", "entropy", "loss")
    callbacks = [make_alarm_callback(cfg.alarm_window), common.make_log_callback(cfg.output_dir, plot_keys)]
    if cfg.max_minutes:
        callbacks.append(common.make_time_budget_callback(cfg.max_minutes, cfg.lr_scheduler))
    kwargs = dict(model=model, args=args, train_dataset=dataset, reward_funcs=reward_funcs, processing_class=tokenizer,
                  peft_config=peft_config, callbacks=callbacks)
    # both the fast path and dynamic sampling rely on TRL private methods of the tested signatures
    unsupported = fast_path_supported() if (cfg.fast and not vllm) or cfg.dynamic_sampling else None
    if unsupported and is_main_process():
        print(f"warning: {unsupported}; running stock GRPOTrainer without dynamic sampling (slower; generation "
              f"there does not stop at stop strings, rewards still grade the text cut at them)", flush=True)
    fast, dynamic = cfg.fast and not vllm and not unsupported, cfg.dynamic_sampling and not unsupported
    if fast:
        kwargs.update(decoding=decoding, segment_tokens=cfg.segment_tokens)
    if dynamic:
        kwargs.update(max_refills=cfg.max_refills, prompt_policy=cfg.prompt_policy, oversample=cfg.oversample)
    cls = {(True, True): DynamicFastGRPOTrainer, (True, False): FastGRPOTrainer,
           (False, True): DynamicGRPOTrainer, (False, False): GRPOTrainer}[(bool(fast), bool(dynamic))]
    if cfg.advantage != "group":  # mathrl's estimator replaces TRL's advantages (train/grpo_loss.py)
        if unsupported:
            raise MathrlError(f"advantage {cfg.advantage} reads TRL's rewards through a private method of the tested "
                              f"signature, and {unsupported}: use advantage group or the tested TRL")
        cls = type(cls.__name__, (AdvantageMixin, cls), {"__module__": cls.__module__})
        kwargs.update(advantage=cfg.advantage)
    trainer = cls(**kwargs)
    quiet_progress(trainer, "grpo", rl=True, verbose=cfg.verbose)
    trainer.mathrl_memory_plan = memory_plan  # the run record's: the limit, the estimate, the pass it chose
    return trainer, samples, info


def run_grpo(cfg: GRPORunConfig) -> dict[str, Any]:
    """Train, save model + tokenizer + log + reward curves into cfg.output_dir; return the run record."""
    from mathrl import memory
    from mathrl.provenance import library_versions
    from mathrl.train import common, saving, step_timing
    from mathrl.train.fast_grpo import FastGRPOTrainer

    cfg.validate()
    memory.reset_peak()  # this run's peak, in the record (a runner process ran other stages before)
    out = Path(cfg.output_dir)
    checkpoint = common.checkpoint_to_resume(out, cfg.resume)
    trainer, samples, info = build_trainer(cfg)
    common.announce_world(trainer, f"each generates for its own {cfg.completions_per_step() // cfg.num_generations} "
                                   f"prompts x {cfg.num_generations} per step")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - start
    # the log is the main process's file: the others leave its fields empty
    log_rows = common.read_log(out / "train_log.jsonl") if trainer.is_world_process_zero() else []
    steps = [r for r in log_rows if "reward" in r]
    record = {
        "trainer": "grpo", "config": asdict(cfg), "base_model": info, "num_prompts": len(samples),
        "train_seconds": round(train_seconds, 1), "global_step": trainer.state.global_step,
        "planned_steps": getattr(trainer.state, "planned_steps", trainer.state.max_steps),
        "train_loss": round(result.training_loss, 4),
        "seconds_per_step": round(train_seconds / max(1, trainer.state.global_step), 2) if not checkpoint else None,
        "reward_first": steps[0]["reward"] if steps else None, "reward_last": steps[-1]["reward"] if steps else None,
        "alarms": [r["alarm"] for r in steps if "alarm" in r], "fast_path": isinstance(trainer, FastGRPOTrainer),
        # None: off (asked, or stock fallback); else max_refills, prompt_policy, group fractions, extra prompts
        "dynamic_sampling": trainer.dynamic_summary() if hasattr(trainer, "dynamic_summary") else None,
        "decoding": cfg.decoding().effective() if isinstance(trainer, FastGRPOTrainer) else
        {"temperature": cfg.temperature, "top_p": cfg.top_p, **cfg.filters(), "max_new_tokens": cfg.max_completion_length,
         "sampler": "trl", "stop": []},
        # median seconds per step of each part (mathrl.train.step_timing); None on stock TRL
        "timing": step_timing.median_parts(log_rows) if isinstance(trainer, FastGRPOTrainer) else None,
        "memory_parts": memory.peak_parts(log_rows),  # peak RSS per part of a step (fast path only)
        "memory_plan": getattr(trainer, "mathrl_memory_plan", None),
        "rewards": rl.reward_record(trainer.reward_funcs, trainer.reward_weights.tolist()),
        "advantage": cfg.advantage,
        "resumed_from": checkpoint, "versions": library_versions(), "memory": memory.peak(),
    }
    saving.finish_run(trainer, out, cfg.model, cfg.merge, record)
    return record
