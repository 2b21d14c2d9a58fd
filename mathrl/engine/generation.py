"""The one sampling engine: every completion in mathrl (evaluation, GRPO's fast path, PPO rollouts,
`mathrl chat`) is drawn here, from `decoding.DecodingSettings` and `decoding.encode_prompts` ids.

Two prefill strategies share one decode loop (`generate_in_segments`):
- `HFGenerator` (eval, chat): prompts sorted by length and batched, left-padded; the token prefix that
  all prompts share (a k-shot block, a system prompt) is prefilled once and every batch starts from a
  copy of its KV cache. Batches hold "prefix | padding | question" with the padding masked out.
- `sample_shared_prompts` (GRPO, PPO): batches that repeat each prompt (a group) prefill every
  distinct prompt once and gather its cache to the rows that share it.
Position ids follow the attention mask in both, so results equal generation from unpadded prompts
(tests check this in fp32). Rows that finished (EOS or a stop string) are dropped between segments.
The vLLM backend takes the same settings (`DecodingSettings.vllm_params`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from mathrl.engine import decoding
from mathrl.engine.decoding import DecodingSettings, cut_at_stop
from mathrl.errors import MathrlError

SamplingParams = DecodingSettings  # the earlier name


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    token_ids: list[int] | None = None


def common_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all sequences, leaving each at least one token."""
    if not seqs:
        return 0
    limit = min(len(s) for s in seqs) - 1
    first = seqs[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n


def _stop_checker(tokenizer: Any, stops: Sequence[str]) -> Callable[[list[int]], bool] | None:
    if not stops:
        return None

    def hit(toks: list[int]) -> bool:  # a stop string in the decoded text ends the row
        return cut_at_stop(tokenizer.decode(toks, skip_special_tokens=True), stops)[1]

    return hit


def generate_in_segments(model: Any, ids: Any, mask: Any, cache: Any, settings: DecodingSettings, eos_ids: Sequence[int],
                         pad_id: int, segment_tokens: int, finished: Callable[[list[int]], bool] | None = None,
                         position_offset: Any = None) -> list[list[int]]:
    """Decode `settings.max_new_tokens` tokens in segments of `segment_tokens`, dropping finished rows in
    between; returns each row's new tokens (everything generated, EOS and what follows it included).

    Kept rows continue from the same KV cache (`batch_select_indices`), so greedy results are those of one
    uninterrupted `generate`. A row is finished when it emitted an EOS id or when `finished(its tokens)`
    says so (stop strings). Sampling happens in `decoding.logits_processors`; the model's own
    generation_config is hidden (`decoding.neutral_model_defaults`)."""
    import torch

    from mathrl.engine.models import unwrap_causal_lm

    config = decoding.hf_generation_config(eos_ids, pad_id)
    processors = decoding.logits_processors(settings)
    eos = set(eos_ids)
    new: list[list[int]] = [[] for _ in range(ids.shape[0])]
    active = list(range(ids.shape[0]))
    done, budget = 0, settings.max_new_tokens
    with decoding.neutral_model_defaults(unwrap_causal_lm(model)):
        while active and done < budget:
            step = min(segment_tokens, budget - done)
            config.max_new_tokens = step
            out = model.generate(input_ids=ids, attention_mask=mask, cache=cache, generation_config=config,
                                 logits_processor=processors)
            seqs, cache = out.sequences, out.cache
            gen = seqs[:, ids.shape[1]:]
            keep = []
            for local, row in enumerate(active):
                toks = gen[local].tolist()
                new[row] += toks
                if not (any(t in eos for t in toks) or (finished is not None and finished(new[row]))):
                    keep.append(local)
            done += gen.shape[1]
            if not keep or gen.shape[1] < step:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], gen.shape[1])], dim=1)
            if len(keep) < len(active):
                idx = torch.tensor(keep, device=seqs.device)
                seqs, mask = seqs[idx], mask[idx]
                cache.batch_select_indices(idx)
            ids = seqs
            active = [active[k] for k in keep]
    return new


def prefill_in_chunks(model: Any, ids: Any, mask: Any, cache: Any, chunk: int) -> Any:
    """Run all but the last prompt token into `cache`, `chunk` positions at a time, so a prefill's
    activations are bounded by rows x chunk rather than rows x prompt length (1,000-token few-shot
    prompts). Positions follow the mask as `generate` computes them; `generate` then feeds only the
    last token. Short prompts (one chunk) are left to `generate` unchanged."""
    done = cache.get_seq_length() if cache is not None else 0
    if ids.shape[1] - 1 - done <= chunk:
        return cache
    cache = cache if cache is not None else _new_cache(model)
    positions = mask.long().cumsum(-1) - 1
    positions.masked_fill_(mask == 0, 1)
    for start in range(done, ids.shape[1] - 1, chunk):
        end = min(start + chunk, ids.shape[1] - 1)
        model(input_ids=ids[:, start:end], attention_mask=mask[:, :end], position_ids=positions[:, start:end],
              cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def _new_cache(model: Any) -> Any:
    """A KV cache built from the model's config, so sliding-window layers get their own cache type."""
    from transformers import DynamicCache

    from mathrl.engine.models import unwrap_causal_lm

    return DynamicCache(config=unwrap_causal_lm(model).config)


def group_rows(prompt_ids: Any, prompt_mask: Any) -> tuple[Any, Any]:
    """(index of one representative row per distinct prompt, representative index for every row): the
    grouping behind every shared-prompt pass (generation here, log-probs in train/fast_grpo)."""
    import torch

    keyed = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    uniq, inverse = torch.unique(keyed, dim=0, return_inverse=True)
    first = torch.full((uniq.size(0),), keyed.size(0), dtype=torch.long, device=keyed.device)
    first.scatter_reduce_(0, inverse, torch.arange(keyed.size(0), device=keyed.device), reduce="amin")
    return first, inverse


def sample_shared_prompts(model: Any, tokenizer: Any, prompt_ids: list[list[int]], settings: DecodingSettings,
                          segment_tokens: int = 16) -> list[Completion]:
    """One completion per row for batches whose prompts repeat (GRPO groups, PPO rollouts).

    Every distinct prompt but its last token is prefilled once; the cache is gathered to all rows, and
    decoding continues in segments. `token_ids` hold the completion up to and including its EOS, or up to
    the token that completes a stop string; `text` is that completion as evaluation grades it."""
    import torch


    eos_ids = decoding.eos_token_ids(tokenizer, model)
    pad = decoding.pad_token_id(tokenizer, eos_ids)
    device = model.device
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    first, inverse = group_rows(ids, mask)
    cache = _new_cache(model)
    if width > 1:
        # Positions as `generate` counts them (left padding skipped): without them a padded row's prompt
        # would sit `padding` positions away from the tokens decoded after it, and the samples would come
        # from a corrupted distribution.
        prefix_mask = mask[first, :-1]
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        model(input_ids=ids[first, :-1], attention_mask=prefix_mask, position_ids=positions, cache=cache,
              use_cache=True)
        cache.batch_select_indices(inverse)
    rows = generate_in_segments(model, ids, mask, cache, settings, eos_ids, pad, segment_tokens,
                                finished=_stop_checker(tokenizer, settings.stop))
    out = []
    for r in rows:
        kept, text, reason = decoding.finish(tokenizer, r, eos_ids, settings.stop)
        out.append(Completion(text, len(kept), reason, kept))
    return out


def row_bytes(config: Any, itemsize: int, cached_tokens: int, prefill_tokens: int) -> int:
    """Memory one batch row needs: its KV cache at `cached_tokens` (every layer, K and V) plus the live
    activations of one layer's prefill over `prefill_tokens` (hidden states, q/k/v/o and the MLP's three
    intermediate tensors; layers run one after another). Simplified: the fused prefill attention's own
    workspace (blocks, not the L x L scores) and the allocator's slack are left out."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * itemsize * cached_tokens
    act = (4 * config.hidden_size + 3 * config.intermediate_size) * itemsize * prefill_tokens
    return kv + act


class HFGenerator:
    """Batched generation with shared-prefix KV reuse, stop strings and a progress bar. With
    `memory_gb`, a batch holds at most as many rows as fit that cap (`row_bytes`), so long prompts
    get smaller batches instead of a surprise of several GB."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, min_shared_prefix: int = 32, progress: bool = True,
                 segment_tokens: int = 32, memory_gb: float | None = None, prefill_chunk: int = 256):
        if batch_size < 1:
            raise MathrlError(f"--batch-size must be at least 1, got {batch_size}")
        if memory_gb is not None and memory_gb <= 0:
            raise MathrlError(f"--batch-memory-gb must be positive, got {memory_gb}")
        self.memory_gb = memory_gb
        self.prefill_chunk = prefill_chunk
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.min_shared_prefix = min_shared_prefix
        self.progress = progress
        self.segment_tokens = segment_tokens  # decode this many tokens between drops of finished rows
        self._prefix: tuple[tuple[int, ...], Any] | None = None
        self.stats = {"prompt_tokens": 0, "prefix_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

    def _batches(self, ids: list[list[int]], order: list[int], prefix: int, params: DecodingSettings) -> Iterator[list[int]]:
        """Consecutive slices of `order` (longest prompts first): `batch_size` rows, fewer where the
        memory cap says so (the first prompt of a slice is its widest)."""
        from mathrl.engine.models import unwrap_causal_lm

        per_batch = max(1, self.batch_size // params.num_samples)
        config = unwrap_causal_lm(self.model).config
        itemsize = next(self.model.parameters()).element_size()
        b = 0
        while b < len(order):
            n = per_batch
            if self.memory_gb is not None:
                width = len(ids[order[b]]) - prefix
                need = row_bytes(config, itemsize, prefix + width + params.max_new_tokens,
                                 min(width, self.prefill_chunk)) * params.num_samples
                n = max(1, min(per_batch, int(self.memory_gb * 2**30 // need)))
            batch = order[b : b + n]
            self.stats["max_rows"] = max(self.stats.get("max_rows", 0), len(batch) * params.num_samples)
            yield batch
            b += n

    def _prefix_cache(self, prefix: list[int]) -> Any:
        import torch

        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key:
            cache = _new_cache(self.model)
            with torch.no_grad():
                self.model(torch.tensor([prefix], device=self.model.device), cache=cache, use_cache=True)
            self._prefix = (key, cache)
        return self._prefix[1]

    def stream(self, prompts: Sequence[str], params: DecodingSettings) -> Iterator[tuple[list[int], list[list[Completion]]]]:
        """Yield (prompt indices, their completions) batch by batch, longest prompts first."""
        import torch
        from tqdm.auto import tqdm

        from mathrl.engine import cpu_attention

        params.validate()
        if not prompts:
            return
        tok = self.tokenizer
        ids = decoding.encode_prompts(tok, prompts)
        shared = common_prefix_length(ids)
        use_prefix = shared >= self.min_shared_prefix
        prefix = list(ids[0][:shared]) if use_prefix else []
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        eos_ids = decoding.eos_token_ids(tok, self.model)
        pad = decoding.pad_token_id(tok, eos_ids)
        device = self.model.device
        bar = tqdm(total=len(prompts), unit="q", desc="generate", disable=not self.progress, dynamic_ncols=True)
        start, generated, calls = time.perf_counter(), 0, cpu_attention.usage()
        if use_prefix:
            self._prefix_cache(prefix)
            self.stats["prefix_tokens"] += shared
        for batch in self._batches(ids, order, len(prefix), params):
            rows = [ids[i][len(prefix) :] for i in batch for _ in range(params.num_samples)]
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([prefix + [pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            if params.sampled:
                torch.manual_seed(params.seed * 1_000_003 + batch[0])
            cache = None
            if use_prefix:
                cache = copy.deepcopy(self._prefix[1])
                cache.batch_repeat_interleave(len(rows))
            with torch.no_grad():
                cache = prefill_in_chunks(self.model, input_ids, mask, cache, self.prefill_chunk)
                new = generate_in_segments(self.model, input_ids, mask, cache, params, eos_ids, pad, self.segment_tokens,
                                           finished=_stop_checker(tok, params.stop))
            results: list[list[Completion]] = []
            for j, seq in enumerate(new):
                kept, text, reason = decoding.finish(tok, seq, eos_ids, params.stop)
                if j % params.num_samples == 0:
                    results.append([])
                n = len(kept) - (1 if kept and kept[-1] in eos_ids else 0)  # EOS is not a generated answer token
                results[-1].append(Completion(text, n, reason))
                generated += n
            self.stats["prompt_tokens"] += sum(len(ids[i]) for i in batch) * params.num_samples
            elapsed = time.perf_counter() - start
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{generated / max(elapsed, 1e-9):.0f}")
            yield batch, results
        bar.close()
        self.stats["generated_tokens"] += generated
        self.stats["seconds"] += time.perf_counter() - start
        after = cpu_attention.usage()
        kernels = self.stats.setdefault("attention_calls", {})  # which CPU kernel served each layer call
        for k, n in after.items():
            if n > calls.get(k, 0):
                kernels[k] = kernels.get(k, 0) + n - calls.get(k, 0)

    def generate(self, prompts: Sequence[str], params: DecodingSettings) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in prompts]
        for idx, comps in self.stream(prompts, params):
            for i, c in zip(idx, comps):
                out[i] = c
        return out


class VLLMGenerator:
    """vLLM offline engine (GPU). Prefix caching is vLLM's own; prompts are the same token ids as HF's."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer: Any, dtype: str = "auto", seed: int = 0, gpu_memory_utilization: float = 0.85, chunk: int = 256):
        require_vllm("--backend vllm")
        import vllm

        self.vllm, self.tokenizer, self.chunk = vllm, tokenizer, chunk
        self.llm = vllm.LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
                            generation_config="vllm")  # vLLM's neutral defaults, not the model's file
        self.stats = {"prompt_tokens": 0, "prefix_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

    def stream(self, prompts: Sequence[str], params: DecodingSettings) -> Iterator[tuple[list[int], list[list[Completion]]]]:
        params.validate()
        sp = params.vllm_params(self.vllm)
        for b in range(0, len(prompts), self.chunk):
            idx = list(range(b, min(b + self.chunk, len(prompts))))
            start = time.perf_counter()
            inputs = [{"prompt_token_ids": ids} for ids in decoding.encode_prompts(self.tokenizer, [prompts[i] for i in idx])]
            outs = self.llm.generate(inputs, sp, use_tqdm=True)
            comps = [[Completion(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop") for o in r.outputs] for r in outs]
            self.stats["generated_tokens"] += sum(c.num_tokens for cs in comps for c in cs)
            self.stats["prompt_tokens"] += sum(len(x["prompt_token_ids"]) for x in inputs)
            self.stats["seconds"] += time.perf_counter() - start
            yield idx, comps


def vllm_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def require_vllm(option: str) -> None:
    """A one-line error when `option` asks for vLLM where it cannot run."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise MathrlError(f"{option} needs vLLM, which is not installed: pip install 'mathrl[gpu]' (Linux with CUDA)")
    import torch

    if not torch.cuda.is_available():
        raise MathrlError(f"{option} needs a CUDA GPU; without one the HF backend is the path")


def pick_backend(backend: str) -> str:
    if backend == "auto":
        return "vllm" if vllm_available() else "hf"
    if backend not in ("hf", "vllm"):
        raise MathrlError(f"unknown --backend {backend!r}; choose auto, hf or vllm")
    if backend == "vllm":
        require_vllm("--backend vllm")
    return backend
