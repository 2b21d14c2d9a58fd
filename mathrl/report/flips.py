"""Error analysis: the questions on which the verdicts of a chain of models flip, with each model's
completion, as Markdown (`mathrl report RUN --flips base,sft,ppo` → flips.md).

The models are named by their evaluation label or model label (as in comparison.csv); all must be
evaluations of one task. A question is shown when the chain's verdicts are not all equal; the first
`n` such questions in test order are taken (deterministic, not cherry-picked), followed by the counts
of every verdict pattern, so the shown examples can be read against how common each flip is.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from mathrl.errors import MathrlError


def _pick(evals: list[Any], name: str) -> Any:
    exact = [ev for ev in evals if ev.label == name]
    by_model = [ev for ev in evals if ev.model == name]
    found = exact or by_model
    if len(found) != 1:
        names = sorted({ev.label for ev in evals})
        why = "no evaluation" if not found else f"{len(found)} evaluations ({', '.join(ev.label for ev in found)})"
        raise MathrlError(f"--flips: {why} named {name!r}; use an eval label: {', '.join(names)}")
    return found[0]


def flips(evals: list[Any], names: list[str], metric: str = "strict", n: int = 5) -> dict[str, Any]:
    chain = [_pick(evals, name) for name in names]
    if len({ev.task for ev in chain}) > 1:
        raise MathrlError(f"--flips: the models were evaluated on different tasks ({', '.join(ev.task for ev in chain)})")
    shared = [q for q in chain[0].rows if all(q in ev.rows for ev in chain[1:])]
    key = f"correct_{metric}"
    patterns: Counter[str] = Counter()
    shown = []
    for q in shared:
        verdicts = [bool(ev.rows[q].get(key)) for ev in chain]
        pattern = "".join("✓" if v else "✗" for v in verdicts)
        patterns[pattern] += 1
        if len(set(verdicts)) > 1 and len(shown) < n:
            shown.append((q, verdicts))
    return {"chain": chain, "shared": len(shared), "patterns": dict(patterns), "shown": shown, "metric": metric}


def to_markdown(res: dict[str, Any]) -> str:
    chain, metric = res["chain"], res["metric"]
    lines = [f"# Flipped verdicts ({metric}): " + " → ".join(ev.label for ev in chain), "",
             f"{res['shared']} shared questions. Verdict patterns ({' / '.join(ev.model for ev in chain)}):", ""]
    lines += [f"- {p}: {c}" for p, c in sorted(res["patterns"].items(), key=lambda kv: -kv[1])]
    for q, verdicts in res["shown"]:
        first = chain[0].rows[q]
        lines += ["", f"## {q} (gold {first.get('gold')})", "", "> " + str(first.get("question", "")).replace("\n", "\n> ")]
        for ev, ok in zip(chain, verdicts):
            row = ev.rows[q]
            lines += ["", f"**{ev.model}** — {'right' if ok else 'wrong'} (strict: {row.get('pred_strict')!s}, "
                          f"flexible: {row.get('pred_flexible')!s})", "", "```", str(row.get("completion", "")).strip(), "```"]
    return "\n".join(lines) + "\n"
