"""The test over questions for replicated models (stats.question_sign_flip, report_seeds.pooled_rows).

Regression for the pooled seed test: summing discordant counts over seed pairs counted every question
once per seed (an unreplicated base once per replica), so identical replicas manufactured significance
and the false-positive rate under no true difference was about 0.15 at alpha = 0.05."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from mathrl.report.seeds import pooled_rows
from mathrl.report.stats import mcnemar_p, question_sign_flip, sign_flip_p


@pytest.mark.parametrize("b, c", [(0, 0), (0, 12), (34, 51), (5, 5), (3, 9), (100, 130)])
def test_one_replica_each_is_mcnemar(b, c):
    a = [[True]] * b + [[False]] * c + [[True]] * 7 + [[False]] * 4
    v = [[False]] * b + [[True]] * c + [[True]] * 7 + [[False]] * 4
    res = question_sign_flip(a, v)
    assert res["p_value"] == pytest.approx(mcnemar_p(b, c), rel=1e-12)
    assert (res["a_better"], res["b_better"], res["n_questions"]) == (b, c, b + c + 11)
    assert res["mean_diff"] == pytest.approx((c - b) / (b + c + 11))


def test_sign_flip_p_is_exact_on_a_small_case():
    # magnitudes 1, 2, 3: the 8 sign patterns give sums +-6, +-4, +-2, 0, 0; observed -1 + 2 + 3 = 4, |sum| >= 4 in 4
    assert sign_flip_p([-1, 2, 3, 0]) == pytest.approx(4 / 8) and sign_flip_p([1, 2, 3]) == pytest.approx(2 / 8)
    assert sign_flip_p([3, 3, 3]) == pytest.approx(2 / 8) and sign_flip_p([]) == 1.0 and sign_flip_p([2, -2]) == 1.0
    values = [5, -2, 3, 3, 1, -1, 4, 2]
    signs = np.array(np.meshgrid(*[[-1, 1]] * len(values))).reshape(len(values), -1).T
    brute = float(np.mean(np.abs(signs @ np.abs(values)) >= abs(sum(values))))
    assert sign_flip_p(values) == pytest.approx(brute)


def test_identical_replicas_give_the_one_replica_p_value():
    """Issue: one pair 34 vs 51, p = 0.082; the same replica three times, pooled 102 vs 153, p = 0.0017."""
    base = [True] * 34 + [False] * 51 + [True] * 50 + [False] * 65
    replica = [False] * 34 + [True] * 51 + [True] * 50 + [False] * 65
    one = question_sign_flip([[x] for x in base], [[y] for y in replica])
    three = question_sign_flip([[x] for x in base], [[y] * 3 for y in replica])
    assert one["p_value"] == pytest.approx(0.082, abs=5e-4) and three["p_value"] == pytest.approx(one["p_value"])
    assert mcnemar_p(102, 153) < 0.002  # what the pooled test said


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="differ in length"):
        question_sign_flip([[True]], [])
    with pytest.raises(ValueError, match="at least one verdict"):
        question_sign_flip([[True]], [[]])


def _ev(model, verdicts, seed=None, replica_of=None):
    rows = {f"q{i}": {"id": f"q{i}", "sample_idx": 0, "correct_strict": bool(v)} for i, v in enumerate(verdicts)}
    return SimpleNamespace(model=model, replica_of=replica_of, seed=seed, task="t", setting="s", rows=rows)


def test_false_positive_rate_under_no_difference_is_nominal():
    """The issue's null: per-question difficulty ~ Beta(0.5, 0.5), the base drawn once, three replicas drawn
    independently from the same per-question probabilities; 200 questions. Through report_seeds.pooled_rows,
    so the report's own test is what is checked (the old pooled McNemar: about 0.15)."""
    n_exp, n_q, n_seeds, alpha = 400, 200, 3, 0.05
    rng = np.random.default_rng(20240611)
    p = rng.beta(0.5, 0.5, size=(n_exp, n_q))
    base = rng.random((n_exp, n_q)) < p
    replicas = rng.random((n_exp, n_seeds, n_q)) < p[:, None, :]
    rejections = 0
    for e in range(n_exp):
        evals = [_ev("base", base[e])] + [_ev(f"sft-s{s}", replicas[e, s], s, "sft") for s in range(n_seeds)]
        (row,) = pooled_rows(evals, "strict")
        rejections += row["p_value"] < alpha
    rate, se = rejections / n_exp, math.sqrt(alpha * (1 - alpha) / n_exp)
    assert rate <= alpha + 3 * se, f"false-positive rate {rate:.3f} at alpha {alpha} (bound {alpha + 3 * se:.3f})"


def test_a_real_difference_is_still_found():
    rng = np.random.default_rng(7)
    p = rng.beta(0.5, 0.5, size=300)
    base = rng.random(300) < p
    replicas = rng.random((3, 300)) < np.clip(p + 0.15, 0, 1)
    evals = [_ev("base", base)] + [_ev(f"sft-s{s}", replicas[s], s, "sft") for s in range(3)]
    (row,) = pooled_rows(evals, "strict")
    assert row["p_value"] < 0.01 and row["diff_ci_low"] > 0 and row["n_b"] == 3
