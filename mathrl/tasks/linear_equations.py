"""Synthetic systems of 2 or 3 linear equations with a guaranteed unique integer solution.

The solution vector is drawn first and the right-hand sides computed from it; the coefficient
matrix is redrawn until its determinant is non-zero, so the system has exactly that solution.
The worked solution eliminates with integer row operations, then back-substitutes. Each question
belongs to one split by a hash of its text (`base.generated_split`), whatever the config, seed, ranges
or size, so no train system of any config is a test system of any config.

Configs: "2", "3", "2-3" (default "2"). Options: seed (0), coef_range (9), sol_range (10),
test_size (500), train_size (5000).
"""

from __future__ import annotations

import random
from fractions import Fraction
from math import gcd
from typing import Callable

from mathrl.tasks.base import Sample, Task, generate_split, register

VARS = "xyz"


def determinant(m: list[list[int]]) -> int:
    if len(m) == 2:
        return m[0][0] * m[1][1] - m[0][1] * m[1][0]
    return sum((-1) ** j * m[0][j] * determinant([row[:j] + row[j + 1 :] for row in m[1:]]) for j in range(len(m)))


def equation_text(coefs: list[int], rhs: int) -> str:
    terms = []
    for c, v in zip(coefs, VARS):
        if c == 0:
            continue
        mag = "" if abs(c) == 1 else str(abs(c))
        if not terms:
            terms.append(f"{'-' if c < 0 else ''}{mag}{v}")
        else:
            terms.append(f"{'-' if c < 0 else '+'} {mag}{v}")
    return f"{' '.join(terms) or '0'} = {rhs}"


def eliminate(rows: list[list[int]]) -> list[str]:
    """Integer Gaussian elimination then back-substitution, as text lines. rows: [coefs..., rhs]."""
    n = len(rows)
    rows = [r[:] for r in rows]
    steps = []
    for k in range(n):
        pivot = next(i for i in range(k, n) if rows[i][k] != 0)
        if pivot != k:
            rows[k], rows[pivot] = rows[pivot], rows[k]
            steps.append(f"Swap equations {k + 1} and {pivot + 1}.")
        for i in range(k + 1, n):
            if rows[i][k] == 0:
                continue
            a, b = rows[k][k], rows[i][k]
            new = [a * ri - b * rk for ri, rk in zip(rows[i], rows[k])]
            g = gcd(*new) or 1
            new = [v // g for v in new]
            steps.append(
                f"Eliminate {VARS[k]} from equation {i + 1}: {a} * (equation {i + 1}) {'-' if b > 0 else '+'} {abs(b)} * (equation {k + 1})"
                f"{f', divided by {g}' if g != 1 else ''}: {equation_text(new[:n], new[n])}"
            )
            rows[i] = new
    values: dict[int, Fraction] = {}
    for k in reversed(range(n)):
        known = sum(Fraction(rows[k][j]) * values[j] for j in range(k + 1, n))
        values[k] = (Fraction(rows[k][n]) - known) / rows[k][k]
        shown = equation_text(rows[k][:n], rows[k][n])
        steps.append(f"From {shown}: {VARS[k]} = {values[k]}")
    steps.append(", ".join(f"{VARS[k]} = {values[k]}" for k in range(n)))
    return steps


def make_system(rng: random.Random, n: int, coef_range: int, sol_range: int) -> tuple[list[list[int]], list[int]]:
    solution = [rng.randint(-sol_range, sol_range) for _ in range(n)]
    while True:
        coefs = [[rng.randint(-coef_range, coef_range) for _ in range(n)] for _ in range(n)]
        if determinant(coefs) != 0:
            break
    rows = [row + [sum(c * s for c, s in zip(row, solution))] for row in coefs]
    return rows, solution


@register("linear_equations")
class LinearEquations(Task):
    configs = ("2", "3", "2-3")
    splits = ("train", "validation", "test")

    def _generate(self, split: str, n: int) -> list[Sample]:
        """The first `n` systems of the seeded stream whose question belongs to `split` (`generated_split`)."""
        seed = int(self.options.get("seed", 0))
        coef_range = int(self.options.get("coef_range", 9))
        sol_range = int(self.options.get("sol_range", 10))
        sizes = [2, 3] if self.config == "2-3" else [int(self.config)]
        rng = random.Random(f"linear-{split}-{seed}-{coef_range}-{sol_range}")

        def draw(i: int) -> tuple[str, Callable[[], Sample]]:
            size = sizes[i % len(sizes)]
            rows, solution = make_system(rng, size, coef_range, sol_range)
            target = rng.randrange(size)
            system = "\n".join(equation_text(r[:size], r[size]) for r in rows)
            question = f"Solve the system of equations:\n{system}\nWhat is the value of {VARS[target]}?"
            return question, lambda: Sample(id=f"lineq-{split}-{seed}-{i}", question=question,
                                            answer=str(solution[target]), solution="\n".join(eliminate(rows)),
                                            meta={"size": size, "solution": solution, "target": VARS[target]})

        return generate_split(split, n, draw, f"linear_equations ({self.config})")

    def load_split(self, split: str) -> list[Sample]:
        size = {"test": ("test_size", 500), "validation": ("validation_size", 500)}.get(split, ("train_size", 5000))
        return self._generate(split, int(self.options.get(*size)))
