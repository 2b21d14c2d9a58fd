"""End to end with the embedded SmolLM2-135M (real weights, converted once into the mathrl cache)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mathrl.engine import models
from mathrl.tasks import get_task, subsample

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"

pytestmark = pytest.mark.integration


def _embedded_available() -> bool:
    cached = models.cache_dir() / "smollm2-135m" / "model.safetensors"
    return cached.exists() or importlib.util.find_spec(models.EMBEDDED["smollm2-135m"].package) is not None


requires_model = pytest.mark.skipif(not _embedded_available(), reason="embedded smollm2-135m not installed or cached")
requires_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").exists(), reason=f"no GSM8K data at {GSM8K_DIR}")


def run_eval_cli(out: Path, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               MATHRL_DATA_DIR=str(GSM8K_DIR),
               # one thread: on a shared 2-core machine two torch threads fight other jobs and run ~10x slower
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "mathrl", "eval", "--model", "smollm2-135m", "--output-dir", str(out), *args],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("results.jsonl", "results.csv", "summary.json"):
        assert (out / name).exists(), name
    assert f"results: {out / 'summary.json'}" in proc.stdout
    return json.loads((out / "summary.json").read_text())


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@requires_model
def test_eval_arithmetic_embedded(tmp_path):
    out = tmp_path / "arith"
    summary = run_eval_cli(out, "--task", "arithmetic", "--limit", "8", "--max-new-tokens", "48")
    rows = rows_of(out)
    expected = {s.id: s for s in subsample(get_task("arithmetic").load_test(), 8, 1234)}
    assert sorted(r["id"] for r in rows) == sorted(expected)
    assert all(r["gold"] == expected[r["id"]].answer for r in rows)
    assert summary["n"] == 8 and summary["model"]["kind"] == "embedded" and summary["model"]["revision"]
    assert summary["protocol"]["chat_template"] is True
    assert all(r["prompt"].startswith("<|im_start|>system") for r in rows)  # SmolLM2's ChatML template
    # a real instruct model writes numbers: most completions hold one
    assert all(r["completion"].strip() for r in rows)
    assert sum(r["pred_flexible"] is not None for r in rows) >= 4
    assert all(0 < r["num_tokens"] <= 48 for r in rows)
    assert summary["generation"]["generated_tokens"] == sum(r["num_tokens"] for r in rows)


@requires_model
@requires_gsm8k
def test_eval_gsm8k_embedded(tmp_path):
    out = tmp_path / "gsm8k"
    summary = run_eval_cli(out, "--task", "gsm8k", "--limit", "4", "--max-new-tokens", "48")
    rows = rows_of(out)
    raw = [json.loads(line) for line in (GSM8K_DIR / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and summary["n"] == 4
    for r in rows:
        assert r["id"].startswith("gsm8k-main-test-")
        source = raw[int(r["id"].rsplit("-", 1)[1])]
        assert r["question"] == source["question"].strip()
        assert r["gold"] == source["answer"].rsplit("####", 1)[1].strip().replace(",", "")


@requires_model
@requires_gsm8k
def test_eval_lm_eval_protocol_embedded(tmp_path):
    out = tmp_path / "lmeval"
    summary = run_eval_cli(out, "--task", "gsm8k", "--protocol", "lm-eval-gsm8k-first5", "--limit", "2", "--max-new-tokens", "32")
    rows = rows_of(out)
    first = json.loads((GSM8K_DIR / "train.jsonl").read_text().splitlines()[0])
    assert len(rows) == 2
    assert summary["protocol"]["name"] == "lm-eval-gsm8k-first5" and summary["protocol"]["shots"] == 5
    assert "Question:" in summary["protocol"]["stop"]
    for r in rows:
        assert r["prompt"].startswith(f"Question: {first['question']}\nAnswer: {first['answer']}\n\n")
        assert r["prompt"].count("Question: ") == 6 and r["prompt"].endswith(f"Question: {r['question']}\nAnswer:")
        assert "<|im_start|>" not in r["prompt"]
        assert "Question:" not in r["completion"]  # generation stopped at the next question
