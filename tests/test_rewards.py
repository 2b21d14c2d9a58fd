"""mathrl.train.rewards: built-in rewards on hand-written completions, robustness on any text, the registry."""

from __future__ import annotations

import pickle
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathrl.train import rewards
from mathrl.errors import MathrlError
from mathrl.prompts.formats import FORMATS
from mathrl.train.rewards import REWARDS, build_rewards, get_reward, length_penalty, parse_reward_spec, register_reward

BUILTINS = ["correctness", "correctness_flexible", "format_strict", "format_soft", "format", "closeness", "length"]


def score(name: str, fmt: str, completion, gold: str | None = "17") -> float:
    values = get_reward(name, fmt)([completion], answer=[gold])
    assert len(values) == 1 and type(values[0]) is float
    return values[0]


def my_reward(completions, **kwargs):
    """Used by the dotted-path tests: this module is importable under its own __name__."""
    return [0.25 for _ in completions]


NOT_CALLABLE = 3

# --------------------------------------------------------------------------------------------------
# tags

TAGS_OK = "<start_working_out>3 * 4 = 12, 5 + 12 = 17<end_working_out><SOLUTION>17</SOLUTION>"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (TAGS_OK, 1.0),
        (TAGS_OK.replace(">17<", ">18<"), 0.0),  # wrong answer
        (TAGS_OK.replace("<SOLUTION>17</SOLUTION>", "17"), 0.0),  # no answer marker
        (TAGS_OK.replace(">17<", ">$17.00<"), 1.0),  # normalised by the grader
        ("<SOLUTION>17</SOLUTION>", 1.0),  # correctness does not judge the shape
        ("", 0.0),
    ],
)
def test_correctness_tags(completion, expected):
    assert score("correctness", "tags", completion) == expected


def test_correctness_flexible_reads_last_number():
    no_marker = TAGS_OK.replace("<SOLUTION>17</SOLUTION>", "so 17")
    assert score("correctness", "tags", no_marker) == 0.0
    assert score("correctness_flexible", "tags", no_marker) == 1.0
    assert score("correctness_flexible", "tags", "17 then 18") == 0.0


@pytest.mark.parametrize(
    "completion",
    [
        TAGS_OK,
        "\n  " + TAGS_OK + "\n",
        TAGS_OK + "<|im_end|>",
        TAGS_OK + " </s>",
        TAGS_OK.replace("<end_working_out>", "<end_working_out>\n\n"),  # whitespace between markers
        TAGS_OK.replace(">17<", "> 1,234 <"),
        TAGS_OK.replace(">17<", ">-3/4<"),
    ],
)
def test_format_strict_tags_positive(completion):
    assert score("format_strict", "tags", completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        TAGS_OK + " Hope this helps!",  # text after the answer
        "Sure! " + TAGS_OK,  # text before the first marker
        TAGS_OK + "<SOLUTION>17</SOLUTION>",  # two answers
        TAGS_OK.replace("<start_working_out>", ""),  # a missing marker
        "<start_working_out>  <end_working_out><SOLUTION>17</SOLUTION>",  # blank working
        TAGS_OK.replace("<end_working_out>", "<end_working_out> and so "),  # text between markers
        TAGS_OK.replace(">17<", ">seventeen<"),
        TAGS_OK.replace(">17<", ">17 apples<"),
        "<SOLUTION>17</SOLUTION><start_working_out>x<end_working_out>",  # out of order
        "<start_working_out>x<end_working_out><SOLUTION><SOLUTION>1</SOLUTION>",  # nested tags
        "",
    ],
)
def test_format_strict_tags_negative(completion):
    assert score("format_strict", "tags", completion) == 0.0


def test_format_soft_tags_ordering():
    full = score("format_soft", "tags", TAGS_OK)
    three = score("format_soft", "tags", TAGS_OK.replace("<start_working_out>", ""))
    two = score("format_soft", "tags", "so <SOLUTION>17</SOLUTION>")
    none = score("format_soft", "tags", "17")
    repeated = score("format_soft", "tags", TAGS_OK + TAGS_OK)
    assert (full, three, two, none, repeated) == (1.0, 0.75, 0.5, 0.0, -1.0)
    assert score("format", "tags", TAGS_OK.replace("<start_working_out>", "")) == three  # the alias


# --------------------------------------------------------------------------------------------------
# gsm8k

GSM_OK = "Ava buys 3 packs of 4: 3 * 4 = <<3*4=12>>12 apples.\nShe has 5 + 12 = 17.\n#### 17"


def test_correctness_gsm8k():
    assert score("correctness", "gsm8k", GSM_OK) == 1.0
    assert score("correctness", "gsm8k", GSM_OK.replace("#### 17", "#### 18")) == 0.0
    assert score("correctness", "gsm8k", GSM_OK.replace("#### 17", "17")) == 0.0
    assert score("correctness_flexible", "gsm8k", GSM_OK.replace("#### 17", "17")) == 1.0
    # the first '#### N' counts: completions run on into invented questions
    assert score("correctness", "gsm8k", GSM_OK + "\n\nQuestion: more?\n#### 3") == 1.0


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GSM_OK, 1.0),
        (GSM_OK + "\n<|im_end|>", 1.0),
        (GSM_OK.replace("#### 17", "#### $1,700"), 1.0),
        ("#### 17", 0.0),  # no working
        (GSM_OK + "\n\nQuestion: what next?", 0.0),  # runs on after the answer
        (GSM_OK + " apples", 0.0),
        (GSM_OK + "\n#### 17", 0.0),  # two answers
        (GSM_OK.replace("#### 17", "17"), 0.0),
        (GSM_OK.replace("#### 17", "#### 1,7,0"), 0.0),  # not a number the grader accepts whole
    ],
)
def test_format_strict_gsm8k(completion, expected):
    assert score("format_strict", "gsm8k", completion) == expected


def test_format_soft_gsm8k_uses_the_answer_marker():
    assert score("format_soft", "gsm8k", GSM_OK) == 1.0
    assert score("format_soft", "gsm8k", "17") == 0.0
    assert score("format_soft", "gsm8k", GSM_OK + "\n#### 18") == -1.0


# --------------------------------------------------------------------------------------------------
# the other formats


@pytest.mark.parametrize(
    "fmt, completion, expected",
    [
        ("think", "<think>\n7 - 2 = 5\n</think>\n<answer>5</answer>", 1.0),
        ("think", "<think>7 - 2 = 5</think><answer>5</answer>", 1.0),
        ("think", "<think>7 - 2 = 5</think>so<answer>5</answer>", 0.0),
        ("think", "<think>7 - 2 = 5</think><answer>5</answer><answer>5</answer>", 0.0),
        ("boxed", "2 + 3 = 5, so the answer is $\\boxed{5}$.", 1.0),
        ("boxed", "2 + 3 = 5.\n\\boxed{5}", 1.0),
        ("boxed", "2 + 3 = 5, so \\boxed{5} apples.", 0.0),
        ("boxed", "\\boxed{4} or 2 + 3 = 5, \\boxed{5}", 0.0),
        ("boxed", "\\boxed{5}", 0.0),  # no working
        ("answer_is", "2 + 3 = 5. The answer is 5.", 1.0),
        ("answer_is", "2 + 3 = 5.\nThe final answer is 5", 1.0),
        ("answer_is", "2 + 3 = 5. The answer is 5. Then we add more.", 0.0),
    ],
)
def test_format_strict_other_formats(fmt, completion, expected):
    assert score("format_strict", fmt, completion, gold="5") == expected


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("answer", ["42", "-7", "2.5", "1000"])
def test_rendered_solutions_get_full_marks(fmt, answer):
    """What SFT teaches (Format.render) is exactly what the strict rewards pay for."""
    text = FORMATS[fmt].render("First 6 * 7 = 42, then we check the sum.", answer)
    for name in ("correctness", "correctness_flexible", "format_strict", "format_soft", "closeness"):
        assert score(name, fmt, text, gold=answer) == 1.0, name


# --------------------------------------------------------------------------------------------------
# closeness and length


def test_closeness_values_and_monotone():
    def close(pred: str, gold: str = "100", fmt: str = "tags") -> float:
        return score("closeness", fmt, f"<start_working_out>x<end_working_out><SOLUTION>{pred}</SOLUTION>", gold)

    assert close("100") == 1.0
    assert close("99") == pytest.approx(0.495)
    assert close("50") == pytest.approx(0.25)
    assert close("200") == 0.0 and close("-5") == 0.0
    assert close("0.5", gold="0") == pytest.approx(0.25)  # max(1, |gold|) keeps gold 0 usable
    distances = [0, 1, 2, 5, 10, 30, 60, 99, 100, 150, 1000]
    values = [close(str(100 + d)) for d in distances]
    assert values == sorted(values, reverse=True) and values[0] == 1.0 and values[-1] == 0.0
    assert all(v <= 0.5 for v in values[1:])
    assert score("closeness", "tags", "no number here", "100") == 0.0
    assert score("closeness", "gsm8k", "I think it is about 99", "100") == pytest.approx(0.495)  # flexible
    assert score("closeness", "tags", "<SOLUTION>3</SOLUTION>", "x + 1") == 0.0  # non-numeric gold
    assert score("closeness", "tags", "<SOLUTION>3</SOLUTION>", None) == 0.0


def test_length_penalty_values():
    reward = length_penalty(100)
    texts = ["", "a" * 100, "a" * 150, "a" * 200, "a" * 10_000]
    assert reward(texts) == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert str(reward([""])[0]) == "0.0"  # not -0.0 in logs
    default = get_reward("length", "tags")
    assert default(["x" * 1000, "x" * 1500, "x" * 2000]) == [0.0, -0.5, -1.0]
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(MathrlError, match="limit"):
            length_penalty(bad)


# --------------------------------------------------------------------------------------------------
# input shapes and robustness


def test_conversational_completions():
    for fmt, text in (("tags", TAGS_OK), ("gsm8k", GSM_OK)):
        plain = [text, "nothing", ""]
        convo = [[{"role": "assistant", "content": t}] for t in plain]
        convo[0] = [{"role": "user", "content": "#### 99"}, {"role": "assistant", "content": text}]
        parts = [[{"role": "assistant", "content": [{"type": "text", "text": t}]}] for t in plain]
        for name in BUILTINS:
            fn = get_reward(name, fmt)
            expected = fn(plain, answer=["17"] * 3)
            assert fn(convo, answer=["17"] * 3) == expected, name
            assert fn(parts, answer=["17"] * 3) == expected, name


def test_extra_kwargs_ints_and_empty_batches():
    fn = get_reward("correctness", "gsm8k")
    # TRL passes prompts, completion_ids, trainer_state, ... and other dataset columns
    out = fn([GSM_OK, GSM_OK], answer=[17, "17"], prompts=["q", "q"], completion_ids=[[1], [2]], id=["a", "b"])
    assert out == [1.0, 1.0]
    assert fn([], answer=[]) == []
    assert fn([None, 3, {"role": "assistant", "content": None}], answer=["1", None, "3"]) == [0.0, 0.0, 0.0]


def test_missing_or_misaligned_answer_column():
    fn = get_reward("correctness", "tags")
    with pytest.raises(MathrlError, match="'answer' column"):
        fn([TAGS_OK])
    with pytest.raises(MathrlError, match="2 answers for 1 completions"):
        fn([TAGS_OK], answer=["1", "2"])
    assert get_reward("format_strict", "tags")([TAGS_OK]) == [1.0]  # format rewards need no gold


def test_rewards_pickle():
    funcs, _ = build_rewards(",".join(BUILTINS), "tags")
    for fn in funcs:
        again = pickle.loads(pickle.dumps(fn))
        assert again.__name__ == fn.__name__
        assert again([TAGS_OK], answer=["17"]) == fn([TAGS_OK], answer=["17"])


_FRAGMENTS = [
    "<SOLUTION>", "</SOLUTION>", "<start_working_out>", "<end_working_out>", "<think>", "</think>",
    "<answer>", "</answer>", "####", "\\boxed{", "}", "{", "The answer is", "$", ".", ",", "-", "/", " ",
    "\n", "1", "17", "9" * 80, "1,000", "\\frac{1}{2}", "<<3*4=12>>", "−", "٣", "𝟙", "<|im_end|>",
]
completion_text = st.one_of(
    st.text(),
    st.text(alphabet="0123456789,.-/ $", min_size=0, max_size=400),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join),
    st.builds(lambda a, b: a + "<SOLUTION><SOLUTION>1</SOLUTION>" + b, st.text(max_size=20), st.text(max_size=20)),
)
gold_text = st.one_of(st.none(), st.integers(-(10**30), 10**30).map(str), st.sampled_from(["17", "0.5", "-3", "1000"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    completions=st.lists(st.one_of(completion_text, st.none()), min_size=1, max_size=4),
    golds=st.data(),
    fmt=st.sampled_from(sorted(FORMATS)),
)
def test_every_builtin_returns_floats_and_never_raises(completions, golds, fmt):
    answers = [golds.draw(gold_text) for _ in completions]
    for name in BUILTINS:
        values = get_reward(name, fmt)(completions, answer=answers)
        assert len(values) == len(completions)
        assert all(type(v) is float and -1.0 <= v <= 1.0 for v in values), (name, values)


_ADVERSARIAL = [
    "</SOLUTION>" + "<SOLUTION>" * 10_000,
    "</answer>" + "<answer>" * 11_000,
    "<start_working_out>" * 5_000,
    "\\boxed{" * 14_000,
    "\\boxed{" + "{}" * 50_000,
    "#### " * 20_000,
    "####" + " " * 100_000,
    "1" * 100_000,
    "1," * 50_000,
    "1/" * 50_000,
    "1 " * 50_000,
    "-" * 100_000,
    "The answer is " * 7_000,
    "\\frac{1}{" * 10_000,
    " " * 100_000 + "x",
    "<SOLUTION>" + " " * 100_000,
]


@pytest.mark.slow
def test_adversarial_inputs_are_fast():
    for fmt in FORMATS:
        for name in BUILTINS:
            fn = get_reward(name, fmt)
            for text in _ADVERSARIAL:
                start = time.perf_counter()
                values = fn([text], answer=["17"])
                elapsed = time.perf_counter() - start
                assert len(values) == 1 and isinstance(values[0], float)
                # a guard against super-linear blow-ups (minutes), not a speed target: loose for busy machines
                assert elapsed < 5.0, (fmt, name, text[:30], elapsed)


# --------------------------------------------------------------------------------------------------
# registry


@pytest.fixture
def clean_registry():
    before = dict(REWARDS)
    yield
    REWARDS.clear()
    REWARDS.update(before)


def test_register_reward_decorator(clean_registry):
    @register_reward("test_half")
    def half(completions, **kwargs):
        return [0.5] * len(completions)

    assert half(["a"]) == [0.5]  # the decorator returns the function itself
    assert "test_half" in REWARDS
    fn = get_reward("test_half", "tags")
    assert fn.__name__ == "test_half" and fn(["a", "b"]) == [0.5, 0.5]

    @register_reward("test_per_format", per_format=True)
    def per_format(fmt):
        return lambda completions, **kwargs: [float(len(fmt.markers))] * len(completions)

    assert get_reward("test_per_format", "tags")(["x"]) == [4.0]
    assert get_reward("test_per_format", "gsm8k")(["x"]) == [0.0]

    with pytest.raises(MathrlError, match="built-in"):
        register_reward("correctness")
    for bad in ("", "a b", "a,b", "a:b"):
        with pytest.raises(MathrlError):
            register_reward(bad)


def test_dotted_path_from_this_module():
    for path in (f"{__name__}:my_reward", f"{__name__}.my_reward"):
        fn = get_reward(path, "tags")
        assert fn is my_reward and fn(["a"]) == [0.25]


def test_dotted_path_from_a_module_file(tmp_path, monkeypatch):
    (tmp_path / "user_rewards_mod.py").write_text(
        "def bonus(completions, **kwargs):\n    return [1.0 for _ in completions]\nNUMBER = 3\n"
    )
    (tmp_path / "broken_rewards_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_reward("user_rewards_mod:bonus", "gsm8k")(["x"]) == [1.0]
    assert get_reward("user_rewards_mod.bonus", "gsm8k")(["x"]) == [1.0]
    funcs, weights = build_rewards("correctness,user_rewards_mod:bonus:0.3", "gsm8k")
    assert [f.__name__ for f in funcs] == ["correctness", "bonus"] and weights == [1.0, 0.3]
    with pytest.raises(MathrlError, match="'no_such_mod_xyz'"):
        get_reward("no_such_mod_xyz:fn", "gsm8k")
    with pytest.raises(MathrlError, match="has no attribute 'missing'"):
        get_reward("user_rewards_mod:missing", "gsm8k")
    with pytest.raises(MathrlError, match="'NUMBER'.*not callable"):
        get_reward("user_rewards_mod:NUMBER", "gsm8k")
    with pytest.raises(MathrlError, match="broken_rewards_mod.*boom"):
        get_reward("broken_rewards_mod:fn", "gsm8k")


def test_unknown_reward_and_format():
    with pytest.raises(MathrlError) as err:
        get_reward("corectness", "tags")
    message = str(err.value)
    assert "'corectness'" in message and all(name in message for name in BUILTINS)
    with pytest.raises(MathrlError, match="unknown format 'nope'"):
        get_reward("correctness", "nope")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("correctness,format:0.5,closeness:0.2", [("correctness", 1.0), ("format", 0.5), ("closeness", 0.2)]),
        (" correctness , length : 2 ", [("correctness", 1.0), ("length", 2.0)]),
        ("format_strict:-0.5", [("format_strict", -0.5)]),
        ("pkg.mod:fn", [("pkg.mod:fn", 1.0)]),
        ("pkg.mod:fn:0.3", [("pkg.mod:fn", 0.3)]),
        ("pkg.mod.fn:1e-1", [("pkg.mod.fn", 0.1)]),
    ],
)
def test_parse_reward_spec(spec, expected):
    assert parse_reward_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, culprit",
    [
        ("format:abc", "'abc'"),
        ("correctness,closeness:x1", "'x1'"),
        ("format:", "''"),
        ("format:nan", "format:nan"),
        (":0.5", ":0.5"),
        ("correctness,,format", "empty entry"),
        ("", "no rewards"),
        ("pkg.mod:fn:abc", "'abc'"),
    ],
)
def test_parse_reward_spec_errors(spec, culprit):
    with pytest.raises(MathrlError, match=culprit.replace(".", r"\.")):
        parse_reward_spec(spec)


def test_build_rewards_distinct_names():
    funcs, weights = build_rewards("correctness,format,format_strict:2,correctness:0.5,length", "tags")
    names = [f.__name__ for f in funcs]
    assert names == ["correctness", "format", "format_strict", "correctness_2", "length"]
    assert weights == [1.0, 1.0, 2.0, 0.5, 1.0]
    assert [f([TAGS_OK], answer=["17"])[0] for f in funcs] == [1.0, 1.0, 1.0, 1.0, 0.0]
    # TRL's own naming agrees (it logs rewards/<name>)
    from trl.trainer.utils import get_callable_name

    assert [get_callable_name(f) for f in funcs] == names


def test_builtins_documented():
    assert set(BUILTINS) <= set(REWARDS)
    for name in BUILTINS:
        assert name in rewards.__doc__
    assert "alias of format_soft" in REWARDS["format"].description
