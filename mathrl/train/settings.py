"""The trainers' settings, one field one home: every shared field is declared once, with its help.

    PromptSettings   start model, task, prompt protocol (also what `mathrl eval` shares)
    TrainSettings    optimiser, schedule, LoRA, precision, saving: every trainer
    HFSettings       trainers built on transformers' Trainer (SFT, GRPO)
    RLSettings       sampling and rewards (GRPO, PPO)

A trainer's class inherits the bases it needs and redeclares a field only where its default differs
(a redeclared field keeps its place, so YAML keys, run records and --help order stay put). The
command-line flags (`mathrl.cli.options`) and the experiment runner read these fields, so a field
added here is a flag, a YAML key and an experiment setting with no other edit.

One validation: `checks()` returns (ok, message) pairs, each class adding its own to its bases', and
`validate()` raises the first failure as a one-line MathrlError before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mathrl.config import TaskSettings, opt
from mathrl.engine.decoding import SamplingFilters
from mathrl.errors import MathrlError

# fp16 is allowed wherever a trainer runs with fp16 weights; PPO refuses it (PPORunConfig.checks).
DTYPES = ("auto", "bf16", "fp16", "fp32")
PROMPT_POLICIES = ("uniform", "pass_rate")  # GRPO dynamic sampling: see mathrl.train.dynamic_sampling
DTYPE_HELP = "auto: fp32 weights + bf16 autocast where bf16 is fast; bf16 | fp16 | fp32: weights in that type"


@dataclass
class PromptSettings(TaskSettings):
    """Start model, task and prompt protocol: what every trainer shares. Prompts are exactly those of
    `mathrl eval` (`formats.build_prompt`), so training and evaluation cannot drift apart."""

    format: str = opt("gsm8k", "output format of solutions and rewards (see `mathrl formats`)")
    chat_template: bool = opt(True, "wrap prompts in the model's chat template")
    chat_template_kwargs: dict[str, Any] = opt({}, "passed to apply_chat_template, e.g. enable_thinking=false")
    system_prompt: str | None = opt(None, "None: the format's instruction; '' for none")

    RENAMED: ClassVar[dict[str, str]] = {}  # deprecated setting name → its new name
    TRAINER: ClassVar[str] = "training"  # in messages: "for GRPO sampling"

    def protocol(self) -> Any:
        from mathrl.prompts import formats

        return formats.Protocol(format=self.format, chat_template=self.chat_template,
                                chat_template_kwargs=dict(self.chat_template_kwargs), system_prompt=self.system_prompt)

    def checks(self) -> list[tuple[bool, str]]:
        return []

    def validate(self) -> None:
        for ok, msg in self.checks():
            if not ok:
                raise MathrlError(msg)
        from mathrl.prompts import formats

        formats.get_format(self.format)


@dataclass
class TrainSettings(PromptSettings):
    """What every trainer shares: data size, optimiser, schedule, LoRA, precision, saving."""

    sample_seed: int = opt(0, "seed of the training subset")
    learning_rate: float = opt(1e-5, "peak learning rate")
    lr_scheduler: str = opt("constant_with_warmup", "transformers scheduler name: cosine, linear, constant_with_warmup, ...")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    max_steps: int = opt(100, "optimizer steps")
    max_minutes: float | None = opt(None, "stop (and save) after this much training time; the LR schedule is refit to the steps that fit")
    method: str = opt("full", "full | lora")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_targets: list[str] | str = opt("all-linear", "comma-separated module names, or all-linear")
    dtype: str = opt("auto", DTYPE_HELP)
    save_steps: int = opt(50, "checkpoint every this many steps")
    save_total_limit: int = opt(2, "checkpoints kept")
    seed: int = opt(42, "training seed")
    verbose: bool = opt(False, "print every logged step's metrics (default: one live line and a summary table; "
                               "train_log.jsonl always has them all)")
    merge: bool = opt(False, "LoRA: also write merged full weights")
    resume: bool = opt(False, "continue from the last checkpoint in output_dir")
    output_dir: str = opt("runs/train", "where the model, log and curves go")

    METHODS: ClassVar[tuple[str, ...]] = ("full", "lora")

    def weight_dtype(self) -> str:
        """The dtype the weights load in: auto keeps fp32 master weights (autocast does the rest)."""
        return "fp32" if self.dtype == "auto" else self.dtype

    def autocast_bf16(self, fast_bf16: bool) -> bool:
        """bf16 autocast over fp32 weights: only with dtype auto, where bf16 is fast. With dtype bf16 or
        fp16 the weights themselves are half precision and there is nothing to autocast."""
        return self.dtype == "auto" and fast_bf16

    def half_compute(self, fast_bf16: bool) -> bool:
        """Whether attention runs in half precision (models.set_attention picks kernels by this)."""
        return self.autocast_bf16(fast_bf16) or self.dtype in ("bf16", "fp16")

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.method in self.METHODS, f"method must be {' or '.join(self.METHODS)}, got {self.method!r}"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}"),
            (self.grad_accum >= 1, f"grad_accum must be at least 1, got {self.grad_accum}"),
            (self.save_steps >= 1, f"save_steps must be at least 1, got {self.save_steps}"),
            (self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be positive, got {self.max_minutes}"),
            (self.lora_r >= 1, f"lora_r must be at least 1, got {self.lora_r}"),
        ]


@dataclass
class HFSettings(TrainSettings):
    """Trainers built on transformers' Trainer (SFT, GRPO): its schedule, logging and speed options."""

    warmup_ratio: float = opt(0.0, "warmup as a fraction of the steps, in [0, 1)")
    gradient_checkpointing: bool | None = opt(None, "None: on with CUDA, off on CPU")
    optim: str = opt("auto", "auto: adamw_8bit with CUDA+bitsandbytes, else adamw_torch")
    logging_steps: int = opt(1, "log every this many steps")
    report_to: str = opt("none", "none | tensorboard | trackio | wandb")
    fast: bool = opt(True, "mathrl's faster trainer (same loss and gradients); False: stock TRL")
    max_memory: str | None = opt(None, "peak memory the stage may use on CPU, e.g. 8GB: a step that would need more "
                                 "runs in smaller passes (same update), one that cannot fit stops before loading; "
                                 "None: what the machine has available, less 10% (mathrl.train.memory_plan)")

    UNHASHED_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("max_memory",)  # added since; see experiments/schema.py

    def checks(self) -> list[tuple[bool, str]]:
        from mathrl.memory import parse_size

        try:
            size, problem = parse_size(self.max_memory), None
        except MathrlError as e:
            size, problem = None, str(e)
        return super().checks() + [
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (problem is None, problem or ""),
            (size is None or size > 0, f"max_memory must be positive, got {self.max_memory!r}"),
        ]


@dataclass
class RLSettings(SamplingFilters, TrainSettings):
    """Sampling and rewards: what GRPO and PPO share (top_k, min_p, repetition_penalty: SamplingFilters)."""

    rewards: str = opt("correctness,format:0.5", "NAME[:WEIGHT],... (see mathrl.train.rewards)")
    prompts: int | None = opt(None, "training prompts drawn from the train split; None: all")
    prompts_per_step: int = opt(4, "distinct prompts per step")
    max_completion_length: int = opt(256, "new-token budget per completion")
    temperature: float = opt(1.0, "sampling temperature (> 0)")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    segment_tokens: int = opt(16, "tokens generated between compactions of finished rows")
    alarm_window: int = opt(10, "logged steps the reward-hacking alarm looks back over")
    log_completions: bool = opt(False, "log sampled completions")

    RENAMED: ClassVar[dict[str, str]] = {"num_samples": "prompts"}

    def decoding(self, protocol: Any = None) -> Any:
        """How completions are sampled: the evaluation engine's settings at the run's temperature and
        top_p, with the protocol's stop strings, so training generation ends where evaluation's does."""
        from mathrl.prompts import formats
        from mathrl.engine.decoding import DecodingSettings

        protocol = protocol or self.protocol()
        return DecodingSettings(max_new_tokens=self.max_completion_length, temperature=self.temperature,
                                top_p=self.top_p, stop=formats.default_stop(protocol), seed=self.seed, **self.filters())

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.prompts is None or self.prompts >= 1, f"prompts must be positive, got {self.prompts}"),
            (self.prompts_per_step >= 1, f"prompts_per_step must be at least 1, got {self.prompts_per_step}"),
            (self.max_completion_length >= 1, f"max_completion_length must be positive, got {self.max_completion_length}"),
            (self.temperature > 0, f"temperature must be > 0 for {self.TRAINER} sampling, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.max_steps >= 1, f"max_steps must be at least 1, got {self.max_steps}"),
            *self.filter_checks(),
        ]

    def validate(self) -> None:
        super().validate()
        from mathrl.train.rewards import build_rewards

        build_rewards(self.rewards, self.format, max_completion_length=self.max_completion_length)  # bad names and
        # parameters fail before any model loads


# PPO's settings live here rather than in ppo.py, which imports torch at load: `mathrl --help` stays quick.
@dataclass
class PPORunConfig(RLSettings):
    """PPO settings: the shared training and RL fields (`train/settings.py`) plus rollouts, GAE and the losses."""

    rollouts_per_prompt: int = opt(1, "sampled completions per prompt")
    mini_batch_size: int = opt(8, "rollouts per optimizer step")
    ppo_epochs: int = opt(2, "passes over each rollout batch")
    kl_coef: float = opt(0.05, "per-token KL penalty to the reference; 0: no reference model")
    gamma: float = opt(0.99, "GAE discount")
    lam: float = opt(0.95, "GAE lambda")
    clip: float = opt(0.2, "policy ratio clip ε")
    value_clip: float = opt(0.2, "value clip around the rollout's values")
    vf_coef: float = opt(0.1, "value loss weight")
    ent_coef: float = opt(0.01, "entropy bonus weight")
    whiten_advantages: bool = opt(True, "normalise advantages over the batch")
    value_learning_rate: float | None = opt(None, "value head lr; None: 10 x learning_rate")
    warmup_steps: int = opt(0, "rollout steps of LR warmup")
    # defaults that differ from the shared ones
    grad_accum: int = opt(1, "micro-batches per mini-batch")
    prompts_per_step: int = opt(32, "training prompts per rollout batch")
    learning_rate: float = opt(3e-6, "policy learning rate")
    save_steps: int = opt(20, "checkpoint every this many steps")
    output_dir: str = opt("runs/ppo", "where the model, value head, log and curves go")

    TRAINER: ClassVar[str] = "PPO"

    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.rollouts_per_prompt

    def checks(self) -> list[tuple[bool, str]]:
        n = self.rollouts_per_step()
        return super().checks() + [
            (self.rollouts_per_prompt >= 1, f"rollouts_per_prompt must be at least 1, got {self.rollouts_per_prompt}"),
            (self.mini_batch_size >= 1 and n % self.mini_batch_size == 0,
             f"rollouts per step {n} (prompts_per_step x rollouts_per_prompt) is not divisible by mini_batch_size {self.mini_batch_size}"),
            (self.mini_batch_size % self.grad_accum == 0,
             f"mini_batch_size {self.mini_batch_size} is not divisible by grad_accum {self.grad_accum}"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be at least 1, got {self.ppo_epochs}"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (0 <= self.gamma <= 1 and 0 <= self.lam <= 1, f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}"),
            (self.clip > 0 and self.value_clip > 0, f"clip and value_clip must be positive, got {self.clip}, {self.value_clip}"),
            # the loop has no loss scaling, and fp16's range is too narrow for the value head and whitened advantages unscaled
            (self.dtype != "fp16", "dtype fp16 is not supported by PPO (no loss scaling); use auto, bf16 or fp32"),
        ]
