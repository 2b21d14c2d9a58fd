"""MATH-style answers (answer_type="math"/"text"): extraction, comparison, Math-Verify off the main thread."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathrl import grading
from mathrl.grading import math_answers as grading_math
from mathrl.errors import MathrlError
from mathrl.prompts.formats import FORMATS
from mathrl.grading import answers_match, extract_flexible, extract_strict

FIXTURE = Path(__file__).parent / "fixtures" / "math500_sample.jsonl"
ROWS = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
BOXED = FORMATS["boxed"]

# Pairs that only Math-Verify can decide: not the same text, not both plain numbers.
NEEDS_VERIFY = [
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}", False),
    ("2+\\sqrt{5}", "\\sqrt{5}+2", True),
    ("(x+2)^2", "x^2+4x+4", True),
]

# --------------------------------------------------------------------------------------------------
# the fixture: MATH-500's format, every answer kind


def test_fixture_is_math500_shaped():
    assert len(ROWS) >= 60
    for row in ROWS:
        assert set(row) == {"problem", "solution", "answer", "subject", "level", "unique_id"}
        assert grading._boxed_contents(row["solution"]), row["unique_id"]
    assert len({row["unique_id"] for row in ROWS}) == len(ROWS)


def _grade(row: dict, gold: str) -> bool:
    return answers_match(BOXED.extract_strict(row["solution"], answer_type="math"), gold, "math")


def test_reference_solutions_grade_as_correct():
    right = [row["unique_id"] for row in ROWS if _grade(row, row["answer"])]
    wrong = [row["unique_id"] for row in ROWS if row["unique_id"] not in right]
    assert len(right) / len(ROWS) >= 0.995, wrong


def test_reference_solutions_against_other_answers_grade_as_wrong():
    # each solution against the next problem's answer (a cyclic shift): all different answers
    pairs = [(row, ROWS[(i + 1) % len(ROWS)]["answer"]) for i, row in enumerate(ROWS)]
    pairs = [(row, gold) for row, gold in pairs if "".join(gold.split()) != "".join(row["answer"].split())]
    false_pos = [(row["answer"], gold) for row, gold in pairs if _grade(row, gold)]
    assert len(pairs) >= 60
    assert len(false_pos) / len(pairs) <= 0.005, false_pos


# --------------------------------------------------------------------------------------------------
# extraction keeps the answer as written


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 6 & 8 \\end{pmatrix}}", "\\begin{pmatrix} 1 & 2 \\\\ 6 & 8 \\end{pmatrix}"),
        ("\\boxed{ (-\\infty, 3] }", "(-\\infty, 3]"),
        ("\\boxed{1} is wrong; \\fbox{\\text{(C)}}", "\\text{(C)}"),  # the last box wins
        ("\\boxed{\\sqrt{\\frac{\\sqrt{\\frac{1}{2}}}{2}}}", "\\sqrt{\\frac{\\sqrt{\\frac{1}{2}}}{2}}"),  # any depth
        ("\\boxed{}", None),
        ("no box, just 5", None),
    ],
)
def test_strict_math_extraction(text, expected):
    assert BOXED.extract_strict(text, answer_type="math") == expected
    assert extract_strict(text, BOXED.strict_pattern, answer_type="math") == expected


def test_strict_math_extraction_with_a_marker_pattern():
    assert FORMATS["think"].extract_strict("<answer> x = \\frac{1}{2} </answer>", answer_type="math") == "x = \\frac{1}{2}"
    assert FORMATS["gsm8k"].extract_strict("#### 1{,}000", answer_type="math") == "1{,}000"
    # the number type still normalises
    assert FORMATS["gsm8k"].extract_strict("#### 1{,}000") == "1000"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("first \\boxed{2} then \\boxed{\\frac{\\pi}{2}} and 7 more", "\\frac{\\pi}{2}"),
        ("no box: 3 then -3/4", "-3/4"),
        ("so x = 1{,}000", "1{,}000"),
        ("nothing here", None),
    ],
)
def test_flexible_math_extraction(text, expected):
    assert extract_flexible(text, answer_type="math") == expected
    assert BOXED.extract_flexible(text, answer_type="math") == expected


def test_text_type_extraction_and_comparison():
    assert extract_flexible("Thinking...\n\nEvelyn\n", answer_type="text") == "Evelyn"
    assert extract_flexible("so \\boxed{\\text{Evelyn}}", answer_type="text") == "\\text{Evelyn}"
    assert answers_match("\\text{Evelyn}", "evelyn", "text")
    assert answers_match(" EVELYN! ", "Evelyn.", "text")
    assert not answers_match("Bob", "Evelyn", "text")
    assert not answers_match("", "", "text")


def test_unknown_answer_type_is_a_setting_error():
    for call in (
        lambda: answers_match("1", "1", "integer"),
        lambda: extract_strict("#### 1", r"#### (\d+)", answer_type="latex"),
        lambda: extract_flexible("1", answer_type="Math"),
    ):
        with pytest.raises(MathrlError, match="answer_type"):
            call()


# --------------------------------------------------------------------------------------------------
# comparison


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("\\dfrac{1}{2}", "0.5", True),
        ("\\frac{1}{3}", "0.333333", True),
        ("1000001", "1000000", False),  # integers exactly, as in the number type
        ("\\frac{\\sqrt3}{2}", "\\dfrac{\\sqrt{3}}{2}", True),
        ("(-\\infty, 3]", "(-\\infty,3)", False),
        ("(-\\infty,3]", "\\left( -\\infty, 3 \\right]", True),
        ("(1,-2)", "(-2,1)", False),  # tuples are ordered
        ("\\{2,1\\}", "\\{1, 2\\}", True),  # sets are not
        ("\\text{(C)}", "C", True),
        ("\\textbf{(C)}", "(C)", True),
        ("(C)", "\\text{(D)}", False),
        ("C", "\\text{Evelyn}", False),
        ("30", "30^\\circ", True),
        ("30^{\\circ}", "60^\\circ", False),
        ("25", "25\\%", True),
        ("\\$18.90", "18.9", True),
        ("20\\text{ cm}^2", "20", True),
        ("150 \\text{ miles}", "150", True),
        ("14,\\!000", "14{,}000", True),
        ("\\pi", "3.14", False),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
        ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
        ("1011_{2}", "1011_2", True),
        ("11", "1011_2", False),  # a base-n answer must be written in that base
        ("y = 3 + 2x", "y=2x+3", True),
        ("y = 2x - 3", "y=2x+3", False),
        ("\\text{Evelyn}", "Evelyn", True),
        ("\\text{Bob}", "\\text{Evelyn}", False),
        ("\\text{odd}", "x+1", False),
        ("3-2i", "3 - 2i", True),
        ("x^2y^3", "y^3 x^2", True),  # the size guards leave symbolic powers alone
        ("e^{x^2}", "e^{x^{2}}", True),
        *NEEDS_VERIFY,
        ("", "1", False),
        ("1", "", False),
    ],
)
def test_math_answers(pred, gold, expected):
    assert answers_match(pred, gold, "math") is expected


def test_number_type_falls_back_to_math_for_latex_golds():
    assert answers_match("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")
    assert not answers_match("2", "\\sqrt{2}")


def _verdicts() -> list[bool]:
    return [answers_match(pred, gold, "math") for pred, gold, _ in NEEDS_VERIFY] + [
        answers_match(pred, gold) for pred, gold, _ in NEEDS_VERIFY
    ]


EXPECTED = [want for _, _, want in NEEDS_VERIFY] * 2


def test_math_verify_from_a_thread():
    # Math-Verify's own timeout uses signal.alarm: off the main thread it raised, and the grader
    # turned that into a silent False for every answer.
    out: list[list[bool]] = []
    worker = threading.Thread(target=lambda: out.append(_verdicts()))
    worker.start()
    worker.join(timeout=120)
    assert out == [EXPECTED]


def test_latex_gold_from_a_thread_with_the_default_answer_type():
    # the same fault through the number type's fallback for a LaTeX gold (the pre-answer_type API)
    out: list[bool] = []
    worker = threading.Thread(target=lambda: out.append(answers_match("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}")))
    worker.start()
    worker.join(timeout=120)
    assert out == [True]


def test_math_verify_from_a_thread_pool():
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: _verdicts(), range(4)))
    assert results == [EXPECTED] * 4


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_math_verify_in_a_daemonic_worker_process(method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    answers_match(*NEEDS_VERIFY[0][:2], "math")  # the parent's own worker exists before a fork
    with multiprocessing.get_context(method).Pool(1) as pool:  # pool workers are daemonic
        got = pool.starmap(answers_match, [(pred, gold, "math") for pred, gold, _ in NEEDS_VERIFY])
    assert got == [want for _, _, want in NEEDS_VERIFY]
    assert answers_match(*NEEDS_VERIFY[0][:2], "math")  # the parent's worker is still its own


def test_a_comparison_over_the_time_limit_is_false_and_the_worker_recovers(monkeypatch, caplog):
    pred, gold, _ = NEEDS_VERIFY[0]
    assert answers_match(pred, gold, "math")
    timeouts = grading_math.STATS["timeouts"]
    monkeypatch.setattr(grading_math, "TIMEOUT_S", 0.0)
    assert answers_match(pred, gold, "math") is False
    assert grading_math.STATS["timeouts"] == timeouts + 1
    assert "counted as not equal" in caplog.text
    monkeypatch.setattr(grading_math, "TIMEOUT_S", 3.0)
    assert answers_match(pred, gold, "math")  # a fresh worker


@pytest.mark.parametrize(
    "pred",
    [
        "10^{10^{10^{10}}}",
        "9^{9^{9}}",
        "9^9^9",
        "2^{99999999}",
        "(10^{5})!",
        "100000!",
        "3!!!",
        "9" * 5000,
        "\\frac{1}{2}" + "+x" * 5000,
        "\\sqrt{" * 3000 + "2" + "}" * 3000,
    ],
)
def test_pathological_math_answers_are_false_quickly(pred):
    start = time.perf_counter()
    assert answers_match(pred, "\\frac{\\sqrt{2}}{2}", "math") is False
    assert answers_match(pred, "7", "math") is False
    assert time.perf_counter() - start < 2.0


_LATEX = st.sampled_from(
    ["\\frac{", "\\sqrt{", "{", "}", "(", ")", "[", "]", "\\infty", "\\pi", "x", "y", "=", "^", "_", "2", "-", ",",
     "\\text{", "\\left(", "\\right)", "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\\\", "\\cup", "i", "!", "%", "$"]
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LATEX, max_size=12).map("".join), st.sampled_from(["\\frac{\\sqrt{2}}{2}", "(1,2)", "x+1", "5"]))
def test_math_comparison_never_raises(pred, gold):
    assert isinstance(answers_match(pred, gold, "math"), bool)
    assert isinstance(answers_match(gold, pred, "math"), bool)
