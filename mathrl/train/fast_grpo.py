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
* `_generate` / `_generate_and_score_completions`: a completion that ended at a stop string ends on the
  stop's last token, not EOS, so TRL's rule (last id in EOS + pad) would count it truncated; here it is
  finished, in `completions/clipped_ratio` and the terminated lengths and for `mask_truncated_completions`.

Everything else (advantages, loss types, clipping, KL, logging, checkpoints) is TRL's own code.
`tests/test_grpo.py` checks that log-probs, loss and gradients match stock TRL on a fixed batch.
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

from mathrl.engine.models import unwrap_causal_lm
from mathrl.train.sampling_copy import SamplingCopy
from mathrl.train.saving import weights_sharded
from mathrl.engine.generation import group_rows
from mathrl.train.step_timing import StepTimingMixin

_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
               "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
# Models whose LM head is not a plain projection: leave them to TRL's fused head.
_SCALED_HEAD = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
_HEAD_CHUNK = 1024  # positions per LM-head tile: bounds the fp32 (positions x vocab) buffer


def length_chunks(lengths: list[int], max_chunks: int = 8, keep: float = 0.8) -> list[tuple[list[int], int]]:
    """Rows grouped by completion length for the training passes: (row indices, the chunk's longest length),
    longest first. A new chunk starts when a row is shorter than `keep` x its chunk's longest, so a chunk
    pads at most ~1/keep of its real tokens (the last chunk, once `max_chunks` are open, takes the rest)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: list[tuple[list[int], int]] = []
    for i in order:
        if not chunks or (lengths[i] < keep * chunks[-1][1] and len(chunks) < max_chunks):
            chunks.append(([], lengths[i]))
        chunks[-1][0].append(i)
    return chunks


def shared_prefix_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int) -> torch.Tensor:
    """Final hidden states that predict each of the last `n_completion` tokens, shape (rows, n_completion, hidden),
    running every distinct (left-padded) prompt once and the completions on its gathered KV cache.

    Completions are right-padded to the longest in the batch; the completion pass runs in chunks of rows of
    similar length (`length_chunks`), each only as long as its longest row, so padding costs little. Rows
    see the same positions and keys as in one padded pass (a causal model's real tokens never attend to
    the padding after them): the states are the same, and zero at the positions no chunk computed, which
    every caller masks out. Caches with layers other than transformers' plain `DynamicLayer` (sliding
    windows keep more state) run as one chunk."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    lm = unwrap_causal_lm(model)
    backbone = lm.base_model
    n = n_completion
    prompt, prompt_mask = input_ids[:, :-n], attention_mask[:, :-n]
    first, inverse = group_rows(prompt, prompt_mask)
    cache = DynamicCache(config=lm.config)
    out = backbone(input_ids=prompt[first], attention_mask=prompt_mask[first], cache=cache, use_cache=True)
    last = out.last_hidden_state[:, -1:]  # prompts are left-padded: the last position is a real token
    if n == 1:
        return last[inverse]
    real = attention_mask[:, -n:]
    lengths = (real.shape[1] - real.flip(1).int().argmax(1)).where(real.any(1), 0).tolist()  # last real token + 1
    plain = all(type(layer) is DynamicLayer for layer in cache.layers)
    chunks = length_chunks(lengths) if plain else [(list(range(len(lengths))), n)]
    saved = [(layer.keys, layer.values) for layer in cache.layers]
    parts, rows = [], []
    for idx, longest in chunks:
        sel = torch.tensor(idx, device=input_ids.device)
        head = last[inverse[sel]]
        if longest > 1:
            for layer, (k, v) in zip(cache.layers, saved):
                layer.keys, layer.values = k, v
            cache.batch_select_indices(inverse[sel])
            width = prompt.size(1) + longest - 1
            rest = backbone(input_ids=input_ids[sel, -n:-n + longest - 1], attention_mask=attention_mask[sel, :width],
                            cache=cache, use_cache=True).last_hidden_state
            head = torch.cat([head, rest], dim=1)
        parts.append(torch.nn.functional.pad(head, (0, 0, 0, n - head.size(1))))
        rows += idx
    where = torch.empty(len(rows), dtype=torch.long, device=input_ids.device)
    where[torch.tensor(rows, device=input_ids.device)] = torch.arange(len(rows), device=input_ids.device)
    return torch.cat(parts)[where]


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


# The TRL releases these overrides were written and tested against, and the private signatures they
# replace (or, for dynamic sampling, call). Another release may call them differently (TRL 1.9 passes
# other arguments to `_generate_single_turn`: a TypeError at step 1), so `fast_path_supported` checks
# both at start-up.
TESTED_TRL = (">=1.16", "<1.17")
_OVERRIDDEN = {
    "_get_per_token_logps_and_entropies": ["self", "model", "input_ids", "attention_mask", "logits_to_keep",
                                           "batch_size", "compute_entropy", "compute_aux_loss", *_MULTIMODAL],
    "_generate_single_turn": ["self", "prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images"],
    # FastGRPOTrainer: completions that ended at a stop string are not truncated (metrics, loss mask); its
    # `_generate` returns TRL's 8-tuple with completion ids second
    "_generate": ["self", "prompts"],
    # mathrl.train.dynamic_sampling (and FastGRPOTrainer): overrides the first, calls the other two
    "_generate_and_score_completions": ["self", "inputs"],
    "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
    "_tokenize_prompts": ["self", "prompts"],
    # FastGRPOTrainer: with micro-batches, the generation batch is shuffled by whole groups (`shuffle_groups`)
    "_prepare_inputs": ["self", "generation_batch"],
}


def fast_path_supported() -> str | None:
    """None when the installed TRL has the private methods FastGRPOTrainer and dynamic sampling override
    or call, with the tested signatures; else the reason (then stock GRPOTrainer runs, without dynamic
    sampling)."""
    import trl.trainer.grpo_trainer as trl_grpo

    if not callable(getattr(trl_grpo, "shuffle_sequence_dict", None)):  # replaced around `_prepare_inputs`
        return "trl.trainer.grpo_trainer has no shuffle_sequence_dict"
    return trl_mismatch(GRPOTrainer, _OVERRIDDEN)


def trl_mismatch(cls: type, overridden: dict[str, list[str]]) -> str | None:
    """None when the installed TRL is in TESTED_TRL and `cls` has each method of `overridden` with exactly
    those parameters; else the reason."""
    import inspect

    import trl
    from packaging.version import Version

    version = Version(trl.__version__)
    if not (Version(TESTED_TRL[0][2:]) <= version < Version(TESTED_TRL[1][1:])):
        return f"TRL {trl.__version__} is outside the tested range {','.join(TESTED_TRL)}"
    for name, params in overridden.items():
        method = getattr(cls, name, None)
        got = list(inspect.signature(method).parameters) if method else None
        if got != params:
            return f"TRL {trl.__version__}'s {cls.__name__}.{name} has signature {got}, not the tested {params}"
    return None


def shuffle_groups(batch: dict[str, Any], size: int) -> dict[str, Any]:
    """TRL's `shuffle_sequence_dict`, permuting whole groups of `size` consecutive rows instead of rows.

    TRL shuffles a generation batch before slicing it into micro-batches. With rows shuffled, a slice holds
    a few rows of many groups and the shared-prompt pass runs nearly every prompt once per slice; with
    groups kept whole it runs each prompt once. With one pass over the batch (num_iterations 1) the slices'
    gradients add up to the same update whatever the order; with more, every slice is still a uniform
    random subset of groups."""
    n = len(next(v for v in batch.values() if v is not None))
    order = torch.randperm(n // size).repeat_interleave(size) * size + torch.arange(size).repeat(n // size)

    def permute(v: Any) -> Any:
        if v is None or (isinstance(v, torch.Tensor) and v.ndim == 0):
            return v
        return v[order] if isinstance(v, torch.Tensor) else [v[i] for i in order.tolist()]

    return {key: permute(value) for key, value in batch.items()}


def plain_model_blocker(trainer: Any, model: Any) -> str | None:
    """Why a hand-run backbone + plain LM-head projection would not compute what TRL's own pass does
    (None when it would). Shared by the GRPO and SFT fast paths."""
    lm = unwrap_causal_lm(model)
    cfg = lm.config.get_text_config()
    # Activation checkpointing in a grad-enabled training pass makes transformers drop past_key_values,
    # which the shared-prompt pass needs (found on a GPU run, where checkpointing is on by default).
    name = "is_activation_checkpointing" if hasattr(lm, "is_activation_checkpointing") else "is_gradient_checkpointing"
    if getattr(lm, name, False) and lm.training and torch.is_grad_enabled():
        return "activation checkpointing"
    if weights_sharded(trainer):  # FSDP / ZeRO-3 gather sharded weights around the wrapped model's forward
        return "sharded weights (FSDP / ZeRO-3)"
    scaled = [a for a in _SCALED_HEAD if getattr(cfg, a, None) not in (None, 1.0)]
    if scaled:
        return f"scaled LM head ({scaled[0]})"
    if getattr(trainer.args, "cast_lm_head_to_fp32", False):
        return "cast_lm_head_to_fp32"
    return None


def _through_wrapper(model: Any, fn: Any, *args: Any) -> Any:
    """Run `fn(*args)` inside the forward of the DDP wrapper around the model, when there is one.

    DDP all-reduces gradients only for a backward that follows its own forward; calling the inner module
    directly (as the shared-prompt pass must, to use the KV cache its own way) would leave every rank
    with its own gradients and the ranks' weights drifting apart. The inner module's forward is swapped
    for `fn` for the one call, so DDP's bookkeeping runs around exactly this computation."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return fn(*args)
    inner = model.module
    # accelerate's mixed precision installs its autocast wrapper as an instance attribute `forward`: put
    # back whatever was there, or later passes lose autocast (fp32 outputs after the first fast pass)
    saved = inner.__dict__.get("forward")
    inner.forward = lambda *_a, **_k: fn(*args)  # an instance attribute shadows the class's forward
    try:
        return model()
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


class _FastGRPOCore(GRPOTrainer):
    """`GRPOTrainer` with shared-prompt log-prob passes and mathrl's shared-prompt sampling engine.

    `decoding` (mathrl.engine.decoding.DecodingSettings) is how completions are drawn: the same sampler, EOS set
    and stop strings as evaluation, with none of the model's own generation_config."""

    def __init__(self, *args: Any, decoding: Any, segment_tokens: int = 16, **kwargs: Any):
        super().__init__(*args, **kwargs)
        from mathrl.engine.decoding import eos_token_ids

        self.segment_tokens = segment_tokens
        self.decoding = decoding
        self.sampling_copy = SamplingCopy(bool(self.args.bf16))
        self.eos_token_ids = eos_token_ids(self._tokenizer, unwrap_causal_lm(self.model))

    def _ended(self, ids: list[int]) -> bool:
        """The completion finished (EOS, or the token completing a stop string), rather than hitting the length
        limit. TRL's own rule (last id in EOS + pad) calls a stop-string ending truncated."""
        from mathrl.engine.decoding import cut_at_stop

        if ids and ids[-1] in (*self.eos_token_ids, self._tokenizer.pad_token_id):
            return True
        stops = self.decoding.stop
        return bool(ids and stops) and cut_at_stop(self._tokenizer.decode(ids, skip_special_tokens=True), stops)[1]

    def _generate(self, prompts: list):  # noqa: ANN001
        """TRL's generation, with `completions/clipped_ratio` and the terminated-length metrics by `_ended`."""
        out = super()._generate(prompts)
        completion_ids = out[1]
        device = self.accelerator.device
        truncated = self.accelerator.gather(torch.tensor([not self._ended(list(c)) for c in completion_ids], device=device))
        lengths = self.accelerator.gather(torch.tensor([len(c) for c in completion_ids], device=device)).float()
        ended = lengths[~truncated] if bool((~truncated).any()) else torch.zeros(1, device=device)
        m = self._metrics["train" if self.model.training else "eval"]
        for key, value in (("clipped_ratio", truncated.float().mean()), ("mean_terminated_length", ended.mean()),
                           ("min_terminated_length", ended.min()), ("max_terminated_length", ended.max())):
            m[f"completions/{key}"][-1] = value.item()  # replaces the value TRL just appended
        return out

    def _generate_and_score_completions(self, inputs):  # noqa: ANN001
        """With `mask_truncated_completions`, the completions masked out of the loss are those `_ended` calls
        truncated (TRL's rule would also drop every completion that ended at a stop string)."""
        if not self.mask_truncated_completions:
            return super()._generate_and_score_completions(inputs)
        self.mask_truncated_completions = False
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self.mask_truncated_completions = True
        mask = out["completion_mask"]
        ended = torch.tensor([self._ended(ids[m.bool()].tolist()) for ids, m in zip(out["completion_ids"], mask)],
                             device=mask.device)
        out["completion_mask"] = mask * ended.unsqueeze(1).to(mask.dtype)
        out["num_items_in_batch"] = self.accelerator.gather(out["completion_mask"].sum()).sum()
        return out

    def _prepare_inputs(self, generation_batch):  # noqa: ANN001
        """TRL's, with the generation batch shuffled by whole groups when it is sliced into micro-batches."""
        import trl.trainer.grpo_trainer as trl_grpo

        if self.args.steps_per_generation == 1 or not self.model.training:
            return super()._prepare_inputs(generation_batch)
        saved = trl_grpo.shuffle_sequence_dict
        trl_grpo.shuffle_sequence_dict = lambda batch: shuffle_groups(batch, self.num_generations)
        try:
            return super()._prepare_inputs(generation_batch)
        finally:
            trl_grpo.shuffle_sequence_dict = saved

    def _fast_path_ok(self, model: Any, compute_aux_loss: bool, extra: dict[str, Any]) -> bool:
        return (not compute_aux_loss and all(extra.get(k) is None for k in _MULTIMODAL)
                and plain_model_blocker(self, model) is None)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):  # noqa: ANN001
        if not self._fast_path_ok(model, compute_aux_loss, extra):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
        labels = input_ids[:, -logits_to_keep:]
        mask = attention_mask[:, -logits_to_keep:].bool()

        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            with self.accelerator.autocast():
                hidden = shared_prefix_hidden(model, input_ids, attention_mask, logits_to_keep)
                return token_logps(unwrap_causal_lm(model).get_output_embeddings(), hidden, labels, mask,
                                   self.temperature, compute_entropy, self._entropy_bonus_enabled)

        logps, ents = _through_wrapper(model, run)
        return logps, ents, None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):  # noqa: ANN001
        if (self.use_vllm or getattr(self, "use_transformers_continuous_batching", False) or images is not None
                or multimodal_fields):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        from trl.models import unwrap_model_for_generation

        from mathrl.engine.generation import sample_shared_prompts

        with (
            unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                        gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as lm,
            torch.no_grad(),
        ):
            sampler = self.sampling_copy.get(unwrap_causal_lm(lm), self.state.global_step)
            completions = sample_shared_prompts(sampler, self._tokenizer, prompt_ids, self.decoding, self.segment_tokens)
        return [c.token_ids for c in completions], None


class FastGRPOTrainer(StepTimingMixin, _FastGRPOCore):
    """The fast path with its per-step time breakdown (`timing/*`, mathrl.train.step_timing) wrapped around
    it: the timers sit above the overrides, which do not call TRL's versions of what they replace."""
