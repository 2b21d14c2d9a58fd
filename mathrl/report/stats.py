"""Statistics for comparing evaluations: bootstrap intervals, McNemar's exact test, pairing by question,
and an exact sign-flip test over questions for replicated (several-seed) models.

Accuracy on a fixed test set is a mean of 0/1 verdicts, so two models evaluated on the same questions
are best compared question by question (paired): only the questions where they disagree carry
information about which is better. No scipy: the binomial tail is exact with `math.comb`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np


def bootstrap_ci(correct: Sequence[bool], n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy (mean of `correct`).

    Resampling n verdicts with replacement and counting the right ones is exactly a
    Binomial(n, k/n) draw, so we draw those counts directly: same distribution as resampling
    indices, but O(resamples) instead of O(resamples * n) time and memory."""
    n = len(correct)
    if n == 0:
        return (0.0, 0.0)
    _check(n_resamples, confidence)
    rng = np.random.default_rng(seed)
    means = rng.binomial(n, sum(map(bool, correct)) / n, size=n_resamples) / n
    return _percentiles(means, confidence)


def bootstrap_diff_ci(a: Sequence[bool], b: Sequence[bool], n_resamples: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Paired percentile bootstrap interval of accuracy(b) - accuracy(a) over the same questions.

    Questions are resampled jointly; the difference only depends on how many resampled questions
    fall in the two discordant cells (a right b wrong, a wrong b right), a multinomial draw."""
    if len(a) != len(b):
        raise ValueError(f"paired verdicts differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return (0.0, 0.0)
    _check(n_resamples, confidence)
    only_a, only_b = discordant_counts(a, b)
    rng = np.random.default_rng(seed)
    cells = rng.multinomial(n, [only_a / n, only_b / n, (n - only_a - only_b) / n], size=n_resamples)
    return _percentiles((cells[:, 1] - cells[:, 0]) / n, confidence)


def _check(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"bootstrap needs at least one resample, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(low), float(high))


def discordant_counts(a: Iterable[bool], b: Iterable[bool]) -> tuple[int, int]:
    """(b, c) in McNemar's notation: questions A got right and B wrong, and the reverse."""
    only_a = only_b = 0
    for x, y in zip(a, b, strict=True):
        only_a += bool(x) and not y
        only_b += bool(y) and not x
    return only_a, only_b


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under 'no difference' each discordant question is a fair
    coin flip, so p = 2 * P(Binomial(b + c, 1/2) <= min(b, c)), capped at 1."""
    if b < 0 or c < 0:
        raise ValueError(f"counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    # integer true division is exact-then-rounded in Python, even for 2**n far beyond float range
    return min(1.0, 2 * tail / 2**n)


def sign_flip_p(values: Sequence[int]) -> float:
    """Two-sided exact sign-flip p-value of integers v_q: P(|sum of s_q * |v_q|| >= |sum of v_q|) with
    independent fair signs s_q (H0: each v_q is symmetric about 0). Exact at any size: the |v_q| that
    are equal to k contribute k * (2 * Binomial(c_k, 1/2) - c_k), and the few such lattices are convolved.
    On values in {-1, 0, 1} it is McNemar's exact test (c_1 = b + c)."""
    mags = np.abs(np.asarray(values, dtype=np.int64))
    observed = abs(int(np.sum(values, dtype=np.int64)))
    if observed == 0:
        return 1.0
    dist = np.ones(1)  # dist[i] = P(sum = i - offset); offset grows with each lattice
    for k, c in zip(*np.unique(mags[mags > 0], return_counts=True)):
        k, c = int(k), int(c)
        lattice = np.zeros(2 * k * c + 1)
        lattice[::2 * k] = [math.comb(c, i) / 2**c for i in range(c + 1)]  # exact-then-rounded, as mcnemar_p
        dist = np.convolve(dist, lattice)
    offset = (len(dist) - 1) // 2
    sums = np.abs(np.arange(len(dist)) - offset)
    return min(1.0, float(dist[sums >= observed].sum()))


def question_sign_flip(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], z: float = 1.96) -> dict[str, Any]:
    """B vs A over questions when either or both are replicated (several training seeds).

    a[q] / b[q]: the verdicts on question q of each replica of A / B (an unreplicated model: one). The
    unit is the question: d_q = mean over B's replicas - mean over A's replicas, and H0 is that each d_q
    is symmetric about 0, tested exactly with `sign_flip_p` (two-sided) on the numerators of d_q over
    a common denominator. The interval of mean(d_q) is the normal one over questions (cluster-robust:
    a question's replicas are not independent draws). One replica each: d_q is in {-1, 0, 1} and the
    test is McNemar's exact test. Simplified, and stated: the test is over question sampling given the
    replicas that were trained (training randomness is what the spread across seeds describes, not
    this p-value); averaging the replicas removes noise from d_q, and repeating a replica (or pairing
    an unreplicated model with every replica) adds no evidence, because a question counts once."""
    if len(a) != len(b):
        raise ValueError(f"per-question verdicts differ in length: {len(a)} vs {len(b)}")
    if any(not len(x) for x in [*a, *b]):
        raise ValueError("every question needs at least one verdict from each side")
    n = len(a)
    if n == 0:
        return {"n_questions": 0, "mean_diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "a_better": 0, "b_better": 0,
                "p_value": 1.0}
    denom = math.lcm(*{len(x) for x in [*a, *b]})
    num = np.array([sum(map(bool, y)) * (denom // len(y)) - sum(map(bool, x)) * (denom // len(x))
                    for x, y in zip(a, b)], dtype=np.int64)
    d = num / denom
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"n_questions": n, "mean_diff": mean, "ci_low": mean - z * se, "ci_high": mean + z * se,
            "a_better": int((num < 0).sum()), "b_better": int((num > 0).sum()), "p_value": sign_flip_p(num)}


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test on paired verdicts: p-value and the discordant counts b, c."""
    only_a, only_b = discordant_counts(a, b)
    return {"b": only_a, "c": only_b, "p_value": mcnemar_p(only_a, only_b)}


def first_sample_by_id(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One row per question: sample_idx 0 when present, else the first row seen for that id.
    Keeps the order in which questions first appear."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        qid = str(r["id"])
        if qid not in out or (r.get("sample_idx", 0) == 0 and out[qid].get("sample_idx", 0) != 0):
            out[qid] = r
    return out


def pair_verdicts(rows_a: Iterable[dict[str, Any]], rows_b: Iterable[dict[str, Any]],
                  metric: str = "strict") -> tuple[list[str], list[bool], list[bool]]:
    """Align two result sets by question id over the ids both hold (in A's order):
    (ids, A's verdicts, B's verdicts) for `correct_<metric>`."""
    key = f"correct_{metric}"
    a, b = first_sample_by_id(rows_a), first_sample_by_id(rows_b)
    ids = [qid for qid in a if qid in b]
    return ids, [bool(a[q].get(key)) for q in ids], [bool(b[q].get(key)) for q in ids]


def paired_comparison(rows_a: Iterable[dict[str, Any]], rows_b: Iterable[dict[str, Any]], metric: str = "strict",
                      n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Everything the report says about A vs B on their shared questions."""
    ids, va, vb = pair_verdicts(rows_a, rows_b, metric)
    n = len(ids)
    test = mcnemar_exact(va, vb)
    low, high = bootstrap_diff_ci(va, vb, n_resamples, seed=seed)
    return {"n_shared": n, "metric": metric,
            "accuracy_a": round(sum(va) / n, 4) if n else 0.0, "accuracy_b": round(sum(vb) / n, 4) if n else 0.0,
            "diff_b_minus_a": round((sum(vb) - sum(va)) / n, 4) if n else 0.0,
            "diff_ci_low": round(low, 4), "diff_ci_high": round(high, 4), **test}


def one_factor_pairs(paired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs that differ in the model only or the eval setting only (both at once confounds the two
    effects); all pairs when no pair is that simple."""
    return [r for r in paired if r.get("varies") != "model+setting"] or paired
