"""The report's Sweep section: every point of every sweep (validation accuracy with its interval, its paired
difference from the model the points start from — gained vs lost questions, exact McNemar p, uncorrected for
the number of points — and cost), the rule, the winner and why — from `runs/<experiment>/sweeps/<stage>.json` (mathrl.experiments.sweep).
Validation numbers chose the settings; they are shown here, never in the comparison of test results."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

COLUMNS = ("point", "settings", "validation n", "validation accuracy [95% CI]", "vs the start (paired)", "train s",
           "steps", "s/step", "")


def load_decisions(run_dir: Path) -> list[dict[str, Any]]:
    """Every sweep decision under an experiment directory, by stage name."""
    out = []
    for path in sorted((Path(run_dir) / "sweeps").glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and "winner" in rec and "points" in rec:
            out.append(rec | {"experiment": Path(run_dir).name})
    return out


def _pct(x: Any) -> str:
    return "–" if not isinstance(x, (int, float)) else f"{x * 100:.1f}%"


def _accuracy(v: dict[str, Any]) -> str:
    cis = [c for c in v.get("ci95") or [] if c]
    ci = (f" [{cis[0][0] * 100:.1f}, {cis[0][1] * 100:.1f}]" if len(cis) == 1 else
          f" (seeds: {' / '.join(_pct(a) for a in v['per_seed'])})" if len(v.get("per_seed", [])) > 1 else "")
    return _pct(v["accuracy"]) + ci


def _versus(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    return (f"{d['diff'] * 100:+.1f} [{d['ci95'][0] * 100:+.1f}, {d['ci95'][1] * 100:+.1f}], "
            f"{d['gained']} vs {d['lost']}, p = {d['p_value']:.2g}")


def rows(decision: dict[str, Any]) -> list[list[str]]:
    """One row of text cells per point (the winner marked), after the model they start from when recorded."""
    out = []
    if decision.get("start"):
        st = decision["start"]
        out.append([f"(start: {st['model']})", "the model every point trains from", str(st["validation"].get("n", "")),
                    _accuracy(st["validation"]), "", "", "", "", "reference"])
    for p in decision["points"]:
        v = p["validation"]
        settings = ", ".join(f"{k}={val}" for k, val in p["settings"].items()) or "(the stage's own)"
        out.append([p["point"], settings, str(v.get("n", "")), _accuracy(v), _versus(p.get("vs_start")),
                    f"{p['train_seconds']:g}", str(p["steps"]),
                    "–" if p["seconds_per_step"] is None else f"{p['seconds_per_step']:g}",
                    "winner" if p["point"] == decision["winner"] else ""])
    return out


def heading(decision: dict[str, Any]) -> str:
    r = decision["rule"]
    return (f"sweep of {decision.get('experiment', '')}/{decision['stage']} — rule: highest validation {r['metric']} "
            f"accuracy; a point must beat a preferred one by ≥ {r['min_improvement'] * 100:g} points; prefer {r['prefer']}")


def markdown(decisions: list[dict[str, Any]]) -> list[str]:
    out = []
    for d in decisions:
        out += ["", f"Sweep ({heading(d)}):", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(r) + " |" for r in rows(d)]
        out += ["", f"Winner **{d['winner']}**: {d['why']}. Only the winner is evaluated on test."]
    return out


def html(decisions: list[dict[str, Any]]) -> str:
    if not decisions:
        return ""
    parts = ["<h2>Sweeps (chosen on validation)</h2><p>Each point trained with the stage's budget and evaluated "
             "on the task's validation split; the winner alone was then evaluated on test (the tables above).</p>"]
    for d in decisions:
        head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows(d))
        parts.append(f"<h3>{escape(heading(d))}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                     f"<p>Winner <b>{escape(d['winner'])}</b>: {escape(d['why'])}</p>")
    return "".join(parts)
