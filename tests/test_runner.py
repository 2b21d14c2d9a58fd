"""`mathrl run` on tiny experiments: stage cache, resume after a crash, failures, dry runs, manifests."""

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
from typer.testing import CliRunner

from mathrl.experiments import budget_pricing, kinds, schema as experiment
from mathrl.engine import generation
from mathrl.cli import app
from mathrl.errors import MathrlError
from mathrl.experiments.runner import run_file

REPO_ROOT = Path(__file__).resolve().parents[1]
EVAL = {"limit": 4, "max_new_tokens": 4, "batch_size": 4, "backend": "hf", "progress": False}


def write_exp(path: Path, exp: dict, name: str = "tiny") -> Path:
    path.write_text(yaml.safe_dump({"experiments": {name: exp}}, sort_keys=False))
    return path


def run(path: Path, runs: Path, **kw) -> tuple[dict[str, str], str]:
    """run_file with a captured console; returns (outcomes of the single experiment, printed text)."""
    buf = io.StringIO()
    results = run_file(path, runs_dir=runs, console=Console(file=buf, width=250), **kw)
    assert len(results) == 1
    return next(iter(results.values())), buf.getvalue()


def stage_json(runs: Path, stage: str, exp: str = "tiny") -> dict:
    return json.loads((runs / exp / stage / "stage.json").read_text())


@pytest.fixture
def fake_report(monkeypatch):
    """Stand-in for mathrl.report.build: records calls, so these tests do not depend on the report's progress."""
    calls = []

    def build_report(run_dirs, output_dir, metric="strict"):
        calls.append((list(run_dirs), output_dir, metric))
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "report.html").write_text("<html></html>")
        return {}

    monkeypatch.setitem(sys.modules, "mathrl.report.build", types.SimpleNamespace(build_report=build_report))
    return calls


def sft_experiment(model_dir: Path, lr: float = 1e-3) -> dict:
    return {
        "defaults": {"model": str(model_dir), "task": "arithmetic", "task_config": "1", "dtype": "fp32",
                     "sft": {"num_samples": 8, "batch_size": 4, "max_steps": 1, "save_steps": 1000}},
        "stages": {"sft": {"kind": "sft", "learning_rate": lr}},
        "eval": {"models": ["base", "sft"], "chat_template": [True, False], **EVAL},
    }


def test_end_to_end_cache_and_partial_rerun(tiny_model_dir, tmp_path, fake_report):
    runs, f = tmp_path / "runs", tmp_path / "exp.yaml"
    write_exp(f, sft_experiment(tiny_model_dir))
    evals = ["eval/base/arithmetic.1-gsm8k-chat-0shot", "eval/base/arithmetic.1-gsm8k-raw-0shot",
             "eval/sft/arithmetic.1-gsm8k-chat-0shot", "eval/sft/arithmetic.1-gsm8k-raw-0shot"]
    out, text = run(f, runs)
    assert list(out) == evals[:2] + ["sft"] + evals[2:]  # base evals first, then each model and its evals
    assert set(out.values()) == {"ran"}
    assert "stage 3/5 sft (sft)" in text and "accuracy" in text and "report: " in text
    assert fake_report == [([runs / "tiny"], runs / "tiny" / "report", "strict")]
    assert (runs / "tiny" / "sft" / "model.safetensors").exists()
    for name in evals:
        rec = stage_json(runs, name)
        assert rec["status"] == "done" and rec["result"]["n"] == 4 and len(rec["key"]) == 64
        assert len((runs / "tiny" / name / "results.jsonl").read_text().splitlines()) == 4
    # every stage, its training record and its summary carry the stage's measured peak memory
    for name in ["sft", *evals]:
        assert 0 < stage_json(runs, name)["memory"]["peak_rss_gb"] < 64
    assert json.loads((runs / "tiny" / "sft" / "mathrl_config.json").read_text())["memory"]["peak_rss_gb"] > 0
    assert json.loads((runs / "tiny" / evals[0] / "summary.json").read_text())["memory"]["peak_rss_gb"] > 0
    rec = stage_json(runs, "eval/sft/arithmetic.1-gsm8k-chat-0shot")
    assert rec["depends_on"] == {"sft": stage_json(runs, "sft")["key"]}
    assert rec["config"]["model"] == str(runs / "tiny" / "sft")
    manifest = json.loads((runs / "tiny" / "experiment.json").read_text())["stages"]
    assert manifest["sft"] | {"key": None} == {"kind": "sft", "method": "sft", "model": "sft", "eval": None, "setting": None,
                                               "output_dir": "sft", "depends_on": [], "status": "done", "key": None,
                                               "replica_of": None, "seed": None}
    m = manifest["eval/sft/arithmetic.1-gsm8k-raw-0shot"]
    assert (m["method"], m["model"], m["setting"], m["output_dir"]) == (
        "sft", "sft", "arithmetic.1-gsm8k-raw-0shot", "eval/sft/arithmetic.1-gsm8k-raw-0shot")
    assert m["eval"] | {} == {"task": "arithmetic", "task_config": "1", "format": "gsm8k", "chat_template": False,
                              "shots": 0, "variant": None, "setting": "arithmetic.1-gsm8k-raw-0shot"}
    finished = {n: stage_json(runs, n)["finished"] for n in out}

    # second run: everything cached, nothing rewritten
    out, text = run(f, runs)
    assert set(out.values()) == {"cached"}
    assert {n: stage_json(runs, n)["finished"] for n in out} == finished
    _, plan = run(f, runs, dry_run=True)
    assert plan.count("│ done ") == 5

    # one setting changed: the SFT stage and the evals of its model are stale; --only-eval blocks them
    write_exp(f, sft_experiment(tiny_model_dir, lr=2e-3))
    dry, plan = run(f, runs, dry_run=True)
    assert dry == {evals[0]: "done", evals[1]: "done", "sft": "stale", evals[2]: "stale", evals[3]: "stale"}
    out, _ = run(f, runs, only_eval=True)
    assert out == {evals[0]: "cached", evals[1]: "cached", "sft": "not selected", evals[2]: "blocked", evals[3]: "blocked"}
    out, _ = run(f, runs)
    assert out == {evals[0]: "cached", evals[1]: "cached", "sft": "ran", evals[2]: "ran", evals[3]: "ran"}
    assert stage_json(runs, "sft")["config"]["learning_rate"] == 2e-3
    moved = list((runs / ".stale" / "tiny").glob("sft@*"))
    assert len(moved) == 1 and (moved[0] / "model.safetensors").exists()  # the old model is kept aside, not mixed
    assert {n: stage_json(runs, n)["finished"] for n in evals[:2]} == {n: finished[n] for n in evals[:2]}

    out, _ = run(f, runs, only_report=True)
    assert set(out.values()) == {"cached"} and len(fake_report) == 5  # every run but the dry runs


def test_crash_mid_eval_resumes_without_redoing_finished_work(tiny_model_dir, tmp_path, monkeypatch, fake_report):
    runs, f = tmp_path / "runs", tmp_path / "exp.yaml"
    write_exp(f, {"defaults": {"model": str(tiny_model_dir), "task": "arithmetic", "dtype": "fp32"},
                  "eval": {"chat_template": [True, False], **EVAL, "batch_size": 2}})
    chat, raw = "eval/base/arithmetic-gsm8k-chat-0shot", "eval/base/arithmetic-gsm8k-raw-0shot"
    real_stream = generation.HFGenerator.stream
    prompts_seen: list[int] = []
    crash = [True]

    def crashing_stream(self, prompts, params):
        prompts_seen.append(len(prompts))
        for i, batch in enumerate(real_stream(self, prompts, params)):
            yield batch
            if crash[0] and i == 0:
                crash[0] = False
                raise RuntimeError("simulated crash after the first batch")

    monkeypatch.setattr(generation.HFGenerator, "stream", crashing_stream)
    out, text = run(f, runs)
    assert out == {chat: "failed", raw: "ran"}  # the crash stays in its stage
    rec = stage_json(runs, chat)
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: simulated crash after the first batch"
    assert "simulated crash" in (runs / "tiny" / chat / "error.log").read_text()
    assert len((runs / "tiny" / chat / "results.jsonl").read_text().splitlines()) == 2
    dry, plan = run(f, runs, dry_run=True)
    assert dry == {chat: "partial", raw: "done"} and "partial (failed before)" in plan

    prompts_seen.clear()
    out, _ = run(f, runs)
    assert out == {chat: "resumed", raw: "cached"}
    assert prompts_seen == [2]  # only the two questions the crash left
    rec = stage_json(runs, chat)
    assert rec["status"] == "done" and rec["attempts"] == 2 and rec["result"]["n"] == 4
    assert len((runs / "tiny" / chat / "results.jsonl").read_text().splitlines()) == 4
    assert not (runs / "tiny" / chat / "error.log").exists()  # the failed attempt's traceback went with it


def test_failed_stage_blocks_dependants_and_cli_exits_nonzero(tiny_model_dir, tmp_path, fake_report):
    runs, f = tmp_path / "runs", tmp_path / "exp.yaml"
    write_exp(f, {"defaults": {"model": str(tiny_model_dir), "task": "arithmetic", "dtype": "fp32"},
                  "stages": {"bad": {"kind": "sft", "task": "jsonl", "task_args": {"train_path": str(tmp_path / "nope.jsonl")},
                                     "max_steps": 1}},
                  "eval": {"models": ["base", "bad"], "chat_template": False, **EVAL}})
    res = CliRunner().invoke(app, ["run", str(f), "--runs-dir", str(runs)])
    assert res.exit_code == 1, res.output
    assert "bad" in res.output and "failed or blocked" in res.output
    assert stage_json(runs, "eval/base/arithmetic-gsm8k-raw-0shot")["status"] == "done"  # independent stage kept
    rec = stage_json(runs, "bad")
    assert rec["status"] == "failed" and "nope.jsonl" in rec["error"] and "\n" not in rec["error"]
    assert not (runs / "tiny" / "eval" / "bad").exists()
    manifest = json.loads((runs / "tiny" / "experiment.json").read_text())["stages"]
    assert [manifest[n]["status"] for n in manifest] == ["done", "failed", "blocked"]


# ---------------------------------------------------------------- a fake training kind: fast cache logic


@dataclasses.dataclass
class ToyConfig:
    model: str = "base-model"
    lr: float = 0.1
    crash: bool = False
    output_dir: str = "out"
    resume: bool = False


TOY_CALLS: list[ToyConfig] = []


def run_toy(cfg: ToyConfig) -> dict:
    TOY_CALLS.append(cfg)
    out = Path(cfg.output_dir)
    (out / "checkpoint-1").mkdir(parents=True, exist_ok=True)
    if cfg.crash and len(TOY_CALLS) == 1:  # the first call dies after its first checkpoint
        raise RuntimeError("killed mid-training")
    (out / "model.txt").write_text(f"{cfg.model} lr={cfg.lr}")
    return {"global_step": 2, "train_loss": 0.5}


@pytest.fixture
def toy_kind(monkeypatch):
    module = types.ModuleType("toy_trainer")
    module.ToyConfig, module.run_toy = ToyConfig, run_toy
    monkeypatch.setitem(sys.modules, "toy_trainer", module)
    monkeypatch.setitem(kinds.KINDS, "toy", ("toy_trainer", "ToyConfig", "run_toy"))
    TOY_CALLS.clear()
    return TOY_CALLS


def test_training_resume_and_rerun_inputs(toy_kind, tmp_path, fake_report):
    runs, f = tmp_path / "runs", tmp_path / "exp.yaml"
    write_exp(f, {"stages": {"a": {"kind": "toy", "crash": True}, "b": {"kind": "toy", "from": "a", "lr": 0.2}}})
    out, _ = run(f, runs)
    assert out == {"a": "failed", "b": "blocked"} and toy_kind[-1].resume is False
    out, _ = run(f, runs)
    assert out == {"a": "resumed", "b": "ran"}
    assert toy_kind[-2].resume is True  # a checkpoint-* directory was there: the trainer continues from it
    assert toy_kind[-1].model == str(runs / "tiny" / "a") and stage_json(runs, "b")["result"]["global_step"] == 2
    # a rerun of an input with the same settings (its directory deleted) still reruns what was built from it
    import shutil

    shutil.rmtree(runs / "tiny" / "a")
    out, _ = run(f, runs, dry_run=True)
    assert out == {"a": "todo", "b": "stale"}
    out, _ = run(f, runs)
    assert out == {"a": "ran", "b": "ran"}
    assert not any((runs / ".stale").glob("tiny/a@*"))  # nothing of a's was there to keep
    assert len(list((runs / ".stale" / "tiny").glob("b@*"))) == 1


def test_missing_stage_kind_fails_only_its_stages(toy_kind, tmp_path, monkeypatch, fake_report):
    monkeypatch.setitem(kinds.KINDS, "grpo", ("mathrl.train.not_there", "GRPORunConfig", "run_grpo"))
    runs, f = tmp_path / "runs", tmp_path / "exp.yaml"
    write_exp(f, {"stages": {"sft": {"kind": "toy"}, "rl": {"kind": "grpo", "from": "sft", "beta": 0.04},
                             "rl2": {"kind": "toy", "from": "rl"}}})
    dry, plan = run(f, runs, dry_run=True)
    assert dry == {"sft": "todo", "rl": "todo", "rl2": "todo"}
    assert "grpo: settings not validated (module missing)" in plan
    out, text = run(f, runs)
    assert out == {"sft": "ran", "rl": "failed", "rl2": "blocked"}
    assert stage_json(runs, "rl")["error"].startswith("stage kind 'grpo' is not available in this install")


# ---------------------------------------------------------------- plans, shipped files and schema errors


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_files_dry_run(path, tmp_path, monkeypatch):
    from mathrl.experiments import budget

    # files with a budget calibrate their base model; the plan's arithmetic is tested in test_budget.py
    monkeypatch.setattr(budget, "calibrate", lambda model, *a, **k: budget_pricing.Calibration(
        # the rates of a 2-core AVX2-only CPU, unloaded (measured: decode 138 tok/s at batch 32, training 75 tok/s)
        model, "float32", "avx2", decode_tokens_per_s=138.0, decode_batch=32, train_tokens_per_s=75.0, train_batch=4,
        seconds=20.0))
    buf = io.StringIO()
    results = run_file(path, runs_dir=tmp_path, dry_run=True, console=Console(file=buf, width=250))
    assert results
    for stages in results.values():
        assert stages and set(stages.values()) == {"todo"}
        assert any(n.startswith("eval/") for n in stages)
    assert "est. cost" in buf.getvalue()
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_shipped_files_shape():
    def plan(name: str) -> list[str]:
        path = REPO_ROOT / "configs" / "experiments" / f"{name}.yaml"
        return list(run_file(path, runs_dir="/nonexistent", dry_run=True, console=Console(file=io.StringIO()))[name])

    assert plan("pipeline") == ["eval/base/gsm8k-tags-chat-0shot", "sft-full", "eval/sft-full/gsm8k-tags-chat-0shot",
                                "sft-rl-prep", "eval/sft-rl-prep/gsm8k-tags-chat-0shot", "grpo",
                                "eval/grpo/gsm8k-tags-chat-0shot"]
    assert len([n for n in plan("chat_template_matrix") if n.startswith("eval/")]) == 10
    settings = {n.split("/")[2] for n in plan("sft_vs_grpo") if n.startswith("eval/")}
    assert settings == {"linear_equations.2-tags-chat-0shot", "gsm8k-tags-chat-0shot"}


def test_cli_dry_run(tmp_path):
    res = CliRunner().invoke(app, ["run", str(REPO_ROOT / "configs" / "experiments" / "pipeline.yaml"), "--dry-run",
                                   "--runs-dir", str(tmp_path), "-e", "pipeline"])
    assert res.exit_code == 0, res.output
    assert "sft-rl-prep" in res.output and "todo" in res.output


@pytest.mark.parametrize("exp, message", [
    ({"stages": {"s": {"kind": "sft", "lerning_rate": 0.1}}}, r"unknown key 'lerning_rate' \(did you mean 'learning_rate'\?\)"),
    ({"stages": {"sft-full": {"kind": "sft"}, "t": {"kind": "sft", "from": "sft-ful"}}},
     r"from 'sft-ful' is neither an earlier stage nor a model \(did you mean 'sft-full'\?\)"),
    ({"stages": {"t": {"kind": "sft", "from": "s"}, "s": {"kind": "sft"}}}, "must name a stage listed before it"),
    ({"stages": {"s": {"kind": "dpo"}}}, "kind must be one of sft, grpo, ppo"),
    ({"stages": {"s": {"kind": "sft", "output_dir": "x"}}}, "set by the runner"),
    ({"stages": {"base": {"kind": "sft"}}}, "stage 'base'"),
    ({"defaults": {"learning_rte": 1.0}, "stages": {"s": {"kind": "sft"}}}, r"no stage here has a setting 'learning_rte' \(did you mean 'learning_rate'\?\)"),
    ({"eval": {"models": ["sft"]}}, "'sft' is not base, a stage name"),
    ({"eval": {"limt": 3}}, r"unknown eval setting 'limt' \(did you mean 'limit'\?\)"),
    ({"eval": {"formats": ["tagz"]}}, "tagz"),
    ({"eval": {"tasks": ["gsm9k"]}}, "unknown task 'gsm9k'"),
    ({"eval": {"tasks": ["arithmetic", "arithmetic"]}}, "two stages are named"),
    ({"stagez": {}}, "unknown key 'stagez'"),
])
def test_schema_errors(tmp_path, exp, message):
    f = write_exp(tmp_path / "exp.yaml", exp)
    with pytest.raises(MathrlError, match=message):
        run_file(f, runs_dir=tmp_path / "runs", dry_run=True, console=Console(file=io.StringIO()))


def test_experiment_selection_and_defaults_routing(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(sort_keys=False, data={"experiments": {
        "one": {"defaults": {"model": "org/m", "task": "linear_equations", "task_config": "2", "max_new_tokens": 7,
                             "sft": {"learning_rate": 0.5}},
                "stages": {"s": {"kind": "sft"}},
                "eval": {"models": ["base", {"other": "org/other"}], "tasks": ["linear_equations", "gsm8k"]}},
        "two": {"eval": {}}}}))
    with pytest.raises(MathrlError, match="no experiment 'three'; the file has: one, two"):
        run_file(f, ["three"], runs_dir=tmp_path, dry_run=True, console=Console(file=io.StringIO()))
    stages = {s.name: s for s in experiment.load_experiments(f, tmp_path, ["one"])["one"]}
    assert stages["s"].config.learning_rate == 0.5 and stages["s"].config.task_config == "2"
    assert "max_new_tokens" not in stages["s"].settings  # an eval-only default does not reach SFT
    in_domain, out_domain = stages["eval/base/linear_equations.2-gsm8k-chat-0shot"], stages["eval/base/gsm8k-gsm8k-chat-0shot"]
    assert in_domain.config.max_new_tokens == 7 and in_domain.config.model == "org/m"
    assert out_domain.config.task_config is None  # the in-domain config does not leak to another task
    assert stages["eval/other/gsm8k-gsm8k-chat-0shot"].config.model == "org/other"
    assert list(run_file(f, ["one,two"], runs_dir=tmp_path, dry_run=True, console=Console(file=io.StringIO()))) == ["one", "two"]


def test_cache_key_ignores_location_and_runner_owned_settings(tmp_path):
    f = write_exp(tmp_path / "exp.yaml", {"stages": {"s": {"kind": "sft"}}, "eval": {"models": ["base", "s"]}})
    a = experiment.load_experiments(f, tmp_path / "a")["tiny"]
    b = experiment.load_experiments(f, tmp_path / "elsewhere" / "b")["tiny"]
    assert [s.key for s in a] == [s.key for s in b]
    write_exp(f, {"stages": {"s": {"kind": "sft", "report_to": "tensorboard"}}, "eval": {"models": ["base", "s"], "batch_size": 7}})
    assert [s.key for s in experiment.load_experiments(f, tmp_path / "a")["tiny"]] == [s.key for s in a]
    write_exp(f, {"stages": {"s": {"kind": "sft", "epochs": 2}}, "eval": {"models": ["base", "s"]}})
    c = experiment.load_experiments(f, tmp_path / "a")["tiny"]
    assert [x.key == y.key for x, y in zip(a, c)] == [True, False, False]  # the stage and its dependant change


def test_eval_grid_suite_expands_to_its_tasks_and_formats(tmp_path):
    from mathrl.eval.suite import SUITES

    f = write_exp(tmp_path / "exp.yaml", {"defaults": {"model": "org/m"},
                                          "eval": {"suite": "generalisation", "tasks": ["arithmetic"], "limit": 5}})
    stages = {s.name: s for s in experiment.load_experiments(f, tmp_path)["tiny"]}
    want = ["eval/base/arithmetic-gsm8k-chat-0shot"] + [
        f"eval/base/{e.label}-{e.resolved_format()}-chat-0shot" for e in SUITES["generalisation"]]
    assert list(stages) == want and "eval/base/math500-boxed-chat-0shot" in stages
    assert stages["eval/base/math500-boxed-chat-0shot"].config.protocol.format == "boxed"
    assert all(s.config.limit == 5 and s.config.model == "org/m" for s in stages.values())
    # formats given: every suite task uses them; a custom list works too; a bad suite name is one clear error
    write_exp(f, {"eval": {"suite": ["svamp", "math:algebra"], "formats": ["tags"]}})
    assert [s.name for s in experiment.load_experiments(f, tmp_path)["tiny"]] == [
        "eval/base/svamp-tags-chat-0shot", "eval/base/math.algebra-tags-chat-0shot"]
    write_exp(f, {"eval": {"suite": "generalization"}})
    with pytest.raises(MathrlError, match="unknown suite 'generalization'"):
        experiment.load_experiments(f, tmp_path)


STUDIES = ("pipeline", "sft_vs_grpo", "chat_template_matrix", "full_vs_lora", "grpo_lora_think")


@pytest.mark.parametrize("study", STUDIES)
def test_each_study_ships_gpu_and_cpu_sized(study):
    """The GPU file trains a hub model; its CPU twin the embedded one, within a ≤ 45-minute budget and
    on ≥ 200 fixed test questions per evaluation."""
    from mathrl import config as cfgmod
    from mathrl.experiments import budget

    gpu = cfgmod.load_yaml(REPO_ROOT / "configs" / "experiments" / f"{study}.yaml")["experiments"][study]
    cpu = cfgmod.load_yaml(REPO_ROOT / "configs" / "experiments" / f"{study}_cpu.yaml")["experiments"][f"{study}_cpu"]
    assert "/" in gpu["defaults"]["model"] and cpu["defaults"]["model"] == "smollm2-135m"
    assert budget.parse_duration(cpu["budget"]) <= 45 * 60
    stages = experiment.load_experiments(REPO_ROOT / "configs" / "experiments" / f"{study}_cpu.yaml", "/nonexistent")[f"{study}_cpu"]
    evals = [s for s in stages if s.kind == "eval"]
    assert evals and all(s.config.limit is not None and s.config.limit >= 200 for s in evals)
    assert len({s.config.sample_seed for s in evals}) == 1  # the same fixed questions for every model


def test_ctrl_c_during_an_evaluation_stops_the_run_and_keeps_what_it_wrote(tiny_model_dir, tmp_path):
    """SIGINT (Ctrl-C) to `mathrl run` mid-evaluation: the run stops there with exit code 130, the
    stage is recorded as interrupted with the rows it finished, and the next stage does not start."""
    import os
    import signal
    import subprocess
    import time

    runs, f = tmp_path / "runs", tmp_path / "exp.yaml"
    write_exp(f, {"defaults": {"model": str(tiny_model_dir), "task": "arithmetic", "dtype": "fp32"},
                  "eval": {"chat_template": [True, False], **EVAL, "limit": 400, "batch_size": 2,
                           "max_new_tokens": 24}})
    chat, raw = runs / "tiny" / "eval/base/arithmetic-gsm8k-chat-0shot", runs / "tiny" / "eval/base/arithmetic-gsm8k-raw-0shot"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # as from a terminal: a job started in the background of a non-interactive shell (a CI script, `cmd &`)
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt for it
    proc = subprocess.Popen([sys.executable, "-m", "mathrl", "run", str(f), "--runs-dir", str(runs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline, first = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            done = [d for d in (chat, raw) if (d / "results.jsonl").exists() and (d / "results.jsonl").read_text().count("\n") >= 2]
            if done:
                first = done[0]
                break
            time.sleep(0.2)
        assert proc.poll() is None and first is not None, "the evaluation never started (or already ended)"
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    rec = json.loads((first / "stage.json").read_text())
    assert rec["status"] == "interrupted"
    kept = (first / "results.jsonl").read_text().splitlines()
    assert 2 <= len(kept) < 400
    other = raw if first == chat else chat
    assert not (other / "results.jsonl").exists()  # the next stage did not start


# ---------------------------------------------------------------- budgets: re-planning as stages end


@dataclasses.dataclass
class PlannedConfig:
    model: str = "base"
    max_steps: int = 100
    max_minutes: float | None = None
    seconds: float = 0.0  # how long the stage takes on the test's clock
    output_dir: str = "out"
    resume: bool = False


CLOCK = [0.0]
PLANNED_CALLS: list[PlannedConfig] = []


def run_planned(cfg: PlannedConfig) -> dict:
    PLANNED_CALLS.append(cfg)
    CLOCK[0] += cfg.seconds
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    return {"global_step": cfg.max_steps}


def test_budget_replans_the_stages_not_started_from_the_time_used(tmp_path, monkeypatch, fake_report):
    """The first stage took 400 s of a plan that gave it ~268: the second, not started yet, gets what is
    left of the budget (it kept its first plan's steps, and the run overran). The re-plan is written to
    plan.json, so a rerun rebuilds the same settings and finds every stage cached."""
    from mathrl.experiments import budget
    from mathrl.experiments import runner

    module = types.ModuleType("planned_trainer")
    module.PlannedConfig, module.run_planned = PlannedConfig, run_planned
    monkeypatch.setitem(sys.modules, "planned_trainer", module)
    monkeypatch.setitem(kinds.KINDS, "sft", ("planned_trainer", "PlannedConfig", "run_planned"))
    monkeypatch.setattr(runner, "_clock", lambda: CLOCK[0], raising=False)
    CLOCK[0] = 0.0
    PLANNED_CALLS.clear()
    cal = budget_pricing.Calibration(model="m", dtype="float32", cpu_flags="avx2", decode_tokens_per_s=50.0, decode_batch=4,
                             train_tokens_per_s=100.0, train_batch=4, seconds=3.0)

    def plan_experiment(stages, budget_s, exp_dir, console, replan=False, write=True):  # no model: fixed rates
        path = exp_dir / "plan.json"
        if path.exists():
            return json.loads(path.read_text())
        plan = budget_pricing.make_plan(stages, budget_s, cal, prompt_len=40, solution_len=10, n_questions=300)
        exp_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plan))
        return plan

    monkeypatch.setattr(budget, "plan_experiment", plan_experiment)
    runs, f = tmp_path / "runs", tmp_path / "exp.yaml"
    write_exp(f, {"budget": "10m", "stages": {"a": {"kind": "sft", "seconds": 400},
                                              "b": {"kind": "sft", "from": "a", "seconds": 10}}})
    out, text = run(f, runs)
    assert out == {"a": "ran", "b": "ran"}
    first = budget_pricing.make_plan(experiment.load_experiments(f, runs)["tiny"], 600, cal, 40, 10, 300)["stages"]
    step = first["b"]["step_s"]  # 16 rows x 51 tokens / 100 tokens/s, with the trainers' overhead
    assert step == pytest.approx(round(8.16 * budget_pricing.SFT_STEP_OVERHEAD, 2)) and PLANNED_CALLS[0].max_steps == first["a"]["max_steps"] == int(first["a"]["allocation_s"] // step)
    left = 600 * (1 - budget_pricing.MARGIN) - 400 - budget_pricing.REPORT_OVERHEAD_S - budget_pricing.STAGE_OVERHEAD_S
    assert PLANNED_CALLS[1].max_steps == int(left // step) < first["b"]["max_steps"]
    assert PLANNED_CALLS[1].max_minutes == pytest.approx(left / 60, abs=0.01)
    saved = json.loads((runs / "tiny" / "plan.json").read_text())
    assert saved["stages"]["b"]["max_steps"] == PLANNED_CALLS[1].max_steps and "re-planned after a" in text
    out, _ = run(f, runs)
    assert out == {"a": "cached", "b": "cached"} and len(PLANNED_CALLS) == 2
