"""Output formats and prompting protocols: render/extract round trips, prompts with and without chat template."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mathrl.prompts import formats
from mathrl.errors import MathrlError
from mathrl.eval.evaluate import lmeval_draws, question_shots, select_shots
from mathrl.prompts.formats import FORMATS, Protocol, build_prompt, default_stop, get_format, preset
from mathrl.grading import normalize
from mathrl.tasks import get_task, subsample

ANSWERS = ["18", "-7", "1,234", "2.5", "0", "1000000", "-0.25"]
REASONING = "Ava has 5 apples.\nShe buys 3 * 4 = 12 more.\n5 + 12 = 17, minus 0 = 17"


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("answer", ANSWERS)
def test_render_round_trips_through_strict_extractor(name, answer):
    fmt = FORMATS[name]
    text = fmt.render(REASONING, answer)
    assert fmt.extract_strict(text) == normalize(answer)
    assert fmt.extract_flexible(text) == normalize(answer)  # the answer is the last number
    assert fmt.has_answer(text) and fmt.has_reasoning(text)
    assert text.startswith(fmt.reasoning_start or "Ava")
    bare = fmt.render(None, answer)
    assert fmt.extract_strict(bare) == normalize(answer)
    assert fmt.has_answer(bare)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_render_without_reasoning_has_no_reasoning(name):
    fmt = FORMATS[name]
    bare = fmt.render(None, "42")
    assert fmt.has_answer(bare)
    assert not fmt.has_reasoning(bare)


_SAFE_TEXT = st.text(alphabet="abcdefghij klmnop=+-*0123456789.,\n", max_size=80)


@settings(max_examples=60, deadline=None)
@given(_SAFE_TEXT, st.integers(-(10**9), 10**9))
def test_render_round_trip_property(reasoning, answer):
    for fmt in FORMATS.values():
        assert fmt.extract_strict(fmt.render(reasoning, str(answer))) == str(answer)


def test_markers():
    assert FORMATS["tags"].markers == ["<start_working_out>", "<end_working_out>", "<SOLUTION>", "</SOLUTION>"]
    assert FORMATS["think"].markers == ["<think>", "</think>", "<answer>", "</answer>"]
    assert FORMATS["gsm8k"].markers == []


def test_has_reasoning_needs_content_between_markers():
    tags = FORMATS["tags"]
    assert not tags.has_reasoning("<start_working_out>  <end_working_out><SOLUTION>1</SOLUTION>")
    assert not tags.has_reasoning("<end_working_out><start_working_out>")
    assert tags.has_reasoning("<start_working_out>2+2<end_working_out>")
    gsm = FORMATS["gsm8k"]
    assert not gsm.has_reasoning("#### 5") and not gsm.has_reasoning("")
    assert gsm.has_reasoning("Because 2 and 3 make 5\n#### 5")


def test_unknown_format_and_protocol():
    with pytest.raises(MathrlError, match="unknown format 'nope'.*gsm8k"):
        get_format("nope")
    with pytest.raises(MathrlError, match="unknown protocol 'nope'.*lm-eval-gsm8k"):
        preset("nope")
    with pytest.raises(MathrlError, match="unknown format"):
        build_prompt("Q", Protocol(format="nope", chat_template=False))
    with pytest.raises(MathrlError, match="unknown format"):
        Protocol(format="nope").resolved_format()


def test_resolved_format_overrides():
    proto = Protocol(strict_pattern=r"ANS=(\d+)", strict_take="first", flexible_pattern=r"\d+")
    fmt = proto.resolved_format()
    assert fmt.extract_strict("ANS=3 ANS=4 #### 9") == "3"
    assert FORMATS["gsm8k"].extract_strict("ANS=3 ANS=4 #### 9") == "9"  # the registry is untouched
    assert Protocol().resolved_format() is FORMATS["gsm8k"]


# --------------------------------------------------------------------------------------------------
# prompts


def test_build_prompt_chat_template(tiny_tokenizer):
    proto = Protocol(format="tags")
    text = build_prompt("What is 2 + 3?", proto, tiny_tokenizer)
    assert text == (
        f"<|im_start|>system\n{FORMATS['tags'].instruction}<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_build_prompt_chat_template_with_shots_and_system(tiny_tokenizer):
    shots = [("What is 1 + 1?", "1 + 1 = 2\n#### 2"), ("What is 7 - 2?", "7 - 2 = 5\n#### 5")]
    text = build_prompt("What is 9 + 9?", Protocol(system_prompt="Be brief."), tiny_tokenizer, shots)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert text.count("<|im_start|>user\n") == 3 and text.count("<|im_start|>assistant\n") == 3
    # shots in order, each answer as an assistant turn, the question last
    i1, i2, iq = text.index("What is 1 + 1?"), text.index("What is 7 - 2?"), text.index("What is 9 + 9?")
    assert i1 < i2 < iq
    assert "<|im_start|>assistant\n1 + 1 = 2\n#### 2<|im_end|>" in text
    assert text.endswith("<|im_start|>user\nWhat is 9 + 9?<|im_end|>\n<|im_start|>assistant\n")
    no_system = build_prompt("Q", Protocol(system_prompt=""), tiny_tokenizer)
    assert "system" not in no_system and no_system.startswith("<|im_start|>user\nQ")


def test_build_prompt_without_chat_template():
    shots = [("A?", "1\n#### 1"), ("B?", "#### 2")]
    text = build_prompt("C?", Protocol(chat_template=False), None, shots)
    assert text == f"{FORMATS['gsm8k'].instruction}\n\nQuestion: A?\nAnswer: 1\n#### 1\n\nQuestion: B?\nAnswer: #### 2\n\nQuestion: C?\nAnswer:"
    assert build_prompt("C?", Protocol(chat_template=False, system_prompt=""), None) == "Question: C?\nAnswer:"


def test_chat_template_required_when_asked():
    with pytest.raises(MathrlError, match="no-chat-template"):
        build_prompt("Q", Protocol(), None)
    with pytest.raises(MathrlError, match="no-chat-template"):
        build_prompt("Q", Protocol(), SimpleNamespace(chat_template=None))


def test_default_stop():
    assert default_stop(Protocol()) == []
    assert default_stop(Protocol(chat_template=False)) == ["\nQuestion:", "\n\nQuestion"]
    assert default_stop(Protocol(stop=["END"])) == ["END"]


def test_select_shots_rendered_random_and_first():
    task = get_task("arithmetic", train_size=100)
    fmt = FORMATS["tags"]
    a = select_shots(task, Protocol(format="tags", shots=3, shot_seed=1), fmt)
    b = select_shots(task, Protocol(format="tags", shots=3, shot_seed=1), fmt)
    c = select_shots(task, Protocol(format="tags", shots=3, shot_seed=2), fmt)
    assert a == b and a != c and len(a) == 3
    train = {s.question: s for s in task.load_train()}
    for q, ans in a:
        assert ans == fmt.render(train[q].solution, train[q].answer)
        assert fmt.extract_strict(ans) == train[q].answer
    first = select_shots(task, Protocol(shots=2, shot_selection="first"), FORMATS["gsm8k"])
    assert [q for q, _ in first] == [s.question for s in task.load_train()[:2]]
    assert select_shots(task, Protocol(shots=0), fmt) == []


def test_select_shots_errors(tmp_path):
    with pytest.raises(MathrlError, match="only 5 samples"):
        select_shots(get_task("arithmetic", train_size=5), Protocol(shots=6), FORMATS["gsm8k"])
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": 1}) + "\n")
    with pytest.raises(MathrlError, match="--shots 2 needs the task's train split"):
        select_shots(get_task("jsonl", path=str(path)), Protocol(shots=2), FORMATS["gsm8k"])


def test_lm_eval_gsm8k_first5_protocol(gsm8k_dir):
    fields = preset("lm-eval-gsm8k-first5")
    assert fields is not formats.PROTOCOLS["lm-eval-gsm8k-first5"]  # a copy: callers may edit it
    proto = Protocol(**fields)
    assert proto.shots == 5 and proto.chat_template is False and proto.shot_selection == "first"
    assert "Question:" in default_stop(proto)
    task = get_task("gsm8k")
    fmt = proto.resolved_format()
    shots = select_shots(task, proto, fmt)
    train_raw = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()[:5]]
    assert shots == [(r["question"], r["answer"]) for r in train_raw]  # original answers, <<…>> kept
    question = task.load_test()[0].question
    text = build_prompt(question, proto, None, shots)  # no tokenizer needed: no chat template
    blocks = text.split("\n\n")
    assert len(blocks) == 6
    for block, r in zip(blocks, train_raw):
        assert block == f"Question: {r['question']}\nAnswer: {r['answer']}"
    assert blocks[-1] == f"Question: {question}\nAnswer:"
    assert "<<48/2=24>>" in text and "<|im_start|>" not in text
    assert not text.startswith(FORMATS["gsm8k"].instruction)


def test_lm_eval_gsm8k_stock_protocol_draws_per_question(gsm8k_dir):
    """Stock lm-eval 0.4: one Random(1234) per task, `rnd.sample(train, 5)` for each test doc in order."""
    import random

    proto = Protocol(**preset("lm-eval-gsm8k"))
    assert proto.shot_selection == "lm-eval" and proto.shot_seed == 1234 and proto.shots == 5
    task = get_task("gsm8k")
    test, train = task.load_test(), task.load_train()
    train_raw = [json.loads(line) for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()]
    rnd = random.Random(1234)
    expected = [[(r["question"], r["answer"]) for r in rnd.sample(train_raw, 5)] for _ in range(40)]
    fmt = proto.resolved_format()
    every = question_shots(task, proto, fmt, test[:40], test)
    assert [every[s.id] for s in test[:40]] == expected
    assert len({tuple(q for q, _ in v) for v in every.values()}) == 40  # not one shared set
    # a --limit subset gets each question's shots from its position in the whole split
    subset = subsample(test[:40], 7, 3)
    assert question_shots(task, proto, fmt, subset, test) == {s.id: every[s.id] for s in subset}
    text = build_prompt(test[5].question, proto, None, every[test[5].id])
    assert text.split("\n\n")[0] == f"Question: {expected[5][0][0]}\nAnswer: {expected[5][0][1]}"
    with pytest.raises(MathrlError, match="per question"):
        select_shots(task, proto, fmt)
    # shots come from the whole published train file (as lm-eval draws them), though `train` (what
    # training sees) leaves out the validation slice; a validation evaluation draws from `train` only
    assert len(task.load_shots()) == len(train_raw) == len(train) + len(task.load("validation"))
    assert {q for q, _ in question_shots(task, proto, fmt, test[:3], test, split="validation")[test[0].id]} <= {
        s.question for s in train}


def test_lmeval_draws_equal_lm_evals_own_sampler():
    samplers = pytest.importorskip("lm_eval.api.samplers")  # installed for the benchmark, not a dependency
    pool = [{"question": f"q{i}", "answer": str(i)} for i in range(50)]
    for same_split in (False, True):
        sampler = samplers.ContextSampler(pool, rnd=None)
        sampler.set_rnd(1234)
        theirs = [[int(d["answer"]) for d in sampler.sample(n=4, eval_doc=pool[i] if same_split else None)] for i in range(30)]
        assert lmeval_draws(len(pool), 4, 30, 1234, same_split) == theirs
        if same_split:
            assert all(i not in draw for i, draw in enumerate(theirs))


def test_unknown_shot_selection():
    task = get_task("arithmetic", train_size=10)
    with pytest.raises(MathrlError, match="unknown shot_selection 'best'"):
        select_shots(task, Protocol(shots=2, shot_selection="best"), FORMATS["gsm8k"])
