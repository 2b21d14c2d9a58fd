"""top_k, min_p, repetition_penalty (SamplingFilters, declared once in engine/decoding.py): reachable from
`mathrl eval`, GRPO and PPO settings, in the decoding actually used, and in the records; old runs resume."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mathrl.cli import app
from mathrl.engine.decoding import DecodingSettings, SamplingFilters
from mathrl.errors import MathrlError
from mathrl.eval.evaluate import EvalConfig, eval_config, run_eval
from test_evaluate import make_cfg


@pytest.mark.parametrize("command", ["eval", "grpo", "ppo"])
def test_every_command_that_samples_has_the_filters(command):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    panel = out[out.index("Sampling filters"):]
    assert all(flag in panel for flag in ("--top-k", "--min-p", "--repetition-penalty"))


def test_the_fields_are_declared_once():
    from mathrl.train.settings import RLSettings

    for cls in (DecodingSettings, EvalConfig, RLSettings):
        assert issubclass(cls, SamplingFilters)
        for name in ("top_k", "min_p", "repetition_penalty"):
            assert not any(name in vars(k).get("__annotations__", {}) for k in cls.__mro__ if k is not SamplingFilters)


def test_eval_decodes_with_them_and_records_them(tiny_model_dir, tmp_path):
    greedy = run_eval(make_cfg(tiny_model_dir, tmp_path / "greedy", limit=4))
    top1 = run_eval(make_cfg(tiny_model_dir, tmp_path / "top1", limit=4, temperature=1.0, top_k=1, seed=3))
    rows = {n: [json.loads(x)["completion"] for x in (tmp_path / n / "results.jsonl").read_text().splitlines()]
            for n in ("greedy", "top1")}
    assert rows["top1"] == rows["greedy"]  # sampling from the single most likely token is greedy decoding
    assert top1["decoding"]["top_k"] == 1 and greedy["decoding"]["top_k"] == 0
    loose = run_eval(make_cfg(tiny_model_dir, tmp_path / "t", limit=4, temperature=1.0, seed=3, max_new_tokens=8))
    assert loose["decoding"]["top_k"] == 0


def test_identity_is_unchanged_at_the_defaults_so_earlier_runs_resume(tiny_model_dir, tmp_path):
    plain = make_cfg(tiny_model_dir, tmp_path).identity()
    assert not {"top_k", "min_p", "repetition_penalty"} & set(plain)
    assert make_cfg(tiny_model_dir, tmp_path, repetition_penalty=1.1).identity()["repetition_penalty"] == 1.1


def test_rl_decoding_carries_them_and_bad_values_are_refused(tiny_model_dir, tmp_path):
    from test_grpo import make_cfg as grpo_cfg

    cfg = grpo_cfg(tiny_model_dir, tmp_path, top_k=20, min_p=0.05)
    assert (cfg.decoding().top_k, cfg.decoding().min_p) == (20, 0.05)
    with pytest.raises(MathrlError, match="--min-p must be in"):
        grpo_cfg(tiny_model_dir, tmp_path, min_p=1.5).validate()
    with pytest.raises(MathrlError, match="--top-k must be >= 0"):
        eval_config({"model": str(tiny_model_dir), "top_k": -1}).sampling().validate()
