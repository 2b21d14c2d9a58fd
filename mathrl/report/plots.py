"""The report's PNG plots (matplotlib, Agg): accuracy bars, grouped by training method, chat template
with vs without, and training curves. Each function takes plain table rows so it can be reused."""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

METHOD_COLORS = {"base": "#7f7f7f", "sft": "#1f77b4", "grpo": "#d62728", "ppo": "#2ca02c", "unknown": "#bcbd22"}
FORMAT_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
METHOD_ORDER = ("base", "sft", "grpo", "ppo")
# training-log keys worth a panel, in display order; the reward panel also takes rewards/<name>/mean
CURVE_KEYS = ("loss", "reward", "kl", "entropy", "completion_length", "completions/mean_length", "value_loss",
              "explained_variance", "clipfrac", "grad_norm", "learning_rate")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Render to memory, then rename into place: a reader never sees half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be shared
    os.replace(tmp, path)
    return path


def safe_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


def _errors(rows: list[dict[str, Any]], metric: str) -> list[list[float]]:
    acc = [r[f"accuracy_{metric}"] for r in rows]
    return [[max(0.0, a - r[f"ci_low_{metric}"]) for a, r in zip(acc, rows)],
            [max(0.0, r[f"ci_high_{metric}"] - a) for a, r in zip(acc, rows)]]


def interval_label(rows: list[dict[str, Any]]) -> str:
    """The interval the bars carry: the one the summary table uses (`records.accuracy_interval`'s name)."""
    names = sorted({str(r.get("interval")) for r in rows if r.get("interval")})
    return f"95% {' / '.join(names)} interval" if names else "95% interval"


def accuracy_bar(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Every evaluation as one horizontal bar (long labels stay readable), coloured by method."""
    plt = _plt()
    tasks = {r["task"] for r in rows}
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.42 * max(1, len(rows))))
    labels = [f"{r['label']}  [{r['task']}]" if len(tasks) > 1 else r["label"] for r in rows]
    y = list(range(len(rows)))[::-1]  # first row at the top
    acc = [r[f"accuracy_{metric}"] for r in rows]
    ax.barh(y, acc, xerr=_errors(rows, metric), color=[METHOD_COLORS.get(r["method"], "#bcbd22") for r in rows],
            capsize=3, height=0.6)
    for yi, a, r in zip(y, acc, rows):
        ax.text(r[f"ci_high_{metric}"] + 0.015, yi, f"{a:.1%}  [{r[f'ci_low_{metric}']:.1%}, {r[f'ci_high_{metric}']:.1%}]",
                va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, 1.3)
    ax.set_xticks([i / 5 for i in range(6)], [f"{i * 20}%" for i in range(6)])
    ax.set_xlabel(f"accuracy ({metric}), {interval_label(rows)}")
    ax.set_title("Accuracy of every evaluation")
    ax.grid(axis="x", alpha=0.3)
    methods = [m for m in METHOD_COLORS if any(r["method"] == m for r in rows)]
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=METHOD_COLORS[m]) for m in methods], labels=methods,
              title="training", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return save_figure(fig, path)


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def accuracy_grouped(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Bars grouped by training method (one panel per task), coloured by eval format, hatched
    when evaluated without the chat template; the model label is written inside each bar."""
    plt = _plt()
    tasks = sorted({r["task"] for r in rows}) or ["(none)"]
    formats = sorted({str(r["format"]) for r in rows})
    colors = {f: FORMAT_COLORS[i % len(FORMAT_COLORS)] for i, f in enumerate(formats)}
    fig, axes = plt.subplots(len(tasks), 1, figsize=(10, 4.2 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        sub = [r for r in rows if r["task"] == task]
        methods = sorted({r["method"] for r in sub}, key=lambda m: (_method_rank(m), m))
        # bars no wider than a third of a group, so a lone bar does not fill the panel
        width = min(0.3, 0.8 / max([sum(r["method"] == m for r in sub) for m in methods] or [1]))
        ticks, tick_labels, centers = [], [], []
        for gi, method in enumerate(methods):
            group = sorted((r for r in sub if r["method"] == method),
                           key=lambda r: (str(r["format"]), not r["chat_template"], r["model"]))
            xs = [gi + width * (bi - (len(group) - 1) / 2) for bi in range(len(group))]
            centers.append(gi)
            for x, r in zip(xs, group):
                a = r[f"accuracy_{metric}"]
                yerr = [[max(0.0, a - r[f"ci_low_{metric}"])], [max(0.0, r[f"ci_high_{metric}"] - a)]]
                ax.bar(x, a, width * 0.9, yerr=yerr, capsize=2, color=colors[str(r["format"])],
                       hatch=None if r["chat_template"] is not False else "//", edgecolor="white")
                ax.text(x, r[f"ci_high_{metric}"] + 0.02, f"{a:.1%}", ha="center", fontsize=8)
                ticks.append(x)
                tick_labels.append(r["model"])
        many = len(ticks) > 6
        ax.set_xticks(ticks, tick_labels, fontsize=8, rotation=30 if many else 0, ha="right" if many else "center")
        # method names above their group (model names below can be long and rotated)
        for gi, method in zip(centers, methods):
            ax.text(gi, 1.06, method, ha="center", fontsize=11, fontweight="bold")
            if gi:
                ax.axvline(gi - 0.5, color="#dddddd", linewidth=1)
        ax.set_xlim(-0.6, max(len(methods) - 0.4, 0.6))
        ax.set_ylim(0, 1.14)
        ax.set_yticks([i / 5 for i in range(6)], [f"{i * 20}%" for i in range(6)])
        ax.set_ylabel(f"accuracy ({metric})")
        ax.set_title(f"{task}: accuracy by training method", pad=22)
        ax.grid(axis="y", alpha=0.3)
        if not sub:
            ax.text(0.5, 0.5, "no evaluations", ha="center", transform=ax.transAxes)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[f]) for f in formats]
    labels = [f"format {f}" for f in formats]
    if any(r["chat_template"] is False for r in rows):
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="#999999", hatch="//", edgecolor="white"))
        labels.append("no chat template")
    axes[0, 0].legend(handles=handles, labels=labels,
                      loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def template_pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(without, with) chat template for each model + task + format + shots evaluated both ways."""
    by_key: dict[tuple, dict[bool, dict[str, Any]]] = {}
    for r in rows:
        if isinstance(r["chat_template"], bool):
            key = (r["model"], r["task"], r["format"], r["shots"])
            by_key.setdefault(key, {}).setdefault(r["chat_template"], r)
    return [(v[False], v[True]) for v in by_key.values() if len(v) == 2]


def eval_template_scatter(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    plt = _plt()
    pairs = template_pairs(rows)
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="same accuracy")
    for off, on in pairs:
        x, y = off[f"accuracy_{metric}"], on[f"accuracy_{metric}"]
        ax.errorbar(x, y, xerr=[[x - off[f"ci_low_{metric}"]], [off[f"ci_high_{metric}"] - x]],
                    yerr=[[y - on[f"ci_low_{metric}"]], [on[f"ci_high_{metric}"] - y]], fmt="o", capsize=3,
                    color=METHOD_COLORS.get(on["method"], "#bcbd22"))
        ax.annotate(f"{on['model']} ({on['format']})", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ticks = [i / 5 for i in range(6)]
    ax.set_xticks(ticks, [f"{t:.0%}" for t in ticks])
    ax.set_yticks(ticks, [f"{t:.0%}" for t in ticks])
    ax.set_xlabel(f"accuracy ({metric}) evaluated without chat template")
    ax.set_ylabel(f"accuracy ({metric}) evaluated with chat template")
    ax.set_title("Chat template at evaluation: with vs without")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _series(log: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in log
           if isinstance(r.get("step"), (int, float)) and isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def training_curves(log: list[dict[str, Any]], label: str, path: Path) -> Path | None:
    """One panel per logged quantity; the reward panel overlays each reward function's mean.
    Steps with an alarm (e.g. reward collapse) get a red dotted line in every panel."""
    plt = _plt()
    reward_keys = sorted({k for r in log for k in r if re.fullmatch(r"rewards/.+/mean", k)})
    panels = [k for k in CURVE_KEYS if _series(log, k)[0] or (k == "reward" and reward_keys)]
    if not panels:
        return None
    alarms = sorted({r["step"] for r in log if r.get("alarm") and isinstance(r.get("step"), (int, float))})
    cols = min(3, len(panels))
    rows_n = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.3 * rows_n), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        xs, ys = _series(log, key)
        marker = "." if len(xs) < 50 else None
        if xs:
            ax.plot(xs, ys, marker=marker, label=key)
        if key == "reward":
            sx, sd = _series(log, "reward_std")
            if sx == xs and sx:
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.15)
            for rk in reward_keys:
                ax.plot(*_series(log, rk), linewidth=1, label=rk.split("/")[1])
            ax.legend(fontsize=7)
        for step in alarms:
            ax.axvline(step, color="red", linestyle=":", linewidth=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Training: {label}")
    fig.tight_layout()
    return save_figure(fig, path)


def write_all(out: Path, comparison: list[dict[str, Any]], trains: list[Any], metric: str) -> dict[str, Path]:
    """Every plot; keys are the names the HTML uses (curves keyed by training-run label)."""
    plots: dict[str, Path] = {}
    if comparison:
        plots["accuracy_bar"] = accuracy_bar(comparison, metric, out / "accuracy_bar.png")
        plots["accuracy_grouped"] = accuracy_grouped(comparison, metric, out / "accuracy_grouped.png")
        if template_pairs(comparison):  # a plot with nothing to show is left out
            plots["eval_template_scatter"] = eval_template_scatter(comparison, metric, out / "eval_template_scatter.png")
    for tr in trains:
        png = training_curves(tr.log, tr.label, out / f"curves_{safe_name(tr.label)}.png")
        if png is not None:
            plots[f"curves:{tr.label}"] = png
    return plots
