"""The report on the console (rich): the comparison table, the one-factor paired tests, the seeds'
spread and tests over questions, and where report.html is — what `mathrl report` and `mathrl run` print."""

from __future__ import annotations

from typing import Any


def print_report(res: dict[str, Any], max_pairs: int = 20) -> None:
    """What `mathrl report` (and `mathrl run` after it) show: the table, the paired tests, the path."""
    from rich.console import Console

    if res["comparison"]:
        print_comparison(res["comparison"], res["metric"])
    from mathrl.report.stats import one_factor_pairs

    pairs = one_factor_pairs(res["paired"])
    console = Console(highlight=False)
    for p in pairs[:max_pairs]:
        console.print(f"{p['eval_b']} vs {p['eval_a']} ({p['n_shared']} questions, {res['metric']}): "
                      f"{p['diff_b_minus_a'] * 100:+.1f} points [{p['diff_ci_low'] * 100:+.1f}, {p['diff_ci_high'] * 100:+.1f}], "
                      f"only A right {p['a_right_b_wrong']}, only B right {p['a_wrong_b_right']}, "
                      f"McNemar p = {p['p_value']:.3g}")
    print_seeds(res, console, max_pairs)
    if len(res["paired"]) > min(len(pairs), max_pairs):
        console.print(f"(all {len(res['paired'])} paired comparisons: {res['files']['paired.csv']})")
    console.print(f"report: {res['html']}")


def print_seeds(res: dict[str, Any], console: Any, max_pairs: int = 20) -> None:
    """Experiments with a seeds axis: each replicated number's spread, then the tests over questions."""
    for r in res.get("seeds", []):
        console.print(f"{r['model']} · {r['setting']} over seeds {r['seeds']}: {r['mean_strict'] * 100:.1f}% mean strict, "
                      f"sd {(r['sd_strict'] or 0) * 100:.1f} points, range [{r['min_strict'] * 100:.1f}, {r['max_strict'] * 100:.1f}]")
    for p in res.get("pooled", [])[:max_pairs]:
        console.print(f"{p['b']} vs {p['a']} over seed pairs {', '.join(p['seed_pairs'])} ({p['n_questions']} questions): "
                      f"{p['mean_diff'] * 100:+.1f} points mean [{p['diff_ci_low'] * 100:+.1f}, {p['diff_ci_high'] * 100:+.1f}] "
                      f"(sd over seed pairs {(p['sd_diff'] or 0) * 100:.1f}), questions A better {p['questions_a_better']}, "
                      f"B better {p['questions_b_better']}, {p['test']} p = {p['p_value']:.3g}")


def print_comparison(comparison: list[dict[str, Any]], metric: str = "strict", title: str = "Accuracy") -> None:
    """The comparison table on the console (rich), primary metric first. Names fold rather than
    being cut with '…' on a narrow terminal: a label is what you type next."""
    from rich.console import Console
    from rich.table import Table

    tasks = list(dict.fromkeys(r["task"] for r in comparison))
    one_task = len(tasks) == 1
    names_ = sorted({str(r.get("interval")) for r in comparison})
    table = Table(title=f"{title}{' on ' + tasks[0] if one_task else ''} (95% {', '.join(names_)} intervals)")
    other = "flexible" if metric == "strict" else "strict"
    names = ("eval", "model", "method") + (() if one_task else ("task",)) + ("setting",)
    for col in names:
        table.add_column(col, overflow="fold")
    for col in ("n", metric, other):
        table.add_column(col, justify="right")

    def acc(r: dict[str, Any], m: str) -> str:
        return f"{r[f'accuracy_{m}']:.1%} [{r[f'ci_low_{m}']:.1%}, {r[f'ci_high_{m}']:.1%}]"

    for r in comparison:
        cells = [r["label"], str(r["model"]), str(r["method"])] + ([] if one_task else [r["task"]])
        table.add_row(*cells, str(r["setting"]), str(r["n"]), acc(r, metric), acc(r, other))
    Console().print(table)
