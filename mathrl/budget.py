"""Budget-aware experiments: calibrate this machine for a few seconds, size the training stages to fit a
wall-clock budget, print the plan with its estimate, and record both.

`mathrl run FILE --budget 20m` (or `budget: 20m` in the experiment) measures, on the experiment's base
model at the planned shapes, (a) decoding tokens/s at the evaluation batch size and (b) a training
step's tokens/s, then:

1. estimates every evaluation: questions × expected completion tokens ÷ decode rate, where a model
   that was not trained here is expected to use its whole `max_new_tokens` (base models ramble) and a
   trained one the mean length of the solutions it was trained on (× 1.3);
2. gives what is left of the budget less a `MARGIN` (and a fixed overhead per stage for loading models)
   to the training stages, in proportion to their `budget_share` (default: equal shares);
3. turns each allocation into steps (SFT: sequences per step × mean training length ÷ training rate;
   GRPO/PPO: generation of prompts × completions at the decode rate plus the training pass), sets
   `max_steps` to them — so learning-rate schedules span the planned horizon — and `max_minutes` to the
   allocation itself: the trainers time their own first steps and refit the schedule to the steps that
   fit, so a machine slower than its calibration shortens the stage instead of overrunning the budget.

The plan is written to runs/<experiment>/plan.json and reused by a rerun with the same budget, so the
stages' settings (and cache keys) stay fixed. Simplified, and stated: no re-planning between stages;
the rates are those of the base model (a trained model of the same size runs at the same speed);
GRPO completions are assumed to be as long as the SFT solutions × 1.5 (capped at the maximum).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, asdict
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.files import atomic_write_json

# Dynamic sampling regenerates the groups whose completions all got one reward: measured on the
# embedded model, 0.25-1.0 of the groups as drawn (docs/evidence.md); priced at half per round.
REFILL_SHARE = 0.5
STAGE_OVERHEAD_S = 8.0  # loading a model and tokenizer, writing outputs: measured 4-10 s for the 135M model
REPORT_OVERHEAD_S = 15.0
REPEATS = 2  # each calibration measurement is taken this many times and the fastest kept
# A budget is a limit, not a target: plans aim this share under it. Recorded estimates erred by -8% to +7%
# on an idle machine (docs/evidence.md); the demo planned to the full 20 minutes took 20.2.
MARGIN = 0.05


def parse_duration(text: str | float | int) -> float:
    """'20m', '90s', '1h', '1h30m' or a number of minutes → seconds."""
    if isinstance(text, (int, float)):
        return float(text) * 60
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", str(text))
    if not m or not any(m.groups()):
        raise MathrlError(f"budget {text!r}: expected e.g. 20m, 90s, 1h30m")
    h, mins, s = (float(g or 0) for g in m.groups())
    return h * 3600 + mins * 60 + s


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


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|avx512f|avx2)\b", text)))
    return " ".join(found) or "none of avx2/avx512"


def calibrate(model_name: str, prompts: list[str], train_texts: list[str], dtype: str = "auto",
              decode_batch: int = 32, train_batch: int = 16) -> Calibration:
    """Seconds of measurement: a prefill and 32 decode steps of `decode_batch` rows, and a training step of
    `train_batch` rows, each `REPEATS` times (the fastest kept)."""
    import torch

    from mathrl import models
    from mathrl.decoding import DecodingSettings
    from mathrl.generation import HFGenerator

    t0 = time.perf_counter()
    model, tok, info = models.load_model(model_name, dtype)
    rows = (prompts * decode_batch)[:decode_batch]
    gen = HFGenerator(model, tok, batch_size=decode_batch, progress=False, segment_tokens=16)
    gen.generate(rows[:2], DecodingSettings(max_new_tokens=2))  # warm-up (and the shared-prefix cache)
    # prefill and decoding separately: a 1-token run is the prefill; the extra time of a 33-token run is
    # 32 decode steps (mixing them overstated evaluation time by ~25% here). Each is measured twice and
    # the faster kept: the first pass at a new batch shape pays allocations, and a one-off stall only
    # ever slows a measurement down (one pass put the demo's estimate 25% over its wall time)
    prefill_s, decode_rate = math.inf, 0.0
    for _ in range(REPEATS):
        timed = []
        for new in (1, 33):
            start = time.perf_counter()
            outs = gen.generate(rows, DecodingSettings(max_new_tokens=new))
            timed.append((time.perf_counter() - start, sum(c[0].num_tokens for c in outs)))
        (one_s, first), (both_s, total) = timed
        prefill_s = min(prefill_s, one_s)
        decode_rate = max(decode_rate, max(1, total - first) / max(both_s - one_s, 1e-6))
    prefill_per_row = prefill_s / len(rows)
    embed = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters())
    head_fraction = embed.numel() / max(1, params)  # body FLOPs: params less the lookup table; head: vocab x hidden
    # a training step at the planned shapes, on the model in fp32 master weights (as the trainers do)
    train_model, _, _ = models.load_model(model_name, "fp32" if dtype == "auto" else dtype)
    train_model.train()
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-9)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if info["dtype"] == "bfloat16" else torch.autocast("cpu", enabled=False)
    # steps of the planned batch size (matmuls are more efficient on more rows: a 4-row step underestimated
    # a 16-row step's rate by ~1.8x here), the fastest kept: the first also allocates the optimizer state
    # and the activations at this shape (measured 20.0 s, then 16.6 and 15.3 s, on the demo's 16 rows)
    texts = (train_texts * train_batch)[:train_batch]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(train_model.device)
    train_s = math.inf
    for _ in range(REPEATS):
        start = time.perf_counter()
        with autocast:
            loss = train_model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_s = min(train_s, time.perf_counter() - start)
    tokens = int(batch["attention_mask"].sum())
    return Calibration(model=model_name, dtype=info["dtype"], cpu_flags=cpu_flags(),
                       decode_tokens_per_s=round(decode_rate, 2), decode_batch=decode_batch,
                       train_tokens_per_s=round(tokens / train_s, 2), train_batch=train_batch,
                       seconds=round(time.perf_counter() - t0, 1), prefill_s_per_row=round(prefill_per_row, 4),
                       head_fraction=round(head_fraction, 3))


def _sizes(stage: Any) -> dict[str, Any]:
    return stage.config.__dict__ if stage.config is not None else stage.settings


def eval_seconds(stage: Any, cal: Calibration, trained_len: float | None, n_default: int) -> float:
    s = _sizes(stage)
    n = (s.get("limit") or n_default) * (s.get("completions_per_question") or s.get("num_samples", 1))
    per = s.get("max_new_tokens", 512) if trained_len is None else min(s.get("max_new_tokens", 512), 1.3 * trained_len)
    return STAGE_OVERHEAD_S + n * cal.prefill_s_per_row + n * per / cal.decode_tokens_per_s


def step_seconds(stage: Any, cal: Calibration, prompt_len: float, solution_len: float, shared_len: float = 0.0,
                 untrained: bool = False) -> float:
    """Seconds per optimizer step. The fast trainers run a prefix that every row shares once per micro-batch
    (SFT: the system prompt and chat header, `shared_len` tokens) and each distinct prompt once per group
    (GRPO), so those tokens are counted once. RL from a model not trained here (`untrained`) is priced
    at the full `max_completion_length` (as its evaluations are: base models ramble); GRPO's dynamic
    sampling at `REFILL_SHARE` of the groups regenerated in each of its `max_refills` rounds."""
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
        return s.get("grad_accum", 1) * train_s(tokens, labelled)
    per_prompt = s.get("num_generations", 8) if stage.kind == "grpo" else s.get("rollouts_per_prompt", 1)
    prompts = s.get("prompts_per_step", 4)
    rows = prompts * per_prompt
    limit = s.get("max_completion_length", 256)
    completion = limit if untrained else min(limit, 1.5 * solution_len)
    generate = prompts * cal.prefill_s_per_row + rows * completion / cal.decode_tokens_per_s
    if stage.kind == "grpo" and s.get("dynamic_sampling", True):
        generate *= 1 + REFILL_SHARE * s.get("max_refills", 2)
    prompt_rows = prompts if fast else rows
    passes = s.get("ppo_epochs", 1) + 1 if stage.kind == "ppo" else s.get("num_iterations", 1)
    return generate + passes * train_s(prompt_rows * prompt_len + rows * completion, rows * completion)


def make_plan(stages: list[Any], budget_s: float, cal: Calibration, prompt_len: float, solution_len: float,
              n_questions: int, shared_len: float = 0.0) -> dict[str, Any]:
    """Allocate `budget_s` less the margin (see the module docstring); every stage gets an estimate in seconds."""
    trained = {st.name for st in stages if st.kind != "eval"}
    evals = {st.name: eval_seconds(st, cal, solution_len if st.deps and st.deps[0] in trained else None, n_questions)
             for st in stages if st.kind == "eval"}
    training = [st for st in stages if st.kind != "eval"]
    target = budget_s * (1 - MARGIN)
    left = target - cal.seconds - REPORT_OVERHEAD_S - sum(evals.values()) - STAGE_OVERHEAD_S * len(training)
    shares = {st.name: float(getattr(st, "budget_share", None) or 1.0) for st in training}
    total_share = sum(shares.values()) or 1.0
    plan: dict[str, Any] = {}
    for st in stages:
        if st.kind == "eval":
            plan[st.name] = {"kind": "eval", "estimate_s": round(evals[st.name], 1)}
            continue
        alloc = left * shares[st.name] / total_share
        per_step = step_seconds(st, cal, prompt_len, solution_len, shared_len, untrained=not st.deps)
        steps = int(alloc // per_step)
        if steps < 1:
            raise MathrlError(f"budget {budget_s / 60:.1f} min leaves {alloc:.0f} s for stage {st.name!r}, less than "
                              f"one of its steps (~{per_step:.0f} s here): the {len(evals)} evaluations need "
                              f"~{sum(evals.values()) / 60:.1f} min at the {cal.decode_tokens_per_s:.0f} tokens/s measured "
                              "here; raise the budget or shrink the evaluations")
        plan[st.name] = {"kind": st.kind, "allocation_s": round(alloc, 1), "step_s": round(per_step, 2),
                         "max_steps": steps, "max_minutes": round(alloc / 60, 2),
                         "estimate_s": round(STAGE_OVERHEAD_S + steps * per_step, 1)}
    estimate = cal.seconds + REPORT_OVERHEAD_S + sum(p["estimate_s"] for p in plan.values())
    return {"budget_s": budget_s, "target_s": round(target, 1), "estimate_s": round(estimate, 1), "calibration": asdict(cal),
            "prompt_tokens": round(prompt_len, 1), "shared_prefix_tokens": shared_len,
            "solution_tokens": round(solution_len, 1), "stages": plan}


def _data_shapes(stages: list[Any]) -> tuple[str, list[str], list[str], float, float, int, int]:
    """(base model, eval prompts, training texts, mean prompt tokens, mean solution tokens, test questions,
    tokens every prompt shares) from the first training stage's task and protocol (tokenizer only)."""
    from mathrl import formats, models
    from mathrl.decoding import encode_prompts
    from mathrl.tasks import get_task

    first = next((st for st in stages if st.kind != "eval"), None)
    if first is None or first.config is None:
        raise MathrlError("a budget needs at least one training stage whose settings are valid")
    cfg = first.config
    base = next((st.config.model for st in stages if st.kind == "eval" and not st.deps), cfg.model)
    task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
    protocol = cfg.protocol()
    fmt = protocol.resolved_format()
    tok = models.load_tokenizer(models.resolve(base)[0])
    train = [s for s in task.load_train()[:64] if s.solution]
    if not train:
        raise MathrlError(f"task {cfg.task!r} has no worked solutions to size the plan with")
    prompts = [formats.build_prompt(s.question, protocol, tok) for s in train]
    solutions = [fmt.render(s.solution, s.answer) for s in train]
    from mathrl.generation import common_prefix_length

    ids = encode_prompts(tok, prompts)
    p_len = sum(map(len, ids)) / len(prompts)
    s_len = sum(len(ids) for ids in tok(solutions, add_special_tokens=False)["input_ids"]) / len(solutions)
    n_test = len(task.load_test())
    return base, prompts, [p + s for p, s in zip(prompts, solutions)], p_len, s_len, n_test, common_prefix_length(ids)


def plan_experiment(stages: list[Any], budget_s: float, exp_dir: Path, console: Any, replan: bool = False,
                    write: bool = True) -> dict[str, Any]:
    """The plan for these stages: reused from exp_dir/plan.json when made for the same budget, else
    calibrated (and written there unless `write` is False: a dry run writes nothing)."""
    path = exp_dir / "plan.json"
    if path.exists() and not replan:
        saved = json.loads(path.read_text())
        if saved.get("budget_s") == budget_s and set(saved.get("stages", {})) == {st.name for st in stages}:
            return saved
    base, prompts, texts, p_len, s_len, n_test, shared = _data_shapes(stages)
    evals = [st for st in stages if st.kind == "eval"]
    batch = _sizes(evals[0]).get("batch_size", 32) if evals else 32
    console.print(f"[dim]calibrating {base} on this machine ({cpu_flags()}) ...[/dim]")
    sft = next((st for st in stages if st.kind == "sft"), None)
    rows = min(16, _sizes(sft).get("batch_size", 16)) if sft is not None else 8
    cal = calibrate(base, prompts, texts, decode_batch=batch, train_batch=rows)
    plan = make_plan(stages, budget_s, cal, p_len, s_len, n_test, shared)
    if write:
        exp_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, plan)
    return plan


def apply_plan(stages: list[Any], plan: dict[str, Any]) -> None:
    """Put the planned max_steps / max_minutes into the training stages' settings."""
    for st in stages:
        entry = plan["stages"].get(st.name, {})
        if st.kind != "eval" and "max_steps" in entry:
            st.settings["max_steps"] = entry["max_steps"]
            st.settings["max_minutes"] = entry["max_minutes"]


def print_budget(plan: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    cal = plan["calibration"]
    table = Table(title=f"plan for a {plan['budget_s'] / 60:.1f}-minute budget: estimated {plan['estimate_s'] / 60:.1f} min",
                  caption=f"calibrated in {cal['seconds']} s on {cal['cpu_flags']} ({cal['dtype']}): decode "
                          f"{cal['decode_tokens_per_s']} tok/s at batch {cal['decode_batch']}, training "
                          f"{cal['train_tokens_per_s']} tok/s; prompts ~{plan['prompt_tokens']} tok, solutions "
                          f"~{plan['solution_tokens']} tok")
    for col in ("stage", "kind", "steps", "s/step", "estimate"):
        table.add_column(col, overflow="fold")
    for name, e in plan["stages"].items():
        table.add_row(name, e["kind"], str(e.get("max_steps", "")), str(e.get("step_s", "")), f"{e['estimate_s']:.0f} s")
    console.print(table)


def report_actual(plan: dict[str, Any], wall_s: float, console: Any) -> dict[str, Any]:
    """The plan's estimate against the wall time it took."""
    ratio = wall_s / plan["estimate_s"] if plan["estimate_s"] else math.nan
    console.print(f"budget: estimated {plan['estimate_s'] / 60:.1f} min, took {wall_s / 60:.1f} min "
                  f"({(ratio - 1) * 100:+.0f}% vs the estimate)")
    return {"estimate_s": plan["estimate_s"], "wall_s": round(wall_s, 1), "ratio": round(ratio, 3)}
