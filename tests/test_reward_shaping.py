"""Reward shaping terms (mathrl.train.reward_shaping): equal to TRL 1.16's helpers where TRL has them, parameters
from the spec, the correctness verdict reused, and a GRPO step that logs them under their names."""

from __future__ import annotations

import json
import pickle
import random

import pytest
from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment, think_format_reward

from mathrl.errors import MathrlError
from mathrl.train import reward_shaping
from mathrl.train.rewards import build_rewards


def test_overlong_and_repetition_equal_trls_helpers():
    rng = random.Random(0)
    ids = [[rng.randrange(6) for _ in range(rng.randrange(0, 40))] for _ in range(200)]
    (overlong,), _ = build_rewards("overlong[cache=8]", "gsm8k", max_completion_length=32)
    texts = ["x"] * len(ids)
    assert overlong(texts, completion_ids=ids) == get_soft_overlong_punishment(32, 8)(completion_ids=ids)
    (rep,), _ = build_rewards("repetition[ngram=2;max_penalty=-0.5]", "gsm8k")
    assert rep(texts, completion_ids=ids) == pytest.approx(get_repetition_penalty_reward(2, -0.5)(completion_ids=ids))
    assert {round(v, 3) for v in overlong(texts, completion_ids=ids)} >= {0.0, -1.0}  # both regimes were hit


def test_think_format_equals_trls():
    texts = ["<think>\nwhy\n</think>\n#### 4", "<think>a</think><think>b</think>", "no think", " <think>x</think>",
             "<think>\nunclosed"]
    (fn,), _ = build_rewards("think_format", "gsm8k")
    assert fn(texts, completion_ids=[[1]] * 5) == think_format_reward([[{"content": t}] for t in texts])
    assert fn(texts, completion_ids=[[1]] * 5)[0] == 1.0


def test_cosine_scales_the_verdict_by_length_by_hand():
    (fn,), _ = build_rewards("cosine", "gsm8k", max_completion_length=100)
    right, wrong = "so 2 + 2 = 4\n#### 4", "so 2 + 2 = 5\n#### 5"
    out = fn([right, right, right, wrong, wrong, wrong], completion_ids=[[1] * n for n in (0, 50, 100, 0, 50, 250)],
             answer=["4"] * 6)
    # right: 1.0 (short) -> 0.75 -> 0.5 (at max); wrong: -1.0 (short) -> -0.75 -> -0.5 (at and past max)
    assert out == pytest.approx([1.0, 0.75, 0.5, -1.0, -0.75, -0.5])


def test_parameters_and_their_errors():
    fns, _ = build_rewards("correctness,overlong,cosine[max=64;min_correct=0.2]:0.5", "gsm8k", max_completion_length=40)
    assert [f.__name__ for f in fns] == ["correctness", "overlong", "cosine[max=64;min_correct=0.2]"]
    assert fns[1].params == {"max": 40, "cache": 8} and fns[2].params["max"] == 64
    pickle.dumps(fns)  # TRL may hand rewards to worker processes
    for spec, message in [("overlong[size=3]", "unknown parameter 'size'"), ("repetition[ngram=x]", "not a number"),
                          ("overlong[cache=50]", "cache must be in"), ("overlong", "needs a positive max length"),
                          ("overlong[cache=2", "brackets"), ("repetition[ngram=0]", "ngram must be")]:
        with pytest.raises(MathrlError, match=message.replace("[", r"\[")) as e:
            build_rewards(spec, "gsm8k", max_completion_length=None if spec == "overlong" else 40)
        assert "\n" not in str(e.value)


def test_rl_settings_refuse_bad_shaping_before_loading(tiny_model_dir, tmp_path):
    from test_grpo import make_cfg

    with pytest.raises(MathrlError, match="cache must be in"):
        make_cfg(tiny_model_dir, tmp_path, rewards="correctness,overlong[cache=99]", max_completion_length=8).validate()


def test_a_grpo_step_logs_each_shaping_term_under_its_name(tiny_model_dir, tmp_path):
    from test_grpo import make_cfg
    from mathrl.train.grpo import run_grpo

    spec = "correctness,overlong[cache=4],repetition,cosine,think_format:0.1"
    record = run_grpo(make_cfg(tiny_model_dir, tmp_path, rewards=spec, max_completion_length=8))
    row = next(json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines() if '"reward"' in x)
    for name in ("overlong[cache=4]", "repetition", "cosine", "think_format"):
        assert f"rewards/{name}/mean" in row, name
    assert -1.0 <= row["rewards/overlong[cache=4]/mean"] <= 0.0 and -1.0 <= row["rewards/cosine/mean"] <= 1.0
    assert record["global_step"] == 1
    assert record["rewards"][1] == {"name": "overlong[cache=4]", "weight": 1.0, "params": {"max": 8, "cache": 4}}
    assert record["rewards"][4]["weight"] == pytest.approx(0.1) and "params" not in record["rewards"][0]
