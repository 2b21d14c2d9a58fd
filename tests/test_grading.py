"""mathrl.grading: normalisation, extractors of every format, comparison, robustness on any text."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathrl import grading
from mathrl.prompts.formats import FORMATS, PROTOCOLS, Protocol
from mathrl.grading import answers_match, extract_flexible, extract_strict, normalize, parse_number

# --------------------------------------------------------------------------------------------------
# normalize


@pytest.mark.parametrize(
    "text, expected",
    [
        ("18", "18"),
        ("1,234", "1234"),
        ("1,234,567", "1234567"),
        ("$1,234.56", "1234.56"),
        ("$18", "18"),
        ("$ 18", "18"),
        ("50%", "50"),
        ("18 apples", "18"),
        ("18 apples and 3 pears", "18"),  # the first number of an answer string
        ("18.", "18"),
        ("+18", "18"),
        ("18.0", "18"),
        ("18.000", "18"),
        ("0.5", "0.5"),
        (".5", "0.5"),
        ("-7", "-7"),
        ("\u22127", "-7"),  # unicode minus sign
        ("-$5", "-5"),
        ("(-3)", "-3"),
        ("x = -3", "-3"),
        ("-2.5", "-2.5"),
        ("3/4", "0.75"),
        ("-3/4", "-0.75"),
        ("1/3", "0.333333"),
        ("2/3", "0.666667"),
        ("\\frac{3}{4}", "0.75"),
        ("\\dfrac{1}{2}", "0.5"),
        ("\\tfrac{1}{4}", "0.25"),
        ("\\frac{-3}{4}", "-0.75"),
        ("\\frac{6}{3}", "2"),
        ("\\boxed{12}", "12"),
        ("so the total is \\boxed{12} apples, not 13", "12"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{x = \\boxed{5}}", "5"),  # nested boxed: innermost (last) box wins
        ("\\boxed{1} and later \\boxed{2}", "2"),
        ("The answer is 1,000.", "1000"),
    ],
)
def test_normalize_cases(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("text", [None, "", "   ", "no number here", "abc.def", "1/0", "\\frac{1}{0}", "\\boxed{}"])
def test_normalize_without_a_number_is_none(text):
    assert normalize(text) is None


def test_normalize_refuses_absurdly_long_numbers():
    assert normalize("9" * (grading.MAX_DIGITS + 5)) is None
    # ... but a long number does not hide a normal one after it
    assert extract_flexible("9" * 500 + " so 42") == "42"


def test_parse_number_returns_exact_fractions():
    assert parse_number("1/3") == Fraction(1, 3)
    assert parse_number("0.1") == Fraction(1, 10)  # exact, not binary float
    assert parse_number("-1,250.5") == Fraction(-2501, 2)


def test_format_number():
    assert grading.format_number(Fraction(18)) == "18"
    assert grading.format_number(Fraction(-5, 2)) == "-2.5"
    assert grading.format_number(Fraction(1, 8)) == "0.125"
    assert grading.format_number(Fraction(1, 3)) == "0.333333"


@pytest.mark.parametrize("text", ["-\\frac{3}{4}", "\\boxed{-\\frac{3}{4}}", "x = -\\dfrac{3}{4}"])
def test_normalize_negative_latex_fraction(text):
    assert normalize(text) == "-0.75"


def test_answers_match_negative_latex_fraction():
    assert not answers_match("-\\frac{3}{4}", "0.75")
    assert answers_match("-\\frac{3}{4}", "-0.75")


# --------------------------------------------------------------------------------------------------
# flexible extractor: last number, calculator strings are text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("First 3 then 4 so 12", "12"),
        ("He has 1,000 apples.", "1000"),
        ("It costs $18.", "18"),
        ("The temperature is -7 degrees", "-7"),
        ("3-5", "5"),  # a hyphen glued to a digit is not a sign
        ("pages 10-12", "12"),
        ("item-5", "5"),
        ("so x = -5", "-5"),
        ("3/4", "0.75"),
        ("He has <<2+2=5>>5 apples", "5"),  # the annotation is text: never computed as 4
        ("4*3 = <<4*3=12>>12 eggs", "12"),
        ("<<2+2=5>>", None),  # nothing outside the annotation
        ("<<48/2=24>>", None),
        ("no digits at all", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_flexible(text, expected):
    assert extract_flexible(text) == expected


@pytest.mark.parametrize("text", ["half is 3/4", "x = 3/4 cup", " 3/4"])
def test_slash_fraction_after_a_space(text):
    assert normalize(text) == "0.75"
    assert extract_flexible(text) == "0.75"


@pytest.mark.parametrize("fmt, text", [("think", "<answer> 3/4 </answer>"), ("tags", "<SOLUTION> 3/4 </SOLUTION>"),
                                       ("boxed", "\\boxed{ 3/4 }")])
def test_strict_fraction_with_spaces(fmt, text):
    assert FORMATS[fmt].extract_strict(text) == "0.75"


def test_calculator_strings_are_never_evaluated():
    # The grader reads numbers; it never computes "2+2" or "3*4".
    assert normalize("2+2") == "2"
    assert normalize("3*4") == "3"
    assert extract_flexible("2+2") == "2"
    assert extract_flexible("<<3*4=12>>") is None
    assert extract_flexible("so <<3*4=13>> the answer is 13") == "13"


def test_extract_flexible_with_pattern():
    assert extract_flexible("a 12 b 13 c", r"\d+") == "13"
    assert extract_flexible("no digits", r"\d+") is None
    assert extract_flexible("1 2", r"(") is None  # a bad pattern is no answer, not an exception
    lm_eval = PROTOCOLS["lm-eval-gsm8k"]["flexible_pattern"]
    assert extract_flexible("She pays $1,200. Then 5", lm_eval) == "5"
    assert extract_flexible("She pays $1,200.", lm_eval) == "1200"


# --------------------------------------------------------------------------------------------------
# strict extractors of each format


@pytest.mark.parametrize(
    "fmt, text, expected",
    [
        ("gsm8k", "work\n#### 72", "72"),
        ("gsm8k", "#### 1,000", "1000"),
        ("gsm8k", "#### $1,000.", "1000"),
        ("gsm8k", "####-5", "-5"),
        ("gsm8k", "#### 5\nQuestion: next\n#### 6", "5"),  # first marker: the model ran on
        ("gsm8k", "the answer is 72", None),
        ("tags", "<start_working_out>x<end_working_out><SOLUTION>12</SOLUTION>", "12"),
        ("tags", "<SOLUTION> 12 apples </SOLUTION>", "12"),
        ("tags", "<SOLUTION>1</SOLUTION> <SOLUTION>13</SOLUTION>", "13"),  # last marker
        ("tags", "<SOLUTION>abc</SOLUTION>", None),
        ("tags", "<SOLUTION>12", None),  # unclosed
        ("think", "<think>2+3</think><answer>5</answer>", "5"),
        ("think", "<answer>3/4</answer>", "0.75"),
        ("think", "<answer>\n  -12 \n</answer>", "-12"),
        ("think", "<think>5</think>", None),
        ("boxed", "so \\boxed{42}", "42"),
        ("boxed", "\\boxed {  42 }", "42"),
        ("boxed", "\\boxed{1} then \\boxed{\\frac{3}{4}}", "0.75"),
        ("boxed", "\\boxed{\\text{12 apples}}", "12"),
        ("boxed", "just 42", None),
        ("answer_is", "The answer is 42.", "42"),
        ("answer_is", "The answer is: 42", "42"),
        ("answer_is", "the final answer is -3", "-3"),
        ("answer_is", "The answer is $1,000,000.", "1000000"),
        ("answer_is", "The answer is 1. Wait. The answer is 2.", "2"),
        ("answer_is", "Answer: 42", None),
    ],
)
def test_strict_extractors(fmt, text, expected):
    f = FORMATS[fmt]
    assert f.extract_strict(text) == expected
    assert f.has_answer(text) == (expected is not None)


def test_extract_strict_take_first_vs_last():
    pat = r"#(\d+)"
    assert extract_strict("#1 #2 #3", pat, "first") == "1"
    assert extract_strict("#1 #2 #3", pat, "last") == "3"


@pytest.mark.parametrize("pattern", [r"(", r"\d"])  # invalid regex; no capture group
def test_extract_strict_bad_pattern_is_none(pattern):
    assert extract_strict("abc 5", pattern) is None


def test_lm_eval_strict_pattern():
    fmt = Protocol(**PROTOCOLS["lm-eval-gsm8k"]).resolved_format()
    assert fmt.extract_strict("#### 1,234\n#### 9") == "1234"
    assert fmt.extract_strict("#### -3") == "-3"
    assert fmt.extract_strict("####5") is None  # lm-eval's regex needs the space


# --------------------------------------------------------------------------------------------------
# answers_match


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("18", "18"),
        ("18.0", "18"),
        ("18", "18.0"),
        ("1,000", "1000"),
        ("$18", "18"),
        ("18", "$18"),
        ("18", "18%"),
        ("0.75", "3/4"),
        ("-3", "-3"),
        ("0.333333", "1/3"),  # 6 decimals (format_number) compare equal to the fraction
    ],
)
def test_answers_match_true(pred, gold):
    assert answers_match(pred, gold) is True


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("18.001", "18"),
        ("17", "18"),
        ("-18", "18"),
        ("1000001.5", "1000000"),
        (None, "18"),
        ("18", None),
        (None, None),
        ("", "18"),
    ],
)
def test_answers_match_false(pred, gold):
    assert answers_match(pred, gold) is False


def test_math_verify_fallback_for_non_numeric_gold():
    assert answers_match("0.5", "\\frac{1}{2}") is True
    assert answers_match("1/2", "\\frac{1}{2}") is True
    assert answers_match("0.6", "\\frac{1}{2}") is False
    # gold "\sqrt{2}" holds the digit 2: a plain numeric comparison would wrongly accept "2"
    assert answers_match("2", "\\sqrt{2}") is False


def test_math_verify_fallback_latex_gold_matches_itself():
    assert answers_match("\\sqrt{2}", "\\sqrt{2}") is True
    assert answers_match("\\pi", "\\pi") is True


def test_answers_match_returns_promptly_on_pathological_text():
    code = "from mathrl.grading import answers_match; print(answers_match('99!!', '\\\\frac{1}{2}'))"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("answers_match('99!!', '\\frac{1}{2}') did not return within 5 s")
    assert proc.returncode == 0 and proc.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# never raise on any text (property tests)

_FRAGMENTS = st.sampled_from(
    [
        "####", "#### ", "<SOLUTION>", "</SOLUTION>", "<answer>", "</answer>", "<think>", "</think>",
        "\\boxed{", "\\fbox{", "{", "}", "\\frac{", "\\dfrac", "<<", ">>", "=", "$", "%", ",", ".", "-",
        "\u2212", "+", "/", "0", "1,000", "3/4", "9" * 80, "1" * 3000, "The answer is ", " ", "\n", "é",
        "\u00bd", "\u0663", "\U0001d7d7", "\x00", "(", ")", "[", "]",
    ]
)
ANY_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(_FRAGMENTS, max_size=40).map("".join),
    st.lists(st.one_of(_FRAGMENTS, st.text(max_size=5)), max_size=30).map("".join),
    st.integers(min_value=0, max_value=10**400).map(str),
)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _is_number_text(s):
    return s is None or (isinstance(s, str) and parse_number(s) is not None and normalize(s) == s)


@_SETTINGS
@given(ANY_TEXT)
def test_normalize_and_flexible_never_raise(text):
    for out in (normalize(text), extract_flexible(text)):
        assert out is None or isinstance(out, str)
        # whatever comes back is canonical: normalising it again is a fixed point
        assert _is_number_text(out)


@_SETTINGS
@given(ANY_TEXT)
def test_strict_extractors_never_raise(text):
    for fmt in FORMATS.values():
        out = fmt.extract_strict(text)
        assert _is_number_text(out)
        for answer_type in ("math", "text"):
            for out in (fmt.extract_strict(text, answer_type=answer_type), fmt.extract_flexible(text, answer_type=answer_type)):
                assert out is None or (isinstance(out, str) and out == out.strip() != "")
        assert isinstance(fmt.has_reasoning(text), bool)
        assert isinstance(fmt.has_answer(text), bool)


@_SETTINGS
@given(ANY_TEXT, st.one_of(st.none(), st.text(max_size=20), st.integers(-(10**9), 10**9).map(str)))
def test_answers_match_never_raises_with_numeric_pred(text, gold):
    # evaluation passes extracted (normalised) predictions: check with those and arbitrary gold text
    for pred in (extract_flexible(text), FORMATS["gsm8k"].extract_strict(text)):
        assert isinstance(answers_match(pred, gold), bool)


@_SETTINGS
@given(st.integers(-(10**12), 10**12), st.integers(1, 10**6))
def test_normalize_of_a_fraction_matches_its_value(num, den):
    out = normalize(f"{num}/{den}")
    assert out is not None
    assert abs(Fraction(out) - Fraction(num, den)) <= Fraction(1, 10**6) * max(1, abs(Fraction(num, den)))


@_SETTINGS
@given(st.integers(-(10**15), 10**15))
def test_thousands_separators_round_trip(n):
    assert normalize(f"{n:,}") == str(n)
    assert extract_flexible(f"so the total is {n:,} dollars") == str(n)


def test_pathological_nesting_is_handled():
    for text in ("\\boxed{" * 300, "<SOLUTION>" * 300 + "5", "{" * 1000 + "5" + "}" * 1000, "<<" * 500 + "7"):
        assert _is_number_text(normalize(text))
        assert _is_number_text(extract_flexible(text))
        for fmt in FORMATS.values():
            assert _is_number_text(fmt.extract_strict(text))


# --------------------------------------------------------------------------------------------------
# misreads found in review: each of these read a different number before the fix


@pytest.mark.parametrize(
    "fmt, text, expected",
    [
        ("gsm8k", "work\n#### - 5", "-5"),  # a sign separated by a space right after the marker
        ("gsm8k", "#### \u2212 5", "-5"),
        ("answer_is", "so The answer is - 5.", "-5"),
        ("gsm8k", "#### $-5", "-5"),  # currency before the sign
        ("gsm8k", "#### -$5", "-5"),
        ("gsm8k", "#### .5", "0.5"),
        ("answer_is", "The answer is .5.", "0.5"),
        ("gsm8k", "#### 5 1/2", "5.5"),
        ("gsm8k", "#### 3e5", "300000"),
        ("gsm8k", "#### 1,2345", None),  # malformed thousands group: no number, not a truncated 1234
    ],
)
def test_strict_marker_misreads(fmt, text, expected):
    assert FORMATS[fmt].extract_strict(text) == expected


def test_spaced_sign_only_counts_at_the_start_of_an_answer():
    assert normalize("- 5") == "-5"
    assert normalize("\u2212 5") == "-5"
    assert extract_flexible("10 - 5") == "5"  # subtraction in running text is not a sign
    assert extract_flexible("we have 3 - 5 apples") == "5"


def test_lm_eval_preset_reads_a_leading_dot():
    fmt = Protocol(**PROTOCOLS["lm-eval-gsm8k"]).resolved_format()
    assert fmt.extract_strict("#### .5") == "0.5"


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("1000001", "1000000", False),  # integers compare exactly: no relative tolerance
        ("999999", "1000000", False),
        ("123456789", "123456790", False),
        ("1000000.5", "1000000", False),
        ("18.0000001", "18", False),
        ("1000000", "1,000,000", True),
        ("1000000.0", "1000000", True),
        ("0.333333", "1/3", True),  # a non-integer gold: 6 decimals (format_number's rounding) are enough
        ("1/3", "0.333333", True),
        ("0.142857", "\\frac{1}{7}", True),
        ("0.3333", "1/3", False),  # ... but fewer decimals are not
        ("1234567.5", "1234568.5", False),  # the tolerance is absolute, not relative to a large gold
    ],
)
def test_integer_golds_compare_exactly(pred, gold, expected):
    assert answers_match(pred, gold) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{1{,}234{,}567}", "1234567"),
        ("1,\\!000", "1000"),
        ("$1,\\!000,\\!000$", "1000000"),
        ("1\\,000", "1000"),
        ("\\frac12", "0.5"),
        ("\\dfrac34", "0.75"),
        ("\\tfrac{1}{4}", "0.25"),
        ("\\frac1{2}", "0.5"),
        ("\\frac{1}{2}", "0.5"),
        ("3e5", "300000"),
        ("1e-3", "0.001"),
        ("2.5E+2", "250"),
        ("-4e2", "-400"),
        ("\u22123/4", "-0.75"),  # unicode minus before a slash fraction
        ("5 1/2", "5.5"),  # mixed numbers
        ("3\\frac{1}{2}", "3.5"),
        ("-2 3/4", "-2.75"),
        ("3 1/2 cups", "3.5"),
        ("1,00,000", "100000"),  # Indian grouping (lakh)
    ],
)
def test_number_notation_misreads(text, expected):
    assert normalize(text) == expected
    assert extract_flexible(f"so the total is {text}") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("it takes 3 eggs", "3"),  # "3 e" is not scientific notation
        ("5e", "5"),
        ("about 3e5x", "5"),  # a letter after the exponent: not a number in e-notation
        ("in 2 1/2 hours", "2.5"),
        ("add 5 1/2", "5.5"),
        ("1 2 3", "3"),  # a list of integers stays a list
        ("6 12/4", "3"),  # improper fraction after an integer: two numbers, not a mixed number
        ("2\\frac{5}{3}", "1.666667"),
        ("1,2,3", "3"),
        ("the pair 12,34", "34"),
        ("\u22123/4", "-0.75"),
    ],
)
def test_flexible_near_misses_stay_as_written(text, expected):
    assert extract_flexible(text) == expected


@pytest.mark.parametrize("text", ["1,2345", "1,234,56", "12,3456", "1234,567"])
def test_malformed_thousands_groups_are_no_number(text):
    assert normalize(text) is None
    assert not grading.is_plain_number(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{\\frac{\\sqrt{4}}{\\left(2\\right)}} and \\boxed{7}", "7"),
        ("\\boxed{\\text{so {{{{12}}}} apples}}", "12"),  # any nesting depth
        ("\\fbox{9}", "9"),
        ("\\boxed{1} then \\fbox{2} then \\boxed{{3}}", "3"),  # the last box wins
    ],
)
def test_boxed_strict_any_depth(text, expected):
    assert FORMATS["boxed"].extract_strict(text) == expected


# --------------------------------------------------------------------------------------------------
# property: a value written in any notation the grader claims to read comes back as that value

_MINUS = st.sampled_from(["-", "\u2212"])
_BIG_SEPARATORS = st.sampled_from([",", "{,}", ",\\!"])


def _grouped(n: int, sep: str) -> str:
    return f"{n:,}".replace(",", sep)


@st.composite
def written_numbers(draw):
    """(value, text, spaced): a Fraction and one way people write it; spaced: its sign is '- N'."""
    kind = draw(st.sampled_from(["int", "decimal", "sci", "fraction", "mixed"]))
    if kind == "int":
        n = draw(st.integers(0, 10**12))
        value = Fraction(n)
        text = draw(st.sampled_from([str(n), _grouped(n, draw(_BIG_SEPARATORS))]))
        text += draw(st.sampled_from(["", "%"]))  # 50% grades as 50 against a gold of 50
    elif kind == "decimal":
        n, places = draw(st.integers(0, 10**9)), draw(st.integers(1, 6))
        value = Fraction(n, 10**places)
        whole, frac = divmod(n, 10**places)
        text = f"{whole:,}.{frac:0{places}d}" if draw(st.booleans()) else f"{whole}.{frac:0{places}d}"
        if whole == 0 and draw(st.booleans()):
            text = text[1:]  # ".5"
    elif kind == "sci":
        mantissa, exp = draw(st.integers(1, 999)), draw(st.integers(-6, 9))
        value = Fraction(mantissa) * Fraction(10) ** exp
        e = draw(st.sampled_from(["e", "E"]))
        text = f"{mantissa}{e}{'+' if exp >= 0 and draw(st.booleans()) else ''}{exp}"
    else:
        den = draw(st.integers(2, 999))
        num = draw(st.integers(1, den - 1 if kind == "mixed" else 5000))
        value = Fraction(num, den)
        styles = ["\\frac{%d}{%d}", "\\dfrac{%d}{%d}", "\\tfrac{%d}{%d}", "%d/%d", "%d / %d"]
        if num < 10 and den < 10:
            styles += ["\\frac%d%d", "\\frac %d %d"]
        text = draw(st.sampled_from(styles)) % (num, den)
        if kind == "mixed":
            whole = draw(st.integers(1, 999))
            value += whole
            text = f"{whole} {num}/{den}" if draw(st.booleans()) else f"{whole}\\frac{{{num}}}{{{den}}}"
    spaced = False
    if value and draw(st.booleans()):
        value = -value
        sign = draw(_MINUS)
        spaced = draw(st.booleans())
        text = sign + (" " if spaced else "") + text
    if not text.endswith("%") and draw(st.booleans()) and "$" not in text:
        text = "$" + text if value >= 0 else text[0] + "$" + text[1:].lstrip()
    return value, text, spaced


def _boxed(text: str, depth: int, command: str = "\\boxed") -> str:
    return command + "{" + "{" * depth + text + "}" * depth + "}"


_PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(written_numbers(), st.integers(0, 4), st.sampled_from(["\\boxed", "\\fbox"]))
def test_every_notation_reads_as_its_value(written, depth, command):
    value, text, spaced = written
    want = grading.format_number(value)
    assert normalize(text) == want
    assert parse_number(text) == value
    assert normalize(_boxed(text, depth, command)) == want
    strict = {
        "gsm8k": f"3 + 4 = 7\n#### {text}\n",
        "answer_is": f"3 + 4 = 7.\nThe answer is {text}.",
        "tags": f"<start_working_out>3 + 4<end_working_out><SOLUTION>{text}</SOLUTION>",
        "think": f"<think>3 + 4</think>\n<answer> {text} </answer>",
        "boxed": f"3 + 4 = 7, so $\\boxed{{1}}$ is wrong; it is {_boxed(text, depth, command)}.",
    }
    for name, completion in strict.items():
        assert FORMATS[name].extract_strict(completion) == want, name
    if not spaced:  # "- 5" in running text is a subtraction, not a sign
        assert extract_flexible(f"First 3 + 4 = 7 apples.\nSo the total is {text}") == want
        assert extract_flexible(f"so {text}.") == want
    gold = str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    assert answers_match(want, gold)
    assert not answers_match(want, str(value.numerator + value.denominator))  # one more than the value: wrong
