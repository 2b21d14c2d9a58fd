"""Batched generation backends: HF `generate` (default, CPU or GPU) and vLLM (GPU, optional).

This is the only module that calls a model's `generate`. The HF backend:
- sorts prompts by length (less padding) and batches them, left-padded, with the KV cache;
- stops each sequence at EOS or at a stop string, then cuts the text at the stop string;
- computes the key/value cache of the token prefix that all prompts share (a k-shot block, a
  system prompt) once, and starts every batch from a copy of it. With 5-shot GSM8K prompts ~90% of
  prompt tokens are that shared prefix, so this removes most of the prompt work. Batches then hold
  "prefix | padding | question" with the padding masked out; position ids follow the mask, so the
  result equals generation from the unpadded prompt (checked in the tests in fp32).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from mathrl.errors import MathrlError


@dataclass
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    num_samples: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise MathrlError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.num_samples < 1:
            raise MathrlError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.temperature < 0:
            raise MathrlError(f"--temperature must be >= 0, got {self.temperature}")
        if self.num_samples > 1 and self.temperature == 0:
            raise MathrlError("--num-samples > 1 needs --temperature > 0 (greedy decoding gives identical samples)")


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) | "length"


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


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


def generate_in_segments(model: Any, ids: Any, mask: Any, cache: Any, budget: int, segment_tokens: int,
                         eos_ids: Sequence[int], finished: Callable[[list[int]], bool] | None = None,
                         **generate_kwargs: Any) -> list[list[int]]:
    """`model.generate` in segments of `segment_tokens`, dropping finished rows between segments; returns
    each row's new tokens (everything generated, EOS and what follows it included).

    A batch otherwise decodes every row until its longest row stops: with a few runaway rows most of
    the work is padding. Kept rows continue from the same KV cache (rows selected with
    `batch_select_indices`), so greedy results are those of one uninterrupted `generate`. A row is
    finished when it emitted an EOS id or when `finished(its tokens so far)` says so (stop strings).
    """
    import torch

    config = generate_kwargs.get("generation_config")
    eos = set(eos_ids)
    new: list[list[int]] = [[] for _ in range(ids.shape[0])]
    active = list(range(ids.shape[0]))
    done = 0
    while active and done < budget:
        step = min(segment_tokens, budget - done)
        if config is not None:  # passing max_new_tokens beside a generation_config is deprecated
            config.max_new_tokens, config.return_dict_in_generate = step, True
            length = {}
        else:
            length = {"max_new_tokens": step, "return_dict_in_generate": True}
        out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **length, **generate_kwargs)
        seqs, cache = out.sequences, out.past_key_values
        gen = seqs[:, ids.shape[1] :]
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


class HFGenerator:
    """Batched `model.generate` with shared-prefix KV reuse, stop strings and a progress bar."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, min_shared_prefix: int = 32, progress: bool = True,
                 segment_tokens: int = 32):
        if batch_size < 1:
            raise MathrlError(f"--batch-size must be at least 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.min_shared_prefix = min_shared_prefix
        self.progress = progress
        self.segment_tokens = segment_tokens  # decode this many tokens between drops of finished rows
        self._prefix: tuple[tuple[int, ...], Any] | None = None
        self.stats = {"prompt_tokens": 0, "prefix_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

    def _eos_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def _prefix_cache(self, prefix: list[int]) -> Any:
        import torch
        from transformers import DynamicCache

        key = tuple(prefix)
        if self._prefix is None or self._prefix[0] != key:
            cache = DynamicCache()
            with torch.no_grad():
                self.model(torch.tensor([prefix], device=self.model.device), past_key_values=cache, use_cache=True)
            self._prefix = (key, cache)
        return self._prefix[1]

    def stream(self, prompts: Sequence[str], params: SamplingParams, add_special_tokens: bool = False) -> Iterator[tuple[list[int], list[list[Completion]]]]:
        """Yield (prompt indices, their completions) batch by batch, longest prompts first."""
        import torch
        from tqdm.auto import tqdm

        params.validate()
        if not prompts:
            return
        tok = self.tokenizer
        ids = tok(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
        shared = common_prefix_length(ids)
        use_prefix = shared >= self.min_shared_prefix
        prefix = list(ids[0][:shared]) if use_prefix else []
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        per_batch = max(1, self.batch_size // params.num_samples)
        eos_ids, pad = self._eos_ids(), tok.pad_token_id
        device = self.model.device
        hit_stop = None
        if params.stop:
            def hit_stop(toks: list[int]) -> bool:  # a stop string in the decoded text ends the row
                return cut_at_stop(tok.decode(toks, skip_special_tokens=True), params.stop)[1]
        bar = tqdm(total=len(prompts), unit="q", desc="generate", disable=not self.progress, dynamic_ncols=True)
        start, generated = time.perf_counter(), 0
        if use_prefix:
            self._prefix_cache(prefix)
            self.stats["prefix_tokens"] += shared
        for b in range(0, len(order), per_batch):
            batch = order[b : b + per_batch]
            rows = [ids[i][len(prefix) :] for i in batch for _ in range(params.num_samples)]
            width = max(len(r) for r in rows)
            input_ids = torch.tensor([prefix + [pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            kwargs: dict[str, Any] = dict(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
                pad_token_id=pad, eos_token_id=eos_ids,
            )
            if params.stop:
                kwargs.update(stop_strings=params.stop, tokenizer=tok)
            if params.temperature > 0:
                torch.manual_seed(params.seed * 1_000_003 + batch[0])
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if use_prefix:
                cache = copy.deepcopy(self._prefix[1])
                cache.batch_repeat_interleave(len(rows))
                kwargs["past_key_values"] = cache
            with torch.no_grad():
                new = generate_in_segments(
                    self.model, kwargs.pop("input_ids"), kwargs.pop("attention_mask"), kwargs.pop("past_key_values", None),
                    kwargs.pop("max_new_tokens"), self.segment_tokens, eos_ids, finished=hit_stop, **kwargs)
            results: list[list[Completion]] = []
            for j, seq in enumerate(new):
                n = next((k for k, t in enumerate(seq) if t in eos_ids), len(seq))
                text, stopped = cut_at_stop(tok.decode(seq[:n], skip_special_tokens=True), params.stop)
                if j % params.num_samples == 0:
                    results.append([])
                results[-1].append(Completion(text, n, "stop" if stopped or n < len(seq) else "length"))
                generated += n
            self.stats["prompt_tokens"] += sum(len(ids[i]) for i in batch) * params.num_samples
            elapsed = time.perf_counter() - start
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{generated / max(elapsed, 1e-9):.0f}")
            yield batch, results
        bar.close()
        self.stats["generated_tokens"] += generated
        self.stats["seconds"] += time.perf_counter() - start

    def generate(self, prompts: Sequence[str], params: SamplingParams, add_special_tokens: bool = False) -> list[list[Completion]]:
        out: list[list[Completion]] = [[] for _ in prompts]
        for idx, comps in self.stream(prompts, params, add_special_tokens):
            for i, c in zip(idx, comps):
                out[i] = c
        return out


class VLLMGenerator:
    """vLLM offline engine (GPU). Prefix caching is vLLM's own."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer: Any, dtype: str = "auto", seed: int = 0, gpu_memory_utilization: float = 0.85, chunk: int = 256):
        require_vllm("--backend vllm")
        import vllm

        self.vllm, self.tokenizer, self.chunk = vllm, tokenizer, chunk
        self.llm = vllm.LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True)
        self.stats = {"prompt_tokens": 0, "prefix_tokens": 0, "generated_tokens": 0, "seconds": 0.0}

    def stream(self, prompts: Sequence[str], params: SamplingParams, add_special_tokens: bool = False) -> Iterator[tuple[list[int], list[list[Completion]]]]:
        params.validate()
        sp = self.vllm.SamplingParams(
            n=params.num_samples, temperature=params.temperature, top_p=params.top_p,
            max_tokens=params.max_new_tokens, stop=params.stop or None, seed=params.seed,
        )
        for b in range(0, len(prompts), self.chunk):
            idx = list(range(b, min(b + self.chunk, len(prompts))))
            start = time.perf_counter()
            inputs = [{"prompt_token_ids": self.tokenizer(prompts[i], add_special_tokens=add_special_tokens)["input_ids"]} for i in idx]
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
