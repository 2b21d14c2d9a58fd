"""The report as Markdown (report.md): the comparison table, the one-factor paired tests and, for an
experiment with seeds, the spread across seeds and the tests over questions — ready to paste into notes, a
README or docs/evidence.md. The numbers are report.json's; nothing is computed here."""

from __future__ import annotations

from typing import Any


def _pct(x: Any) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def _pts(x: float) -> str:
    return f"{x * 100:+.1f}"


def comparison_table(rows: list[dict[str, Any]], metric: str) -> list[str]:
    other = "flexible" if metric == "strict" else "strict"
    out = [f"| eval | method | task | setting | n | {metric} [95% CI] | {other} | thinking | answer | mean tokens |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f"[{r[f'ci_low_{metric}'] * 100:.1f}, {r[f'ci_high_{metric}'] * 100:.1f}]"
        tokens = r.get("mean_tokens")
        out.append(f"| {r['label']} | {r['method']} | {r['task']} | {r['setting']} | {r['n']} | "
                   f"{_pct(r[f'accuracy_{metric}'])} {ci} | {_pct(r[f'accuracy_{other}'])} | "
                   f"{_pct(r.get('thinking_proportion'))} | {_pct(r.get('answer_proportion'))} | "
                   f"{'–' if tokens is None else f'{tokens:.0f}'} |")
    return out


def paired_lines(paired: list[dict[str, Any]], metric: str) -> list[str]:
    from mathrl.report.stats import one_factor_pairs

    return [f"- {p['eval_b']} vs {p['eval_a']} ({p['task']}, {p['n_shared']} questions): "
            f"**{_pts(p['diff_b_minus_a'])} points** [{_pts(p['diff_ci_low'])}, {_pts(p['diff_ci_high'])}], "
            f"{p['a_right_b_wrong']} vs {p['a_wrong_b_right']} flips, McNemar p = {p['p_value']:.2g}"
            for p in one_factor_pairs(paired)]


def seed_lines(seeds: list[dict[str, Any]], pooled: list[dict[str, Any]]) -> list[str]:
    if not seeds:
        return []
    out = ["", "Across training seeds (mean, sample sd, range; per seed):", "",
           "| model | task | setting | seeds | mean strict | sd | range | per seed |", "|---|---|---|---|---|---|---|---|"]
    for r in seeds:
        sd = "–" if r["sd_strict"] is None else f"{r['sd_strict'] * 100:.1f} pts"
        out.append(f"| {r['model']} | {r['task']} | {r['setting']} | {', '.join(map(str, r['seeds']))} | "
                   f"{_pct(r['mean_strict'])} | {sd} | {_pct(r['min_strict'])}–{_pct(r['max_strict'])} | "
                   f"{' / '.join(_pct(a) for a in r['per_seed_strict'])} |")
    if pooled:
        out += ["", "Over seed-matched pairs, the question as the unit (per-question mean difference across seeds, "
                "exact sign-flip test over questions; normal interval over questions):", ""]
        for p in pooled:
            sd = "–" if p["sd_diff"] is None else f"{p['sd_diff'] * 100:.1f}"
            out.append(f"- {p['b']} vs {p['a']} ({p['task']}; pairs {', '.join(p['seed_pairs'])}; {p['n_questions']} "
                       f"questions): mean **{_pts(p['mean_diff'])} points** [{_pts(p['diff_ci_low'])}, "
                       f"{_pts(p['diff_ci_high'])}] (sd over seed pairs {sd}), {p['questions_a_better']} vs "
                       f"{p['questions_b_better']} questions, {p['test']} p = {p['p_value']:.2g}")
    return out


def render(data: dict[str, Any]) -> str:
    metric = data["metric"]
    lines = [f"Accuracy ({metric} primary; intervals: {', '.join(sorted({str(r.get('interval')) for r in data['comparison']}))}):", ""]
    lines += comparison_table(data["comparison"], metric)
    pairs = paired_lines(data["paired"], metric)
    if pairs:
        lines += ["", f"Paired on the same questions ({metric}; paired bootstrap interval of the difference):", ""] + pairs
    lines += seed_lines(data.get("seeds", []), data.get("pooled", []))
    from mathrl.report.sweeps import markdown as sweep_lines

    lines += sweep_lines(data.get("sweeps", []))
    return "\n".join(lines) + "\n"
