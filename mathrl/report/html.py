"""report.html: one self-contained page (plots inlined as data URIs, no external CSS/JS) that opens
offline: summary table, paired tests, plots, training runs and a per-question drill-down with a
"flipped between two models" filter. Model output is untrusted: every string goes through escape()."""

from __future__ import annotations

import base64
import datetime as dt
from html import escape
from pathlib import Path
from typing import Any

from mathrl.files import atomic_write_text

MAX_COMPLETION_CHARS = 3000  # keeps a 1,000-question x 10-model page to a few MB

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{margin-bottom:4px} .meta{color:#666;font-size:13px}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.primary{background:#eef5ff} .sig{font-weight:bold;color:#b00}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
.ok{background:#e9f7ec} .bad{background:#fdecec} .na{background:#f6f6f6;color:#999}
pre{white-space:pre-wrap;max-width:420px;max-height:300px;overflow:auto;margin:4px 0;font-size:12px}
td.q{max-width:380px} .controls{margin:8px 0;padding:8px;background:#f7f7f7;border:1px solid #e3e3e3}
.note{color:#8a5a00}
"""

SCRIPT = """
function mathrlFilter(sec){
  var a=+document.getElementById(sec+'-a').value, b=+document.getElementById(sec+'-b').value;
  var mode=document.getElementById(sec+'-mode').value, shown=0;
  document.querySelectorAll('#'+sec+' tbody tr').forEach(function(tr){
    var v=tr.getAttribute('data-v'), x=v.charAt(a), y=v.charAt(b), show=true;
    if(mode!=='all'){
      show=x!=='-'&&y!=='-'&&(mode==='flipped'?x!==y:mode==='a-only'?(x==='1'&&y==='0'):(x==='0'&&y==='1'));
    }
    tr.style.display=show?'':'none'; if(show){shown++;}
  });
  document.getElementById(sec+'-count').textContent=shown+' question(s) shown';
}
"""


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "-"


def _num(x: Any) -> str:
    return escape(str(x)) if x is not None else "-"


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """`rows` hold ready HTML cells (already escaped by the caller)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"


def summary_table(comparison: list[dict[str, Any]], metric: str) -> str:
    if not comparison:
        return "<p>No evaluations found.</p>"
    headers = ["eval", "model", "method", "task", "setting", "n", "strict [95% CI]", "flexible [95% CI]",
               "thinking", "answer", "mean tokens", "tokens/s"]
    rows = []
    for r in comparison:
        acc = {m: f"{_pct(r[f'accuracy_{m}'])} [{_pct(r[f'ci_low_{m}'])}, {_pct(r[f'ci_high_{m}'])}]"
               for m in ("strict", "flexible")}
        rows.append([_td(escape(r["label"])), _td(escape(str(r["model"]))), _td(escape(str(r["method"]))),
                     _td(escape(r["task"])), _td(escape(str(r["setting"]))), _td(str(r["n"]), "num"),
                     _td(acc["strict"], "num" + (" primary" if metric == "strict" else "")),
                     _td(acc["flexible"], "num" + (" primary" if metric == "flexible" else "")),
                     _td(_pct(r["thinking_proportion"]), "num"), _td(_pct(r["answer_proportion"]), "num"),
                     _td(_num(r["mean_tokens"]), "num"), _td(_num(r["tokens_per_second"]), "num")])
    return _table(headers, rows, "summary") + (
        '<p class="note">thinking: the share of completions with non-empty working between the format\'s reasoning '
        "markers (tags, think formats); — for formats without markers, where any text before the answer would "
        "count. answer: the share with an answer in the format's strict form.</p>")


def paired_table(paired: list[dict[str, Any]], metric: str) -> str:
    if not paired:
        return "<p>No two evaluations share a task and questions, so there is nothing to pair.</p>"
    # pairs differing in both model and eval setting confound two effects: in paired.csv, not here,
    # unless there is nothing else to show
    from mathrl.report.stats import one_factor_pairs  # in stats, not report: report imports this module

    simple = one_factor_pairs(paired)
    note = "" if len(simple) == len(paired) else (
        f'<p class="note">{len(paired) - len(simple)} pairs that differ in both model and eval setting are '
        "left out here (see paired.csv).</p>")
    paired = simple
    headers = ["task", "A", "B", "differ in", "shared questions", f"A {metric}", f"B {metric}", "B − A [95% CI]",
               "A right, B wrong", "A wrong, B right", "McNemar p"]
    rows = []
    for r in paired:
        p = r["p_value"]
        rows.append([_td(escape(r["task"])), _td(escape(r["eval_a"])), _td(escape(r["eval_b"])),
                     _td(escape(str(r.get("varies", "")))), _td(str(r["n_shared"]), "num"), _td(_pct(r["accuracy_a"]), "num"), _td(_pct(r["accuracy_b"]), "num"),
                     _td(f"{r['diff_b_minus_a'] * 100:+.1f} pts [{r['diff_ci_low'] * 100:+.1f}, {r['diff_ci_high'] * 100:+.1f}]", "num"),
                     _td(str(r["a_right_b_wrong"]), "num"), _td(str(r["a_wrong_b_right"]), "num"),
                     _td(f"{p:.3g}", "num" + (" sig" if p < 0.05 else ""))])
    return note + _table(headers, rows, "paired")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _arrow(pair: Any, pct: bool = False) -> str:
    if not pair:
        return "—"
    fmt = _pct if pct else (lambda x: f"{x:.4g}")
    return f"{fmt(pair[0])} → {fmt(pair[1])}"


def training_section(training: list[dict[str, Any]], plots: dict[str, Path]) -> str:
    if not training:
        return ""
    dash = lambda x, f=_num: "—" if x is None else f(x)  # noqa: E731
    rows = [[_td(escape(t["label"])), _td(escape(str(t["method"]))), _td(str(t["steps"]), "num"),
             _td(_num(t["train_seconds"]), "num"), _td(_arrow(t["loss"]), "num"), _td(dash(t["train_tokens"]), "num"),
             _td(_arrow(t["reward"]), "num"), _td(_arrow(t["sampled_accuracy"], pct=True), "num"),
             _td(dash(t["zero_spread"], _pct), "num"), _td(dash(t["kl"]), "num"), _td(dash(t["peak_rss_gb"]), "num"),
             _td("<br>".join(escape(a) for a in t["alarms"][:20]) or "-")] for t in training]
    headers = ["run", "trainer", "steps", "train seconds", "loss first → last", "tokens seen", "reward first → last",
               "sampled accuracy first → last", "zero-spread groups", "KL (last)", "peak RSS (GB)", "alarms"]
    parts = ["<h2>Training runs</h2>", _table(headers, rows),
             '<p class="note">Each trainer shows what it measures: SFT its loss and the tokens it trained on; '
             "GRPO and PPO the mean reward and the correctness of their sampled completions at the first and last "
             "step (with dynamic sampling: of the batches as drawn, before refills), the mean share of groups "
             "whose completions all got the same reward, and the last KL to the reference.</p>"]
    for t in training:
        png = plots.get(f"curves:{t['label']}")
        if png is not None:
            parts.append(f"<h3>{escape(t['label'])}</h3>{_img(png, 'training curves ' + t['label'])}")
    return "\n".join(parts)


def _cell(row: dict[str, Any] | None, metric: str) -> tuple[str, str]:
    """(verdict char for the filter, HTML cell) for one model's answer to one question."""
    if row is None:
        return "-", _td("not evaluated", "na")
    ok = bool(row.get(f"correct_{metric}"))
    text = str(row.get("completion") or "")
    more = f"\n… ({len(text) - MAX_COMPLETION_CHARS} more characters not shown)" if len(text) > MAX_COMPLETION_CHARS else ""
    pred = row.get(f"pred_{metric}")
    body = (f"<b>{'✓' if ok else '✗'}</b> {escape(str(pred)) if pred is not None else '<i>no answer</i>'}"
            f"<details><summary>completion</summary><pre>{escape(text[:MAX_COMPLETION_CHARS] + more)}</pre></details>")
    return ("1" if ok else "0"), _td(body, "ok" if ok else "bad")


def drilldown_section(sec: str, task: str, evals: list[Any], metric: str, max_questions: int) -> str:
    """All questions of one task, one column per evaluation, with the A/B flip filter."""
    ids = list(dict.fromkeys(q for ev in evals for q in ev.rows))
    note = ""
    if len(ids) > max_questions:
        note = f'<p class="note">{len(ids)} questions: showing the first {max_questions} only (see results.jsonl for all).</p>'
        ids = ids[:max_questions]
    options = "".join(f'<option value="{i}">{escape(ev.label)}</option>' for i, ev in enumerate(evals))
    options_b = "".join(f'<option value="{i}"{" selected" if i == len(evals) - 1 else ""}>{escape(ev.label)}</option>'
                        for i, ev in enumerate(evals))
    controls = (f'<div class="controls">A <select id="{sec}-a" onchange="mathrlFilter(\'{sec}\')">{options}</select> '
                f'B <select id="{sec}-b" onchange="mathrlFilter(\'{sec}\')">{options_b}</select> '
                f'show <select id="{sec}-mode" onchange="mathrlFilter(\'{sec}\')">'
                '<option value="all">all questions</option><option value="flipped">flipped (A ≠ B)</option>'
                '<option value="a-only">A right, B wrong</option><option value="b-only">A wrong, B right</option>'
                f'</select> <span id="{sec}-count">{len(ids)} question(s) shown</span></div>')
    head = "".join(f'<th title="{escape(str(ev.model))} · {escape(str(ev.setting))}">{escape(ev.label)}</th>' for ev in evals)
    body = []
    for qid in ids:
        first = next(ev.rows[qid] for ev in evals if qid in ev.rows)
        cells = [_cell(ev.rows.get(qid), metric) for ev in evals]
        body.append(f'<tr data-v="{"".join(c[0] for c in cells)}"><td>{escape(qid)}</td>'
                    f'<td class="q">{escape(str(first.get("question", "")))}</td><td>{escape(str(first.get("gold", "")))}</td>'
                    f'{"".join(c[1] for c in cells)}</tr>')
    table = (f'<table id="{sec}"><thead><tr><th>id</th><th>question</th><th>gold</th>{head}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table>')
    return f"<h3>{escape(task)}</h3>{note}{controls}{table}"


def seeds_section(seeds: list[dict[str, Any]], pooled: list[dict[str, Any]]) -> str:
    """Mean and spread across training seeds, and seed-matched tests over questions (report.seeds)."""
    if not seeds:
        return ""
    rows = [[_td(escape(str(r["model"]))), _td(escape(r["task"])), _td(escape(str(r["setting"]))),
             _td(", ".join(str(s) for s in r["seeds"]), "num"), _td(_pct(r["mean_strict"]), "num"),
             _td("" if r["sd_strict"] is None else f"{r['sd_strict'] * 100:.1f} pts", "num"),
             _td(f"{_pct(r['min_strict'])} – {_pct(r['max_strict'])}", "num"),
             _td(" / ".join(_pct(a) for a in r["per_seed_strict"]), "num")] for r in seeds]
    table = _table(["model", "task", "setting", "seeds", "mean strict", "sd", "range", "per seed"], rows)
    prow = [[_td(escape(r["task"])), _td(escape(r["a"])), _td(escape(r["b"])), _td(escape(r["varies"])),
             _td(escape(", ".join(r["seed_pairs"]))), _td(str(r["n_questions"]), "num"),
             _td(f"{r['mean_diff'] * 100:+.1f} pts [{r['diff_ci_low'] * 100:+.1f}, {r['diff_ci_high'] * 100:+.1f}]", "num"),
             _td("" if r["sd_diff"] is None else f"{r['sd_diff'] * 100:.1f} pts", "num"),
             _td(str(r["questions_a_better"]), "num"), _td(str(r["questions_b_better"]), "num"),
             _td(f"{r['p_value']:.3g}", "num" + (" sig" if r["p_value"] < 0.05 else ""))] for r in pooled]
    ptable = _table(["task", "A", "B", "differ in", "seed pairs (A/B)", "questions", "mean B − A [95% CI]",
                     "sd of B − A over seed pairs", "questions A better", "questions B better",
                     "sign-flip p (over questions)"], prow, "paired") if pooled else ""
    return f"""<h2>Across training seeds</h2>
<p>Each replicated model trained once per seed: the mean and sample standard deviation of its accuracy
across seeds (training randomness), beside the per-run intervals above (question sampling only).
Tests over seed-matched pairs (an untrained model pairs with every replica) take the question as the
unit: per question, B's mean verdict over its replicas minus A's, tested with an exact two-sided
sign-flip test over the questions (McNemar's exact test when each side has one replica), with a
normal interval over questions. A question counts once however many seeds there are; the p-value is
given the replicas trained, the sd over seed pairs shows the training randomness.</p>
{table}{ptable}"""


def sweeps_html(decisions: list[dict[str, Any]]) -> str:
    from mathrl.report.sweeps import html

    return html(decisions)


def render(data: dict[str, Any], evals: list[Any], plots: dict[str, Path], max_questions: int) -> str:
    metric = data["metric"]
    boot = data["bootstrap"]
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    meta = (f"generated {when} from {escape(', '.join(data['run_dirs']))} · primary metric: <b>{escape(metric)}</b> · "
            f"paired differences: percentile bootstrap, {boot['resamples']} resamples, seed {boot['seed']}")
    plot_html = "".join(_img(plots[k], k) for k in ("accuracy_bar", "accuracy_grouped", "eval_template_scatter") if k in plots)
    tasks = list(dict.fromkeys(ev.task for ev in evals))
    drill = "".join(drilldown_section(f"dd{i}", t, [ev for ev in evals if ev.task == t], metric, max_questions)
                    for i, t in enumerate(tasks))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mathrl report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>mathrl report</h1>
<p class="meta">{meta}</p>
<h2>Summary</h2>
<p>Accuracy over the first sample of each question; strict reads the format's answer marker, flexible the
last number. Brackets: 95% intervals from <code>records.accuracy_interval</code>, the same as each
evaluation's summary.json (Wilson with one completion per question; with several, a normal interval
over questions, whose samples are correlated).</p>
{summary_table(data['comparison'], metric)}
<h2>Paired comparisons ({escape(metric)})</h2>
<p>Each pair of evaluations on the same task, over the questions both answered. McNemar's exact test
asks whether the questions only A got right and those only B got right are too unbalanced to be a fair
coin's doing; p &lt; 0.05 is in red. The interval is a paired bootstrap of the accuracy difference.</p>
{paired_table(data['paired'], metric)}
{seeds_section(data.get('seeds', []), data.get('pooled', []))}
{sweeps_html(data.get('sweeps', []))}
<h2>Plots</h2>
{plot_html or '<p>No evaluations to plot.</p>'}
{training_section(data['training'], plots)}
<h2>Questions</h2>
<p>Every model's answer ({escape(metric)} verdict and extracted answer) to every question; pick two
models and "flipped" to see only the questions on which they disagree.</p>
{drill or '<p>No evaluations.</p>'}
<script>{SCRIPT}</script>
</body></html>
"""


def write_html(path: Path, data: dict[str, Any], evals: list[Any], plots: dict[str, Path], max_questions: int = 1000) -> Path:
    atomic_write_text(path, render(data, evals, plots, max_questions))
    return path
