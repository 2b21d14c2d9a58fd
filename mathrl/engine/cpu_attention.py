"""Grouped-query attention without copying the KV cache (registered as transformers attention "mathrl_gqa").

transformers' eager attention expands each key/value head to its query heads with `repeat_kv` — a
full copy of K and V on every layer and every decode step. With long prompts (5-shot GSM8K: ~750
cached tokens) that copy dominates a CPU decode step. Here the query heads that share a key/value
head are folded into the query-length axis instead, so one matmul reads each cached head once. The
arithmetic is eager's (scores in the compute dtype, logit soft-capping as Gemma 2's eager applies it,
softmax in fp32), so outputs match it. Attention sinks (`s_aux`, gpt-oss) are not implemented: such a
model is never routed here (`supports`), and a call that passes them is refused rather than computed
without them.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "mathrl_gqa"


def supports(config: Any) -> str | None:
    """None when the kernel computes this model's attention exactly; else why not."""
    if "gpt_oss" in str(getattr(config, "model_type", "")) or getattr(config, "attention_sinks", None):
        return "attention sinks (s_aux) are not implemented in mathrl_gqa"
    return None


def gqa_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                          softcap: float | None = None, s_aux: torch.Tensor | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if s_aux is not None:  # silently dropping the sinks would change every output
        raise NotImplementedError("mathrl_gqa: attention sinks (s_aux) are not implemented; use eager or sdpa")
    batch, heads, q_len, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # query heads h = kv * groups + g (repeat_kv's order) → (batch, kv_heads, groups * q_len, dim)
    q = query.reshape(batch, kv_heads, groups * q_len, dim)
    scores = torch.matmul(q, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :length]
        scores = (scores.view(batch, kv_heads, groups, q_len, length) + mask[:, :, None]).view_as(scores)
    probs = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, value)  # (batch, kv_heads, groups * q_len, dim)
    out = out.view(batch, heads, q_len, dim).transpose(1, 2).contiguous()
    return out, probs.view(batch, heads, q_len, length)


def register() -> str:
    """Register the kernel and eager's additive float mask under NAME (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, gqa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)  # without it a custom kernel gets no mask
    return NAME
