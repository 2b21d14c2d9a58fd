"""The `mathrl` command: grade, data, listings, help, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mathrl.cli import app
from mathrl.cli.common import parse_json_option, parse_kv
from mathrl.errors import MathrlError

REPO_ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=True)


def mathrl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m mathrl ...` in a subprocess: exercises main()'s error handler and exit codes."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "mathrl", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO_ROOT, timeout=120)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


GRADE_ROWS = [
    # strict and flexible right; gold written GSM8K-style with a thousands separator
    {"completion": "10 * 100 = 1000\n#### 1000", "answer": "10*100=<<10*100=1000>>1000\n#### 1,000"},
    # no '####': strict finds nothing, flexible reads the last number
    {"completion": "I think it is 7", "answer": "#### 7"},
    # strict reads the first marker (5), flexible the last number (6)
    {"completion": "#### 5 and then 6", "answer": "so\n#### 6"},
    # nothing to read
    {"completion": "no idea", "answer": "3"},
]


def test_grade_output_and_json(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", GRADE_ROWS)
    out = tmp_path / "graded.jsonl"
    res = invoke("grade", "--input", str(inp), "--output", str(out), "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert {k: summary[k] for k in ("n", "accuracy_strict", "accuracy_flexible")} == {"n": 4, "accuracy_strict": 0.25, "accuracy_flexible": 0.75}
    assert summary["treatments"] == {"number": 4}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    verdicts = [(r["pred_strict"], r["pred_flexible"], r["correct_strict"], r["correct_flexible"]) for r in rows]
    assert verdicts == [("1000", "1000", True, True), (None, "7", False, True), ("5", "6", False, True),
                        (None, None, False, False)]
    for r, original in zip(rows, GRADE_ROWS):
        assert r["completion"] == original["completion"] and r["answer"] == original["answer"]  # fields kept


def test_grade_gold_field_and_human_output(tmp_path):
    rows = [{"text": "<answer>-3</answer>", "gold": "-3", "answer": "999"},
            {"text": "<answer>4</answer> then 5", "gold": "5", "answer": "4"}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    res = invoke("grade", "--input", str(inp), "--gold-field", "gold", "--completion-field", "text",
                 "--format", "think", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert {k: summary[k] for k in ("n", "accuracy_strict", "accuracy_flexible")} == {"n": 2, "accuracy_strict": 0.5, "accuracy_flexible": 1.0}
    res = invoke("grade", "--input", str(inp), "--completion-field", "text", "--format", "think")  # gold: 'answer'
    assert res.exit_code == 0 and "n=2" in res.output and "strict=50.0%" in res.output and "flexible=0.0%" in res.output
    # without an 'answer' field, 'gold' is used
    inp2 = write_jsonl(tmp_path / "in2.jsonl", [{"completion": "#### 8", "gold": "8"}])
    assert json.loads(invoke("grade", "--input", str(inp2), "--json").output)["accuracy_strict"] == 1.0


def test_grade_non_numeric_gold(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"completion": "#### 2", "answer": "\\sqrt{2}"}])
    assert json.loads(invoke("grade", "--input", str(inp), "--json").output)["accuracy_strict"] == 0.0


def test_grade_float_gold_in_exponent_form(tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"completion": "#### 3.2", "answer": 3.2e16}])
    assert json.loads(invoke("grade", "--input", str(inp), "--json").output)["accuracy_strict"] == 0.0


def test_grade_errors_are_one_line_with_exit_2(tmp_path):
    inp = write_jsonl(tmp_path / "bad.jsonl", [GRADE_ROWS[0], GRADE_ROWS[1], '{"completion": "x", "answer": '])
    proc = mathrl("grade", "--input", str(inp))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert f"{inp}:3:" in proc.stderr and "invalid JSON" in proc.stderr
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"completion": "#### 1"}])
    proc = mathrl("grade", "--input", str(missing))
    assert proc.returncode == 2 and f"{missing}:1: missing field" in proc.stderr
    proc = mathrl("grade", "--input", str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


@pytest.mark.parametrize(
    "args, expect",
    [
        (["grade", "--input", "IN", "--task", "nope"], "unknown task 'nope'"),
        (["grade", "--input", "IN", "--format", "nope"], "unknown format 'nope'"),
        (["eval", "--task", "nope", "--output-dir", "OUT"], "unknown task 'nope'"),
        (["eval", "--format", "nope", "--output-dir", "OUT"], "unknown format 'nope'"),
        (["eval", "--protocol", "nope", "--output-dir", "OUT"], "unknown protocol 'nope'"),
        (["eval", "--task", "arithmetic", "--task-arg", "novalue", "--output-dir", "OUT"], "--task-arg expects key=value"),
        (["data", "linear-equations", "--n", "0", "--out", "OUT/x.json"], "--n must be at least 1"),
    ],
)
def test_unknown_names_exit_2(tmp_path, args, expect):
    inp = write_jsonl(tmp_path / "in.jsonl", GRADE_ROWS)
    args = [a.replace("IN", str(inp)).replace("OUT", str(tmp_path / "out")) for a in args]
    proc = mathrl(*args)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expect in err
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_data_linear_equations(tmp_path):
    out = tmp_path / "x.json"
    res = invoke("data", "linear-equations", "--n", "20", "--seed", "0", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"wrote 20 samples to {out}" in res.output
    data = json.loads(out.read_text())
    assert len(data) == 20 and len({d["question"] for d in data}) == 20
    assert set(data[0]) == {"id", "question", "answer", "solution", "meta"}
    assert all(d["meta"]["size"] == 2 for d in data)
    # same seed, same file; the default split is train, disjoint from test
    out2 = tmp_path / "y.jsonl"
    assert invoke("data", "linear-equations", "--n", "20", "--seed", "0", "--out", str(out2)).exit_code == 0
    assert [json.loads(line) for line in out2.read_text().splitlines()] == data
    out3 = tmp_path / "t.json"
    assert invoke("data", "linear-equations", "--n", "20", "--split", "test", "--variables", "3", "--out", str(out3)).exit_code == 0
    test = json.loads(out3.read_text())
    assert all(d["meta"]["size"] == 3 for d in test) and not {d["question"] for d in test} & {d["question"] for d in data}


def test_data_arithmetic(tmp_path):
    out = tmp_path / "a.jsonl"
    res = invoke("data", "arithmetic", "--n", "12", "--levels", "2", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and {r["meta"]["level"] for r in rows} == {2}


def test_listings():
    res = invoke("tasks")
    assert res.exit_code == 0
    for name in ("arithmetic", "gsm8k", "jsonl", "linear_equations"):
        assert name in res.output
    res = invoke("formats")
    assert res.exit_code == 0
    for name in ("gsm8k", "tags", "think", "boxed", "answer_is", "lm-eval-gsm8k"):
        assert name in res.output


def _commands(group, prefix=()):
    import typer.main

    click_group = typer.main.get_command(group)
    out = [list(prefix)]

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            out.append(path + [name])
            walk(sub, path + [name])

    walk(click_group, list(prefix))
    return out


def test_help_on_every_command():
    commands = _commands(app)
    assert ["eval"] in commands and ["grade"] in commands and ["data", "linear-equations"] in commands
    for cmd in commands:
        res = invoke(*cmd, "--help")
        assert res.exit_code == 0, (cmd, res.output)
        assert "Usage" in res.output


def test_help_via_python_m():
    proc = mathrl("--help")
    assert proc.returncode == 0 and "eval" in proc.stdout and "grade" in proc.stdout


def test_eval_command_on_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    res = invoke("eval", "--model", str(tiny_model_dir), "--task", "linear_equations", "--limit", "2",
                 "--max-new-tokens", "4", "--dtype", "fp32", "--backend", "hf", "--format", "tags",
                 "--task-arg", "test_size=20", "--output-dir", str(out))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["protocol"]["format"] == "tags"
    assert summary["task"]["test_size"] == 20
    assert f"results: {out / 'summary.json'}" in res.output


def test_parse_helpers():
    assert parse_kv(["a=1", "b=x", "c=true", "d=a=b"], "--task-arg") == {"a": 1, "b": "x", "c": True, "d": "a=b"}
    assert parse_kv(None, "--x") == {}
    with pytest.raises(MathrlError, match="key=value"):
        parse_kv(["=3"], "--task-arg")
    assert parse_json_option('{"enable_thinking": false}', "--k") == {"enable_thinking": False}
    assert parse_json_option(None, "--k") == {}
    with pytest.raises(MathrlError, match="not valid JSON"):
        parse_json_option("{", "--k")
    with pytest.raises(MathrlError, match="JSON object"):
        parse_json_option("[1]", "--k")


def test_chat_answers_several_questions_in_one_call(tiny_model_dir):
    """`mathrl chat MODEL q1 q2`: each question echoed, answered and graded (the before/after recipe)."""
    res = invoke("chat", "--model", str(tiny_model_dir), "--max-new-tokens", "4", "--no-chat-template",
                 "What is 1 + 1?", "What is 2 + 3?")
    assert res.exit_code == 0, res.output
    assert "> What is 1 + 1?" in res.output and "> What is 2 + 3?" in res.output
    assert res.output.count("answer (strict):") == 2


@pytest.mark.parametrize("first", ["MODEL_DIR", "Qwen/Qwen2.5-0.5B-Instruct", "smollm2-135m"])
def test_chat_with_a_model_as_the_first_question_exits_with_a_hint(tiny_model_dir, first):
    """`mathrl chat runs/demo/grpo "q"` answered "runs/demo/grpo" as a question with the default model."""
    first = str(tiny_model_dir) if first == "MODEL_DIR" else first
    proc = mathrl("chat", first, "What is 1 + 1?")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"did you mean --model {first}?" in lines[0] and "Traceback" not in proc.stderr
