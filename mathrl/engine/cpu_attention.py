"""CPU attention for half-precision compute, chosen per call by shape (registered as "mathrl_cpu").

Two kernels, because no single one is fastest at every shape (benchmarks/attention_shapes.py, bf16,
SmolLM2-135M heads; docs/benchmarks.md "Attention by shape"):
- one-token decode steps, and short sequences under autograd (GRPO/SFT training passes): `gqa`
  below. transformers' eager attention expands each key/value head to its query heads with `repeat_kv`
  — a full copy of K and V on every layer and decode step; here the query heads that share a KV head
  are folded into the query-length axis instead, so one matmul reads each cached head once. Its
  arithmetic is eager's (scores in the compute dtype, Gemma 2's logit soft-capping, softmax in fp32).
  It materialises the rows x heads x q_len x L score tensor, so it is kept off long prefills.
- prefill (q_len > 1 without autograd) and long training passes: PyTorch's fused SDPA
  (transformers' `sdpa_attention_forward`), which never holds the full score tensor: at 16 x 1,024
  tokens a layer's forward took 8x less time with SDPA than with `gqa`. Its bf16 rounding is stock
  transformers' (tests compare both kernels with an fp32 reference at a stated tolerance).
`usage()` counts the calls per kernel; the eval summary records them. Attention sinks (`s_aux`,
gpt-oss) are not implemented: such a model is never routed here (`supports`), and a call that passes
them is refused rather than computed without them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

NAME = "mathrl_cpu"
# Under autograd, SDPA's CPU backward (with an additive mask) was slower than `gqa` at short lengths
# (32 rows: 3.5x slower at 100 tokens, 1.3x at 200; 8 rows: 1.8x at 300) and faster from 250-500 tokens
# (2x at 512): `benchmarks/engine_shapes.py --layer-sweep`, docs/benchmarks.md "Attention by shape".
GRAD_SDPA_MIN_KEYS = 384
_CALLS: Counter[str] = Counter()
SINKS = "mathrl_cpu: attention sinks (s_aux) are not implemented; use eager or sdpa"


def usage() -> dict[str, int]:
    """Calls per kernel since the process started (one call = one layer's attention)."""
    return dict(_CALLS)


def supports(config: Any) -> str | None:
    """None when the kernel computes this model's attention exactly; else why not."""
    if "gpt_oss" in str(getattr(config, "model_type", "")) or getattr(config, "attention_sinks", None):
        return "attention sinks (s_aux) are not implemented in mathrl_cpu"
    return None


def kernel_for(q_len: int, keys: int, grad: bool, softcap: float | None) -> str:
    """"sdpa" or "gqa" for one call (SDPA has no logit soft-capping: those models always take gqa)."""
    if q_len == 1 or softcap is not None:
        return "gqa"
    return "sdpa" if not grad or keys >= GRAD_SDPA_MIN_KEYS else "gqa"


def attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                      softcap: float | None = None, s_aux: torch.Tensor | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if s_aux is not None:  # silently dropping the sinks would change every output
        raise NotImplementedError(SINKS)
    kernel = kernel_for(query.shape[2], key.shape[2], torch.is_grad_enabled() and query.requires_grad, softcap)
    _CALLS[kernel] += 1
    if kernel == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return gqa_attention_forward(module, query, key, value, attention_mask, scaling, dropout, softcap)


def gqa_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                          softcap: float | None = None, s_aux: torch.Tensor | None = None,
                          **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention's arithmetic with the grouped query heads folded onto each key/value head."""
    if s_aux is not None:
        raise NotImplementedError(SINKS)
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

    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)  # without it a custom kernel gets no mask
    return NAME
