"""MATH-style grading: reference solutions graded against their own answer, and against another's.

For each item of a MATH-500-style JSONL (`problem`, `solution` ending in \\boxed{...}, `answer`):
- self: the solution graded against its own `answer` (should be 100%);
- other: the solution graded against the next item's `answer` (a cyclic shift; pairs whose answers
  are the same text are left out), i.e. the false-positive rate (should be 0%).

Graders compared:
- mathrl math: `FORMATS["boxed"].extract_strict(solution, answer_type="math")` then
  `answers_match(pred, answer, "math")`;
- mathrl number: the same with the default answer_type, what `mathrl grade --format boxed` does;
- Math-Verify alone: `verify(parse("$" + answer + "$"), parse(solution))` on the raw texts, with its
  default (signal-based) timeouts, in the main thread.

ms/item is the median over items of the self comparison (extraction included); mathrl's first call
also starts its Math-Verify worker process, which the median leaves out.

    python benchmarks/math_grading.py                       # the test fixture (not real MATH-500)
    python benchmarks/math_grading.py --data math500.jsonl  # e.g. HuggingFaceH4/MATH-500 test.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import machine

from mathrl.prompts.formats import FORMATS
from mathrl.grading import answers_match

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "math500_sample.jsonl"


def mathrl_grader(answer_type: str) -> Callable[[str, str], bool]:
    def grade(solution: str, gold: str) -> bool:
        return answers_match(FORMATS["boxed"].extract_strict(solution, answer_type=answer_type), gold, answer_type)

    return grade


def math_verify_alone(solution: str, gold: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(f"${gold}$"), parse(solution)))


def run(grade: Callable[[str, str], bool], rows: list[dict]) -> dict:
    times, right = [], 0
    for row in rows:
        start = time.perf_counter()
        right += bool(grade(row["solution"], row["answer"]))
        times.append(time.perf_counter() - start)
    others = [(row, rows[(i + 1) % len(rows)]["answer"]) for i, row in enumerate(rows)]
    others = [(row, gold) for row, gold in others if "".join(gold.split()) != "".join(row["answer"].split())]
    false_pos = sum(bool(grade(row["solution"], gold)) for row, gold in others)
    return {
        "self_correct": right / len(rows),
        "other_false_positive": false_pos / len(others) if others else 0.0,
        "n": len(rows),
        "n_other": len(others),
        "median_ms": 1000 * statistics.median(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MATH-style JSONL (default: the test fixture)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    print(f"data: {args.data} ({len(rows)} items)   cpu: {machine.cpu_name()}   load: {os.getloadavg()}")
    graders = {
        "mathrl, answer_type=math": mathrl_grader("math"),
        "mathrl, answer_type=number (default)": mathrl_grader("number"),
        "Math-Verify alone": math_verify_alone,
    }
    results = {}
    print(f"| grader | self: correct | other: false positives | median ms/item |\n|---|---:|---:|---:|")
    for name, grade in graders.items():
        r = results[name] = run(grade, rows)
        print(f"| {name} | {r['self_correct']:.1%} ({r['n']}) | {r['other_false_positive']:.1%} ({r['n_other']}) | {r['median_ms']:.2f} |")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps({"data": str(args.data), "results": results}, indent=2))


if __name__ == "__main__":
    main()
