"""Seeds as an experiment axis, eval variants, and the report's spread across seeds / pooled tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mathrl.errors import MathrlError
from mathrl.experiment import load_experiments
from mathrl.report import build_report
from mathrl.stats import mcnemar_p
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


def test_report_gives_spread_across_seeds_and_pooled_mcnemar(tmp_path):
    root = tmp_path / "x"
    base = [True] * 2 + [False] * 8
    sft = {0: [True] * 6 + [False] * 4, 1: [True] * 8 + [False] * 2, 2: [True] * 4 + [False] * 6}
    stages = {"eval/base/t": {"kind": "eval", "model": "base", "method": "base", "setting": "t",
                              "output_dir": "eval/base/t", "seed": None, "replica_of": None}}
    write_eval(root / "eval" / "base" / "t", {"name": "smollm2-135m", "kind": "embedded"}, base)
    for seed, verdicts in sft.items():
        name = f"eval/sft-s{seed}/t"
        write_eval(root / name, {"name": f"sft-s{seed}", "kind": "local"}, verdicts)
        stages[name] = {"kind": "eval", "model": f"sft-s{seed}", "method": "sft", "setting": "t", "output_dir": name,
                        "seed": seed, "replica_of": "sft"}
    (root / "experiment.json").write_text(json.dumps({"experiment": "x", "stages": stages}))
    res = build_report([root], tmp_path / "report")
    (row,) = res["seeds"]
    assert (row["model"], row["n_seeds"], row["seeds"]) == ("sft", 3, [0, 1, 2])
    assert row["mean_strict"] == pytest.approx(0.6) and row["sd_strict"] == pytest.approx(0.2)
    assert (row["min_strict"], row["max_strict"]) == (0.4, 0.8)
    (pooled,) = res["pooled"]
    # base is right on q0,q1 only, so every seed's extra right answers are discordant: 4 + 6 + 2
    assert (pooled["a"], pooled["b"], pooled["varies"]) == ("base · t", "sft · t", "model")
    assert (pooled["a_right_b_wrong"], pooled["a_wrong_b_right"], pooled["n_pairs"]) == (0, 12, 30)
    assert pooled["p_value"] == pytest.approx(mcnemar_p(0, 12))
    assert pooled["mean_diff"] == pytest.approx(0.4) and pooled["sd_diff"] == pytest.approx(0.2)
    assert {r["seed"] for r in read_csv(tmp_path / "report" / "comparison.csv")} == {"", "0", "1", "2"}
    assert len(read_csv(tmp_path / "report" / "seeds.csv")) == 1
    assert "Across training seeds" in (tmp_path / "report" / "report.html").read_text()
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| sft | arithmetic:1-2:test | t | 0, 1, 2 | 60.0% | 20.0 pts | 40.0%–80.0% | 60.0% / 80.0% / 40.0% |" in md
    assert "sft · t vs base · t" in md and "mean **+40.0 points** (sd 20.0), 0 vs 12 flips" in md


def test_report_without_seeds_writes_no_seed_tables(tmp_path):
    write_eval(tmp_path / "a", {"name": "m", "kind": "hub"}, [True, False])
    res = build_report([tmp_path], tmp_path / "report")
    assert res["seeds"] == [] and not (tmp_path / "report" / "seeds.csv").exists()
