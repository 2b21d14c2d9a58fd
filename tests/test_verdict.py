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
from mathrl.grading.answers import TASK_ANSWER_TYPES
from mathrl.prompts.formats import get_format

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


# ---------------------------------------------------------------- every answer type, through every path

ANSWER_TYPE_CASES = {  # type → (format, gold as a harness writes it, a right completion, a wrong one)
    "number": ("gsm8k", "#### 1,000", "3 * 333.33... so #### 1000", "#### 999"),
    "math": ("boxed", "\\sqrt{2}", "so the answer is \\boxed{2^{1/2}}", "\\boxed{2}"),
    "text": ("gsm8k", "apples", "They are fruit. #### Apples.", "#### pears"),
    "no_answer": ("gsm8k", None, "We are not told the price. #### It cannot be determined.", "#### 12"),
}


@pytest.mark.parametrize("kind", TASK_ANSWER_TYPES)
def test_each_answer_type_gets_one_verdict_in_eval_grade_and_reward(kind, tmp_path):
    """Evaluation (grade_completion), `mathrl grade` (regrade: the gold read by the task) and the
    correctness reward agree on a right and a wrong completion of every answer type a task may give."""
    import json

    from mathrl.eval.regrade import regrade
    from mathrl.tasks import get_task
    from mathrl.train.rewards import build_rewards

    fmt_name, raw_gold, right, wrong = ANSWER_TYPE_CASES[kind]
    # a task whose gold reader yields this type: GSM-Plus reads text and "no answer" golds, the base reader numbers and LaTeX
    task = get_task("gsm_plus") if kind in ("text", "no_answer") else get_task("gsm8k")
    gold, read_kind = task.read_gold(raw_gold)
    assert read_kind == kind
    fmt = get_format(fmt_name)
    (reward,), _ = build_rewards("correctness", fmt_name, task)
    path = tmp_path / "completions.jsonl"
    path.write_text("".join(json.dumps({"completion": c, "answer": raw_gold}) + "\n" for c in (right, wrong)))
    rows, summary = regrade(path, task.name, fmt_name)
    for completion, expected, row in zip((right, wrong), (True, False), rows):
        verdict = grade_completion(fmt, task, completion, gold, answer_type=kind)
        assert verdict["correct_strict"] is expected, (kind, completion, verdict)
        assert row["correct_strict"] is expected and row["answer_type"] == kind
        assert reward([completion], answer=[gold], answer_type=[kind]) == [float(expected)]
    assert summary["accuracy_strict"] == 0.5
