"""A training stage's peak memory, estimated before its weights load, and the micro-batch that fits.

    peak ≈ IMPORTS_GB + 4 B x parameters (fp32 master weights) + 12 B x trainable parameters (gradients and
           AdamW's two moments) [+ 2 B x parameters: GRPO's bf16 sampling copy] + OVERHEAD_GB[trainer]
           + ACTIVATION_BYTES x layers x hidden size x tokens in one forward/backward pass

`max_memory` (SFT and GRPO settings, per process; default: the memory the machine has available, less 10%,
in a single process; no automatic plan under a launcher, where ranks would read the machine at different
moments) caps the estimate: a step whose one pass would exceed it is split into micro-batches (SFT: a smaller batch_size with
grad_accum raised to keep the rows per optimizer step; GRPO: micro_batch_size in whole groups), which gives
the same update (tests/test_memory_plan.py); a stage that does not fit even at one row (SFT) or one group
(GRPO) per pass stops before its weights load, with the estimate and what to change.

Fitted to `benchmarks/memory.py` on the embedded SmolLM2-135M (2-core AVX512-BF16 CPU, fp32 master weights
with bf16 autocast, 2026-12-03, fifth session): GRPO at the demo's settings peaked at 5.84 / 7.51 / 9.75 GiB
with 32 / 64 / 128 completions a pass (~28 tokens each, the 60-token prompt once per group): 71 bytes per
layer x hidden unit x token, 1.9 GiB above the arithmetic floor besides; full and LoRA SFT at batch 16
peaked at 4.13 and 3.49 GiB (0.45 and 1.3 GiB above floor + activations). Checked on a 2-core AMD EPYC
(avx512_bf16, 2026-12-04): LoRA SFT planned to batch 2 under a 2.0 GiB cap peaked at 2.36 GiB with one
overhead for both methods, so LoRA has its own (1.3 GiB, what that run and the batch-16 one left above the
formula); full SFT keeps 0.9.
Simplified: one model's constants, scaled by layers x hidden for others; attention's quadratic term and
the vocabulary-sized log-softmax tiles are inside the per-token figure; GRPO is sized at
max_completion_length (the worst case: a policy that rambles); CPU RSS only (CUDA is not planned here).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.memory import parse_size

IMPORTS_GB = 0.35  # python + torch + transformers + TRL + PEFT imported (benchmarks/memory.py, `imports`)
ACTIVATION_BYTES = 71.0  # per layer x hidden unit x token of one training pass
OVERHEAD_GB = {"sft": 0.9, "sft_lora": 1.3, "grpo": 1.9}  # allocator caching, autocast copies, TRL's buffers, KV cache
MARGIN = 0.9  # the default limit: this share of the memory available when the stage starts
GIB = 2**30


class DoesNotFit(MathrlError):
    """A stage that cannot fit its memory limit even at its smallest pass."""


def available_gb() -> float | None:
    """MemAvailable from /proc/meminfo in GiB (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def limit_gb(max_memory: str | float | None) -> float | None:
    """The cap a stage plans to: `max_memory`, or this process's RSS now plus MARGIN x what the machine has
    available (None: unknown). Both are the process's total, as the estimate is."""
    given = parse_size(max_memory)
    if given is not None:
        return given
    from mathrl.distributed import world_size

    if world_size() > 1:  # ranks read MemAvailable at different moments and would choose different passes
        return None
    free = available_gb()
    if free is None:
        return None
    try:
        import os

        own = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB
    except (OSError, ValueError, IndexError):
        own = 0.0
    return own + MARGIN * free


def model_shape(model_name: str) -> dict[str, int]:
    """{"params", "layers", "hidden"} from the model's config alone (a meta-device model: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mathrl.engine import models

    path, _ = models.resolve(model_name)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = getattr(config, "text_config", config)
    return {"params": sum(p.numel() for p in model.parameters()), "layers": int(text.num_hidden_layers),
            "hidden": int(text.hidden_size)}


def estimate_gb(trainer: str, shape: dict[str, int], trainable: int, tokens_per_pass: float,
                sampling_copy: bool = False) -> float:
    """The module docstring's formula, in GiB."""
    params = shape["params"]
    fixed = 4 * params + 12 * trainable + (2 * params if sampling_copy else 0)
    activations = ACTIVATION_BYTES * shape["layers"] * shape["hidden"] * tokens_per_pass
    return IMPORTS_GB + OVERHEAD_GB[trainer] + (fixed + activations) / GIB


def lora_trainable(shape: dict[str, int], r: int) -> int:
    """Adapter parameters of LoRA r on every linear layer: about r x (in + out) for the seven projections of
    a layer, ~ r x 17 x hidden (Llama-style widths); an estimate, not a count."""
    return shape["layers"] * r * 17 * shape["hidden"]


def largest_fitting(total: int, unit: int, cost: Any, limit: float) -> int | None:
    """The largest number of rows per pass (a multiple of `unit` that divides `total`) whose `cost(rows)`
    is within `limit`; None when not even `unit` fits."""
    options = [n for n in range(total, 0, -unit) if total % n == 0 and n % unit == 0]
    return next((n for n in options if cost(n) <= limit), None)


def sft_rows_per_pass(cfg: Any, shape: dict[str, int], tokens_per_row: float) -> tuple[int, float, float | None]:
    """(batch_size to run, its estimate in GiB, the limit) for an SFT stage: cfg.batch_size when it fits."""
    trainable = shape["params"] if cfg.method == "full" else lora_trainable(shape, cfg.lora_r)
    limit = limit_gb(cfg.max_memory)

    def cost(rows: int) -> float:
        return estimate_gb("sft" if cfg.method == "full" else "sft_lora", shape, trainable, rows * tokens_per_row)

    if limit is None:
        return cfg.batch_size, cost(cfg.batch_size), None
    rows = largest_fitting(cfg.batch_size, 1, cost, limit)
    if rows is None:
        raise DoesNotFit(f"sft does not fit in {limit:.1f} GiB even at 1 row a pass (estimate {cost(1):.1f} GiB, "
                          f"{tokens_per_row:.0f} tokens a row): raise --max-memory, "
                          + ("use --method lora or a smaller model" if cfg.method == "full" else "use a smaller model or "
                             "a shorter --max-length"))
    return rows, cost(rows), limit


def grpo_completions_per_pass(cfg: Any, shape: dict[str, int], prompt_tokens: float,
                              sampling_copy: bool) -> tuple[int, float, float | None]:
    """(completions per pass, its estimate in GiB, the limit) for a GRPO stage: the step's (or the given
    micro_batch_size) when it fits, else the largest number of whole groups that does."""
    trainable = shape["params"] if cfg.method == "full" else lora_trainable(shape, cfg.lora_r)
    per_step = cfg.micro_batch_size or cfg.completions_per_step()
    limit = limit_gb(cfg.max_memory)

    def cost(rows: int) -> float:
        tokens = rows * cfg.max_completion_length + rows / cfg.num_generations * prompt_tokens
        return estimate_gb("grpo", shape, trainable, tokens, sampling_copy)

    if limit is None:
        return per_step, cost(per_step), None
    rows = largest_fitting(per_step, cfg.num_generations, cost, limit)
    if rows is None:
        raise DoesNotFit(f"grpo does not fit in {limit:.1f} GiB even at one group of {cfg.num_generations} a pass "
                          f"(estimate {cost(cfg.num_generations):.1f} GiB at max_completion_length "
                          f"{cfg.max_completion_length}): raise --max-memory, lower --max-completion-length or "
                          f"--num-generations, or use --method lora")
    return rows, cost(rows), limit


def _tokenizer(cfg: Any) -> Any:
    from mathrl.engine import models

    return models.load_tokenizer(models.resolve(cfg.model)[0])


def _say(text: str) -> None:
    from mathrl.distributed import is_main_process

    if is_main_process():
        print(text, flush=True)


def fit_sft(cfg: Any, tokens_per_row: float) -> tuple[Any, dict[str, Any] | None]:
    """(cfg, record) with batch_size / grad_accum chosen to fit `max_memory`, before the weights load;
    `tokens_per_row`: the mean training row's length (`mathrl.train.sft.tokens_per_row`). CPU only (None:
    on CUDA, where the device's memory is the limit and is not planned here)."""
    import dataclasses

    from mathrl.train import common

    if common.cuda_available():
        return cfg, None
    shape = model_shape(cfg.model)
    batch, estimate, limit = sft_rows_per_pass(cfg, shape, tokens_per_row)
    record = {"limit_gb": None if limit is None else round(limit, 2), "estimate_gb": round(estimate, 2),
              "batch_size": batch, "tokens_per_row": round(tokens_per_row, 1)}
    if batch == cfg.batch_size:
        return cfg, record
    accum = cfg.grad_accum * (cfg.batch_size // batch)
    _say(f"memory: batch {cfg.batch_size} would exceed the {limit:.1f} GiB limit: batch {batch} x grad_accum {accum} "
         f"instead (~{estimate:.1f} GiB, same rows per optimizer step, same update)")
    record["grad_accum"] = accum
    return dataclasses.replace(cfg, batch_size=batch, grad_accum=accum), record


def fit_grpo(cfg: Any, samples: list[Any], protocol: Any, sampling_copy: bool) -> tuple[Any, dict[str, Any] | None]:
    """(cfg, record) with micro_batch_size chosen to fit `max_memory`, before the weights load (CPU only)."""
    import dataclasses

    from mathrl.prompts import formats
    from mathrl.train import common

    if common.cuda_available():
        return cfg, None
    tok = _tokenizer(cfg)
    lengths = [len(tok(formats.build_prompt(s.question, protocol, tok), add_special_tokens=False)["input_ids"])
               for s in samples[:64]]
    prompt_tokens = sum(lengths) / max(1, len(lengths))
    shape = model_shape(cfg.model)
    per_pass, estimate, limit = grpo_completions_per_pass(cfg, shape, prompt_tokens, sampling_copy)
    record = {"limit_gb": None if limit is None else round(limit, 2), "estimate_gb": round(estimate, 2),
              "micro_batch_size": per_pass, "prompt_tokens": round(prompt_tokens, 1)}
    if per_pass == (cfg.micro_batch_size or cfg.completions_per_step()):
        return cfg, record
    _say(f"memory: {cfg.micro_batch_size or cfg.completions_per_step()} completions a pass would exceed the "
         f"{limit:.1f} GiB limit at max_completion_length {cfg.max_completion_length}: micro-batches of {per_pass} "
         f"(~{estimate:.1f} GiB, same update)")
    return dataclasses.replace(cfg, micro_batch_size=per_pass), record

