"""Output styles: how a question is asked, how an answer is written, where the strict grader looks.

A `Format` renders a worked solution in its style (used by SFT), builds prompts with or without the
chat template and with k shots, and says which marker the strict extractor reads. Protocol presets
(`lm-eval-gsm8k`) pin a whole prompting protocol so numbers can be compared with published ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

from mathrl import grading
from mathrl.config import opt
from mathrl.errors import MathrlError


@dataclass(frozen=True)
class Format:
    name: str
    instruction: str  # system prompt with the chat template, first paragraph without it
    template: str  # how a worked solution is written: {reasoning} and {answer}
    strict_pattern: str  # regex with one group holding the answer, read by the strict extractor
    strict_take: str = "last"  # which match counts when a completion has several
    reasoning_start: str | None = None  # explicit reasoning markers (tags, think); None: free text
    reasoning_end: str | None = None
    flexible_pattern: str | None = None  # None: last number in the completion
    description: str = ""

    @property
    def markers(self) -> list[str]:
        """Literal marker strings a tokenizer should know (SFT adds missing ones as tokens)."""
        found = re.findall(r"<[^<>{}\s]+>", self.template)
        return list(dict.fromkeys(found))

    def render(self, reasoning: str | None, answer: str) -> str:
        return self.template.format(reasoning=(reasoning or "").strip(), answer=answer).strip()

    def extract_strict(self, text: str, answer_type: str = "number") -> str | None:
        return grading.extract_strict(self.strict_region(text), self.strict_pattern, self.strict_take, answer_type)

    def strict_region(self, text: str) -> str:
        """The text with what follows the last closing marker dropped, when every strict match must end
        with that marker: matches are unchanged, but `<SOLUTION>(.*?)</SOLUTION>` over thousands of
        unclosed `<SOLUTION>` otherwise scans to the end from each one (seconds on 100k characters)."""
        last = self.markers[-1] if self.markers else None
        if text and last and self.strict_pattern.endswith(re.escape(last)) and "|" not in self.strict_pattern:
            end = text.rfind(last)
            return text[: end + len(last)] if end >= 0 else ""
        return text

    def extract_flexible(self, text: str, answer_type: str = "number") -> str | None:
        return grading.extract_flexible(text, self.flexible_pattern, answer_type)

    def has_answer(self, text: str) -> bool:
        return self.extract_strict(text) is not None

    def has_reasoning(self, text: str) -> bool:
        """True when the completion shows working before its answer (inside markers if it has any)."""
        if not text:
            return False
        if self.reasoning_start and self.reasoning_end:
            start = text.find(self.reasoning_start)
            end = text.find(self.reasoning_end, start + 1)
            return start >= 0 and end > start and text[start + len(self.reasoning_start) : end].strip() != ""
        m = re.search(self.strict_pattern, text)
        before = (text[: m.start()] if m else text).strip()
        lead = self._answer_lead()
        if lead and before.endswith(lead):  # the template's own words ("The final answer is $") are not working
            before = before[: -len(lead)]
        return len(before.strip()) >= 10

    def _answer_lead(self) -> str:
        """Fixed template text between the working and the answer marker, e.g. 'The final answer is $'."""
        dummy = self.render("", "0")
        m = re.search(self.strict_pattern, dummy)
        return dummy[: m.start()].strip() if m else ""


_NUM = grading.STRICT_NUMBER  # one number in any notation the grader reads, as the capture group
FORMATS: dict[str, Format] = {
    "gsm8k": Format(
        name="gsm8k",
        instruction="Solve the math problem step by step. On the last line, write '#### ' followed by the final numeric answer.",
        template="{reasoning}\n#### {answer}",
        strict_pattern=r"####\s*" + _NUM,
        strict_take="first",  # completions often run on into invented follow-up questions
        description="GSM8K style: working, then '#### N'",
    ),
    "tags": Format(
        name="tags",
        instruction=(
            "You are given a problem. Think about the problem and provide your working out. Place it "
            "between <start_working_out> and <end_working_out>. Then, provide your solution between "
            "<SOLUTION></SOLUTION>"
        ),
        template="<start_working_out>{reasoning}<end_working_out><SOLUTION>{answer}</SOLUTION>",
        strict_pattern=r"(?s)<SOLUTION>((?:(?!<SOLUTION>).)*?)</SOLUTION>",  # tempered: linear time
        reasoning_start="<start_working_out>",
        reasoning_end="<end_working_out>",
        description="<start_working_out>…<end_working_out><SOLUTION>N</SOLUTION>",
    ),
    "think": Format(
        name="think",
        instruction=(
            "Think through the problem inside <think> </think> tags, then give only the final numeric "
            "answer inside <answer> </answer> tags."
        ),
        template="<think>\n{reasoning}\n</think>\n<answer>{answer}</answer>",
        strict_pattern=r"(?s)<answer>((?:(?!<answer>).)*?)</answer>",
        reasoning_start="<think>",
        reasoning_end="</think>",
        description="<think>…</think><answer>N</answer>",
    ),
    "boxed": Format(
        name="boxed",
        instruction="Solve the problem step by step and put the final numeric answer in \\boxed{}.",
        template="{reasoning}\nThe final answer is $\\boxed{{{answer}}}$.",
        strict_pattern=grading.BOXED_PATTERN,  # the extractors read it with a stack parser: any depth
        description="working, then \\boxed{N}",
    ),
    "answer_is": Format(
        name="answer_is",
        instruction="Solve the problem step by step. End with 'The answer is N.' where N is the final number.",
        template="{reasoning}\nThe answer is {answer}.",
        strict_pattern=r"[Tt]he (?:final )?answer is:?\s*\**\s*" + _NUM,  # also "is **18**"
        description="working, then 'The answer is N.'",
    ),
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise MathrlError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}")
    return FORMATS[name]


@dataclass
class Protocol:
    """Everything about how a question is put to a model and read back: saved with every number."""

    format: str = opt("gsm8k", "output format: gsm8k, tags, think, boxed, answer_is (see `mathrl formats`)")
    chat_template: bool = opt(True, "wrap prompts in the model's chat template")
    chat_template_kwargs: dict[str, Any] = opt({}, "passed to apply_chat_template, e.g. enable_thinking=false")
    system_prompt: str | None = opt(None, "replace the format's instruction; '' for none")
    shots: int = opt(0, "number of k-shot examples from the train split")
    shot_selection: str = opt("random", "random (seeded, shared) | first | lm-eval (per question, lm-eval's sampler)")
    shot_seed: int = opt(1234, "seed choosing the shots")
    shot_solution: str = opt("rendered", "rendered (in the format) | raw (the task's original answer text)")
    stop: list[str] = opt([], "stop strings; none given: the format's defaults")
    strict_pattern: str | None = opt(None, "override of the format's strict extractor regex")
    strict_take: str | None = opt(None, "override: which strict match counts, first | last")
    flexible_pattern: str | None = opt(None, "override of the flexible extractor regex")
    name: str = opt("custom", "the protocol's name in results (a preset sets it)")

    def resolved_format(self) -> Format:
        fmt = get_format(self.format)
        overrides = {
            k: v
            for k, v in {
                "strict_pattern": self.strict_pattern,
                "strict_take": self.strict_take,
                "flexible_pattern": self.flexible_pattern,
            }.items()
            if v is not None
        }
        return replace(fmt, **overrides) if overrides else fmt


# lm-evaluation-harness 0.4 `gsm8k` task settings: "Question: …\nAnswer:" without chat template,
# 5 shots with their original answers, greedy, stop at "Question:", strict regex on "#### N" and
# flexible "last number-like run". Shots as stock lm-eval draws them: its default sampler, one
# random.Random(1234) per task consumed question by question in test order (evaluate.lmeval_draws),
# so the prompts equal lm-eval 0.4.13's question by question. `lm-eval-gsm8k-first5` uses the first
# 5 train examples for every question instead (lm-eval's `first_n` sampler), which keeps one shared
# prompt prefix (faster). benchmarks/lmeval_compare.py checks both against lm-eval's own prompts.
_LMEVAL_GSM8K: dict[str, Any] = dict(
    format="gsm8k",
    chat_template=False,
    system_prompt="",
    shots=5,
    shot_seed=1234,
    shot_solution="raw",
    stop=["Question:", "</s>", "<|im_end|>"],
    strict_pattern=r"#### (\-?[0-9\.\,]+)",
    strict_take="first",
    flexible_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)",
)
PROTOCOLS: dict[str, dict[str, Any]] = {
    "lm-eval-gsm8k": dict(_LMEVAL_GSM8K, name="lm-eval-gsm8k", shot_selection="lm-eval"),
    "lm-eval-gsm8k-first5": dict(_LMEVAL_GSM8K, name="lm-eval-gsm8k-first5", shot_selection="first"),
}


def preset(name: str) -> dict[str, Any]:
    if name not in PROTOCOLS:
        raise MathrlError(f"unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}")
    return dict(PROTOCOLS[name])


def raw_turn(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def build_prompt(
    question: str,
    protocol: Protocol,
    tokenizer: Any = None,
    shots: Sequence[tuple[str, str]] = (),
) -> str:
    """The text put to the model. `shots` are (question, written answer) pairs."""
    fmt = get_format(protocol.format)
    system = fmt.instruction if protocol.system_prompt is None else protocol.system_prompt
    if protocol.chat_template:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise MathrlError("this tokenizer has no chat template; use --no-chat-template")
        messages = [{"role": "system", "content": system}] if system else []
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **protocol.chat_template_kwargs
        )
    parts = [system] if system else []
    parts += [f"{raw_turn(q)} {a}" for q, a in shots]
    parts.append(raw_turn(question))
    return "\n\n".join(parts)


def default_stop(protocol: Protocol) -> list[str]:
    """Without the chat template a base-style model runs on into new questions: stop there."""
    if protocol.stop:
        return list(protocol.stop)
    return [] if protocol.chat_template else ["\nQuestion:", "\n\nQuestion"]
