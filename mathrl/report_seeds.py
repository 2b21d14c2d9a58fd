"""Seeds as an axis: the spread of replicated numbers across training seeds, and pooled paired tests.

An experiment with `seeds: [0, 1, 2]` trains every stage once per seed (`sft-s0`, `sft-s1`, ...); its
manifest names, for each evaluation, the stage it replicates (`replica_of`) and the seed. Here:

- `seed_rows`: per (replicated model, task, eval setting), the mean accuracy across seeds, the sample
  standard deviation (n - 1), min and max, and each seed's accuracy — beside the per-run intervals
  of comparison.csv, which only cover question sampling, not training randomness.
- `pooled_rows`: A vs B on the same task, differing in one factor (the model or the eval setting),
  with seeds matched (replica s of A against replica s of B; an unreplicated model, such as the
  base, against every replica). The discordant counts of the seed pairs are summed and tested with
  McNemar's exact test — the stratified (Mantel–Haenszel-style) pooling of matched pairs. Simplified,
  and stated: the same question appears once per seed, so the pooled pairs are not independent
  draws of questions; the test says whether the difference is consistent across the seed pairs run
  here, and the per-seed differences (their mean and spread, also given) say how much it varies.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from mathrl import stats

SEED_COLUMNS = ("model", "method", "task", "setting", "n_seeds", "seeds", "mean_strict", "sd_strict", "min_strict",
                "max_strict", "mean_flexible", "sd_flexible", "per_seed_strict")
POOLED_COLUMNS = ("task", "a", "b", "varies", "metric", "seed_pairs", "n_pairs", "mean_a", "mean_b", "mean_diff",
                  "sd_diff", "a_right_b_wrong", "a_wrong_b_right", "p_value")


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
    """Seed-matched, pooled McNemar for every one-factor pair of groups where a group is replicated."""
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
            if not pairs:
                continue
            only_a = only_b = n = 0
            diffs, acc_a, acc_b = [], [], []
            for ea, eb in pairs:
                _, va, vb = stats.pair_verdicts(ea.rows.values(), eb.rows.values(), metric)
                if not va:
                    continue
                x, y = stats.discordant_counts(va, vb)
                only_a, only_b, n = only_a + x, only_b + y, n + len(va)
                acc_a.append(sum(va) / len(va))
                acc_b.append(sum(vb) / len(vb))
                diffs.append(acc_b[-1] - acc_a[-1])
            if not diffs:
                continue
            out.append({"task": task, "a": f"{ga} · {sa}", "b": f"{gb} · {sb}",
                        "varies": "model" if ga != gb else "setting", "metric": metric,
                        "seed_pairs": [f"{ea.seed if ea.seed is not None else '-'}/{eb.seed if eb.seed is not None else '-'}"
                                       for ea, eb in pairs],
                        "n_pairs": n, "mean_a": round(statistics.fmean(acc_a), 4), "mean_b": round(statistics.fmean(acc_b), 4),
                        "mean_diff": round(statistics.fmean(diffs), 4),
                        "sd_diff": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else None,
                        "a_right_b_wrong": only_a, "a_wrong_b_right": only_b, "p_value": stats.mcnemar_p(only_a, only_b)})
    return out


def _match(a: dict[int | None, Any], b: dict[int | None, Any]) -> list[tuple[Any, Any]]:
    if None in a and len(a) == 1:
        return [(a[None], b[s]) for s in sorted(b, key=lambda s: -1 if s is None else s)]
    if None in b and len(b) == 1:
        return [(a[s], b[None]) for s in sorted(a, key=lambda s: -1 if s is None else s)]
    return [(a[s], b[s]) for s in sorted(set(a) & set(b), key=lambda s: -1 if s is None else s)]
