"""What to decode, in one place: decoding settings, prompt encoding, the EOS set, stop strings, the sampler.

Evaluation, GRPO's fast path, PPO rollouts, `mathrl chat` and the vLLM backend all take their decoding
from a `DecodingSettings` and their prompt token ids from `encode_prompts`, so a reward and an eval
verdict are computed on text drawn the same way from the same tokens.

Why each piece exists:
- transformers fills every generation field that a caller leaves unset from the *model's*
  `generation_config` (Qwen2.5-Instruct ships `repetition_penalty=1.05`, `top_k=20`) and then from
  library defaults (`top_k=50`). `hf_generation_config` sets every field that changes the output to
  a neutral value and `neutral_model_defaults` hides the model's own config while `generate` runs,
  so what is written in summary.json (`DecodingSettings.effective()`) is what was decoded.
- Sampling always goes through mathrl's warpers and `InverseCDFSampler` (a two-level inverse CDF with
  float64 cumulative sums: ~1e-7 of total variation over a 49k vocabulary, where float32 sums lost 2-3e-4), with HF's
  greedy argmax picking the drawn token: the same sampler for eval and RL.
- One special-tokens rule (`encode_prompts`): the prompt text is encoded without special tokens and
  the tokenizer's own leading tokens (BOS for Llama-3, Gemma) are prepended unless the text already
  starts with them (chat templates write BOS themselves). Text handed to TRL goes through
  `text_for_tokenizer`, which makes TRL's `tokenizer(text)` give the same ids.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterator, Sequence

from mathrl.errors import MathrlError


@dataclass
class SamplingFilters:
    """What reshapes the next-token distribution besides temperature and top_p, declared once: DecodingSettings
    takes these fields from here, and so do `mathrl eval`'s and the RL trainers' settings (flags, YAML keys)."""

    top_k: int = field(default=0, metadata={"help": "keep the k most likely tokens; 0: off"})
    min_p: float = field(default=0.0, metadata={"help": "drop tokens below min_p x the top probability; 0: off"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "CTRL-style penalty on seen tokens; 1: off"})

    # added to the settings after stages were cached: left out of stage keys at their (neutral) defaults
    UNHASHED_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("top_k", "min_p", "repetition_penalty")

    def filters(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}

    def filter_checks(self) -> list[tuple[bool, str]]:
        return [(self.top_k >= 0, f"--top-k must be >= 0, got {self.top_k}"),
                (0 <= self.min_p < 1, f"--min-p must be in [0, 1), got {self.min_p}"),
                (self.repetition_penalty > 0, f"--repetition-penalty must be > 0, got {self.repetition_penalty}")]


@dataclass
class DecodingSettings(SamplingFilters):
    """How completions are decoded. Fields not listed here are neutral (no penalties, no n-gram bans)."""

    max_new_tokens: int = field(default=512, metadata={"help": "generation budget per completion (tokens)"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy; > 0: sample from softmax(logits / t)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass; 1: off"})
    num_samples: int = field(default=1, metadata={"help": "completions per question (pass@k, maj@k)"})
    stop: list[str] = field(default_factory=list, metadata={"help": "a completion ends before the first of these strings"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})

    def validate(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, f"--max-new-tokens must be at least 1, got {self.max_new_tokens}"),
            (self.num_samples >= 1, f"--num-samples must be at least 1, got {self.num_samples}"),
            (self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}"),
            (not (self.num_samples > 1 and self.temperature == 0),
             "--num-samples > 1 needs --temperature > 0 (greedy decoding gives identical samples)"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}"),
            *self.filter_checks(),
        ]
        for ok, msg in checks:
            if not ok:
                raise MathrlError(msg)

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def effective(self) -> dict[str, Any]:
        """Every setting that shaped the completions, as recorded beside the numbers."""
        return asdict(self) | {"sampler": "inverse_cdf_blocked" if self.sampled else "greedy",
                               "no_repeat_ngram_size": 0, "model_generation_config": "ignored"}

    def vllm_params(self, vllm: Any) -> Any:
        """The same settings for vLLM (whose own defaults are already neutral)."""
        return vllm.SamplingParams(n=self.num_samples, temperature=self.temperature, top_p=self.top_p,
                                   top_k=self.top_k if self.top_k > 0 else -1, min_p=self.min_p,
                                   repetition_penalty=self.repetition_penalty, max_tokens=self.max_new_tokens,
                                   stop=self.stop or None, seed=self.seed)


# -- prompt encoding ------------------------------------------------------------------------------


def _leading_special_ids(tokenizer: Any) -> list[int]:
    """Ids the tokenizer puts before any text when asked for special tokens (BOS, or nothing)."""
    with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(plain)
    # only a prefix counts: a tokenizer that appends EOS would end every prompt there
    return list(with_special[:n]) if n > 0 and with_special[n:n + len(plain)] == plain else []


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt token ids under mathrl's one special-tokens rule (see the module docstring)."""
    lead = _leading_special_ids(tokenizer)
    out = []
    for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []:
        ids = list(ids)
        out.append(ids if not lead or ids[: len(lead)] == lead else lead + ids)
    return out


def text_for_tokenizer(tokenizer: Any, prompt: str) -> str:
    """The prompt text such that `tokenizer(text)` (special tokens on, as TRL calls it) gives
    `encode_prompts([prompt])`: a leading BOS written by the chat template is dropped when the tokenizer
    adds its own."""
    lead = _leading_special_ids(tokenizer)
    if lead:
        written = tokenizer.decode(lead)
        if prompt.startswith(written):
            return prompt[len(written):]
    return prompt


def eos_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The one EOS set: the tokenizer's EOS plus every EOS id in the model's generation config (e.g. Qwen's
    <|im_end|> and <|endoftext|>), the same set TRL uses."""
    ids = [tokenizer.eos_token_id]
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]
    return list(dict.fromkeys(i for i in ids if i is not None))


def pad_token_id(tokenizer: Any, eos_ids: Sequence[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]


# -- stop strings ---------------------------------------------------------------------------------


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` before the first occurrence of any stop string, and whether one occurred."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def finish(tokenizer: Any, new_ids: Sequence[int], eos_ids: Sequence[int], stops: Sequence[str]) -> tuple[list[int], str, str]:
    """(token ids kept, completion text, finish reason) for a row's generated ids.

    The row ends at its first EOS (kept in the ids, as TRL keeps it) or at the token that completes a stop
    string; the text is what evaluation grades and what rewards grade: decoded without special tokens and
    cut before the stop string. Reason: "stop" (EOS or stop string) or "length"."""
    eos = set(eos_ids)
    n = next((k for k, t in enumerate(new_ids) if t in eos), None)
    ids = list(new_ids if n is None else new_ids[: n + 1])
    text = tokenizer.decode(ids, skip_special_tokens=True)
    text, stopped = cut_at_stop(text, stops)
    if stopped:  # keep the tokens up to the one that completes the stop string
        k = next(k for k in range(1, len(ids) + 1) if cut_at_stop(tokenizer.decode(ids[:k], skip_special_tokens=True), stops)[1])
        ids = ids[:k]
    return ids, text, "stop" if stopped or n is not None else "length"


# -- the sampler ----------------------------------------------------------------------------------


class InverseCDFSampler:
    """Logits processor that turns greedy decoding into exact sampling: one uniform per row, located in
    the cumulative softmax, picks the token; the returned scores (written over the input) are 0 there and
    -inf elsewhere, so HF's greedy argmax emits it. `torch.multinomial` drew one exponential per vocabulary
    entry (~24 ms per decode step for 32 rows x 49k tokens on CPU).

    The search runs in two levels: the uniform first picks a block of `BLOCK` tokens by the cumulative
    block masses, then a token inside that block by the block's own cumulative sum, rescaled so the block's
    interval maps exactly onto its tokens. Cumulative sums accumulate in float64 at both levels (a float32
    cumulative sum over 49k tokens lost ~3e-4 of total variation and made tokens holding ~1e-5 of the mass
    undrawable); block masses are float32 sums of 256 float32 probabilities (relative error ~1e-7, so the
    implied distribution is within ~1e-7 of total variation of the float64 softmax, `probabilities`). One
    float64 cumulative sum over the whole vocabulary cost 59.5 ms a call at 128 rows; the two levels 10.3 ms
    (benchmarks/sampler.py, docs/benchmarks.md). Zero-probability tokens (masked by top-k/top-p) are never drawn."""

    BLOCK = 256

    @classmethod
    def _blocks(cls, scores: Any) -> tuple[Any, Any]:
        """Float32 probabilities padded to whole blocks, shape (rows, blocks, BLOCK), and the block masses
        (float32 sums, held as float64 for the cumulative sum over blocks)."""
        import torch

        probs = torch.softmax(scores.float(), dim=-1)
        pad = -probs.size(-1) % cls.BLOCK
        if pad:
            probs = torch.nn.functional.pad(probs, (0, pad))
        probs = probs.view(probs.size(0), -1, cls.BLOCK)
        return probs, probs.sum(-1).double()

    @classmethod
    def probabilities(cls, scores: Any) -> Any:
        """The distribution `__call__` draws from (float64, rows x vocabulary): block mass x the token's share
        of its block. For tests and benchmarks/sampler.py."""
        probs, mass = cls._blocks(scores)
        within = probs.double() / probs.double().sum(-1, keepdim=True).clamp_min(1e-300)
        implied = (within * (mass / mass.sum(-1, keepdim=True)).unsqueeze(-1)).flatten(1)
        return implied[:, : scores.size(-1)]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs, mass = self._blocks(scores)
        rows = torch.arange(probs.size(0), device=probs.device)
        block_cdf = mass.cumsum(-1)
        u = torch.rand(probs.size(0), 1, device=probs.device, dtype=torch.float64) * block_cdf[:, -1:]
        # right=True: the first block (then token) whose cumulative mass exceeds u, so empty blocks and
        # zero-probability tokens are never chosen
        block = torch.searchsorted(block_cdf, u, right=True).clamp_(max=mass.size(-1) - 1)
        below = torch.cat([block_cdf.new_zeros(probs.size(0), 1), block_cdf], dim=1).gather(1, block)
        inner = probs[rows, block[:, 0]].cumsum(-1, dtype=torch.float64)
        # u's place in its block's interval, mapped onto the block's own cumulative sum (the float32 block
        # mass and the float64 inner sum differ by rounding); kept strictly below the block's total
        frac = ((u - below) / mass.gather(1, block)).clamp_(0.0, 1.0 - 1e-12)
        token = torch.searchsorted(inner, frac * inner[:, -1:], right=True).clamp_(max=self.BLOCK - 1)
        token = (block * self.BLOCK + token).clamp_(max=scores.size(-1) - 1)
        return scores.fill_(float("-inf")).scatter_(-1, token, 0.0)


def logits_processors(settings: DecodingSettings) -> Any:
    """Repetition penalty (when set), then temperature, top-k, top-p, min-p and the sampler (when sampling)."""
    from transformers import (LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if not settings.sampled:
        return procs
    if settings.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k > 0:
        procs.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1.0:
        procs.append(TopPLogitsWarper(settings.top_p))
    if settings.min_p > 0:
        procs.append(MinPLogitsWarper(settings.min_p))
    procs.append(InverseCDFSampler())
    return procs


def hf_generation_config(eos_ids: Sequence[int], pad_id: int) -> Any:
    """A GenerationConfig in which every field that changes the output is neutral; decoding is greedy over
    the scores `logits_processors` leaves (so sampling happens in `InverseCDFSampler`)."""
    from transformers import GenerationConfig

    # Sampling-only fields (temperature, top-k/p, min-p, typical-p) are left unset: HF applies them only with
    # do_sample, and setting them beside do_sample=False makes transformers warn on every call.
    return GenerationConfig(
        do_sample=False, num_beams=1, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, length_penalty=1.0, min_length=0,
        min_new_tokens=None, renormalize_logits=False, remove_invalid_values=False,
        eos_token_id=list(eos_ids), pad_token_id=pad_id, bos_token_id=None, return_dict_in_generate=True,
        use_cache=True,
    )


@contextlib.contextmanager
def neutral_model_defaults(model: Any) -> Iterator[None]:
    """While `generate` runs, the model's own generation_config (whose set fields transformers would copy
    into every field we leave unset, e.g. bad_words_ids or suppress_tokens) is an empty one."""
    from transformers import GenerationConfig

    target = model
    saved = getattr(target, "generation_config", None)
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved
