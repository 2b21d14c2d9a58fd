"""Budget-aware experiments: calibrate this machine for a few seconds, size the training stages to fit a
wall-clock budget, print the plan with its estimate, record both, and re-plan as stages finish.

`mathrl run FILE --budget 20m` (or `budget: 20m` in the experiment) measures, on the experiment's base
model at the planned shapes, (a) prompt prefill and decoding tokens/s at the evaluation batch size, again
at the longest evaluation prompts when those are much longer (k-shot contexts), and (b) a training
step's tokens/s, then (the arithmetic: `mathrl.experiments.budget_pricing`; the data's shapes: `mathrl.experiments.budget_shapes`):

1. estimates every evaluation: the questions it will run (its `limit`, else its task's split size, for
   held-out tasks and suites too) × completions × (prefill of its prompt tokens, shots included, + the
   expected completion tokens at the decode rate for that context). A model SFT-trained here is expected
   to write 1.3 × the mean length of the solutions it was trained on; any other (the base, an outside
   model, a model trained only by RL from either) its whole `max_new_tokens` (base models ramble);
2. gives what is left of the budget less a `MARGIN` (and a fixed overhead per stage for loading models)
   to the training stages, in proportion to their `budget_share` (default: equal shares);
3. turns each allocation into steps, sets `max_steps` to them — so learning-rate schedules span the
   planned horizon — and `max_minutes` to the allocation itself: the trainers time their own first steps
   and refit the schedule to the steps that fit, so a machine slower than its calibration shortens the
   stage instead of overrunning the budget. An optimizer step is priced as it runs: SFT `grad_accum`
   micro-batches; GRPO (TRL 1.16) `grad_accum` micro-steps of `batch_size` completions (default
   prompts_per_step × num_generations), generation every `num_iterations` steps of a batch of
   batch_size × grad_accum completions (so 1/num_iterations of one per step, × dynamic sampling's
   refills), one forward + backward over every completion trained, and a forward over every generated
   completion for the old policy (num_iterations > 1) and for the reference model (beta > 0).

The plan is written to runs/<experiment>/plan.json with a hash of every stage's settings, and reused by
a rerun with the same budget and settings hash (so the stages' settings and cache keys stay fixed);
any change to a stage's settings re-plans. When a stage has run, the training stages that have not
started are re-planned from the time actually used (budget − elapsed, less the estimates of what else
is still to run), and plan.json rewritten. Simplified, and stated: the rates are those of the base model
(a trained model of the same size runs at the same speed); RL completions from an SFT-trained policy are
assumed to be as long as the SFT solutions × 1.5 (capped at the maximum); a forward pass costs a third
of a training step's forward + backward; evaluations are sized from data that is here (a hub dataset
not downloaded yet by its published size) and have no time limit of their own.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

from mathrl.experiments.budget_pricing import Calibration, make_plan, replan, settings_hash
from mathrl.errors import MathrlError
from mathrl.files import atomic_write_json

REPEATS = 2  # each calibration measurement is taken this many times and the fastest kept


def parse_duration(text: str | float | int) -> float:
    """'20m', '90s', '1h', '1h30m' or a number of minutes → seconds."""
    if isinstance(text, (int, float)):
        return float(text) * 60
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", str(text))
    if not m or not any(m.groups()):
        raise MathrlError(f"budget {text!r}: expected e.g. 20m, 90s, 1h30m")
    h, mins, s = (float(g or 0) for g in m.groups())
    return h * 3600 + mins * 60 + s


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    found = sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|avx512f|avx2)\b", text)))
    return " ".join(found) or "none of avx2/avx512"


def _measure_generation(gen: Any, tok: Any, rows: list[str]) -> dict[str, float]:
    """Prefill and decoding of `rows` at one batch, separately: a 1-token run is the prefill; the extra
    time of a 33-token run is 32 decode steps (mixing them overstated evaluation time by ~25% here). Each
    is measured `REPEATS` times and the fastest kept: the first pass at a new batch shape pays
    allocations, and a one-off stall only ever slows a measurement down (one pass put the demo's
    estimate 25% over its wall time). Also what was measured: prompt tokens per row (the prefix every
    row shares is prefilled once, as in evaluation) and the rows' mean prompt length."""
    from mathrl.engine.decoding import DecodingSettings, encode_prompts
    from mathrl.engine.generation import common_prefix_length

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
    ids = encode_prompts(tok, rows)
    mean = sum(map(len, ids)) / len(ids)
    shared = common_prefix_length(ids)
    shared = shared if shared >= gen.min_shared_prefix else 0
    return {"prefill_s_per_row": round(prefill_s / len(rows), 4), "decode_tokens_per_s": round(decode_rate, 2),
            "prefill_tokens_per_row": round(mean - shared, 1), "context_tokens": round(mean, 1)}


def _measure_training(model_name: str, dtype: str, bf16: bool, tok: Any, texts: list[str]) -> tuple[float, int]:
    """(seconds of the fastest of `REPEATS` training steps on `texts`, their tokens), on the model in fp32
    master weights (as the trainers do). Steps of the planned batch size (matmuls are more efficient on
    more rows: a 4-row step underestimated a 16-row step's rate by ~1.8x here), the fastest kept: the
    first also allocates the optimizer state and the activations at this shape (measured 20.0 s, then
    16.6 and 15.3 s, on the demo's 16 rows)."""
    import torch

    from mathrl.engine import models

    train_model, _, _ = models.load_model(model_name, "fp32" if dtype == "auto" else dtype)
    train_model.train()
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-9)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
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
    return train_s, int(batch["attention_mask"].sum())


def calibrate(model_name: str, prompts: list[str], train_texts: list[str], dtype: str = "auto",
              decode_batch: int = 32, train_batch: int = 16, long_prompts: list[str] | None = None) -> Calibration:
    """Seconds of measurement: a prefill and 32 decode steps of `decode_batch` rows (again on
    `long_prompts`, the longest evaluation prompts, when given), and a training step of `train_batch`
    rows, each `REPEATS` times (the fastest kept)."""
    from mathrl.engine import models
    from mathrl.engine.decoding import DecodingSettings
    from mathrl.engine.generation import HFGenerator

    t0 = time.perf_counter()
    model, tok, info = models.load_model(model_name, dtype)
    rows = (prompts * decode_batch)[:decode_batch]
    gen = HFGenerator(model, tok, batch_size=decode_batch, progress=False, segment_tokens=16)
    gen.generate(rows[:2], DecodingSettings(max_new_tokens=2))  # warm-up (and the shared-prefix cache)
    short = _measure_generation(gen, tok, rows)
    long: dict[str, float] = {}
    if long_prompts:
        measured = _measure_generation(gen, tok, (long_prompts * decode_batch)[:decode_batch])
        long = {"long_context_tokens": measured["context_tokens"],
                "long_decode_tokens_per_s": measured["decode_tokens_per_s"],
                "long_prefill_s_per_row": measured["prefill_s_per_row"],
                "long_prefill_tokens_per_row": measured["prefill_tokens_per_row"]}
    embed = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters())
    head_fraction = embed.numel() / max(1, params)  # body FLOPs: params less the lookup table; head: vocab x hidden
    texts = (train_texts * train_batch)[:train_batch]
    train_s, tokens = _measure_training(model_name, dtype, info["dtype"] == "bfloat16", tok, texts)
    return Calibration(model=model_name, dtype=info["dtype"], cpu_flags=cpu_flags(), decode_batch=decode_batch,
                       train_tokens_per_s=round(tokens / train_s, 2), train_batch=train_batch,
                       seconds=round(time.perf_counter() - t0, 1), head_fraction=round(head_fraction, 3),
                       **short, **long)


def reusable(saved: dict[str, Any], stages: list[Any], budget_s: float) -> bool:
    """Whether a written plan was made for this budget and exactly these stages' settings."""
    return saved.get("budget_s") == budget_s and saved.get("settings_hash") == settings_hash(stages)


def plan_experiment(stages: list[Any], budget_s: float, exp_dir: Path, console: Any, replan: bool = False,
                    write: bool = True) -> dict[str, Any]:
    """The plan for these stages: reused from exp_dir/plan.json when made for the same budget and the same
    settings (`settings_hash`), else calibrated (and written there unless `write` is False: a dry run
    writes nothing). Call it on the stages as loaded, before `apply_plan`."""
    from mathrl.experiments.budget_shapes import data_shapes

    path = exp_dir / "plan.json"
    if path.exists() and not replan:
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = {}
        if reusable(saved, stages, budget_s):
            return saved
        if saved:
            console.print("[dim]the stages' settings or the budget changed since plan.json: re-planning[/dim]")
    shapes = data_shapes(stages)
    evals = [st for st in stages if st.kind == "eval"]
    batch = getattr(evals[0].config, "batch_size", 32) if evals else 32
    console.print(f"[dim]calibrating {shapes.base} on this machine ({cpu_flags()}) ...[/dim]")
    sft = next((st for st in stages if st.kind == "sft"), None)
    rows = min(16, getattr(sft.config, "batch_size", 16)) if sft is not None else 8
    kwargs = {"long_prompts": shapes.long_prompts} if shapes.long_prompts else {}
    cal = calibrate(shapes.base, shapes.prompts, shapes.texts, decode_batch=batch, train_batch=rows, **kwargs)
    plan = make_plan(stages, budget_s, cal, shapes.prompt_len, shapes.solution_len, shapes.test_size,
                     shapes.shared_len, shapes.evals)
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
    for col in ("stage", "kind", "steps", "s/step", "questions × tokens (prompt)", "estimate"):
        table.add_column(col, overflow="fold")
    for name, e in plan["stages"].items():
        shape = e.get("shape")
        size = f"{shape['questions']} × {e.get('completion_tokens', 0):.0f} ({shape['prompt_tokens']:.0f})" \
            if shape else ""
        over = " [red](over budget)[/red]" if e.get("over_budget") else ""
        table.add_row(name, e["kind"], str(e.get("max_steps", "")), str(e.get("step_s", "")), size,
                      f"{e['estimate_s']:.0f} s{over}")
    console.print(table)


def print_replan(plan: dict[str, Any], console: Any) -> None:
    last = plan["replans"][-1]
    steps = ", ".join(f"{n} {e['max_steps']} steps" + (" (over budget)" if e.get("over_budget") else "")
                      for n, e in plan["stages"].items() if n in last.get("open", ()))
    console.print(f"[dim]re-planned after {last['after']} ({last['elapsed_s'] / 60:.1f} min used): "
                  f"{steps or 'nothing to resize'}; estimate now {plan['estimate_s'] / 60:.1f} min[/dim]")


def report_actual(plan: dict[str, Any], wall_s: float, console: Any) -> dict[str, Any]:
    """The plan's estimate against the wall time it took."""
    ratio = wall_s / plan["estimate_s"] if plan["estimate_s"] else math.nan
    from mathrl.memory import process_peak_gb

    peak = process_peak_gb()
    console.print(f"budget: estimated {plan['estimate_s'] / 60:.1f} min, took {wall_s / 60:.1f} min "
                  f"({(ratio - 1) * 100:+.0f}% vs the estimate)" + (f"; peak RSS {peak:.2f} GiB" if peak else ""))
    return {"estimate_s": plan["estimate_s"], "wall_s": round(wall_s, 1), "ratio": round(ratio, 3), "peak_rss_gb": peak}


class Replanner:
    """`runner.run_experiment`'s on_stage_end under a budget: the training stages that have not started
    are re-planned from the time used so far (`replan`), their settings and cache keys rebuilt, and
    plan.json rewritten (a rerun then rebuilds the settings every stage ran with)."""

    def __init__(self, stages: list[Any], plan: dict[str, Any], began: float, exp_dir: Path, source: str,
                 console: Any, clock: Any = time.perf_counter):
        self.stages, self.plan, self.began, self.clock = stages, plan, began, clock
        self.exp_dir, self.source, self.console = exp_dir, source, console

    def __call__(self, after: str, pending: set[str], open_: set[str]) -> None:
        if not open_:
            return
        from mathrl.experiments.schema import rebuild

        self.plan = replan(self.stages, self.plan, self.clock() - self.began, pending, open_, after)
        apply_plan([st for st in self.stages if st.name in open_], self.plan)
        rebuild(self.stages, self.source)
        atomic_write_json(self.exp_dir / "plan.json", self.plan)
        print_replan(self.plan, self.console)
