"""Suites on the tiny model: every task of generalisation offline, one model load, suite.json,
per-task formats, resume, custom task lists and bad names."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mathrl.engine import models
from mathrl.cli import app
from mathrl.errors import MathrlError
from mathrl.eval.evaluate import EvalConfig
from mathrl.eval.suite import SUITES, parse_tasks, resolve, run_suite

runner = CliRunner()


def base_cfg(model_dir, out, data_dir, **kw) -> EvalConfig:
    values = dict(model=str(model_dir), data_dir=str(data_dir), limit=2, max_new_tokens=4, dtype="fp32",
                  backend="hf", progress=False, output_dir=str(out), batch_size=4)
    return EvalConfig(**(values | kw))


@pytest.fixture
def count_loads(monkeypatch):
    loads = []
    real = models.load_model

    def load_model(*args, **kwargs):
        loads.append(args[0] if args else kwargs.get("name"))
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", load_model)
    return loads


def test_generalisation_suite_runs_every_task_once_loaded(tiny_model_dir, suite_data_dir, tmp_path, count_loads):
    out = tmp_path / "suite"
    doc = run_suite(base_cfg(tiny_model_dir, out, suite_data_dir), "generalisation")
    names = [e.label for e in SUITES["generalisation"]]
    assert doc["tasks_requested"] == names and list(doc["tasks"]) == names and doc["complete"]
    assert count_loads == [str(tiny_model_dir)]  # loaded once, reused by every task
    saved = json.loads((out / "suite.json").read_text())
    assert saved["tasks"] == json.loads(json.dumps(doc["tasks"]))
    for name in names:
        summary = json.loads((out / name / "summary.json").read_text())
        entry = saved["tasks"][name]
        for key in ("n", "accuracy_strict", "ci95_strict", "accuracy_flexible", "ci95_flexible", "treatments"):
            assert entry[key] == summary[key], (name, key)
        assert entry["n"] == 2 and summary["task"]["name"] == name and entry["status"] == "ran"
        assert summary["task"]["limit"] == 2 and summary["protocol"]["format"] == entry["format"]
        rows = [json.loads(line) for line in (out / name / "results.jsonl").read_text().splitlines()]
        assert {r["answer_type"] for r in rows} <= {"number", "math", "text", "no_answer"}
        assert sum(v for k, v in entry["treatments"].items() if k != "excluded") == 2
    assert saved["tasks"]["math500"]["format"] == "boxed" and saved["tasks"]["svamp"]["format"] == "gsm8k"
    math_rows = [json.loads(line) for line in (out / "math500" / "results.jsonl").read_text().splitlines()]
    assert all("\\boxed" in r["prompt"] and "level" in r and "subject" in r for r in math_rows)

    # a rerun skips the finished tasks without loading the model
    again = run_suite(base_cfg(tiny_model_dir, out, suite_data_dir), "generalisation")
    assert count_loads == [str(tiny_model_dir)]
    assert {e["status"] for e in again["tasks"].values()} == {"done earlier"}
    assert [e["accuracy_strict"] for e in again["tasks"].values()] == [e["accuracy_strict"] for e in doc["tasks"].values()]


def test_half_done_suite_resumes_the_missing_tasks(tiny_model_dir, suite_data_dir, tmp_path, count_loads):
    out = tmp_path / "suite"
    run_suite(base_cfg(tiny_model_dir, out, suite_data_dir), None, "svamp,gsm_hard")
    (out / "gsm_hard" / "summary.json").unlink()  # as if killed after its last batch
    lines = (out / "svamp" / "results.jsonl").read_text().splitlines()
    (out / "svamp" / "results.jsonl").write_text(lines[0] + "\n")  # and svamp half written
    (out / "svamp" / "summary.json").unlink()
    doc = run_suite(base_cfg(tiny_model_dir, out, suite_data_dir), None, "svamp,gsm_hard")
    assert doc["suite"] == "custom" and [e["n"] for e in doc["tasks"].values()] == [2, 2]
    assert len((out / "svamp" / "results.jsonl").read_text().splitlines()) == 2
    assert count_loads == [str(tiny_model_dir)] * 2  # the second run generated one svamp question


def test_explicit_format_applies_to_every_task(tiny_model_dir, suite_data_dir, tmp_path):
    cfg = base_cfg(tiny_model_dir, tmp_path / "s", suite_data_dir)
    cfg.protocol.format = "answer_is"
    doc = run_suite(cfg, None, "math500,mawps", format_given=True)
    assert {e["format"] for e in doc["tasks"].values()} == {"answer_is"}


def test_suite_names_and_early_errors(tiny_model_dir, suite_data_dir, tmp_path):
    with pytest.raises(MathrlError, match="unknown suite 'nope'; choose one of: generalisation"):
        resolve("nope", None)
    with pytest.raises(MathrlError, match="unknown task 'nope'"):
        parse_tasks("svamp,nope")
    with pytest.raises(MathrlError, match="given twice"):
        parse_tasks("svamp,svamp")
    assert [e.label for e in parse_tasks("math:algebra,svamp")] == ["math.algebra", "svamp"]
    # a malformed row in the last task fails before anything is generated
    (suite_data_dir / "mawps").unlink()
    (suite_data_dir / "mawps").mkdir()
    (suite_data_dir / "mawps" / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    out = tmp_path / "s"
    with pytest.raises(MathrlError, match=r"mawps/test\.jsonl:1: missing field 'answer'"):
        run_suite(base_cfg(tiny_model_dir, out, suite_data_dir), None, "svamp,mawps")
    assert not (out / "svamp").exists()
    with pytest.raises(MathrlError, match="needs a train split"):
        run_suite(base_cfg(tiny_model_dir, out, suite_data_dir, protocol=_shots(3)), None, "gsm8k,svamp")
    assert not (out / "gsm8k").exists()


def _shots(k):
    from mathrl.prompts.formats import Protocol

    return Protocol(shots=k)


def test_cli_suite(tiny_model_dir, suite_data_dir, tmp_path):
    out = tmp_path / "cli"
    res = runner.invoke(app, ["eval", "--suite-tasks", "asdiv,math500", "--model", str(tiny_model_dir), "--data-dir",
                              str(suite_data_dir), "--limit", "2", "--max-new-tokens", "4", "--dtype", "fp32",
                              "--backend", "hf", "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert f"results: {out / 'suite.json'}" in res.output and "math500" in res.output and "boxed" in res.output
    assert set(json.loads((out / "suite.json").read_text())["tasks"]) == {"asdiv", "math500"}
    res = runner.invoke(app, ["eval", "--suite", "generalisation", "--task", "svamp", "--output-dir", str(out)])
    assert res.exit_code != 0 and "drop --task" in str(res.exception)


def test_an_eval_yaml_may_name_the_suite(tiny_model_dir, suite_data_dir, tmp_path):
    out = tmp_path / "yaml"
    cfg = tmp_path / "suite.yaml"
    cfg.write_text(f"suite_tasks: asdiv\nmodel: {tiny_model_dir}\ndata_dir: {suite_data_dir}\nlimit: 2\n"
                   f"max_new_tokens: 4\ndtype: fp32\nbackend: hf\noutput_dir: {out}\n")
    res = runner.invoke(app, ["eval", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert set(json.loads((out / "suite.json").read_text())["tasks"]) == {"asdiv"}
