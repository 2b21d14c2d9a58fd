"""Report: bootstrap and McNemar statistics, pairing by question, report files on hand-written eval
directories, HTML escaping, the CLI, and report.html rendered by headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mathrl import records
from mathrl.report import stats
from mathrl.errors import MathrlError
from mathrl.report.build import build_report
from mathrl.report.runs import discover

REPO_ROOT = Path(__file__).resolve().parents[1]
N = 40
XSS = "<script>alert('pwned')</script>"


# ---------------------------------------------------------------- statistics

def test_mcnemar_known_p_values():
    assert stats.mcnemar_p(1, 9) == pytest.approx(0.021484375, abs=0)  # 2 * (1 + 10) / 2**10
    assert stats.mcnemar_p(9, 1) == stats.mcnemar_p(1, 9)
    assert stats.mcnemar_p(0, 6) == pytest.approx(2 / 64)
    assert stats.mcnemar_p(5, 5) == 1.0
    assert stats.mcnemar_p(0, 0) == 1.0
    assert 0 < stats.mcnemar_p(0, 2000) < 1e-300 or stats.mcnemar_p(0, 2000) == 0.0  # no overflow
    with pytest.raises(ValueError):
        stats.mcnemar_p(-1, 3)


def test_mcnemar_exact_counts_discordant_pairs():
    a = [True, True, False, False, True] + [True] * 9
    b = [False, True, True, False, True] + [False] * 9
    res = stats.mcnemar_exact(b, a)  # A = b-list: right where a is wrong once, wrong where a right 10 times
    assert (res["b"], res["c"]) == (1, 10)
    assert res["p_value"] == pytest.approx(stats.mcnemar_p(1, 10))


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    small = [i % 10 < 3 for i in range(50)]
    large = [i % 10 < 3 for i in range(5000)]
    lo_s, hi_s = stats.bootstrap_ci(small, seed=1)
    lo_l, hi_l = stats.bootstrap_ci(large, seed=1)
    assert lo_s <= 0.3 <= hi_s and lo_l <= 0.3 <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5  # width ~ 1/sqrt(n): 10x the data, ~1/3.2 the width
    assert stats.bootstrap_ci(small, seed=1) == (lo_s, hi_s)  # seeded
    assert stats.bootstrap_ci([True] * 7) == (1.0, 1.0)
    assert stats.bootstrap_ci([]) == (0.0, 0.0)
    # the percentile interval of a 30% accuracy on 5000 questions is about +-1.3 points
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * (0.3 * 0.7 / 5000) ** 0.5, rel=0.15)


def test_bootstrap_diff_ci_is_paired():
    a = [i % 2 == 0 for i in range(200)]
    lo, hi = stats.bootstrap_diff_ci(a, a)
    assert (lo, hi) == (0.0, 0.0)  # identical verdicts: no difference in any resample
    b = [x or i % 4 == 1 for i, x in enumerate(a)]  # B = A plus 50 more right
    lo, hi = stats.bootstrap_diff_ci(a, b)
    assert lo <= 0.25 <= hi and lo > 0.15


def test_pair_verdicts_aligns_by_id_over_shared_ids():
    rows_a = [{"id": "q1", "sample_idx": 0, "correct_strict": True},
              {"id": "q2", "sample_idx": 1, "correct_strict": True},
              {"id": "q2", "sample_idx": 0, "correct_strict": False},  # sample 0 wins over the earlier sample 1
              {"id": "q3", "sample_idx": 0, "correct_strict": True}]
    rows_b = [{"id": "q3", "sample_idx": 0, "correct_strict": False},
              {"id": "q2", "sample_idx": 0, "correct_strict": True},
              {"id": "q9", "sample_idx": 0, "correct_strict": True}]
    ids, va, vb = stats.pair_verdicts(rows_a, rows_b)
    assert ids == ["q2", "q3"]
    assert va == [False, True] and vb == [True, False]
    res = stats.paired_comparison(rows_a, rows_b)
    assert res["n_shared"] == 2 and (res["b"], res["c"]) == (1, 1) and res["p_value"] == 1.0


# ---------------------------------------------------------------- synthetic runs

def write_eval(path: Path, model: dict, verdicts: list[bool], chat_template: bool = True, fmt: str = "gsm8k",
               task: str = "arithmetic", completion: str = "#### 1", ids: list[str] | None = None) -> Path:
    path.mkdir(parents=True)
    ids = ids or [f"q{i}" for i in range(len(verdicts))]
    rows = [{"id": q, "sample_idx": 0, "question": f"What is {i} + 1?", "gold": str(i + 1), "prompt": "p",
             "completion": completion, "pred_strict": str(i + 1) if ok else "0", "pred_flexible": str(i + 1) if ok else "0",
             "correct_strict": ok, "correct_flexible": ok, "has_reasoning": True, "has_answer": True,
             "num_tokens": 12, "finish_reason": "stop"} for i, (q, ok) in enumerate(zip(ids, verdicts))]
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    acc = sum(verdicts) / len(verdicts)
    summary = {"n": len(rows), "n_completions": len(rows), "num_samples": 1, "accuracy_strict": acc,
               "ci95_strict": [0, 1], "accuracy_flexible": acc, "ci95_flexible": [0, 1], "thinking_proportion": 1.0,
               "answer_proportion": 1.0, "mean_tokens": 12.0, "truncated_proportion": 0.0, "model": model,
               "task": {"name": task, "config": "1-2", "split": "test", "limit": None, "sample_seed": 1234},
               "protocol": {"format": fmt, "chat_template": chat_template, "shots": 0},
               "generation": {"tokens_per_second": 123.4}}
    (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return path


def write_train(path: Path, config: dict, steps: int = 20, grpo: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    log = []
    for s in range(1, steps + 1):
        row = {"step": s, "loss": 1.0 / s, "learning_rate": 1e-4, "grad_norm": 1.0}
        if grpo:
            row |= {"reward": s / steps, "reward_std": 0.1, "rewards/correctness/mean": s / steps / 2,
                    "rewards/format_strict/mean": 0.5, "kl": 0.01 * s, "entropy": 0.5, "completion_length": 30}
            if s == 10:
                row["alarm"] = "reward std collapsed"
        log.append(row)
    (path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (path / "mathrl_config.json").write_text(json.dumps({"config": config, "train_seconds": 12.5}))
    return path


@pytest.fixture()
def experiment(tmp_path: Path) -> Path:
    """base, SFT and GRPO evaluated on the same 40 questions (SFT also without the chat template)."""
    root = tmp_path / "exp"
    write_train(root / "sft", {"loss": "completion", "method": "full"})
    write_train(root / "grpo", {"num_generations": 4, "beta": 0.0}, grpo=True)
    write_train(root / "sft" / "checkpoint-10", {"loss": "completion"})  # a checkpoint is no run of its own
    embedded = {"name": "smollm2-135m", "kind": "embedded", "path": "/cache/smollm2"}
    write_eval(root / "base-eval", embedded, [i < 4 for i in range(N)])
    write_eval(root / "sft-eval", {"name": str(root / "sft"), "kind": "local", "path": str(root / "sft")},
               [i < 20 for i in range(N)], completion=XSS)
    write_eval(root / "sft-eval-raw", {"name": str(root / "sft"), "kind": "local", "path": str(root / "sft")},
               [i < 14 for i in range(N)], chat_template=False)
    write_eval(root / "grpo-eval", {"name": str(root / "grpo"), "kind": "local", "path": str(root / "grpo")},
               [i < 30 for i in range(N)], fmt="tags")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_build_report_writes_every_file(experiment, tmp_path):
    out = tmp_path / "report"
    res = build_report([experiment], out, n_resamples=500)
    names = {"comparison.csv", "paired.csv", "report.json", "report.md", "report.html", "accuracy_bar.png",
             "accuracy_grouped.png", "eval_template_scatter.png", "curves_sft.png", "curves_grpo.png"}
    assert names <= {p.name for p in out.iterdir()}
    assert set(res["files"]) == names
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = {r["label"]: r for r in read_csv(out / "comparison.csv")}
    assert set(rows) == {"base-eval", "sft-eval", "sft-eval-raw", "grpo-eval"}
    assert [r["label"] for r in res["comparison"]] == ["base-eval", "sft-eval", "sft-eval-raw", "grpo-eval"]  # by method
    assert {k: rows[k]["method"] for k in rows} == {"base-eval": "base", "sft-eval": "sft", "sft-eval-raw": "sft",
                                                    "grpo-eval": "grpo"}
    assert rows["sft-eval"]["model"] == "sft" and rows["base-eval"]["model"] == "smollm2-135m"
    assert float(rows["sft-eval"]["accuracy_strict"]) == 0.5
    assert float(rows["sft-eval"]["ci_low_strict"]) <= 0.5 <= float(rows["sft-eval"]["ci_high_strict"])
    assert rows["sft-eval-raw"]["chat_template"] == "False" and rows["grpo-eval"]["format"] == "tags"
    assert rows["base-eval"]["n"] == "40" and rows["base-eval"]["tokens_per_second"] == "123.4"

    paired = read_csv(out / "paired.csv")
    assert len(paired) == 6  # every two of the four evaluations
    bg = next(p for p in paired if (p["eval_a"], p["eval_b"]) == ("base-eval", "grpo-eval"))
    assert (int(bg["a_right_b_wrong"]), int(bg["a_wrong_b_right"])) == (0, 26)
    assert float(bg["p_value"]) == pytest.approx(stats.mcnemar_p(0, 26)) and bg["metric"] == "strict"
    assert {t["label"]: t["method"] for t in res["training"]} == {"sft": "sft", "grpo": "grpo"}
    alarms = {t["label"]: t["alarms"] for t in res["training"]}
    assert alarms == {"sft": [], "grpo": ["step 10: reward std collapsed"]}


def test_report_html_is_self_contained_and_escaped(experiment, tmp_path):
    res = build_report([experiment], tmp_path / "r", n_resamples=200)
    html = Path(res["html"]).read_text(encoding="utf-8")
    assert XSS not in html and "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # only the page's own filter
    assert "data:image/png;base64," in html and 'src="http' not in html and "<link" not in html
    assert 'id="dd0-a"' in html and 'value="flipped"' in html
    assert 'data-v="1111"' in html and 'data-v="0001"' in html  # per-question verdicts for the filter


def test_report_limits_drilldown_and_dedupes_labels(tmp_path):
    model = {"name": "smollm2-135m", "kind": "embedded"}
    for exp in ("a", "b"):
        write_eval(tmp_path / exp / "eval", model, [i % 2 == 0 for i in range(30)])
    res = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out", n_resamples=100, max_questions=10)
    assert sorted(r["label"] for r in res["comparison"]) == ["a/eval", "b/eval"]
    html = Path(res["html"]).read_text(encoding="utf-8")
    assert "showing the first 10 only" in html and html.count("<tr data-v=") == 10
    assert res["paired"][0]["p_value"] == 1.0 and res["paired"][0]["n_shared"] == 30


def test_manifest_names_models_and_methods(tmp_path):
    write_eval(tmp_path / "e1", {"name": "org/model-x", "kind": "hub"}, [True, False])
    write_eval(tmp_path / "e2", {"name": "/elsewhere/ckpt", "kind": "local", "path": "/elsewhere/ckpt"}, [True, True])
    manifest = {"experiment": "x", "stages": {"ppo-eval": {"kind": "eval", "model": "rl", "method": "ppo",
                                                            "setting": "tags raw", "output_dir": "e2"}}}
    (tmp_path / "experiment.json").write_text(json.dumps(manifest))
    evals, _ = discover([tmp_path])
    by = {e.label: e for e in evals}
    assert (by["e1"].model, by["e1"].method) == ("org/model-x", "base")
    assert (by["e2"].model, by["e2"].method, by["e2"].setting) == ("rl", "ppo", "tags raw")


def test_single_eval_dir_and_errors(tmp_path):
    d = write_eval(tmp_path / "only", {"name": "m", "kind": "hub"}, [True, False, True])
    res = build_report([d], tmp_path / "out", n_resamples=50)
    assert [r["label"] for r in res["comparison"]] == ["only"] and res["paired"] == []
    assert read_csv(tmp_path / "out" / "paired.csv") == []  # header only
    assert "eval_a" in (tmp_path / "out" / "paired.csv").read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MathrlError, match="empty"):
        build_report([tmp_path / "empty"], tmp_path / "out2")
    with pytest.raises(MathrlError, match="metric"):
        build_report([d], tmp_path / "out3", metric="lenient")


# ---------------------------------------------------------------- CLI

def mathrl(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "mathrl", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120)


def test_cli_report(experiment, tmp_path):
    out = tmp_path / "cli-report"
    res = mathrl("report", str(experiment), "--output-dir", str(out), "--metric", "flexible", "--bootstrap", "200")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1].endswith(str(out / "report.html"))
    assert "grpo-eval" in res.stdout and "75.0%" in res.stdout
    assert json.loads((out / "report.json").read_text())["metric"] == "flexible"

    (tmp_path / "nothing").mkdir()
    res = mathrl("report", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "x"))
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: no evaluations") and str(tmp_path / "nothing") in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- headless Chromium

def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)


@pytest.mark.skipif(find_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(experiment, tmp_path):
    pytest.importorskip("PIL")
    import numpy as np
    from PIL import Image

    html = Path(build_report([experiment], tmp_path / "r", n_resamples=200)["html"]).resolve()
    shot = tmp_path / "shot.png"
    flags = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000"]
    subprocess.run([*flags, f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20, "screenshot is (nearly) blank"
    assert (pixels < 128).mean() > 0.01  # some dark ink: text, bars

    dom = subprocess.run([*flags, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    for text in ("mathrl report", "strict [95% CI]", "Paired comparisons", "grpo-eval", "A right, B wrong"):
        assert text in dom
    assert dom.count('src="data:image/png;base64,') >= 5  # 3 accuracy plots + 2 training curves
    assert "<script>alert" not in dom  # the completion stays text, never an element

    # the flip filter: base-eval (4 right) vs sft-eval (20 right, a superset) differ on 16 questions
    picked = tmp_path / "picked.html"
    choose = ("<script>document.getElementById('dd0-a').value='0';document.getElementById('dd0-b').value='1';"
              "document.getElementById('dd0-mode').value='b-only';mathrlFilter('dd0');</script></body>")
    picked.write_text(html.read_text(encoding="utf-8").replace("</body>", choose), encoding="utf-8")
    dom = subprocess.run([*flags, "--dump-dom", picked.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "16 question(s) shown" in dom
    assert dom.count('style="display: none;"') == N - 16


def test_report_interval_is_the_one_summary_json_uses(tmp_path):
    """One accuracy-with-interval function (records.accuracy_interval) for summary.json, the runner's table
    and the report: the report once gave a bootstrap interval for the number summary.json gave Wilson's."""
    from mathrl.report.build import build_report

    d = write_eval(tmp_path / "one", {"name": "m", "kind": "hub"}, [True] * 7 + [False] * 13)
    (row,) = build_report([d], tmp_path / "r1")["comparison"]
    assert row["interval"] == "wilson"
    assert [row["ci_low_strict"], row["ci_high_strict"]] == [round(x, 4) for x in records.wilson_interval(7, 20)]
    # two samples per question: accuracy over all completions, interval over questions
    rows = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
    extra = [dict(r, sample_idx=1, correct_strict=not r["correct_strict"]) for r in rows[:10]]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + extra))
    (row,) = build_report([d], tmp_path / "r2")["comparison"]
    acc, ci, name = records.accuracy_interval([[r["correct_strict"] for r in rows + extra if r["id"] == q["id"]] for q in rows])
    assert (row["accuracy_strict"], [row["ci_low_strict"], row["ci_high_strict"]], row["interval"]) == (
        round(acc, 4), [round(x, 4) for x in ci], "question_cluster_normal")


def test_flips_show_the_first_questions_whose_verdicts_differ_along_a_chain(tmp_path):
    from mathrl.report.build import build_report

    write_eval(tmp_path / "base", {"name": "m", "kind": "hub"}, [False, False, True, False], completion="base says")
    write_eval(tmp_path / "sft", {"name": "s", "kind": "hub"}, [False, True, True, True], completion="sft says")
    write_eval(tmp_path / "ppo", {"name": "p", "kind": "hub"}, [False, True, False, True], completion="ppo says")
    res = build_report([tmp_path], tmp_path / "r", flips=["base", "sft", "ppo"], flips_n=2)
    text = (tmp_path / "r" / "flips.md").read_text()
    assert "4 shared questions" in text and "- ✗✓✓: 2" in text and "- ✗✗✗: 1" in text and "- ✓✓✗: 1" in text
    assert "## q1 " in text and "## q2 " in text and "## q3 " not in text and "## q0 " not in text  # first 2 flips
    assert text.count("ppo says") == 2 and res["files"]["flips.md"].endswith("flips.md")
    with pytest.raises(MathrlError, match=r"--flips: no evaluation named 'rl'; use an eval label: base, ppo, sft"):
        build_report([tmp_path], tmp_path / "r", flips=["base", "rl"])


def test_result_rows_are_typed_and_a_foreign_row_is_named(tmp_path):
    from mathrl.records import ResultRow
    from mathrl.report.build import build_report

    d = write_eval(tmp_path / "e", {"name": "m", "kind": "hub"}, [True, False])
    rows = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
    assert ResultRow.from_dict(rows[0]).to_dict() == rows[0] | {"answer_type": "number"}
    del rows[1]["correct_strict"]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(MathrlError, match=r"results\.jsonl:2: a result row without correct_strict"):
        build_report([d], tmp_path / "r")


def test_the_report_says_only_true_things(experiment, tmp_path, monkeypatch):
    """The bar plot's axis read "95% bootstrap interval" over the table's Wilson intervals; every gsm8k-format
    model showed "thinking 100%"; an empty chat-template scatter was drawn; the training table showed a
    "final reward" for SFT and a loss for GRPO."""
    from matplotlib.axes import Axes

    labels = []
    set_xlabel = Axes.set_xlabel
    monkeypatch.setattr(Axes, "set_xlabel", lambda self, text, *a, **k: (labels.append(text), set_xlabel(self, text, *a, **k))[1])
    res = build_report([experiment], tmp_path / "r", n_resamples=200)
    intervals = {r["interval"] for r in res["comparison"]}
    bar_label = next(t for t in labels if t.startswith("accuracy (strict), 95%"))
    assert all(name in bar_label for name in intervals) and "bootstrap" not in bar_label
    thinking = {r["label"]: r["thinking_proportion"] for r in res["comparison"]}
    assert thinking["grpo-eval"] == 1.0 and thinking["sft-eval"] is None and thinking["base-eval"] is None  # tags vs gsm8k
    html = Path(res["html"]).read_text(encoding="utf-8")
    assert "reasoning markers" in html
    rows = {t["label"]: t for t in res["training"]}
    assert rows["sft"]["loss"] == (1.0, 1.0 / 20) and rows["sft"]["reward"] is None
    assert rows["grpo"]["loss"] is None and rows["grpo"]["reward"] == (1 / 20, 1.0)
    assert rows["grpo"]["sampled_accuracy"] == (1 / 40, 0.5) and rows["grpo"]["kl"] == pytest.approx(0.2)
    assert "sampled accuracy first → last" in html and "final reward" not in html
    # without a with/without-template pair there is no chat-template plot at all
    import shutil

    shutil.rmtree(experiment / "sft-eval-raw")
    res = build_report([experiment], tmp_path / "r2", n_resamples=200)
    assert not (tmp_path / "r2" / "eval_template_scatter.png").exists() and "eval_template_scatter.png" not in res["files"]


def test_exact_mcnemar_false_positive_rate_under_no_difference_is_at_most_alpha():
    """The paired test behind every single-seed p-value (the report's pairs, a sweep's `vs_start`): with two
    models that are right on each question independently with the same probability, it rejects at most alpha
    of the time (an exact conditional test is conservative)."""
    import math
    import random

    from mathrl.report.stats import mcnemar_exact

    rng, n_exp, alpha, rejections = random.Random(0), 2000, 0.05, 0
    for _ in range(n_exp):
        p = [rng.uniform(0.1, 0.9) for _ in range(200)]  # question difficulty, shared by both models
        a = [rng.random() < q for q in p]
        b = [rng.random() < q for q in p]
        rejections += mcnemar_exact(a, b)["p_value"] < alpha
    rate = rejections / n_exp
    assert rate <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / n_exp), rate
    assert rate > 0.005  # not a test that never rejects
