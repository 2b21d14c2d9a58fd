"""Every SFT/GRPO stage's peak memory, estimated before an experiment runs (`mathrl.train.memory_plan`), so
that a stage which cannot fit stops the run at its start, not after the stages before it."""

from __future__ import annotations

from typing import Any

from mathrl.errors import MathrlError
from mathrl.train.memory_plan import DoesNotFit, fit_grpo, fit_sft


def _stage_model(st: Any, by_name: dict[str, Any]) -> str | None:
    """The model whose shape a stage trains: its own when it exists now, else (a `from:` stage whose input is
    not trained yet) the nearest upstream stage's, which has the same shape."""
    from mathrl.engine import models

    seen: set[str] = set()
    while st is not None and st.name not in seen:
        seen.add(st.name)
        name = getattr(st.config, "model", None)
        if name:
            try:
                path, kind = models.resolve(name)
                if kind != "hub":
                    return path
            except MathrlError:
                pass
        st = next((by_name[d] for d in st.deps if d in by_name and by_name[d].config is not None), None)
    return None


def preflight(stages: list[Any], console: Any) -> dict[str, float]:
    """Estimate every SFT/GRPO stage's peak before anything runs (`mathrl run`, dry runs included) and print
    one line; a stage that cannot fit even at its smallest pass stops the run here, not an hour in.
    {stage: estimated GiB}. Stages whose model is on the hub (no config here) or whose settings fail (their
    own run says why) are left out, said so; PPO
    stages are not planned (simplified: its four models are not in the formula)."""
    import dataclasses

    by_name = {st.name: st for st in stages}
    estimates: dict[str, float] = {}
    skipped: list[str] = []
    limit = None
    for st in stages:
        if st.kind not in ("sft", "grpo") or st.config is None:
            continue
        model = _stage_model(st, by_name)
        if model is None:
            skipped.append(st.name)
            continue
        cfg = dataclasses.replace(st.config, model=model)
        try:
            if st.kind == "sft":
                from mathrl.train.sft import tokens_per_row, training_samples

                _, record = fit_sft(cfg, tokens_per_row(cfg, training_samples(cfg)))
            else:
                from mathrl.engine import models
                from mathrl.train.rl import training_prompts

                _, record = fit_grpo(cfg, training_prompts(cfg), cfg.protocol(),
                                     sampling_copy=cfg.fast and models.cpu_has_fast_bf16())
        except DoesNotFit as e:
            raise MathrlError(f"stage {st.name}: {e}") from None
        except MathrlError:  # bad data, a missing file...: the stage's own run reports it, and blocks what follows
            skipped.append(st.name)
            continue
        if record is None:  # CUDA: not planned here
            return estimates
        estimates[st.name] = record["estimate_gb"]
        limit = record["limit_gb"]
    if estimates:
        where = f"limit {limit:.1f} GiB" if limit is not None else "no limit known"
        console.print("[dim]memory: estimated peak " + ", ".join(f"{n} {g:.1f} GiB" for n, g in estimates.items())
                      + f" ({where}; --max-memory per stage sets it)"
                      + (f"; not estimated: {', '.join(skipped)}" if skipped else "") + "[/dim]")
    return estimates
