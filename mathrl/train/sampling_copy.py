"""A bf16 copy of the policy that RL samples from, when training computes in bf16 autocast over fp32 weights.

On CPU, mathrl trains in `torch.autocast(bfloat16)` over fp32 master weights where bf16 matmuls are
fast (AVX512-BF16/AMX). Generation has no autocast in stock TRL, so it ran in fp32 (~1.8x slower per
decode step here); under autocast it is only ~1.35x faster, because Llama's rotary embedding multiplies
bf16 queries and keys by fp32 cos/sin, which promotes them (and the KV cache) back to fp32 and re-casts
the cache at every step. A model whose weights *are* bf16 keeps activations and cache in bf16:
docs/benchmarks.md, "GRPO step breakdown".

The copy is refreshed from the policy before the first sampling after each optimizer step (a cast of
every parameter, ~0.1 s for 135M parameters) and costs one bf16 copy of the weights in memory. The copy
runs its class's plain forward, without the autocast / fp32-output / fused-head wrappers that accelerate
and TRL put on the policy's.

Simplified: used only for plain (non-PEFT) models on CPU with fp32 weights and bf16 compute; anything
else samples from the policy itself. Samples come from the bf16-rounded policy while the training pass
scores them in autocast; with `num_iterations=1` (mathrl's default) TRL's old log-probs are the
training pass's own, so the loss is unaffected; the mismatch is that of vLLM sampling in bf16 (no
importance-sampling correction is applied on CPU).
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def wants_copy(lm: Any, bf16_compute: bool) -> bool:
    """True for a plain CPU model with fp32 weights trained under bf16 autocast."""
    if not bf16_compute or hasattr(lm, "peft_config") or any(hasattr(m, "lora_A") for m in lm.modules()):
        return False  # adapters: the copy would need merging, and LoRA steps change few weights
    p = next(lm.parameters(), None)
    return p is not None and p.device.type == "cpu" and p.dtype == torch.float32


class SamplingCopy:
    """`get(lm, version)` returns the model to sample from: `lm` itself, or its bf16 copy synced to `version`."""

    def __init__(self, bf16_compute: bool) -> None:
        self.bf16_compute = bf16_compute
        self.model: Any = None
        self.version: Any = None

    def get(self, lm: Any, version: Any) -> Any:
        if not wants_copy(lm, self.bf16_compute):
            return lm
        if self.model is None:
            self.model = copy.deepcopy(lm).requires_grad_(False)
            for param in self.model.parameters():
                param.grad = None  # a copy of the policy's gradients would only take memory
            self.model.to(torch.bfloat16).eval()
            # The policy's forward is an instance attribute wrapped by accelerate (bf16 autocast, outputs
            # cast to fp32) and TRL (fused LM head); deepcopy copies the wrappers. A bf16 model needs
            # neither, and each decode step paid for them: the demo's 256 rows took 21.0-24.9 s a step
            # with them, 17.0-18.2 s without (2026-12-03, amx avx512_bf16).
            vars(self.model).pop("forward", None)
        elif version != self.version:
            with torch.no_grad():
                for dst, src in zip(self.model.parameters(), lm.parameters(), strict=True):
                    dst.copy_(src)
        self.version = version
        return self.model
