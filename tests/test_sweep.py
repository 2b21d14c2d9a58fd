"""Sweeps in experiment files: points trained and evaluated on validation, a winner by the stated rule,
and no test question read before the winner is chosen."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import types
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from mathrl.errors import MathrlError
from mathrl.experiments import kinds
from mathrl.experiments.runner import run_file
from mathrl.report import markdown as report_markdown, sweeps as report_sweeps

ACCURACY = {0.1: 0.30, 0.2: 0.50, 0.3: 0.49}  # validation accuracy of a model trained at each lr (toy)


@dataclasses.dataclass
class SeedToy:
    model: str = "base-model"
    lr: float = 0.1
    seed: int = 0
    max_steps: int = 2
    output_dir: str = "out"
    resume: bool = False


CALLS: list[tuple] = []


def run_seed_toy(cfg: SeedToy) -> dict:
    CALLS.append(("train", cfg.output_dir, cfg.model))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.json").write_text(json.dumps({"lr": cfg.lr, "seed": cfg.seed}))
    return {"global_step": cfg.max_steps, "train_seconds": 3.0 * cfg.max_steps * (2 if cfg.lr == 0.3 else 1)}


def run_fake_eval(cfg) -> dict:
    """Records the split and whether the decision existed; 'accuracy' from the toy model's lr and seed."""
    out = Path(cfg.output_dir)
    exp_dir = next(p for p in out.parents if (p / "experiment.json").exists())
    CALLS.append(("eval", cfg.split, cfg.model, (exp_dir / "sweeps" / "a.json").exists()))
    model = Path(cfg.model) / "model.json"
    info = json.loads(model.read_text()) if model.exists() else {"lr": None, "seed": 0}
    acc = ACCURACY.get(info["lr"], 0.01) + 0.01 * info["seed"]
    summary = {"n": 4, "accuracy_strict": acc, "accuracy_flexible": acc, "ci95_strict": [acc - 0.1, acc + 0.1]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary))
    return summary


@pytest.fixture
def fakes(monkeypatch):
    from mathrl.eval.evaluate import EvalConfig

    module = types.ModuleType("sweep_fakes")
    module.SeedToy, module.run_seed_toy, module.EvalConfig, module.run_fake_eval = SeedToy, run_seed_toy, EvalConfig, run_fake_eval
    monkeypatch.setitem(sys.modules, "sweep_fakes", module)
    monkeypatch.setitem(kinds.KINDS, "toy", ("sweep_fakes", "SeedToy", "run_seed_toy"))
    monkeypatch.setitem(kinds.KINDS, "eval", ("sweep_fakes", "EvalConfig", "run_fake_eval"))
    # the report is tested on its own below
    monkeypatch.setitem(sys.modules, "mathrl.report.build", types.SimpleNamespace(
        build_report=lambda run_dirs, output_dir, metric="strict": {}))
    CALLS.clear()
    return CALLS


def experiment(**sweep_extra) -> dict:
    return {
        "defaults": {"task": "arithmetic", "task_config": "1"},
        "stages": {"a": {"kind": "toy"}, "b": {"kind": "toy", "from": "a", "lr": 0.05}},
        "sweep": {"a": {"points": {"lo": {"lr": 0.1}, "mid": {"lr": 0.2}, "hi": {"lr": 0.3}},
                        "select": {"metric": "strict", "min_improvement": 0.02, "prefer": "first"},
                        "eval": {"limit": 4}} | sweep_extra},
        "eval": {"models": ["base", "a", "b"], "limit": 4},
    }


def run(tmp_path: Path, exp: dict, **kw) -> tuple[dict[str, str], str]:
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump({"experiments": {"tiny": exp}}, sort_keys=False))
    buf = io.StringIO()
    results = run_file(f, runs_dir=tmp_path / "runs", console=Console(file=buf, width=250), **kw)
    return results["tiny"], buf.getvalue()


def test_sweep_chooses_on_validation_before_any_test_question(fakes, tmp_path):
    dry, text = run(tmp_path, experiment(), dry_run=True)
    assert all(not n.startswith("eval/") or n.endswith("-validation") for n in dry)  # no test eval planned yet
    assert "b" not in dry and "wait for its winner" in text
    out, text = run(tmp_path, experiment())
    evals = [c for c in fakes if c[0] == "eval"]
    # the three points and the model they start from (here the base model) on validation, then test
    assert [c[1] for c in evals] == ["validation"] * 4 + ["test"] * 3
    assert all(not decided for _, split, _, decided in evals if split == "validation")
    assert all(decided for _, split, _, decided in evals if split == "test")  # the winner was on disk first
    runs = tmp_path / "runs" / "tiny"
    decision = json.loads((runs / "sweeps" / "a.json").read_text())
    # mid 50% is best; hi 49% is within 2 points but listed after it; lo is out
    assert decision["winner"] == "mid" and "lo" not in decision["why"].split("of it:")[1]
    assert [p["validation"]["accuracy"] for p in decision["points"]] == [0.30, 0.50, 0.49]
    assert decision["start"]["model"] == "base" and decision["start"]["validation"]["accuracy"] == 0.01
    assert ("train", str(runs / "b"), str(runs / "a@mid")) in fakes  # the winner stands in for a downstream
    assert {c[2] for c in evals if c[1] == "test"} >= {str(runs / "a@mid"), str(runs / "b")}
    assert out["eval/a@mid/arithmetic.1-gsm8k-chat-0shot"] == "ran" and "sweep a: highest validation" in text
    assert not any(n.startswith("eval/a@lo/") and not n.endswith("-validation") for n in out)
    n_calls = len(fakes)
    again, _ = run(tmp_path, experiment())
    assert set(again.values()) == {"cached"} and len(fakes) == n_calls  # decided and done: nothing reruns
    # the report's sweep section shows every point and the winner
    md = "\n".join(report_sweeps.markdown(report_sweeps.load_decisions(runs)))
    assert "| mid | lr=0.2 | 4 | 50.0% [40.0, 60.0] |" in md and "Winner **mid**" in md
    assert "Sweep (" in report_markdown.render({"metric": "strict", "comparison": [], "paired": [],
                                                "sweeps": report_sweeps.load_decisions(runs)})


def test_rule_prefer_cheaper_and_a_changed_sweep_decides_again(fakes, tmp_path):
    run(tmp_path, experiment())
    # hi is within 2 points but twice as slow per step: cheaper keeps mid; with 0.5 points of slack the best alone wins
    run(tmp_path, experiment(select={"min_improvement": 0.02, "prefer": "cheaper"}))
    assert json.loads((tmp_path / "runs" / "tiny" / "sweeps" / "a.json").read_text())["winner"] == "mid"
    fakes.clear()
    exp = experiment()
    exp["sweep"]["a"]["points"]["lo"] = {"lr": 0.3}
    exp["sweep"]["a"]["points"]["hi"] = {"lr": 0.2}
    exp["sweep"]["a"]["select"] = {"min_improvement": 0.0}
    run(tmp_path, exp)  # changed points: the old decision no longer applies
    decision = json.loads((tmp_path / "runs" / "tiny" / "sweeps" / "a.json").read_text())
    assert decision["winner"] == "mid" and decision["rule"]["min_improvement"] == 0.0
    assert [c[1] for c in fakes if c[0] == "eval"].count("validation") == 2  # mid's validation eval was cached


def test_seeds_inside_a_sweep_average_the_replicas(fakes, tmp_path):
    exp = experiment() | {"seeds": [0, 2]}
    out, _ = run(tmp_path, exp)
    decision = json.loads((tmp_path / "runs" / "tiny" / "sweeps" / "a.json").read_text())
    mid = next(p for p in decision["points"] if p["point"] == "mid")
    assert mid["validation"]["per_seed"] == [0.50, 0.52] and mid["validation"]["accuracy"] == pytest.approx(0.51)
    assert mid["steps"] == 4  # both replicas' steps
    assert "b-s2" in out and out["b-s2"] == "ran"
    assert ("train", str(tmp_path / "runs" / "tiny" / "b-s2"), str(tmp_path / "runs" / "tiny" / "a@mid-s2")) in fakes


@pytest.mark.parametrize("change, message", [
    ({"budget": "10m"}, "a sweep under an experiment budget is not supported"),
    ({"sweep": {"a": {"points": {"x": {"max_steps": 3}, "y": {}}}}}, "'max_steps' cannot differ between points"),
    ({"sweep": {"zz": {"points": {"x": {}, "y": {}}}}}, "no training stage 'zz'"),
    ({"sweep": {"a": {"grid": {"lr": [1, 2]}, "points": {"x": {}}}}}, "give either grid"),
    ({"sweep": {"a": {"points": {"x": {}}}}}, "at least two points"),
    ({"sweep": {"a": {"points": {"x": {}, "y": {}}, "eval": {"split": "test"}}}}, "split is always validation"),
    ({"sweep": {"a": {"points": {"x": {}, "y": {}}, "select": {"prefer": "fastest"}}}}, "prefer must be one of"),
    ({"sweep": {"a": {"points": {"x": {}, "y": {}}, "select": {"min_improvement": 1}}}}, "min_improvement must be"),
    ({"sweep": {"a": {"points": {"x": {}, "y": {}}, "eval": {"shots": [0, 3]}}}}, "a sweep compares its points in one"),
])
def test_sweep_errors_name_the_culprit(fakes, tmp_path, change, message):
    with pytest.raises(MathrlError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run(tmp_path, experiment() | change, dry_run=True)


def test_grid_points_are_every_combination(fakes, tmp_path):
    exp = experiment()
    exp["sweep"]["a"] = {"grid": {"lr": [0.1, 0.2, 0.3], "max_steps": [2]}}  # a one-value budget key is refused too
    with pytest.raises(MathrlError, match="'max_steps' cannot differ"):
        run(tmp_path, exp, dry_run=True)
    exp["sweep"]["a"] = {"grid": {"lr": [0.1, 0.2, 0.3]}}
    out, _ = run(tmp_path, exp, dry_run=True)
    assert [n for n in out if not n.startswith("eval/")] == ["a@p0", "a@p1", "a@p2"]


def test_sweep_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    """The real SFT and eval kinds: points train, validation evaluations read the validation split, the
    test evaluations of the winner read test, and the decision names the measured cost."""
    from mathrl.tasks.arithmetic import Arithmetic

    splits: list[str] = []
    real_load = Arithmetic.load_split
    monkeypatch.setattr(Arithmetic, "load_split", lambda self, split: splits.append(split) or real_load(self, split))
    monkeypatch.setitem(sys.modules, "mathrl.report.build", types.SimpleNamespace(
        build_report=lambda run_dirs, output_dir, metric="strict": {}))
    exp = {
        "defaults": {"model": str(tiny_model_dir), "task": "arithmetic", "task_config": "1", "dtype": "fp32",
                     "sft": {"num_samples": 8, "batch_size": 4, "max_steps": 1, "save_steps": 1000}},
        "stages": {"sft": {"kind": "sft"}},
        "sweep": {"sft": {"grid": {"learning_rate": [1e-3, 2e-3]}, "eval": {"limit": 4, "max_new_tokens": 4}}},
        "eval": {"models": ["base", "sft"], "limit": 4, "max_new_tokens": 4, "batch_size": 4, "backend": "hf",
                 "progress": False},
    }
    out, _ = run(tmp_path, exp)
    assert set(out.values()) == {"ran"}, out
    first_test = splits.index("test")
    assert "validation" in splits[:first_test] and "validation" not in splits[first_test:]
    decision = json.loads((tmp_path / "runs" / "tiny" / "sweeps" / "sft.json").read_text())
    accs = [p["validation"]["accuracy"] for p in decision["points"]]
    assert decision["winner"] == f"p{accs.index(max(accs))}"  # ties: the first listed
    assert all(p["steps"] == 1 and p["train_seconds"] > 0 and p["validation"]["n"] == 4 for p in decision["points"])
    assert f"eval/sft@{decision['winner']}/arithmetic.1-gsm8k-chat-0shot" in out
    # the model the points start from (the base here), on the same validation questions, and each point's
    # paired difference from it: what the counts say, recomputed from the two results files
    start = decision["start"]
    assert start["model"] == "base" and start["validation"]["n"] == 4
    runs = tmp_path / "runs" / "tiny"
    base_rows = [json.loads(x) for x in next((runs / "sweeps" / "sft").glob("eval/base/*/results.jsonl")).read_text().splitlines()]
    for p in decision["points"]:
        point_rows = [json.loads(x) for x in next((runs / "sweeps" / "sft").glob(f"eval/sft@{p['point']}/*/results.jsonl"))
                      .read_text().splitlines()]
        base_ok = {r["id"]: r["correct_strict"] for r in base_rows}
        gained = sum(1 for r in point_rows if r["correct_strict"] and not base_ok[r["id"]])
        lost = sum(1 for r in point_rows if not r["correct_strict"] and base_ok[r["id"]])
        vs = p["vs_start"]
        assert (vs["gained"], vs["lost"]) == (gained, lost)
        assert vs["diff"] == pytest.approx(p["validation"]["accuracy"] - start["validation"]["accuracy"], abs=1e-4)
    md = "\n".join(report_sweeps.markdown(report_sweeps.load_decisions(runs)))
    assert "| (start: base) |" in md and "reference" in md
