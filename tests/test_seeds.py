"""Seeds as an experiment axis, eval variants, and the report's spread across seeds / tests over questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathrl.errors import MathrlError
from mathrl.experiments.schema import load_experiments
from mathrl.report.build import build_report
from mathrl.report.stats import mcnemar_p
from test_report import read_csv, write_eval


def expand(tmp_path: Path, text: str) -> list:
    f = tmp_path / "exp.yaml"
    f.write_text(text)
    return load_experiments(f, tmp_path / "runs")["x"]


SEEDED = """
experiments:
  x:
    seeds: [0, 1, 2]
    defaults: {model: smollm2-135m, task: arithmetic, task_config: "1-2"}
    stages:
      sft: {kind: sft, train_samples: 32, max_steps: 2}
      grpo: {kind: grpo, from: sft, max_steps: 2}
    eval:
      models: [base, sft, grpo]
      limit: 10
"""


def test_seeds_replicate_training_stages_and_chain_them_per_seed(tmp_path):
    stages = expand(tmp_path, SEEDED)
    by = {s.name: s for s in stages}
    training = [s.name for s in stages if s.kind != "eval"]
    assert training == ["sft-s0", "grpo-s0", "sft-s1", "grpo-s1", "sft-s2", "grpo-s2"]  # seed-major
    for seed in (0, 1, 2):
        sft, grpo = by[f"sft-s{seed}"], by[f"grpo-s{seed}"]
        assert sft.config.seed == grpo.config.seed == seed
        assert (sft.replica_of, sft.seed) == ("sft", seed)
        assert grpo.deps == [f"sft-s{seed}"] and grpo.config.model == str(sft.out)
        assert sft.config.train_samples == 32  # the data subset is shared: replicas differ by training randomness
    assert len({by[f"sft-s{s}"].key for s in (0, 1, 2)}) == 3  # the seed is in the cache key
    evals = [s for s in stages if s.kind == "eval"]
    assert [e.model_label for e in evals] == ["base", "sft-s0", "grpo-s0", "sft-s1", "grpo-s1", "sft-s2", "grpo-s2"]
    assert [e.seed for e in evals] == [None, 0, 0, 1, 1, 2, 2]
    assert evals[0].replica_of is None and evals[2].replica_of == "grpo"


def test_without_seeds_nothing_is_renamed(tmp_path):
    stages = expand(tmp_path, SEEDED.replace("    seeds: [0, 1, 2]\n", ""))
    assert [s.name for s in stages if s.kind != "eval"] == ["sft", "grpo"]
    assert all(s.seed is None and s.replica_of is None for s in stages)


@pytest.mark.parametrize("seeds, msg", [("[0, 0]", "distinct"), ("[-1]", "non-negative"), ("[]", "distinct"),
                                        ("[a]", "integers")])
def test_bad_seeds_are_refused(tmp_path, seeds, msg):
    with pytest.raises(MathrlError, match=r"experiments\.x\.seeds.*" + msg):
        expand(tmp_path, SEEDED.replace("[0, 1, 2]", seeds))


def test_a_stage_seed_conflicts_with_the_axis(tmp_path):
    with pytest.raises(MathrlError, match=r"stages\.sft: sets seed"):
        expand(tmp_path, SEEDED.replace("max_steps: 2}\n      grpo", "max_steps: 2, seed: 5}\n      grpo"))


VARIANTS = """
experiments:
  x:
    defaults: {model: smollm2-135m, task: arithmetic, task_config: "1-2"}
    eval:
      models: [base]
      shots: [0, 1]
      limit: 10
      variants:
        instruction: {}
        plain: {system_prompt: ""}
"""


def test_eval_variants_are_a_grid_axis_with_their_own_settings(tmp_path):
    evals = expand(tmp_path, VARIANTS)
    names = [e.name.split("/")[-1] for e in evals]
    # the empty variant is the default setting: unsuffixed, so it pairs with other grids' evaluations
    assert names == ["arithmetic.1-2-gsm8k-chat-0shot", "arithmetic.1-2-gsm8k-chat-0shot-plain",
                     "arithmetic.1-2-gsm8k-chat-1shot", "arithmetic.1-2-gsm8k-chat-1shot-plain"]
    prompts = {n: e.config.protocol.system_prompt for n, e in zip(names, evals)}
    assert prompts[names[0]] is None and prompts[names[1]] == ""
    assert evals[0].key != evals[1].key
    assert evals[1].eval_setting["variant"] == "plain" and evals[0].eval_setting["variant"] == "instruction"


def test_a_variant_may_not_set_a_grid_axis(tmp_path):
    with pytest.raises(MathrlError, match=r"variants\.plain: 'shots' is a grid axis"):
        expand(tmp_path, VARIANTS.replace('plain: {system_prompt: ""}', "plain: {shots: 3}"))


def _seeded_run(tmp_path: Path, base: list[bool], sft: dict[int, list[bool]]) -> Path:
    root = tmp_path / "x"
    stages = {"eval/base/t": {"kind": "eval", "model": "base", "method": "base", "setting": "t",
                              "output_dir": "eval/base/t", "seed": None, "replica_of": None}}
    write_eval(root / "eval" / "base" / "t", {"name": "smollm2-135m", "kind": "embedded"}, base)
    for seed, verdicts in sft.items():
        name = f"eval/sft-s{seed}/t"
        write_eval(root / name, {"name": f"sft-s{seed}", "kind": "local"}, verdicts)
        stages[name] = {"kind": "eval", "model": f"sft-s{seed}", "method": "sft", "setting": "t", "output_dir": name,
                        "seed": seed, "replica_of": "sft"}
    (root / "experiment.json").write_text(json.dumps({"experiment": "x", "stages": stages}))
    return root


def test_report_gives_spread_across_seeds_and_a_test_over_questions(tmp_path):
    base = [True] * 2 + [False] * 8
    sft = {0: [True] * 6 + [False] * 4, 1: [True] * 8 + [False] * 2, 2: [True] * 4 + [False] * 6}
    res = build_report([_seeded_run(tmp_path, base, sft)], tmp_path / "report")
    (row,) = res["seeds"]
    assert (row["model"], row["n_seeds"], row["seeds"]) == ("sft", 3, [0, 1, 2])
    assert row["mean_strict"] == pytest.approx(0.6) and row["sd_strict"] == pytest.approx(0.2)
    assert (row["min_strict"], row["max_strict"]) == (0.4, 0.8)
    (pooled,) = res["pooled"]
    assert (pooled["a"], pooled["b"], pooled["varies"]) == ("base · t", "sft · t", "model")
    # per question, the sft mean over seeds minus the base: q0-q1 0, q2-q3 +1, q4-q5 +2/3, q6-q7 +1/3, q8-q9 0,
    # so 6 questions (not 12 seed-question flips) carry the test: all positive, exact p = 2 / 2**6
    assert (pooled["questions_a_better"], pooled["questions_b_better"], pooled["n_questions"]) == (0, 6, 10)
    assert (pooled["n_a"], pooled["n_b"], pooled["test"]) == (1, 3, "sign-flip over questions")
    assert pooled["p_value"] == pytest.approx(2 / 2**6) and pooled["p_value"] > mcnemar_p(0, 12)
    assert pooled["mean_diff"] == pytest.approx(0.4) and pooled["sd_diff"] == pytest.approx(0.2)
    assert pooled["diff_ci_low"] < 0.4 < pooled["diff_ci_high"]
    assert {r["seed"] for r in read_csv(tmp_path / "report" / "comparison.csv")} == {"", "0", "1", "2"}
    assert len(read_csv(tmp_path / "report" / "seeds.csv")) == 1
    (csv_row,) = read_csv(tmp_path / "report" / "pooled.csv")
    assert csv_row["test"] == "sign-flip over questions" and float(csv_row["p_value"]) == pytest.approx(2 / 2**6)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Across training seeds" in html and "sign-flip p (over questions)" in html and "pooled McNemar" not in html
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| sft | arithmetic:1-2:test | t | 0, 1, 2 | 60.0% | 20.0 pts | 40.0%–80.0% | 60.0% / 80.0% / 40.0% |" in md
    assert "sft · t vs base · t" in md and "mean **+40.0 points** [" in md
    assert "0 vs 6 questions, sign-flip over questions p = 0.031" in md and "pooled p" not in md


def test_identical_replicas_add_no_evidence(tmp_path):
    """Issue: three identical replicas of one model turned McNemar p = 0.082 (34 vs 51) into 0.0017 (102 vs 153)."""
    base = [True] * 34 + [False] * 51 + [True] * 50 + [False] * 65
    replica = [False] * 34 + [True] * 51 + [True] * 50 + [False] * 65
    res = build_report([_seeded_run(tmp_path, base, {0: replica, 1: replica, 2: replica})], tmp_path / "report")
    (pooled,) = res["pooled"]
    assert pooled["p_value"] == pytest.approx(mcnemar_p(34, 51)) == pytest.approx(0.082, abs=5e-4)
    assert (pooled["questions_a_better"], pooled["questions_b_better"], pooled["n_questions"]) == (34, 51, 200)
    assert pooled["mean_diff"] == pytest.approx(17 / 200) and pooled["sd_diff"] == 0


def test_report_without_seeds_writes_no_seed_tables(tmp_path):
    write_eval(tmp_path / "a", {"name": "m", "kind": "hub"}, [True, False])
    res = build_report([tmp_path], tmp_path / "report")
    assert res["seeds"] == [] and not (tmp_path / "report" / "seeds.csv").exists()
