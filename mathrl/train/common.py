"""Pieces shared by the trainers: log callback + curves, format tokens, LoRA, device and optimizer picks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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


def make_time_budget_callback(max_minutes: float) -> Any:
    """Stop training (and save) once `max_minutes` of wall time have passed: CPU runs fit a budget."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        start: float | None = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.start is not None and time.perf_counter() - self.start > max_minutes * 60:
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


def lora_config(r: int, alpha: int, dropout: float, targets: list[str] | str, new_token_ids: list[int] | None = None) -> Any:
    from peft import LoraConfig

    kwargs: dict[str, Any] = {}
    if new_token_ids:
        # New format tokens need trainable embedding rows; only those rows train, not the whole matrix.
        kwargs["trainable_token_indices"] = {"embed_tokens": new_token_ids}
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM", **kwargs)


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
    if not checkpoint:
        (out / "train_log.jsonl").unlink(missing_ok=True)
    return checkpoint
