"""Rewards and evaluation give one verdict: for every completion and protocol, the correctness reward
equals the evaluation strict verdict, on the text evaluation would keep (cut at the protocol's stops)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mathrl.prompts import formats
from mathrl.engine.decoding import cut_at_stop
from mathrl.train.rewards import build_rewards
from mathrl.tasks import Task
from mathrl.grading.verdict import grade_completion

PROTOCOLS = [formats.Protocol(format=f, chat_template=c) for f in formats.FORMATS for c in (True, False)]
PIECES = ["<SOLUTION>", "</SOLUTION>", "<start_working_out>", "<end_working_out>", "<answer>", "</answer>",
          "<think>", "</think>", "#### ", "The answer is ", "\\boxed{", "}", "$", "\nQuestion:", "\n\nQuestion",
          "Question:", "\n", " ", "5", "2", "-", "12", "1,000", "3/4", ".", "x", "<|im_end|>"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROTOCOLS), st.lists(st.sampled_from(PIECES), max_size=14), st.sampled_from(["5", "2", "12", "1000", "-5"]))
def test_correctness_reward_equals_the_eval_strict_verdict(protocol, pieces, gold):
    completion = "".join(pieces)
    stops = formats.default_stop(protocol)
    fmt = protocol.resolved_format()
    (correctness, flexible), _ = build_rewards("correctness,correctness_flexible", fmt, None, stops)
    # evaluation grades the text its generation kept: everything before the first stop string
    kept, _ = cut_at_stop(completion, stops)
    verdict = grade_completion(fmt, None, kept, gold)
    assert correctness([completion], answer=[gold]) == [float(verdict["correct_strict"])]
    assert flexible([completion], answer=[gold]) == [float(verdict["correct_flexible"])]


def test_the_run_on_example_from_the_issue(tiny_model_dir, tmp_path):
    """Without the chat template evaluation stops at '\\nQuestion:'; GRPO's reward must see the same text."""
    from mathrl import config as cfgmod
    from mathrl.train.grpo import GRPORunConfig, build_trainer

    cfg = cfgmod.build(GRPORunConfig, dict(model=str(tiny_model_dir), task="arithmetic", task_config="1", prompts=4,
                                           prompts_per_step=2, num_generations=2, max_completion_length=4, max_steps=1,
                                           dtype="fp32", format="tags", chat_template=False, rewards="correctness",
                                           output_dir=str(tmp_path / "g")))
    trainer, _, _ = build_trainer(cfg)
    text = "<start_working_out>2+3<end_working_out><SOLUTION>5</SOLUTION>\nQuestion: what is 1+1?<SOLUTION>2</SOLUTION>"
    assert trainer.reward_funcs[0]([text], answer=["5"]) == [1.0]
    proto = formats.Protocol(format="tags", chat_template=False)
    assert grade_completion(proto.resolved_format(), None, cut_at_stop(text, formats.default_stop(proto))[0], "5")["correct_strict"]


class EvenOnly(Task):
    """A task whose own checker differs from the default: only even golds can be right."""

    name = "even_only"

    def check_answer(self, pred, gold, answer_type=None):
        return pred == gold and int(gold) % 2 == 0


def test_rewards_use_the_tasks_own_checker():
    fmt = formats.get_format("gsm8k")
    (correctness,), _ = build_rewards("correctness", fmt, EvenOnly(), ())
    assert correctness(["so #### 4", "so #### 5"], answer=["4", "5"]) == [1.0, 0.0]
    assert grade_completion(fmt, EvenOnly(), "so #### 5", "5")["correct_strict"] is False


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: f"{p.format}-{'chat' if p.chat_template else 'raw'}")
def test_gold_completions_score_one(protocol):
    fmt = protocol.resolved_format()
    (correctness,), _ = build_rewards("correctness", fmt, None, formats.default_stop(protocol))
    text = fmt.render("2 + 3 = 5", "5")
    assert correctness([text + "\nQuestion: next?\n#### 9"], answer=["5"]) == [1.0]
