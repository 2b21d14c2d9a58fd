"""Pieces shared by the trainers: log callback + curves, format tokens, LoRA, device and optimizer picks.
Settings live in `train/settings.py`, saving in `train/saving.py`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mathrl.distributed import is_main_process
from mathrl.errors import MathrlError
from mathrl.files import JsonlAppender, atomic_write_json, atomic_write_text


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


def make_memory_callback() -> Any:
    """Peak RSS (GiB) per part of a Trainer step, added to each log line: `memory/forward_backward` (the
    micro-batches, data collation included), `memory/optimizer` (clipping, the step, the schedule),
    `memory/other` (logging, checkpoints); the largest since the previous line. Put it before the log
    callback, which writes what this adds. GRPO's fast path logs finer parts (`mathrl.train.step_timing`)."""
    from transformers import TrainerCallback

    from mathrl import memory

    class MemoryParts(TrainerCallback):
        def __init__(self) -> None:
            self.peaks: dict[str, float] = {}

        def _close(self, owner: str) -> None:
            peak = memory.window_peak_gb()
            if peak is not None:
                self.peaks[owner] = max(self.peaks.get(owner, 0.0), peak)

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001 - transformers' signature
            self._close("other")

        def on_pre_optimizer_step(self, args, state, control, **kw):  # noqa: ANN001
            self._close("forward_backward")

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self._close("optimizer")

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if logs is not None and self.peaks:
                logs.update({f"memory/{k}": v for k, v in self.peaks.items()})
                self.peaks = {}

    return MemoryParts()


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


BUDGET_FILE = "mathrl_budget.json"  # a checkpoint's StepBudget state: a resumed run keeps its plan


def clock() -> float:
    """The clock step budgets read (a name of its own, so tests can drive it)."""
    return time.perf_counter()


class StepBudget:
    """How many steps fit in `max_minutes`, measured on the run itself: steps 2..`measure_after` are timed
    (step 1 pays one-off start-up costs) and the rest of the budget divided by their mean. `decide` is
    called at the end of every step with the global step: it returns the horizon when it is fixed (once,
    at step `measure_after` of this budget) and whether to stop: the steps the schedule was refit to are
    done (later steps would train at the schedule's end, a cosine's zero), or the next step, at the mean
    step time so far, would end past the limit (a 30-s GRPO step started just before the limit overran
    it by 30 s).

    Several processes: rank 0 decides and broadcasts (each rank's own clock could stop one rank while
    another starts a step, hanging the next all-reduce, or refit ranks to different horizons).
    Resume: `state()` is saved with every checkpoint and `restore()` continues from it — the same
    horizon, and the time the checkpointed steps used counts against the limit (steps redone after a
    kill are not charged twice; the wall time lost between the checkpoint and the kill is not charged)."""

    def __init__(self, max_minutes: float, measure_after: int = 3, first_step: int = 0):
        self.seconds, self.measure_after = max_minutes * 60, measure_after
        self.start = clock()
        self.first_step = first_step  # the global step before this budget's first step
        self.after_first: float | None = None
        self.per_step = 0.0  # mean step time after the first; 0 until two steps are done
        self.step, self.stop_after = first_step, None  # the last step seen; the refit horizon (global steps)

    def out_of_time(self) -> bool:
        if self.stop_after is not None and self.step >= self.stop_after:
            return True
        return clock() - self.start + self.per_step > self.seconds

    def horizon(self, step: int, planned: int) -> int | None:
        """At this budget's step `measure_after`: the global steps that fit (at most `planned`); else None."""
        now = clock()
        self.step, local = step, step - self.first_step
        if local == 1:
            self.after_first = now
        elif self.after_first is not None and local > 1:
            self.per_step = (now - self.after_first) / (local - 1)
        if local != self.measure_after or self.after_first is None:
            return None
        fits = step + int(max(0.0, self.seconds - (now - self.start)) / max(self.per_step, 1e-9))
        self.stop_after = max(step + 1, min(planned, fits))
        return self.stop_after

    def decide(self, step: int, planned: int) -> tuple[int | None, bool]:
        """(the new horizon or None, stop now?) after global step `step`; the same on every rank (rank 0's)."""
        from mathrl.distributed import agree

        horizon = self.horizon(step, planned)
        stop = self.out_of_time()
        horizon_, stop_, stop_after = agree([-1 if horizon is None else horizon, int(stop),
                                             -1 if self.stop_after is None else self.stop_after])
        self.stop_after = None if stop_after < 0 else int(stop_after)
        return (None if horizon_ < 0 else int(horizon_)), bool(stop_)

    def state(self) -> dict[str, Any]:
        now = clock()
        return {"max_minutes": self.seconds / 60, "elapsed": now - self.start, "first_step": self.first_step,
                "after_first": None if self.after_first is None else self.after_first - self.start,
                "per_step": self.per_step, "step": self.step, "stop_after": self.stop_after}

    def restore(self, saved: dict[str, Any]) -> None:
        self.start = clock() - float(saved["elapsed"])
        self.first_step, self.per_step = int(saved["first_step"]), float(saved["per_step"])
        self.after_first = None if saved["after_first"] is None else self.start + float(saved["after_first"])
        self.step, self.stop_after = int(saved["step"]), saved["stop_after"]


def save_budget(checkpoint_dir: str | Path, budget: StepBudget | None) -> None:
    if budget is not None:
        atomic_write_json(Path(checkpoint_dir) / BUDGET_FILE, budget.state())


def resumed_budget(max_minutes: float, checkpoint_dir: str | Path | None, step: int) -> StepBudget:
    """A budget for a run starting after global `step`: the checkpoint's, continued, when it saved one."""
    budget = StepBudget(max_minutes, first_step=step)
    path = Path(checkpoint_dir) / BUDGET_FILE if checkpoint_dir else None
    if path is not None and path.exists():
        budget.restore(json.loads(path.read_text()))
    return budget


def make_time_budget_callback(max_minutes: float, scheduler_name: str | None = None) -> Any:
    """Stop training (and save) once `max_minutes` of wall time have passed, and — so a budget does not
    cut a schedule planned for more steps (a cosine planned for 64 steps and stopped at 17) — refit the
    LR schedule to the steps that fit, measured after the first few steps (`StepBudget`). The budget is
    saved with every checkpoint; a resumed run refits its schedule to the saved horizon (transformers'
    LambdaLR state does not keep refit functions) and continues the saved clock."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    def refit(args: Any, state: Any, lr_scheduler: Any, horizon: int) -> None:
        if horizon < state.max_steps and scheduler_name and lr_scheduler is not None:
            fit_schedule(lr_scheduler, scheduler_name, args.get_warmup_steps(horizon), horizon)
            state.planned_steps = horizon  # noqa: B010 - read by the run record

    class TimeBudget(TrainerCallback):
        budget: StepBudget | None = None

        def on_train_begin(self, args, state, control, lr_scheduler=None, **kw):  # noqa: ANN001
            step = state.global_step  # > 0 when resuming: the trainer state is the checkpoint's by now
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}" if step else None
            self.budget = resumed_budget(max_minutes, checkpoint, step)
            if self.budget.stop_after is not None:
                refit(args, state, lr_scheduler, self.budget.stop_after)

        def on_step_end(self, args, state, control, lr_scheduler=None, **kw):  # noqa: ANN001
            if self.budget is None:
                return
            horizon, stop = self.budget.decide(state.global_step, state.max_steps)
            if horizon is not None:
                refit(args, state, lr_scheduler, horizon)
                if horizon < state.max_steps and scheduler_name and state.is_world_process_zero:
                    print(f"[mathrl] {max_minutes:g}-minute budget: {horizon} of {state.max_steps} steps fit; "
                          f"the {scheduler_name} schedule now spans {horizon} steps", flush=True)
            if stop:
                control.should_training_stop = True
                control.should_save = True

        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            if self.budget is not None and state.is_world_process_zero:
                save_budget(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", self.budget)

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
    from mathrl.engine import models

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


STEP_LOGS = ("train_log.jsonl", "completions.jsonl")  # rows carry the step they were logged at


def checkpoint_to_resume(output_dir: str | Path, resume: bool) -> str | None:
    """The checkpoint to continue from; refuses to train over checkpoints without `resume`. The step logs
    keep only rows up to the checkpoint's step (the steps after it are redone, and logged again), or
    start afresh when there is nothing to resume."""
    out = Path(output_dir)
    checkpoint = last_checkpoint(out)
    if checkpoint and not resume:
        raise MathrlError(f"{out} already has checkpoints; pass --resume to continue or choose another --output-dir")
    if is_main_process():
        step = int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0
        for name in STEP_LOGS:
            truncate_log(out / name, step)
    return checkpoint


def truncate_log(path: Path, step: int) -> None:
    """Drop rows logged after `step` (all of them for 0)."""
    if not path.exists():
        return
    if step <= 0:
        path.unlink()
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def announce_world(trainer: Any, batch_note: str) -> None:
    """One line from the main process of a multi-process launch: how many processes, and what a step holds."""
    args = trainer.args
    if args.world_size > 1 and trainer.is_world_process_zero():
        print(f"[mathrl] {args.world_size} processes ({trainer.accelerator.distributed_type.value.lower()}, "
              f"{trainer.accelerator.device.type}); {batch_note}", flush=True)
