"""The budget's arithmetic: what a stage costs at calibrated rates, and plans built from those costs.

Pure functions of the stages' settings, a `Calibration` and the measured data shapes: no model,
task or file is touched here (`mathrl.experiments.budget` measures, `mathrl.experiments.budget_shapes` sizes the data).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from mathrl.errors import MathrlError

# Dynamic sampling regenerates the groups whose completions all got one reward: measured on the
# embedded model, 0.25-1.0 of the groups as drawn (docs/evidence.md); priced at half per round.
REFILL_SHARE = 0.5
# oversample 1.0 (256 rows in one call instead of 128) made a GRPO step's generation 1.9x as long on a
# 2-core AVX512-BF16 CPU (31-35 s vs 16-19 s, 2026-12-03, docs/evidence.md): decode is about linear in rows
OVERSAMPLE_SHARE = 0.9
STAGE_OVERHEAD_S = 8.0  # loading a model and tokenizer, writing outputs: measured 4-10 s for the 135M model
REPORT_OVERHEAD_S = 15.0
# A budget is a limit, not a target: plans aim this share under it. Recorded estimates erred by -8% to +7%
# on an idle machine (docs/evidence.md); the demo planned to the full 20 minutes took 20.2.
MARGIN = 0.05
SFT_LENGTH = 1.3  # a model trained here by SFT answers in ~this x its training solutions' length
# GRPO/PPO completions of an SFT-trained policy: this x the SFT solution length. The five demo GRPO stages on
# record (temperature 0.7, 2026-12-02/03) wrote 1.08-1.13x; 1.5 priced their generation ~40% too long.
RL_LENGTH = 1.1
# The calibration keeps the fastest of its training steps; the trainers' steps also carry data collation,
# logging, checkpoints and the machine's noise: the five demo SFT stages on record ran 1.09-1.56x (median
# 1.30) their priced step, so all of them stopped at max_minutes before their schedule's last step.
SFT_STEP_OVERHEAD = 1.3
# GRPO's training pass runs ~128 completions and its 16 prompts in one micro-batch, larger matmuls than the
# calibration's 16-row SFT step: the same five stages ran it at 0.69-1.12x (median 0.86) of its price at the
# calibrated rate (at their actual completion lengths). PPO has no such records and is priced at the rate.
GRPO_TRAIN_SHARE = 0.86
# a forward pass without gradient (GRPO's reference and old-policy log-probs) is ~1/3 of a training
# step's forward + backward (2 of the ~6 FLOPs per parameter and token)
FORWARD_SHARE = 1 / 3
MIN_SHARED_PREFIX = 32  # HFGenerator's min_shared_prefix: a shorter common prefix is prefilled per row
PLANNED = ("max_steps", "max_minutes")  # what a plan sets: not part of the settings a plan is made for


@dataclass
class Calibration:
    """Rates measured on this machine, with what they were measured on."""

    model: str
    dtype: str
    cpu_flags: str
    decode_tokens_per_s: float  # generated tokens/s at `decode_batch` rows, decode steps only
    decode_batch: int
    train_tokens_per_s: float  # tokens/s of forward + backward + optimizer step, every position projected
    train_batch: int
    seconds: float
    prefill_s_per_row: float = 0.0  # prompt prefill per row at `decode_batch` rows (shared prefix computed once)
    head_fraction: float = 0.0  # share of a token's training FLOPs in the LM head (vocab x hidden)
    prefill_tokens_per_row: float = 0.0  # prompt tokens per row that prefill computed (0: not recorded)
    context_tokens: float = 0.0  # mean prompt length of the decode measurement's rows (0: not recorded)
    # the same measurements at the longest evaluation prompts (k-shot contexts); 0: not measured
    long_context_tokens: float = 0.0
    long_decode_tokens_per_s: float = 0.0
    long_prefill_s_per_row: float = 0.0
    long_prefill_tokens_per_row: float = 0.0


def _interpolate(cal: Calibration, short: float, long: float, context: float) -> float:
    """A per-token cost at `context` tokens: linear between the short and long measurements (never
    below the cheaper one); the short one alone when the long one was not taken."""
    if not cal.long_context_tokens or cal.long_context_tokens <= cal.context_tokens or long <= 0:
        return short
    slope = (long - short) / (cal.long_context_tokens - cal.context_tokens)
    return max(min(short, long), short + slope * (context - cal.context_tokens))


def decode_s_per_token(cal: Calibration, context: float) -> float:
    long = 1 / cal.long_decode_tokens_per_s if cal.long_decode_tokens_per_s else 0.0
    return _interpolate(cal, 1 / cal.decode_tokens_per_s, long, context)


def prefill_seconds(cal: Calibration, tokens: float, context: float, calibrated_tokens: float = 0.0) -> float:
    """Prefill of one row computing `tokens` prompt tokens (of a `context`-token prompt).
    `calibrated_tokens`: the tokens per row of the calibration's prefill when it did not record them."""
    unit = cal.prefill_tokens_per_row or calibrated_tokens
    if unit <= 0:
        return cal.prefill_s_per_row  # nothing to scale by: a row as measured
    long = cal.long_prefill_s_per_row / cal.long_prefill_tokens_per_row if cal.long_prefill_tokens_per_row else 0.0
    return tokens * _interpolate(cal, cal.prefill_s_per_row / unit, long, context)


def _sizes(stage: Any) -> dict[str, Any]:
    return stage.config.__dict__ if stage.config is not None else stage.settings


def sft_trained(name: str | None, by_name: dict[str, Any]) -> bool:
    """Whether the model a stage produced (following `from` back to the base) went through SFT here."""
    while name is not None and name in by_name:
        st = by_name[name]
        if st.kind == "sft":
            return True
        name = st.deps[0] if st.deps else None
    return False


def expected_length(stage: Any, by_name: dict[str, Any], solution_len: float) -> float:
    """Completion tokens an evaluation expects: a model SFT-trained here writes ~`SFT_LENGTH` x its
    solutions; any other (the base, an outside model, RL from either) is priced at `max_new_tokens`."""
    limit = _sizes(stage).get("max_new_tokens", 512)
    trained = sft_trained(stage.deps[0] if stage.deps else None, by_name)
    return min(limit, SFT_LENGTH * solution_len) if trained else limit


def eval_seconds(stage: Any, cal: Calibration, completion_len: float | None, n_default: int,
                 shape: dict[str, Any] | None = None, calibrated_tokens: float = 0.0) -> float:
    """Questions x completions x (prefill + expected tokens at the decode rate for that context).
    `completion_len`: expected completion tokens (`expected_length`; None: `max_new_tokens`); `shape`: the evaluation's
    measured {questions, prompt_tokens, unique_tokens} (budget_shapes), else `limit` or `n_default`
    questions at the calibration's prompt length."""
    s = _sizes(stage)
    k = s.get("completions_per_question") or s.get("num_samples") or 1
    if shape:
        n, context, unique = shape["questions"], shape["prompt_tokens"], shape["unique_tokens"]
    else:
        n, context = s.get("limit") or n_default, cal.context_tokens
        unique = cal.prefill_tokens_per_row or calibrated_tokens
    limit = s.get("max_new_tokens", 512)
    per = limit if completion_len is None else min(limit, completion_len)
    rows = n * k
    decode = per * decode_s_per_token(cal, context + per / 2)
    return STAGE_OVERHEAD_S + rows * (prefill_seconds(cal, unique, context, calibrated_tokens) + decode)


def _grpo_rows(s: dict[str, Any]) -> tuple[float, float, float]:
    """(completions trained, generated, prompts generated) per optimizer step, as TRL 1.16 runs
    mathrl's settings: per_device_train_batch_size = batch_size (default prompts_per_step x
    num_generations) completions per micro-step, `grad_accum` micro-steps per optimizer step, one
    generation of per-device batch x steps_per_generation (= grad_accum) completions every
    steps_per_generation x num_iterations micro-steps, i.e. every `num_iterations` optimizer steps."""
    group = s.get("num_generations", 8)
    per_device = s.get("batch_size") or s.get("prompts_per_step", 4) * group
    trained = per_device * s.get("grad_accum", 1)
    generated = trained / max(1, s.get("num_iterations", 1))
    return trained, generated, generated / group


def step_seconds(stage: Any, cal: Calibration, prompt_len: float, solution_len: float, shared_len: float = 0.0,
                 untrained: bool = False) -> float:
    """Seconds per optimizer step. The fast trainers run a prefix that every row shares once per micro-batch
    (SFT: the system prompt and chat header, `shared_len` tokens) and each distinct prompt once per group
    (GRPO), so those tokens are counted once. RL from a model not SFT-trained here (`untrained`) is priced
    at the full `max_completion_length` (as its evaluations are: base models ramble).

    GRPO: generation is the step's share of a generation batch (`_grpo_rows`: 1/num_iterations of one),
    with dynamic sampling's `oversample` adding `OVERSAMPLE_SHARE` of it per unit (the extra rows share the
    decode steps) and its `max_refills` rounds regenerating `REFILL_SHARE` of it each (not counted when
    oversample >= 1 leaves them little to do); the training
    pass covers every completion of every micro-step; each generation batch also gets a forward pass
    for the old policy's log-probs (num_iterations > 1) and one of the reference model (beta > 0)."""
    s = _sizes(stage)
    fast = s.get("fast", True)
    h = cal.head_fraction if fast else 0.0  # the fast trainers project only labelled positions onto the vocabulary

    def train_s(body_tokens: float, labelled: float) -> float:
        return (body_tokens * (1 - h) + labelled * h) / cal.train_tokens_per_s

    if stage.kind == "sft":
        batch = s.get("batch_size", 16)
        shared = shared_len if fast else 0.0
        tokens = batch * (prompt_len + solution_len + 1) - (batch - 1) * shared
        labelled = tokens if s.get("loss") == "full" else batch * (solution_len + 1)
        return SFT_STEP_OVERHEAD * s.get("grad_accum", 1) * train_s(tokens, labelled)
    limit = s.get("max_completion_length", 256)
    completion = limit if untrained else min(limit, RL_LENGTH * solution_len)
    if stage.kind == "grpo":
        trained, generated, prompts = _grpo_rows(s)
        group = s.get("num_generations", 8)
    else:  # PPO: one rollout batch per step, ppo_epochs passes plus the rollout's own forward
        group = s.get("rollouts_per_prompt", 1)
        prompts = s.get("prompts_per_step", 4)
        trained = generated = prompts * group
    generate = prompts * cal.prefill_s_per_row + generated * completion / cal.decode_tokens_per_s
    if stage.kind == "grpo" and s.get("dynamic_sampling", True):
        over = s.get("oversample", 0.0)
        generate *= 1 + OVERSAMPLE_SHARE * over + (REFILL_SHARE * s.get("max_refills", 2) if over < 1 else 0.0)

    def pass_s(rows: float) -> float:
        prompt_rows = rows / group if fast else rows
        return train_s(prompt_rows * prompt_len + rows * completion, rows * completion)

    if stage.kind == "ppo":
        return generate + (s.get("ppo_epochs", 1) + 1) * pass_s(trained)
    forwards = (s.get("num_iterations", 1) > 1) + (s.get("beta", 0.0) > 0)
    return generate + GRPO_TRAIN_SHARE * (pass_s(trained) + forwards * FORWARD_SHARE * pass_s(generated))


def settings_hash(stages: list[Any]) -> str:
    """sha256 of every stage's settings as written (kind, inputs, budget share, settings less what a
    plan sets and where outputs go): a plan is reused only for the settings it was made for."""
    outs = {str(st.out): f"<stage {st.name}>" for st in stages}
    view = []
    for st in stages:
        settings = {k: outs.get(v, v) if isinstance(v, str) else v for k, v in st.settings.items()
                    if k != "output_dir" and not (st.kind != "eval" and k in PLANNED)}
        view.append({"name": st.name, "kind": st.kind, "deps": st.deps, "budget_share": st.budget_share,
                     "settings": settings})
    return hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()


def calibrated_prefill_tokens(prompt_len: float, shared_len: float) -> float:
    """Prompt tokens per row the calibration's prefill computed (its rows are training prompts), for a
    calibration that did not record them."""
    return max(1.0, prompt_len - (shared_len if shared_len >= MIN_SHARED_PREFIX else 0))


def _eval_entries(stages: list[Any], cal: Calibration, solution_len: float, n_questions: int,
                  shapes: dict[str, dict[str, Any]], calibrated_tokens: float) -> dict[str, dict[str, Any]]:
    by_name = {st.name: st for st in stages}
    out = {}
    for st in stages:
        if st.kind != "eval":
            continue
        per = expected_length(st, by_name, solution_len)
        shape = shapes.get(st.name)
        est = eval_seconds(st, cal, per, n_questions, shape, calibrated_tokens)
        out[st.name] = {"kind": "eval", "estimate_s": round(est, 1), "completion_tokens": round(per, 1),
                        **({"shape": shape} if shape else {})}
    return out


def _allocate(open_: list[Any], left: float, cal: Calibration, prompt_len: float, solution_len: float,
              shared_len: float, by_name: dict[str, Any], strict: bool, why: str) -> dict[str, dict[str, Any]]:
    """Training stages' entries: `left` seconds shared by `budget_share`, turned into steps."""
    shares = {st.name: float(getattr(st, "budget_share", None) or 1.0) for st in open_}
    total_share = sum(shares.values()) or 1.0
    out = {}
    for st in open_:
        alloc = left * shares[st.name] / total_share
        untrained = st.kind != "sft" and not sft_trained(st.deps[0] if st.deps else None, by_name)
        per_step = step_seconds(st, cal, prompt_len, solution_len, shared_len, untrained=untrained)
        steps = int(alloc // per_step)
        entry = {"kind": st.kind, "allocation_s": round(alloc, 1), "step_s": round(per_step, 2)}
        if steps < 1:
            if strict:
                raise MathrlError(f"budget leaves {alloc:.0f} s for stage {st.name!r}, less than one of its steps "
                                  f"(~{per_step:.0f} s here): {why}")
            steps, alloc, entry["over_budget"] = 1, per_step, True  # mid-run: one step, said, not a crash
        entry.update(max_steps=steps, max_minutes=round(max(alloc, 0.6) / 60, 2),
                     estimate_s=round(STAGE_OVERHEAD_S + steps * per_step, 1))
        out[st.name] = entry
    return out


def make_plan(stages: list[Any], budget_s: float, cal: Calibration, prompt_len: float, solution_len: float,
              n_questions: int, shared_len: float = 0.0, eval_shapes: dict[str, dict[str, Any]] | None = None,
              ) -> dict[str, Any]:
    """Allocate `budget_s` less the margin (see mathrl.experiments.budget); every stage gets an estimate in seconds.
    `eval_shapes`: per evaluation its questions and prompt tokens (budget_shapes.eval_shapes); one
    without is priced at `limit` (else `n_questions`) questions of the calibration's prompts."""
    calibrated = calibrated_prefill_tokens(prompt_len, shared_len)
    evals = _eval_entries(stages, cal, solution_len, n_questions, eval_shapes or {}, calibrated)
    training = [st for st in stages if st.kind != "eval"]
    target = budget_s * (1 - MARGIN)
    eval_s = sum(e["estimate_s"] for e in evals.values())
    left = target - cal.seconds - REPORT_OVERHEAD_S - eval_s - STAGE_OVERHEAD_S * len(training)
    why = (f"the {len(evals)} evaluations need ~{eval_s / 60:.1f} min at the {cal.decode_tokens_per_s:.0f} "
           f"tokens/s measured here; raise the budget (now {budget_s / 60:.1f} min) or shrink the evaluations")
    trained = _allocate(training, left, cal, prompt_len, solution_len, shared_len, {st.name: st for st in stages},
                        True, why)
    plan = {st.name: (evals | trained)[st.name] for st in stages}
    estimate = cal.seconds + REPORT_OVERHEAD_S + sum(p["estimate_s"] for p in plan.values())
    return {"budget_s": budget_s, "target_s": round(target, 1), "estimate_s": round(estimate, 1),
            "settings_hash": settings_hash(stages), "calibration": asdict(cal),
            "prompt_tokens": round(prompt_len, 1), "shared_prefix_tokens": shared_len,
            "solution_tokens": round(solution_len, 1), "test_questions": n_questions, "stages": plan}


def replan(stages: list[Any], plan: dict[str, Any], elapsed_s: float, pending: set[str], open_: set[str],
           after: str | None = None) -> dict[str, Any]:
    """The plan for what is left after `elapsed_s` of wall time: the stages in `open_` (training stages
    that have not started) share budget x (1 - MARGIN) less the time used, the report and the estimates
    of the other `pending` stages (still to run: evaluations, a training stage being resumed). Stages
    that ran keep their entries, so their settings and cache keys stay those they ran with. A stage
    that no longer fits gets one step, marked over_budget (the run is under way: no error)."""
    cal = Calibration(**plan["calibration"])
    by_name = {st.name: st for st in stages}
    p_len, s_len, shared = plan["prompt_tokens"], plan["solution_tokens"], plan["shared_prefix_tokens"]
    shapes = {n: e["shape"] for n, e in plan["stages"].items() if "shape" in e}
    evals = _eval_entries(stages, cal, s_len, plan.get("test_questions", 0), shapes,
                          calibrated_prefill_tokens(p_len, shared))
    entries = {n: dict(e) for n, e in plan["stages"].items()} | {n: e for n, e in evals.items() if n in pending}
    fixed_s = sum(entries[n]["estimate_s"] for n in pending - open_ if n in entries)
    reopened = [st for st in stages if st.name in open_ and st.kind != "eval"]
    left = plan["budget_s"] * (1 - MARGIN) - elapsed_s - REPORT_OVERHEAD_S - fixed_s - STAGE_OVERHEAD_S * len(reopened)
    entries |= _allocate(reopened, left, cal, p_len, s_len, shared, by_name, False, "")
    remaining = sum(entries[n]["estimate_s"] for n in pending if n in entries)
    out = dict(plan, stages=entries, estimate_s=round(elapsed_s + REPORT_OVERHEAD_S + remaining, 1))
    out.setdefault("first_estimate_s", plan["estimate_s"])
    out["replans"] = plan.get("replans", []) + [{"after": after, "elapsed_s": round(elapsed_s, 1),
                                                   "left_s": round(left, 1), "open": sorted(open_),
                                                   "estimate_s": out["estimate_s"]}]
    return out
