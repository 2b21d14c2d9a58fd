"""A `trl.GRPOTrainer` subclass that does the same maths with less work on CPUs (and small GPUs).

GRPO batches hold each prompt `num_generations` times. Stock TRL runs the full prompt+completion
through the model for every row, and on devices without Triton its fused LM head projects every
position (prompt and padding included) onto the vocabulary. Two overrides remove that waste:

* `_get_per_token_logps_and_entropies` (without activation checkpointing, the CPU default; with it,
  TRL's own pass runs): each distinct prompt is run once; its KV cache is gathered
  to the rows that share it (autograd sums the gradients of the copies back into the one prompt
  pass, so gradients are exact), the completions run on top of that cache, and only real
  completion positions go through the LM head. Entropies are computed without gradient unless
  TRL's entropy bonus needs it.
* `_generate_single_turn` (HF generation path only): each distinct prompt is prefilled once and
  rows that hit EOS are dropped from the batch between segments of `segment_tokens`.

Everything else (advantages, loss types, clipping, KL, logging, checkpoints) is TRL's own code.
`tests/test_grpo.py` checks that log-probs, loss and gradients match stock TRL on a fixed batch.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

from mathrl.train.common import weights_sharded

_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
               "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
# Models whose LM head is not a plain projection: leave them to TRL's fused head.
_SCALED_HEAD = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
_HEAD_CHUNK = 1024  # positions per LM-head tile: bounds the fp32 (positions x vocab) buffer


def _causal_lm(model: Any) -> Any:
    """The transformers model under PEFT / accelerate wrappers (LoRA layers stay in place inside it)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def group_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of one representative row per distinct prompt, representative index for every row)."""
    keyed = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    uniq, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    first = torch.full((uniq.size(0),), keyed.size(0), dtype=torch.long, device=keyed.device)
    first.scatter_reduce_(0, inverse, torch.arange(keyed.size(0), device=keyed.device), reduce="amin")
    return first, inverse


def shared_prefix_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int) -> torch.Tensor:
    """Final hidden states that predict each of the last `n_completion` tokens, shape (rows, n_completion, hidden),
    running every distinct (left-padded) prompt once and the completions on its gathered KV cache."""
    from transformers import DynamicCache

    lm = _causal_lm(model)
    backbone = lm.base_model
    prompt, prompt_mask = input_ids[:, :-n_completion], attention_mask[:, :-n_completion]
    first, inverse = group_rows(prompt, prompt_mask)
    cache = DynamicCache(config=lm.config)
    out = backbone(input_ids=prompt[first], attention_mask=prompt_mask[first], past_key_values=cache, use_cache=True)
    last = out.last_hidden_state[:, -1:]  # prompts are left-padded: the last position is a real token
    cache.batch_select_indices(inverse)
    if n_completion == 1:
        return last[inverse]
    rest = backbone(input_ids=input_ids[:, -n_completion:-1], attention_mask=attention_mask[:, :-1],
                    past_key_values=cache, use_cache=True).last_hidden_state
    return torch.cat([last[inverse], rest], dim=1)


def token_logps(lm_head: Any, hidden: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, temperature: float,
                entropy: bool, entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(label) (and entropy) at the masked-in positions; zeros elsewhere, as TRL returns them."""
    flat_h, flat_y = hidden[mask], labels[mask]
    logps, ents = [], []
    for s in range(0, flat_h.size(0), _HEAD_CHUNK):
        logits = lm_head(flat_h[s : s + _HEAD_CHUNK]).float() / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logps.append(logp_all.gather(-1, flat_y[s : s + _HEAD_CHUNK, None]).squeeze(-1))
        if entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                src = logp_all if entropy_grad else logp_all.detach()
                ents.append(-(src.exp() * src).sum(-1))
    zeros = hidden.new_zeros(mask.shape, dtype=torch.float32)
    out = zeros.masked_scatter(mask, torch.cat(logps)) if logps else zeros + hidden.sum() * 0  # keep the graph
    ent = None
    if entropy:
        ent = zeros.detach().masked_scatter(mask, torch.cat(ents)) if ents else zeros.detach()
    return out, ent


class FastGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` with shared-prompt log-prob passes and shared-prompt, compacting HF generation."""

    def __init__(self, *args: Any, segment_tokens: int = 16, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.segment_tokens = segment_tokens

    def _fast_path_ok(self, model: Any, compute_aux_loss: bool, extra: dict[str, Any]) -> bool:
        lm = _causal_lm(model)
        cfg = lm.config.get_text_config()
        # Activation checkpointing in a grad-enabled training pass makes transformers drop past_key_values,
        # which the shared-prompt pass needs (found on a GPU run, where checkpointing is on by default).
        name = "is_activation_checkpointing" if hasattr(lm, "is_activation_checkpointing") else "is_gradient_checkpointing"
        checkpointing = getattr(lm, name, False)
        checkpointing = checkpointing and lm.training and torch.is_grad_enabled()
        # FSDP / ZeRO-3 gather sharded weights around the wrapped model's forward: TRL's pass runs that
        return (not compute_aux_loss and not checkpointing and not weights_sharded(self) and all(extra.get(k) is None for k in _MULTIMODAL)
                and not any(getattr(cfg, a, None) not in (None, 1.0) for a in _SCALED_HEAD)
                and not getattr(self.args, "cast_lm_head_to_fp32", False))

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):  # noqa: ANN001
        if not self._fast_path_ok(model, compute_aux_loss, extra):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
        labels = input_ids[:, -logits_to_keep:]
        mask = attention_mask[:, -logits_to_keep:].bool()
        with self.accelerator.autocast():
            hidden = shared_prefix_hidden(model, input_ids, attention_mask, logits_to_keep)
            logps, ents = token_logps(_causal_lm(model).get_output_embeddings(), hidden, labels, mask,
                                      self.temperature, compute_entropy, self._entropy_bonus_enabled)
        return logps, ents, None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):  # noqa: ANN001
        if (self.use_vllm or getattr(self, "use_transformers_continuous_batching", False) or images is not None
                or multimodal_fields or self.accelerator.num_processes > 1):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        from trl.models import unwrap_model_for_generation

        with (
            unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                        generation_kwargs=self.generation_kwargs,
                                        gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as lm,
            torch.no_grad(),
        ):
            completions = generate_shared_prompts(lm, prompt_ids, self.generation_config, self._tokenizer.pad_token_id,
                                                  list(self.eos_token_ids), self.segment_tokens)
        return completions, None


class InverseCDFSampler:
    """Logits processor that turns greedy decoding into sampling: one uniform draw per row, located in the
    cumulative softmax, is an exact draw from softmax(scores); the returned scores are 0 at the drawn
    token and -inf elsewhere, so the greedy argmax picks it. On CPU `torch.multinomial` (which draws one
    exponential per vocabulary entry) cost ~24 ms per decode step for 32 rows x 49k tokens."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cdf = torch.softmax(scores.float(), dim=-1).cumsum_(-1)
        u = torch.rand(cdf.size(0), 1, device=cdf.device) * cdf[:, -1:]
        # right=True: the first index whose cumulative mass exceeds u, so zero-probability tokens are never drawn
        token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


def sampling_processors(gen_config: Any) -> Any | None:
    """Temperature / top-k / top-p / min-p warpers followed by inverse-CDF sampling, or None when the
    config asks for anything else (then HF's own sampler runs)."""
    from transformers import (GenerationConfig, LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    default = GenerationConfig()
    handled = {"temperature", "top_k", "top_p", "min_p", "do_sample", "max_new_tokens", "return_dict_in_generate",
               "pad_token_id", "eos_token_id", "bos_token_id", "use_cache", "cache_implementation", "max_length",
               "transformers_version", "disable_compile"}
    neutral = {"repetition_penalty": 1.0, "top_k": 0}
    changed = {k for k, v in gen_config.to_diff_dict().items() if getattr(default, k, None) != v and neutral.get(k, v) != v}
    if not gen_config.do_sample or changed - handled or (gen_config.num_beams or 1) > 1:
        return None
    procs = LogitsProcessorList()
    if gen_config.temperature not in (None, 1.0):
        procs.append(TemperatureLogitsWarper(gen_config.temperature))
    if gen_config.top_k:
        procs.append(TopKLogitsWarper(gen_config.top_k))
    if gen_config.top_p is not None and gen_config.top_p < 1.0:
        procs.append(TopPLogitsWarper(gen_config.top_p))
    if gen_config.min_p:
        procs.append(MinPLogitsWarper(gen_config.min_p))
    procs.append(InverseCDFSampler())
    return procs


def generate_shared_prompts(model: Any, prompt_ids: list[list[int]], generation_config: Any, pad_id: int,
                            eos_ids: list[int], segment_tokens: int) -> list[list[int]]:
    """Sample completions (token ids up to and including EOS) for prompts that repeat in the batch.

    Every distinct prompt but its last token is prefilled once; the cache is gathered to all rows, and
    `generate` continues in segments, dropping rows that have emitted EOS in between."""
    import copy

    from transformers import DynamicCache

    from mathrl.generation import generate_in_segments

    device = model.device
    gen_config = copy.deepcopy(generation_config)
    gen_config.pad_token_id, gen_config.eos_token_id = pad_id, eos_ids
    processors = sampling_processors(gen_config)
    extra = {}
    if processors is not None:  # same distribution, cheaper draw (see InverseCDFSampler)
        gen_config.do_sample, gen_config.temperature, gen_config.top_k, gen_config.top_p = False, None, None, None
        gen_config.min_p = None
        extra["logits_processor"] = processors
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    first, inverse = group_rows(ids, mask)
    cache = DynamicCache(config=_causal_lm(model).config)
    if width > 1:
        # Positions as `generate` counts them (left padding skipped): without them a padded row's prompt
        # would sit `padding` positions away from the tokens decoded after it, and the samples would come
        # from a corrupted distribution.
        prefix_mask = mask[first, :-1]
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        model(input_ids=ids[first, :-1], attention_mask=prefix_mask, position_ids=positions, past_key_values=cache,
              use_cache=True)
        cache.batch_select_indices(inverse)
    eos = set(eos_ids)
    rows = generate_in_segments(model, ids, mask, cache, gen_config.max_new_tokens, segment_tokens, eos_ids,
                                generation_config=gen_config, **extra)
    cut = [next((k for k, t in enumerate(r) if t in eos), None) for r in rows]
    return [r if k is None else r[: k + 1] for r, k in zip(rows, cut)]
