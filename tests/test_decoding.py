"""The one sampling path: exact sampler, decoding settings independent of the model's generation_config,
one prompt-encoding rule (eval, SFT, GRPO and PPO see the same ids), stops where evaluation stops, and
no deprecation-warning floods. Tests import through stable entry points where the old code had them,
so they could be run against the code before the fix (each failed there)."""

from __future__ import annotations

import warnings

import pytest
import torch

try:  # the sampler's home; it lived in the GRPO trainer before
    from mathrl.engine.decoding import InverseCDFSampler
except ImportError:  # pragma: no cover - the code before the fix
    from mathrl.train.fast_grpo import InverseCDFSampler
from mathrl.engine.generation import HFGenerator, SamplingParams


def _logits(vocab: int, seed: int = 0) -> torch.Tensor:
    """A peaked 49k-vocabulary distribution like an LM's: a few likely tokens, a long tail near 1e-5..1e-9."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, vocab, generator=g) * 3.0


def test_inverse_cdf_sampler_is_exact_over_a_large_vocabulary():
    """The distribution the sampler implements equals the softmax: float32 cumulative sums lost 2-3e-4 of
    total variation here and made tail tokens undrawable; the two-level float64 search over float32 block
    masses is at ~1e-7, so 1e-6 separates the two by 300x."""
    scores = _logits(49_152)
    exact = torch.softmax(scores.double(), -1)
    implied = InverseCDFSampler.probabilities(scores)
    tv = 0.5 * float((implied - exact).abs().sum())
    assert tv < 1e-6, f"total-variation distance {tv:.2e}"
    assert float(implied[exact < 1e-8].min()) > 0  # the far tail stays drawable


def test_inverse_cdf_draws_follow_its_distribution_across_blocks():
    """Draws from a vocabulary of many blocks land where `probabilities` says (chi-square over the tokens
    that carry mass, spread over blocks, the last partial block included); masked tokens are never drawn."""
    torch.manual_seed(0)
    vocab = 12 * 256 + 100  # twelve blocks and a partial one
    probs = torch.tensor([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.04, 0.009, 0.001])
    where = torch.tensor([0, 255, 256, 300, 1_000, 2_001, 2_500, 3_071, vocab - 1])
    scores = torch.full((1, vocab), float("-inf"))
    scores[:, where] = probs.log()
    implied = InverseCDFSampler.probabilities(scores)[0]
    assert torch.allclose(implied[where], probs.double(), atol=1e-7)
    draws = torch.cat([InverseCDFSampler()(None, scores.repeat(10_000, 1)).argmax(-1) for _ in range(6)])
    assert bool(torch.isin(draws, where).all())  # -inf (zero-probability) tokens never come out
    counts = torch.stack([(draws == w).sum() for w in where]).double()
    expected = probs.double() * len(draws)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 26.2, chi2  # 8 degrees of freedom: p = 0.001 at 26.12
    assert counts[-1] > 0


def test_inverse_cdf_draws_pass_a_chi_square_test():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.04, 0.009, 0.001])
    scores = probs.log().repeat(60_000, 1)
    draws = InverseCDFSampler()(None, scores).argmax(-1)
    counts = torch.bincount(draws, minlength=len(probs)).double()
    expected = probs.double() * len(draws)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 22.5, chi2  # 6 degrees of freedom: p = 0.001 at 22.46
    assert counts[-1] > 0  # a 1e-3 token is drawn


def _with_generation_defaults(model, **fields):
    import copy

    other = copy.deepcopy(model)
    for k, v in fields.items():
        setattr(other.generation_config, k, v)
    return other


PROMPTS = ["What is 2 + 3?", "Ava has 5 apples and buys 3 packs with 4 apples each. How many apples?",
           "Solve the system of equations: 2x + 3y = 7, x - y = 1. What is the value of x?"]


def test_greedy_output_ignores_the_models_generation_config(tiny_bundle):
    """A model whose generation_config sets repetition_penalty / top_k / no_repeat_ngram_size (Qwen2.5-Instruct
    ships such settings) decodes exactly as one without: greedy means greedy."""
    model, tok, _ = tiny_bundle
    params = SamplingParams(max_new_tokens=24)
    plain = [c[0].text for c in HFGenerator(model, tok, batch_size=4, progress=False).generate(PROMPTS, params)]
    fussy = _with_generation_defaults(model, repetition_penalty=1.8, top_k=3, no_repeat_ngram_size=1)
    got = [c[0].text for c in HFGenerator(fussy, tok, batch_size=4, progress=False).generate(PROMPTS, params)]
    assert got == plain


def test_rl_sampling_ignores_the_models_generation_config(tiny_model_dir, tmp_path):
    """GRPO's completions are drawn from softmax(logits / T), the distribution TRL scores, whatever the
    model's generation_config says (no_repeat_ngram_size=1 forbids every repeated token)."""
    from mathrl import config as cfgmod
    from mathrl.engine.models import unwrap_causal_lm
    from mathrl.train.grpo import GRPORunConfig, build_trainer

    cfg = cfgmod.build(GRPORunConfig, dict(model=str(tiny_model_dir), task="arithmetic", task_config="1", prompts=8,
                                           prompts_per_step=2, num_generations=4, max_completion_length=24, max_steps=1,
                                           dtype="fp32", temperature=0.01, output_dir=str(tmp_path / "g")))
    trainer, _, _ = build_trainer(cfg)
    prompt_ids = [trainer.processing_class(trainer.train_dataset[0]["prompt"])["input_ids"]] * 2

    def draw():
        torch.manual_seed(0)
        trainer.model.eval()
        return trainer._generate_single_turn(prompt_ids, None, {}, 2)[0]

    plain = draw()
    gen_cfg = unwrap_causal_lm(trainer.model).generation_config
    gen_cfg.no_repeat_ngram_size, gen_cfg.repetition_penalty = 1, 2.0
    assert draw() == plain


def test_sampled_eval_applies_no_library_top_k(tiny_bundle):
    """Sampling at T=1 draws from the full softmax: with transformers' default top_k=50 a token outside the
    top 50 could never appear. The tiny model's vocabulary is ~400, so over many draws most tokens show up."""
    model, tok, _ = tiny_bundle
    params = SamplingParams(max_new_tokens=1, temperature=1.0, num_samples=64, seed=3)
    flat = _with_generation_defaults(model)
    with torch.no_grad():  # flatten the model's output distribution so every token is likely
        flat.lm_head.weight.mul_(0.01)  # nearly uniform, without ties (top-k keeps ties)
    outs = HFGenerator(flat, tok, batch_size=64, progress=False).generate(["What is 2 + 3?"] * 8, params)
    seen = {c.text for cs in outs for c in cs}
    assert len(seen) > 60, len(seen)


def test_eval_and_rl_stop_at_the_same_place(tiny_bundle):
    """With a stop string (prompts without the chat template), RL generation ends where evaluation ends and
    returns the text evaluation grades."""
    from mathrl.engine.decoding import DecodingSettings, encode_prompts
    from mathrl.engine.generation import sample_shared_prompts

    model, tok, _ = tiny_bundle
    free = HFGenerator(model, tok, batch_size=4, progress=False).generate(PROMPTS, DecodingSettings(max_new_tokens=16))
    stop = next(t[0].text[3:6] for t in free if len(t[0].text) > 8)  # a string the model does write
    settings = DecodingSettings(max_new_tokens=16, stop=[stop])
    evald = [c[0] for c in HFGenerator(model, tok, batch_size=4, progress=False).generate(PROMPTS, settings)]
    rl = sample_shared_prompts(model, tok, encode_prompts(tok, PROMPTS), settings, segment_tokens=4)
    assert [c.text for c in rl] == [c.text for c in evald]
    assert any(c.finish_reason == "stop" and stop in tok.decode(c.token_ids) for c in rl)
    for c in rl:  # the kept ids end at the token that completes the stop string (or at EOS / the budget)
        assert stop not in tok.decode(c.token_ids[:-1])


def test_no_deprecation_warnings_during_generation(tiny_bundle):
    model, tok, _ = tiny_bundle
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HFGenerator(model, tok, batch_size=2, min_shared_prefix=2, progress=False).generate(PROMPTS, SamplingParams(max_new_tokens=6))
    messages = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not [m for m in messages if "past_key_values" in m or "deprecated" in m], messages


def test_prefix_cache_follows_the_model_config():
    """The shared-prefix cache is built from the model config, so sliding-window layers get sliding caches."""
    from transformers import MistralConfig, MistralForCausalLM

    from mathrl.engine.generation import HFGenerator as Gen

    cfg = MistralConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, sliding_window=4, max_position_embeddings=128)
    model = MistralForCausalLM(cfg).eval()

    class Tok:
        pad_token_id = eos_token_id = 0

    cache = Gen(model, Tok(), progress=False)._prefix_cache(list(range(1, 12)))
    kinds = {type(layer).__name__ for layer in cache.layers}
    assert any("Sliding" in k for k in kinds), kinds


# -- one prompt-encoding rule ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def bos_model_dir(tmp_path_factory, build_tiny):
    """The tiny model with a tokenizer that adds BOS (as Llama-3 and Gemma do) and a chat template that
    writes BOS itself."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    path = build_tiny(tmp_path_factory.mktemp("bos-model"), seed=1)
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"bos_token": "<|bos|>"})
    bos = tok.convert_tokens_to_ids("<|bos|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", bos)])
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    tok.save_pretrained(path)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(path, safe_serialization=True)
    assert tok("x")["input_ids"][0] == bos
    return path


@pytest.mark.parametrize("chat_template", [True, False])
def test_eval_sft_grpo_and_ppo_see_identical_prompt_ids(bos_model_dir, tmp_path, monkeypatch, chat_template):
    from mathrl import config as cfgmod
    from mathrl.engine import generation
    from mathrl.eval.evaluate import EvalConfig, run_eval
    from mathrl.prompts.formats import Protocol
    from mathrl.train.grpo import GRPORunConfig
    from mathrl.train.grpo import build_trainer as build_grpo
    from mathrl.train.sft import SFTRunConfig
    from mathrl.train.sft import build_trainer as build_sft

    common = dict(model=str(bos_model_dir), task="arithmetic", task_config="1", chat_template=chat_template)
    # the training prompts of each trainer (same task, same seed) -> their token ids
    sft, samples, _, _ = build_sft(cfgmod.build(SFTRunConfig, dict(common, train_samples=4, batch_size=2, max_steps=1,
                                                                    dtype="fp32", output_dir=str(tmp_path / "sft"))))
    tok = sft.processing_class
    bos = tok.bos_token_id
    sft_ids = {}
    for row in sft.train_dataset:
        prompt = [i for i, lab in zip(row["input_ids"], row["labels"]) if lab == -100]
        sft_ids[tok.decode(prompt, skip_special_tokens=True)] = prompt
    grpo, grpo_samples, _ = build_grpo(cfgmod.build(GRPORunConfig, dict(common, prompts=4, prompts_per_step=2, num_generations=2,
                                                              max_completion_length=4, max_steps=1, dtype="fp32",
                                                              output_dir=str(tmp_path / "grpo"))))
    grpo_ids = {}
    for row in grpo.train_dataset:
        ids = grpo._tokenize_prompts([row["prompt"]])[0][0]
        grpo_ids[tok.decode(ids, skip_special_tokens=True)] = list(ids)

    seen = []

    def spy(model, ids, mask, *args, **kwargs):  # what evaluation hands the model
        seen.extend(r[m.bool()].tolist() for r, m in zip(ids, mask))
        return [[] for _ in range(ids.shape[0])]

    monkeypatch.setattr(generation, "generate_in_segments", spy)
    questions = list(dict.fromkeys(s.question for s in [*samples, *grpo_samples]))
    data = tmp_path / "q.jsonl"
    import json

    data.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in questions))
    run_eval(EvalConfig(model=str(bos_model_dir), task="jsonl", task_args={"path": str(data)}, dtype="fp32",
                        protocol=Protocol(format="gsm8k", chat_template=chat_template), max_new_tokens=2,
                        output_dir=str(tmp_path / "eval"), progress=False))
    eval_ids = {tok.decode(ids, skip_special_tokens=True): ids for ids in seen}
    for text, ids in eval_ids.items():
        assert ids[0] == bos and ids[1] != bos, "exactly one BOS"
        if text in sft_ids:
            assert sft_ids[text] == ids
        if text in grpo_ids:
            assert grpo_ids[text] == ids
    assert sft_ids and grpo_ids and set(sft_ids) <= set(eval_ids) and set(grpo_ids) <= set(eval_ids)


def test_ppo_rollouts_use_the_eval_prompt_ids(bos_model_dir, tmp_path, monkeypatch):
    from mathrl import config as cfgmod
    from mathrl.engine import decoding
    from mathrl.engine import generation
    from mathrl.train.ppo import PPORunConfig, run_ppo

    seen = []
    real = generation.sample_shared_prompts

    def spy(model, tokenizer, prompt_ids, settings, segment_tokens=16):
        seen.append((tokenizer, [list(p) for p in prompt_ids]))
        return real(model, tokenizer, prompt_ids, settings, segment_tokens)

    monkeypatch.setattr(generation, "sample_shared_prompts", spy)
    cfg = cfgmod.build(PPORunConfig, dict(model=str(bos_model_dir), task="arithmetic", task_config="1", prompts=4,
                                          prompts_per_step=2, mini_batch_size=2, max_completion_length=4, max_steps=1,
                                          dtype="fp32", output_dir=str(tmp_path / "ppo"), chat_template=False))
    run_ppo(cfg)
    tok, ids = seen[0]
    texts = [tok.decode(p, skip_special_tokens=False) for p in ids]
    assert ids == decoding.encode_prompts(tok, [t.replace(tok.bos_token, "", 1) for t in texts])
    assert all(p[0] == tok.bos_token_id and p[1] != tok.bos_token_id for p in ids)
