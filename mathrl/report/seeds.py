"""Seeds as an axis: the spread of replicated numbers across training seeds, and paired tests over questions.

An experiment with `seeds: [0, 1, 2]` trains every stage once per seed (`sft-s0`, `sft-s1`, ...); its
manifest names, for each evaluation, the stage it replicates (`replica_of`) and the seed. Here:

- `seed_rows`: per (replicated model, task, eval setting), the mean accuracy across seeds, the sample
  standard deviation (n - 1), min and max, and each seed's accuracy — beside the per-run intervals
  of comparison.csv, which only cover question sampling, not training randomness.
- `pooled_rows`: A vs B on the same task, differing in one factor (the model or the eval setting),
  with seeds matched (replica s of A against replica s of B; an unreplicated model, such as the
  base, against every replica). The unit of inference is the question, not the (question, seed)
  pair: per question, d_q = (B's mean verdict over its replicas) - (A's), tested with an exact
  two-sided sign-flip test over the questions (`stats.question_sign_flip`; with one replica each,
  McNemar's exact test), with a normal interval of mean(d_q) over questions. Summing discordant
  counts over seed pairs (what this did before) counts a question once per seed — an unreplicated
  model's verdicts once per replica — and was anti-conservative (3 identical replicas: p 0.082 ->
  0.0017). The per-seed differences (their sd, also given) say how much the result varies with
  training randomness, which the p-value, given the replicas trained, does not cover.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from mathrl.report import stats

SEED_COLUMNS = ("model", "method", "task", "setting", "n_seeds", "seeds", "mean_strict", "sd_strict", "min_strict",
                "max_strict", "mean_flexible", "sd_flexible", "per_seed_strict")
POOLED_COLUMNS = ("task", "a", "b", "varies", "metric", "seed_pairs", "n_questions", "n_a", "n_b", "mean_a", "mean_b",
                  "mean_diff", "diff_ci_low", "diff_ci_high", "sd_diff", "questions_a_better", "questions_b_better",
                  "test", "p_value")
TEST_NAME = "sign-flip over questions"


def _group(ev: Any) -> str:
    return ev.replica_of or ev.model


def seed_rows(comparison: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread across seeds of every replicated (model, task, setting)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in comparison:
        if r.get("seed") is not None:
            groups[(r["group"], r["task"], r["setting"])].append(r)
    out = []
    for (group, task, setting), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["seed"])
        row: dict[str, Any] = {"model": group, "method": rows[0]["method"], "task": task, "setting": setting,
                               "n_seeds": len(rows), "seeds": [r["seed"] for r in rows]}
        for metric in ("strict", "flexible"):
            acc = [r[f"accuracy_{metric}"] for r in rows]
            row |= {f"mean_{metric}": round(statistics.fmean(acc), 4),
                    f"sd_{metric}": round(statistics.stdev(acc), 4) if len(acc) > 1 else None}
            if metric == "strict":
                row |= {"min_strict": min(acc), "max_strict": max(acc), "per_seed_strict": acc}
        out.append(row)
    return out


def pooled_rows(evals: list[Any], metric: str) -> list[dict[str, Any]]:
    """Seed-matched A vs B, tested over questions, for every one-factor pair of groups where a group is replicated."""
    by_group: dict[tuple[str, str, str], dict[int | None, Any]] = defaultdict(dict)
    for ev in evals:
        by_group[(_group(ev), ev.task, ev.setting)][ev.seed] = ev
    keys = list(by_group)
    out = []
    for i, ka in enumerate(keys):
        for kb in keys[i + 1:]:
            (ga, task, sa), (gb, task_b, sb) = ka, kb
            if task != task_b or (ga != gb) == (sa != sb):  # same task, exactly one factor differs
                continue
            a, b = by_group[ka], by_group[kb]
            if set(a) == {None} and set(b) == {None}:
                continue  # neither replicated: paired.csv has it
            pairs = _match(a, b)
            row = _pool(pairs, metric) if pairs else None
            if row is None:
                continue
            out.append({"task": task, "a": f"{ga} · {sa}", "b": f"{gb} · {sb}",
                        "varies": "model" if ga != gb else "setting", "metric": metric,
                        "seed_pairs": [f"{ea.seed if ea.seed is not None else '-'}/{eb.seed if eb.seed is not None else '-'}"
                                       for ea, eb in pairs]} | row)
    return out


def _pool(pairs: list[tuple[Any, Any]], metric: str) -> dict[str, Any] | None:
    """The pooled numbers of seed pairs, over the questions every evaluation of both sides holds: each
    side's distinct evaluations give per-question verdict lists (an unreplicated model: one verdict)."""
    side_a = list({id(ea): ea for ea, _ in pairs}.values())
    side_b = list({id(eb): eb for _, eb in pairs}.values())
    key = f"correct_{metric}"
    firsts = {id(ev): stats.first_sample_by_id(ev.rows.values()) for ev in side_a + side_b}
    shared = set.intersection(*(set(f) for f in firsts.values()))
    ids = [q for q in firsts[id(side_a[0])] if q in shared]
    if not ids:
        return None

    def verdicts(ev: Any) -> list[bool]:
        return [bool(firsts[id(ev)][q].get(key)) for q in ids]

    va, vb = {id(ev): verdicts(ev) for ev in side_a}, {id(ev): verdicts(ev) for ev in side_b}
    diffs = [(sum(vb[id(eb)]) - sum(va[id(ea)])) / len(ids) for ea, eb in pairs]
    test = stats.question_sign_flip([[va[id(ev)][i] for ev in side_a] for i in range(len(ids))],
                                    [[vb[id(ev)][i] for ev in side_b] for i in range(len(ids))])
    return {"n_questions": len(ids), "n_a": len(side_a), "n_b": len(side_b),
            "mean_a": round(statistics.fmean(sum(v) / len(ids) for v in va.values()), 4),
            "mean_b": round(statistics.fmean(sum(v) / len(ids) for v in vb.values()), 4),
            "mean_diff": round(test["mean_diff"], 4), "diff_ci_low": round(test["ci_low"], 4),
            "diff_ci_high": round(test["ci_high"], 4),
            "sd_diff": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else None,
            "questions_a_better": test["a_better"], "questions_b_better": test["b_better"],
            "test": TEST_NAME, "p_value": test["p_value"]}


def _match(a: dict[int | None, Any], b: dict[int | None, Any]) -> list[tuple[Any, Any]]:
    if None in a and len(a) == 1:
        return [(a[None], b[s]) for s in sorted(b, key=lambda s: -1 if s is None else s)]
    if None in b and len(b) == 1:
        return [(a[s], b[None]) for s in sorted(a, key=lambda s: -1 if s is None else s)]
    return [(a[s], b[s]) for s in sorted(set(a) & set(b), key=lambda s: -1 if s is None else s)]
