"""HFGenerator on the tiny random model: prefix-cache and batching invariance, stops, samples, errors."""

from __future__ import annotations

import re

import pytest
import torch

from mathrl.errors import MathrlError
from mathrl.prompts.formats import Protocol, build_prompt
from mathrl.engine.decoding import cut_at_stop
from mathrl.engine.generation import HFGenerator, SamplingParams, common_prefix_length, pick_backend

NO_PREFIX = 10**9  # min_shared_prefix that is never reached: the shared-prefix cache is off


@pytest.fixture(scope="module")
def model_tok(tiny_bundle):
    model, tok, _ = tiny_bundle
    assert model.dtype == torch.float32 and str(model.device) == "cpu"
    return model, tok


@pytest.fixture(scope="module")
def prompts(model_tok):
    """Chat prompts that share a long prefix (system prompt + 2 shots) and differ in suffix length."""
    _, tok = model_tok
    shots = [("Ava has 5 apples and buys 3 packs with 4 apples in each pack. How many apples?", "3 * 4 = 12\n5 + 12 = 17\n#### 17"),
             ("What is 12 + 30?", "12 + 30 = 42\n#### 42")]
    questions = ["What is 7?", "Ben has 12 books and gives away 3 of them. How many books does Ben have now?",
                 "What is 100 - 58?", "A box holds 8 cards. Mia fills 6 boxes and then uses 5 of the cards. How many are left?",
                 "1", "What is 9 * 9?"]
    return [build_prompt(q, Protocol(), tok, shots) for q in questions]


def _texts(results):
    return [[c.text for c in r] for r in results]


def _reference(model, tok, prompt, max_new_tokens):
    """Plain HF greedy generation of one unpadded prompt, no cache tricks."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, len(ids):].tolist()
    n = next((k for k, t in enumerate(new) if t == tok.eos_token_id), len(new))
    return tok.decode(new[:n], skip_special_tokens=True), n


# --------------------------------------------------------------------------------------------------
# helpers


@pytest.mark.parametrize(
    "seqs, expected",
    [
        ([], 0),
        ([[1, 2, 3]], 2),  # one sequence: all but its last token
        ([[1, 2, 3], [1, 2, 3]], 2),  # identical: each keeps at least one token
        ([[1, 2, 3, 4], [1, 2, 9, 4]], 2),
        ([[1, 2], [1, 2, 3, 4]], 1),  # limited by the shortest minus one
        ([[5], [5]], 0),
        ([[1, 2, 3], [4, 2, 3]], 0),
        ([[7, 7, 7, 1], [7, 7, 7, 2], [7, 7, 8, 3]], 2),
    ],
)
def test_common_prefix_length(seqs, expected):
    assert common_prefix_length(seqs) == expected


def test_cut_at_stop():
    assert cut_at_stop("abc STOP def END", ["END", "STOP"]) == ("abc ", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
    assert cut_at_stop("abc", ["", "c"]) == ("ab", True)  # an empty stop string is ignored
    assert cut_at_stop("abc", []) == ("abc", False)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        (dict(max_new_tokens=0), "--max-new-tokens"),
        (dict(num_samples=0), "--num-samples"),
        (dict(temperature=-0.1), "--temperature"),
        (dict(num_samples=2, temperature=0.0), "--temperature > 0"),
    ],
)
def test_sampling_params_validate(kwargs, flag):
    with pytest.raises(MathrlError, match=re.escape(flag)):
        SamplingParams(**kwargs).validate()


def test_pick_backend():
    assert pick_backend("hf") == "hf"
    assert pick_backend("auto") in ("hf", "vllm")
    with pytest.raises(MathrlError, match="unknown --backend"):
        pick_backend("tensorrt")


# --------------------------------------------------------------------------------------------------
# generation


def test_invalid_arguments(model_tok):
    model, tok = model_tok
    with pytest.raises(MathrlError, match="--batch-size"):
        HFGenerator(model, tok, batch_size=0)
    gen = HFGenerator(model, tok, progress=False)
    with pytest.raises(MathrlError, match="--num-samples > 1 needs --temperature > 0"):
        gen.generate(["What is 1 + 1?"], SamplingParams(max_new_tokens=4, num_samples=3, temperature=0.0))
    assert gen.generate([], SamplingParams(max_new_tokens=4)) == []


def test_greedy_matches_plain_generation_with_and_without_prefix_cache(model_tok, prompts):
    model, tok = model_tok
    params = SamplingParams(max_new_tokens=10)
    cached = HFGenerator(model, tok, batch_size=8, min_shared_prefix=1, progress=False)
    plain = HFGenerator(model, tok, batch_size=8, min_shared_prefix=NO_PREFIX, progress=False)
    a, b = cached.generate(prompts, params), plain.generate(prompts, params)
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    shared = common_prefix_length(ids)
    assert shared > 40 and len({len(i) for i in ids}) >= 4  # long shared prefix, ragged suffixes
    assert cached.stats["prefix_tokens"] == shared and plain.stats["prefix_tokens"] == 0
    assert _texts(a) == _texts(b)
    assert [r[0].num_tokens for r in a] == [r[0].num_tokens for r in b]
    assert len({r[0].text for r in a}) > 1  # the prompts really lead to different outputs
    for prompt, r in zip(prompts, a):
        assert (r[0].text, r[0].num_tokens) == _reference(model, tok, prompt, 10)
        assert r[0].finish_reason == ("length" if r[0].num_tokens == 10 else "stop")
    assert cached.stats["generated_tokens"] == sum(r[0].num_tokens for r in a)


@pytest.mark.parametrize("min_shared_prefix", [1, NO_PREFIX])
def test_batch_size_does_not_change_greedy_output(model_tok, prompts, min_shared_prefix):
    model, tok = model_tok
    params = SamplingParams(max_new_tokens=8)
    one = HFGenerator(model, tok, batch_size=1, min_shared_prefix=min_shared_prefix, progress=False).generate(prompts, params)
    eight = HFGenerator(model, tok, batch_size=8, min_shared_prefix=min_shared_prefix, progress=False).generate(prompts, params)
    three = HFGenerator(model, tok, batch_size=3, min_shared_prefix=min_shared_prefix, progress=False).generate(prompts, params)
    assert _texts(one) == _texts(eight) == _texts(three)


def test_stream_yields_longest_prompts_first(model_tok, prompts):
    model, tok = model_tok
    gen = HFGenerator(model, tok, batch_size=2, progress=False)
    batches = [idx for idx, _ in gen.stream(prompts, SamplingParams(max_new_tokens=2))]
    assert sorted(i for b in batches for i in b) == list(range(len(prompts)))
    assert all(len(b) <= 2 for b in batches)
    lengths = [len(prompts[i]) for b in batches for i in b]
    assert lengths == sorted(lengths, reverse=True)


def test_stop_strings_cut_the_text(model_tok, prompts):
    model, tok = model_tok
    gen = HFGenerator(model, tok, batch_size=8, progress=False)
    free = gen.generate(prompts, SamplingParams(max_new_tokens=16))
    # a stop string taken from the middle of one unconstrained completion
    target = next(r[0].text for r in free if re.search(r"[A-Za-z0-9]{2,}", r[0].text[1:]))
    m = re.search(r"[A-Za-z0-9]{2,}", target[1:])
    stop = m.group(0)
    stopped = gen.generate(prompts, SamplingParams(max_new_tokens=16, stop=[stop]))
    hit = 0
    for f, s in zip(free, stopped):
        f, s = f[0], s[0]
        if stop in f.text:
            hit += 1
            assert s.text == f.text[: f.text.index(stop)]
            assert stop not in s.text and s.finish_reason == "stop"
            assert s.num_tokens < f.num_tokens or f.text.endswith(stop)
        else:
            assert s.text == f.text  # untouched when the stop string never appears
    assert hit >= 1


def test_num_samples_returns_k_completions(model_tok, prompts):
    model, tok = model_tok
    params = SamplingParams(max_new_tokens=6, temperature=1.0, num_samples=3, seed=7)
    gen = HFGenerator(model, tok, batch_size=4, progress=False)
    out = gen.generate(prompts[:3], params)
    assert [len(r) for r in out] == [3, 3, 3]
    assert any(len({c.text for c in r}) > 1 for r in out)  # sampling, not three copies of one text
    again = HFGenerator(model, tok, batch_size=4, progress=False).generate(prompts[:3], params)
    assert _texts(out) == _texts(again)  # seeded
    other = HFGenerator(model, tok, batch_size=4, progress=False).generate(prompts[:3], SamplingParams(
        max_new_tokens=6, temperature=1.0, num_samples=3, seed=8))
    assert _texts(other) != _texts(out)


@pytest.mark.parametrize("segment_tokens", [1, 3])
def test_dropping_finished_rows_between_segments_keeps_greedy_output(model_tok, prompts, segment_tokens):
    """Rows that stop early are dropped from the batch between segments; the rest continue from the
    same KV cache, so every text must equal one uninterrupted `generate` per prompt."""
    model, tok = model_tok
    whole = HFGenerator(model, tok, batch_size=8, min_shared_prefix=1, progress=False, segment_tokens=1000)
    params = SamplingParams(max_new_tokens=10)
    reference = whole.generate(prompts, params)
    # a stop string taken from one completion makes rows finish at different steps
    texts = [r[0].text for r in reference]
    stop_word = next(t[-3:] for t in texts if len(t) > 6 and sum(t[-3:] in u for u in texts) < len(texts) - 1)
    params = SamplingParams(max_new_tokens=10, stop=[stop_word])
    expect = whole.generate(prompts, params)
    got = HFGenerator(model, tok, batch_size=8, min_shared_prefix=1, progress=False,
                      segment_tokens=segment_tokens).generate(prompts, params)
    assert _texts(got) == _texts(expect)
    assert [r[0].finish_reason for r in got] == [r[0].finish_reason for r in expect]
    assert {r[0].finish_reason for r in got} == {"stop", "length"}  # some rows really finished early


def test_memory_cap_shrinks_batches_of_long_prompts_and_keeps_outputs(tiny_bundle):
    """With a cap that fits ~2 rows of the longest prompts, batches hold fewer rows (longest first),
    every prompt is still answered once, and greedy outputs equal the uncapped run's (fp32)."""
    from mathrl.engine.generation import HFGenerator, row_bytes
    from mathrl.engine.decoding import DecodingSettings

    model, tok, _ = tiny_bundle
    prompts = ["word " * n + "?" for n in (40, 5, 38, 6, 7, 39, 4)]
    params = DecodingSettings(max_new_tokens=4)
    free = HFGenerator(model, tok, batch_size=8, progress=False)
    want = free.generate(prompts, params)
    longest = max(len(tok(p)["input_ids"]) for p in prompts)
    cap = 2.5 * row_bytes(model.config, 4, longest + 4, longest) / 2**30
    capped = HFGenerator(model, tok, batch_size=8, progress=False, memory_gb=cap)
    sizes = [len(idx) for idx, _ in capped.stream(prompts, params)]
    assert sorted(sizes) != [len(prompts)] and max(sizes) <= 3 and sum(sizes) == len(prompts), sizes
    assert [c[0].text for c in capped.generate(prompts, params)] == [c[0].text for c in want]
    assert free.stats["max_rows"] == len(prompts) and capped.stats["max_rows"] <= 3


def test_chunked_prefill_equals_one_pass(tiny_bundle):
    """Prompts longer than the prefill chunk are run into the cache chunk by chunk (left-padded batch,
    fp32): greedy outputs equal those of a generator whose chunk covers the whole prompt, and the
    chunked path really ran (more model calls)."""
    from mathrl.engine.generation import HFGenerator
    from mathrl.engine.decoding import DecodingSettings

    model, tok, _ = tiny_bundle
    prompts = ["word " * n + "?" for n in (30, 7, 22)]
    params = DecodingSettings(max_new_tokens=5)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, k: calls.append(k.get("input_ids").shape[1]), with_kwargs=True)
    try:
        whole = HFGenerator(model, tok, batch_size=4, progress=False, prefill_chunk=10_000).generate(prompts, params)
        n_whole = len(calls)
        chunked = HFGenerator(model, tok, batch_size=4, progress=False, prefill_chunk=8).generate(prompts, params)
    finally:
        hook.remove()
    assert [c[0].text for c in chunked] == [c[0].text for c in whole]
    assert len(calls) - n_whole > n_whole and max(calls[n_whole:]) <= 8
