"""Supervised fine-tuning with TRL's SFTTrainer: full, LoRA or QLoRA; chat or raw; masked or full loss.

Training text is the task's worked solution rendered in the chosen output format after exactly the
prompt that evaluation uses (`formats.build_prompt`), so training and evaluation cannot drift apart.
TRL tokenizes prompt and completion, appends EOS and masks the prompt when `loss="completion"`.
The trainer is TRL's SFTTrainer, or by default its subclass `sft_fast.FastSFTTrainer`, which computes
the same loss and gradients running each batch's shared prompt prefix once and no padding.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from mathrl.prompts import formats
from mathrl.errors import MathrlError
from mathrl.train.settings import HFSettings, opt
from mathrl.tasks import Sample, get_task

STAGE_SIZES = {"full": 1024, "rl_prep": 256}  # the seeds' two SFT stages


@dataclass
class SFTRunConfig(HFSettings):
    """SFT settings: the shared training fields (`train/settings.py`) plus the loss, data size and batch."""

    loss: str = opt("completion", "completion (prompt masked) | full")
    stage: str | None = opt(None, "full (1,024 samples) | rl_prep (256); None: all")
    train_samples: int | None = opt(None, "training examples (overrides stage)")
    epochs: float = opt(1.0, "passes over the training examples (max_steps > 0 overrides)")
    batch_size: int = opt(16, "examples per device micro-batch")
    max_length: int = opt(512, "tokens per example (prompt + completion), longer ones truncated")
    # defaults that differ from the shared ones
    method: str = opt("full", "full | lora | qlora (CUDA only)")
    learning_rate: float = opt(1e-4, "peak learning rate")
    lr_scheduler: str = opt("cosine", "transformers scheduler name: cosine, linear, constant_with_warmup, ...")
    warmup_ratio: float = opt(0.05, "warmup as a fraction of the steps, in [0, 1)")
    max_steps: int = opt(-1, "stop after this many optimizer steps (-1: epochs decide)")
    fast: bool = opt(True, "run each batch's shared prompt prefix once, skip padding (FastSFTTrainer: TRL's loss "
                           "and gradients); False: stock TRL")
    output_dir: str = opt("runs/sft", "where the model, log and curves go")

    METHODS: ClassVar[tuple[str, ...]] = ("full", "lora", "qlora")
    RENAMED: ClassVar[dict[str, str]] = {"num_samples": "train_samples"}
    TRAINER: ClassVar[str] = "SFT"

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.loss in ("completion", "full"), f"loss must be completion or full, got {self.loss!r}"),
            (self.stage in (None, *STAGE_SIZES), f"stage must be one of {', '.join(STAGE_SIZES)}, got {self.stage!r}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.train_samples is None or self.train_samples >= 1, f"train_samples must be positive, got {self.train_samples}"),
        ]

    def size(self) -> int | None:
        return self.train_samples or (STAGE_SIZES[self.stage] if self.stage else None)


def tokens_per_row(cfg: SFTRunConfig, samples: list[Sample]) -> float:
    """The mean length in tokens of the stage's training rows (over the first 256), for the memory plan."""
    from mathrl.engine import models

    tok = models.load_tokenizer(models.resolve(cfg.model)[0])
    rows = tokenize_examples(build_examples(samples[:256], cfg.protocol(), tok), tok)
    return sum(min(len(r["input_ids"]), cfg.max_length) for r in rows) / max(1, len(rows))


def training_samples(cfg: SFTRunConfig) -> list[Sample]:
    task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
    n = cfg.size()
    if n is not None and cfg.task in ("arithmetic", "linear_equations") and "train_size" not in cfg.task_args:
        task.options["train_size"] = n  # generated tasks: make exactly what is needed
    pool = [s for s in task.load_train() if s.solution]
    if not pool:
        raise MathrlError(f"task {cfg.task!r} has no worked solutions in its train split; SFT needs them")
    if n is not None and n < len(pool):
        pool = random.Random(cfg.sample_seed).sample(pool, n)
    return pool


def build_examples(samples: list[Sample], protocol: formats.Protocol, tokenizer: Any) -> list[dict[str, str]]:
    """prompt = the evaluation prompt; completion = the solution in the format (TRL appends EOS)."""
    fmt = protocol.resolved_format()
    lead = "" if protocol.chat_template else " "  # raw prompts end with "Answer:"
    return [{"prompt": formats.build_prompt(s.question, protocol, tokenizer),
             "completion": lead + fmt.render(s.solution, s.answer)} for s in samples]


def tokenize_examples(examples: list[dict[str, str]], tokenizer: Any) -> list[dict[str, list[int]]]:
    """input_ids = evaluation's prompt ids (`decoding.encode_prompts`, one special-tokens rule) + the
    completion's ids + EOS; completion_mask marks the completion. Tokenized here rather than by TRL, whose
    prompt tokenization differs from evaluation's for tokenizers that add BOS."""
    from mathrl.engine.decoding import encode_prompts

    prompts = encode_prompts(tokenizer, [e["prompt"] for e in examples])
    completions = tokenizer([e["completion"] for e in examples], add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(prompts, completions):
        c = list(c) + [tokenizer.eos_token_id]
        out.append({"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)})
    return out


def build_trainer(cfg: SFTRunConfig) -> tuple[Any, list[Sample], dict[str, Any], list[str]]:
    """(trainer ready to train: FastSFTTrainer, or TRL's SFTTrainer with fast=False; training samples;
    base model info; format tokens added)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mathrl.engine import models
    from mathrl.distributed import is_main_process
    from mathrl.train import common
    from mathrl.train.progress import quiet_progress
    from mathrl.train.sft_fast import FastSFTTrainer, fast_path_supported

    from mathrl.train.memory_plan import fit_sft

    cfg.validate()
    out = Path(cfg.output_dir)
    samples = training_samples(cfg)
    cfg, memory_plan = fit_sft(cfg, tokens_per_row(cfg, samples))  # before the weights load: one that cannot fit stops
    model, tokenizer, info = common.load_training_model(cfg)
    # Full fine-tuning learns new marker tokens' embeddings. With LoRA the markers stay text the base
    # vocabulary spells: PEFT's trainable-token wrappers on embed_tokens/lm_head break TRL's fused LM
    # head (it reads lm_head.weight/.bias directly), and an unchanged vocabulary keeps the adapter
    # loadable on the plain base model (and by vLLM's LoRA serving).
    markers = cfg.protocol().resolved_format().markers
    new_tokens = common.add_format_tokens(model, tokenizer, markers) if cfg.method == "full" else []
    dataset = Dataset.from_list(tokenize_examples(build_examples(samples, cfg.protocol(), tokenizer), tokenizer))
    on_cuda = common.cuda_available()
    fast_bf16 = on_cuda or models.cpu_has_fast_bf16()
    args = SFTConfig(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length,
        completion_only_loss=cfg.loss == "completion", **common.hf_trainer_arguments(cfg, on_cuda, fast_bf16),
    )
    models.set_attention(model, cfg.half_compute(fast_bf16))  # half compute: mathrl_cpu on CPU, flash-attn on CUDA
    peft_config = common.peft_config(cfg)
    callbacks = [common.make_memory_callback(), common.make_log_callback(out, ("loss", "learning_rate", "grad_norm"))]
    if cfg.max_minutes:
        callbacks.append(common.make_time_budget_callback(cfg.max_minutes, cfg.lr_scheduler))
    unsupported = fast_path_supported() if cfg.fast else None
    if unsupported and is_main_process():
        print(f"warning: {unsupported}; running stock SFTTrainer (same loss, slower)", flush=True)
    trainer_class = FastSFTTrainer if cfg.fast and not unsupported else SFTTrainer
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            peft_config=peft_config, callbacks=callbacks)
    quiet_progress(trainer, "sft", rl=False, verbose=cfg.verbose)
    trainer.mathrl_memory_plan = memory_plan  # the run record's: the limit, the estimate, the batch it chose
    return trainer, samples, info, new_tokens


def run_sft(cfg: SFTRunConfig) -> dict[str, Any]:
    """Train, save model + tokenizer + config + log + curves into cfg.output_dir; return the run record."""
    from mathrl import memory
    from mathrl.provenance import library_versions
    from mathrl.train import common, saving

    cfg.validate()
    memory.reset_peak()  # this run's peak, in the record (a runner process ran other stages before)
    out = Path(cfg.output_dir)
    checkpoint = common.checkpoint_to_resume(out, cfg.resume)
    trainer, samples, info, new_tokens = build_trainer(cfg)
    per_step = cfg.batch_size * cfg.grad_accum * trainer.args.world_size
    common.announce_world(trainer, f"each takes its own {cfg.batch_size} samples per micro-step; {per_step} per optimizer step")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - start
    record = {
        "trainer": "sft", "config": asdict(cfg), "base_model": info, "added_tokens": new_tokens, "num_samples": len(samples),
        "train_seconds": round(train_seconds, 1), "global_step": trainer.state.global_step,
        "planned_steps": getattr(trainer.state, "planned_steps", trainer.state.max_steps),
        "train_loss": round(result.training_loss, 4), "train_tokens": None, "tokens_per_second": None,
        "resumed_from": checkpoint, "versions": library_versions(), "memory": memory.peak(),
        # which compute_loss ran: FastSFTTrainer's counts (this process's micro-batches), or None for stock TRL
        "fast_path": trainer.fast_path_record() if hasattr(trainer, "fast_path_record") else None,
        "memory_plan": getattr(trainer, "mathrl_memory_plan", None),
    }
    if trainer.is_world_process_zero():  # the log is the main process's file
        tokens = max((r.get("num_tokens", 0) for r in common.read_log(out / "train_log.jsonl")), default=0)
        record["train_tokens"] = int(tokens)
        record["tokens_per_second"] = round(tokens / train_seconds, 1) if tokens and not checkpoint else None
        record["memory_parts"] = memory.peak_parts(common.read_log(out / "train_log.jsonl"))
    saving.finish_run(trainer, out, cfg.model, cfg.merge, record)
    return record

