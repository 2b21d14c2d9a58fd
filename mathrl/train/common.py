"""Pieces shared by the trainers: log callback + curves, format tokens, LoRA, device and optimizer picks.
Settings live in `train/settings.py`, saving in `train/saving.py`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mathrl.distributed import is_main_process
from mathrl.errors import MathrlError
from mathrl.files import JsonlAppender


def make_log_callback(output_dir: str | Path, plot_keys: tuple[str, ...] = ("loss",)) -> Any:
    """A transformers TrainerCallback writing one JSON line per logged step, plus PNG curves at the end."""
    from transformers import TrainerCallback

    class TrainLog(TrainerCallback):
        def __init__(self) -> None:
            self.path = Path(output_dir) / "train_log.jsonl"
            self.writer = JsonlAppender(self.path)
            self.last_time: float | None = None
            self.last_tokens: float | None = None

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001 - transformers' signature
            if self.last_time is None:
                self.last_time = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if not logs or not state.is_world_process_zero:
                return
            now = time.perf_counter()
            row = {"step": state.global_step, "time": round(time.time(), 2)}
            row.update({k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()})
            tokens = logs.get("num_tokens")
            if tokens is not None and self.last_tokens is not None and self.last_time is not None and now > self.last_time:
                row["tokens_per_second"] = round((tokens - self.last_tokens) / (now - self.last_time), 1)
            if tokens is not None:
                self.last_tokens, self.last_time = tokens, now
            self.writer.append([row])

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if state.is_world_process_zero:
                plot_curves(self.path, Path(output_dir) / "training_curves.png", plot_keys)

    return TrainLog()


def fit_schedule(scheduler: Any, name: str, warmup_steps: int, horizon: int) -> None:
    """Make a running LR scheduler follow a `horizon`-step schedule of type `name` from now on.

    The learning-rate functions of transformers' schedulers depend only on the step, so a scheduler of
    the new horizon built over a stand-in optimizer lends its functions to the running one (the
    optimizer's state and the step count are untouched)."""
    import torch
    from transformers import get_scheduler

    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": g.get("initial_lr", g["lr"])}
              for g in scheduler.optimizer.param_groups]
    stand_in = get_scheduler(name, torch.optim.SGD(groups, lr=1.0), num_warmup_steps=warmup_steps,
                             num_training_steps=max(1, horizon))
    scheduler.lr_lambdas = list(stand_in.lr_lambdas)


class StepBudget:
    """How many steps fit in `max_minutes`, measured on the run itself: steps 2..`measure_after` are timed
    (step 1 pays one-off start-up costs) and the rest of the budget divided by their mean. `horizon` is
    called at the end of every step; `out_of_time` then says whether to stop: the steps the schedule was
    refit to are done (later steps would train at the schedule's end, a cosine's zero), or the next
    step, at the mean step time so far, would end past the limit (a 30-s GRPO step started just before
    the limit overran it by 30 s)."""

    def __init__(self, max_minutes: float, measure_after: int = 3):
        self.seconds, self.measure_after = max_minutes * 60, measure_after
        self.start = time.perf_counter()
        self.after_first: float | None = None
        self.per_step = 0.0  # mean step time after the first; 0 until two steps are done
        self.step, self.stop_after = 0, None  # the last step seen; the refit horizon

    def out_of_time(self) -> bool:
        if self.stop_after is not None and self.step >= self.stop_after:
            return True
        return time.perf_counter() - self.start + self.per_step > self.seconds

    def horizon(self, step: int, planned: int) -> int | None:
        """At step `measure_after`: the steps that fit (at most `planned`); None at other steps."""
        now = time.perf_counter()
        self.step = step
        if step == 1:
            self.after_first = now
        elif self.after_first is not None:
            self.per_step = (now - self.after_first) / (step - 1)
        if step != self.measure_after or self.after_first is None:
            return None
        fits = step + int(max(0.0, self.seconds - (now - self.start)) / max(self.per_step, 1e-9))
        self.stop_after = max(step + 1, min(planned, fits))
        return self.stop_after


def make_time_budget_callback(max_minutes: float, scheduler_name: str | None = None) -> Any:
    """Stop training (and save) once `max_minutes` of wall time have passed, and — so a budget does not
    cut a schedule planned for more steps (a cosine planned for 64 steps and stopped at 17) — refit the
    LR schedule to the steps that fit, measured after the first few steps (`StepBudget`)."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        budget: StepBudget | None = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.budget = StepBudget(max_minutes)

        def on_step_end(self, args, state, control, lr_scheduler=None, **kw):  # noqa: ANN001
            if self.budget is None:
                return
            horizon = self.budget.horizon(state.global_step, state.max_steps)
            if horizon is not None and horizon < state.max_steps and scheduler_name and lr_scheduler is not None:
                fit_schedule(lr_scheduler, scheduler_name, args.get_warmup_steps(horizon), horizon)
                state.planned_steps = horizon  # noqa: B010 - read by the run record
                print(f"[mathrl] {max_minutes:g}-minute budget: {horizon} of {state.max_steps} steps fit; "
                      f"the {scheduler_name} schedule now spans {horizon} steps", flush=True)
            if self.budget.out_of_time():
                control.should_training_stop = True
                control.should_save = True

    return TimeBudget()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log_path: str | Path, png_path: str | Path, keys: tuple[str, ...]) -> Path | None:
    """One panel per key that the log holds; nothing when the log is empty."""
    rows = read_log(log_path)
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present):
        pts = [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


def missing_format_tokens(tokenizer: Any, markers: list[str]) -> list[str]:
    """Markers the tokenizer splits into several pieces (e.g. '<start_working_out>')."""
    vocab = tokenizer.get_vocab()
    return [m for m in markers if m not in vocab]


def add_format_tokens(model: Any, tokenizer: Any, markers: list[str]) -> list[str]:
    """Add format markers as ordinary (not special) tokens, so decoding keeps them in the text the
    grader reads; resize embeddings (new rows start at the mean embedding)."""
    new = missing_format_tokens(tokenizer, markers)
    if new:
        tokenizer.add_tokens(new)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return new


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_optimizer(requested: str) -> str:
    """'auto': 8-bit AdamW with CUDA and bitsandbytes, else torch AdamW."""
    if requested != "auto":
        return requested
    import importlib.util

    return "adamw_8bit" if cuda_available() and importlib.util.find_spec("bitsandbytes") else "adamw_torch"


def lora_config(r: int, alpha: int, dropout: float, targets: list[str] | str) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")


def hf_trainer_arguments(cfg: Any, on_cuda: bool, fast_bf16: bool) -> dict[str, Any]:
    """The TrainingArguments both TRL trainers (SFT, GRPO) take from the shared settings (HFSettings)."""
    return dict(
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5 reads a value below 1 as a fraction of the steps
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, gradient_accumulation_steps=cfg.grad_accum,
        activation_checkpointing=on_cuda if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing,
        optim=pick_optimizer(cfg.optim),
        bf16=cfg.autocast_bf16(fast_bf16),  # autocast over fp32 master weights
        use_cpu=not on_cuda, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps, report_to=cfg.report_to, seed=cfg.seed, data_seed=cfg.seed,
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
    )


def peft_config(cfg: Any) -> Any:
    """The LoRA config of a `lora`/`qlora` run, None for full fine-tuning."""
    if cfg.method not in ("lora", "qlora"):
        return None
    return lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)


def load_training_model(cfg: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, model info) for a trainer: 4-bit NF4 weights with bf16 compute for
    `method: qlora` (CUDA + bitsandbytes, checked before anything loads), else `models.load_model`."""
    from mathrl import models

    if cfg.method != "qlora":
        return models.load_model(cfg.model, cfg.weight_dtype())
    require_qlora()
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path, kind = models.resolve(cfg.model)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.bfloat16)
    model = prepare_model_for_kbit_training(model)
    return model, models.load_tokenizer(path), {"name": cfg.model, "kind": kind, "path": path,
                                                 "revision": models.model_revision(path, kind, model)}


def require_qlora() -> None:
    import importlib.util

    if not cuda_available():
        raise MathrlError("--method qlora needs a CUDA GPU (bitsandbytes 4-bit); use --method lora on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MathrlError("--method qlora needs bitsandbytes: pip install 'mathrl[gpu]'")


def last_checkpoint(output_dir: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    d = Path(output_dir)
    return get_last_checkpoint(str(d)) if d.is_dir() else None


def checkpoint_to_resume(output_dir: str | Path, resume: bool) -> str | None:
    """The checkpoint to continue from; refuses to train over checkpoints without `resume`, and starts
    a fresh train_log.jsonl when there is nothing to resume."""
    out = Path(output_dir)
    checkpoint = last_checkpoint(out)
    if checkpoint and not resume:
        raise MathrlError(f"{out} already has checkpoints; pass --resume to continue or choose another --output-dir")
    if not checkpoint and is_main_process():
        (out / "train_log.jsonl").unlink(missing_ok=True)
    return checkpoint


def announce_world(trainer: Any, batch_note: str) -> None:
    """One line from the main process of a multi-process launch: how many processes, and what a step holds."""
    args = trainer.args
    if args.world_size > 1 and trainer.is_world_process_zero():
        print(f"[mathrl] {args.world_size} processes ({trainer.accelerator.distributed_type.value.lower()}, "
              f"{trainer.accelerator.device.type}); {batch_note}", flush=True)
