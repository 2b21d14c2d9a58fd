"""What a person watches while a trainer runs: one live progress line per stage and a short table at
the end. Every logged metric still goes to `train_log.jsonl` (and to tensorboard/trackio when
`report_to` says so); `verbose` brings back transformers' full dict line per logged step."""

from __future__ import annotations

import time
from typing import Any

# the few figures worth a glance, in order: (log key, short name); the first present of each group
_LIVE = ((("loss",), "loss"), (("dynamic/sampled/reward", "reward"), "reward"),
         (("dynamic/sampled/rewards/correctness/mean", "rewards/correctness/mean"), "acc"),
         (("learning_rate",), "lr"))


def glance(row: dict[str, Any], rl: bool) -> dict[str, float]:
    """The live figures of a log row: SFT its loss; RL the reward and sampled accuracy (the batch as drawn
    under dynamic sampling) rather than its surrogate loss; both the learning rate."""
    out = {}
    for keys, name in _LIVE:
        if rl and name == "loss" or not rl and name in ("reward", "acc"):
            continue
        value = next((row[k] for k in keys if isinstance(row.get(k), (int, float))), None)
        if value is not None:
            out[name] = value
    return out


def _fmt(name: str, value: float) -> str:
    return f"{value:.2e}" if name == "lr" else f"{value:.1%}" if name == "acc" else f"{value:.4g}"


def summary_table(rows: list[dict[str, Any]], title: str, rl: bool, most: int = 8) -> str:
    """At most `most` evenly spaced logged steps (first and last included) as a fixed-width table."""
    rows = [r for r in rows if glance(r, rl)]
    if not rows:
        return f"{title}: nothing logged"
    n = min(most, len(rows))
    idx = sorted({round(i * (len(rows) - 1) / max(1, n - 1)) for i in range(n)})
    picked = [rows[i] for i in idx]
    names = [n for _, n in _LIVE if any(n in glance(r, rl) for r in picked)]
    lines = [title, "  ".join(["step".rjust(6), *(n.rjust(9) for n in names), "s/step".rjust(7)])]
    for r in picked:
        g = glance(r, rl)
        step_time = r.get("step_time")
        lines.append("  ".join([str(r.get("step", "?")).rjust(6), *(_fmt(n, g[n]).rjust(9) if n in g else "-".rjust(9)
                                                                    for n in names),
                                (f"{step_time:.1f}" if isinstance(step_time, (int, float)) else "-").rjust(7)]))
    return "\n".join(lines)


def make_progress_callback(kind: str, rl: bool) -> Any:
    """A transformers callback: a tqdm line (step / planned steps, time left at the pace so far, the
    glance figures) on the main process, and `summary_table` at the end. Replaces ProgressCallback."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        bar: Any = None
        rows: list[dict[str, Any]] = []
        started = 0.0
        first_step = 0

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            if state.is_world_process_zero:
                self.rows, self.started, self.first_step = [], time.perf_counter(), state.global_step
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=kind, unit="step",
                                dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.bar is None:
                return
            planned = getattr(state, "planned_steps", state.max_steps)
            if self.bar.total != planned:  # a time budget refit the schedule: the bar shows the plan
                self.bar.total = planned
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if self.bar is None or not logs:
                return
            self.rows.append({"step": state.global_step, **logs})
            self.bar.set_postfix({n: _fmt(n, v) for n, v in glance(logs, rl).items()}, refresh=False)

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.bar is None:
                return
            self.bar.close()
            done = state.global_step - self.first_step
            pace = (time.perf_counter() - self.started) / done if done else 0.0
            print(summary_table([r for r in self.rows if "train_runtime" not in r],
                                f"{kind}: {state.global_step} steps, {pace:.1f} s/step", rl), flush=True)

    return Progress()


def quiet_progress(trainer: Any, kind: str, rl: bool, verbose: bool) -> None:
    """Swap transformers' ProgressCallback (a dict line per logged step) for `make_progress_callback`."""
    if verbose:
        return
    from transformers.trainer_callback import ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(make_progress_callback(kind, rl))
