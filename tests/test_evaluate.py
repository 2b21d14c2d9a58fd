"""run_eval on the tiny model: output files and fields, --limit subsets, resume after a torn write, summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mathrl import provenance
from mathrl.engine import generation
from mathrl.engine import models
from mathrl.errors import MathrlError
from mathrl.eval.evaluate import EvalConfig, run_eval, summarize
from mathrl.prompts.formats import FORMATS, Protocol, build_prompt
from mathrl.grading import answers_match
from mathrl.records import wilson_interval
from mathrl.tasks import get_task, subsample

ROW_FIELDS = {"id", "sample_idx", "question", "gold", "prompt", "completion", "pred_strict", "pred_flexible",
              "correct_strict", "correct_flexible", "has_reasoning", "has_answer", "num_tokens", "finish_reason"}


def make_cfg(model_dir, out, **kw) -> EvalConfig:
    base = dict(model=str(model_dir), task="arithmetic", limit=6, max_new_tokens=8, dtype="fp32", backend="hf",
                progress=False, output_dir=str(out), batch_size=4)
    base.update(kw)
    return EvalConfig(**base)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def spy_generation(monkeypatch):
    """Record the prompts every HFGenerator.stream call receives and every model load."""
    calls: dict[str, list] = {"prompts": [], "loads": []}
    real_stream, real_load = generation.HFGenerator.stream, models.load_model

    def stream(self, prompts, params):
        calls["prompts"].append(list(prompts))
        yield from real_stream(self, prompts, params)

    def load_model(*args, **kwargs):
        calls["loads"].append(args[0] if args else kwargs.get("name"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(generation.HFGenerator, "stream", stream)
    monkeypatch.setattr(models, "load_model", load_model)
    return calls


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, tmp_path_factory):
    """One evaluation shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("eval") / "run"
    summary = run_eval(make_cfg(tiny_model_dir, out))
    return out, summary


def test_output_files_and_row_fields(first_run, tiny_model_dir, tiny_tokenizer):
    out, summary = first_run
    for name in ("results.jsonl", "results.csv", "summary.json", "run_config.json"):
        assert (out / name).exists(), name
    rows = read_rows(out)
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    task = get_task("arithmetic")
    samples = {s.id: s for s in task.load_test()}
    fmt = FORMATS["gsm8k"]
    from mathrl.records import ResultRow

    for r in rows:
        assert ROW_FIELDS <= set(r)
        assert ResultRow.from_dict(r).to_dict() == r  # every written row is a ResultRow, nothing more
        s = samples[r["id"]]
        assert (r["question"], r["gold"], r["level"]) == (s.question, s.answer, s.meta["level"])
        assert r["prompt"] == build_prompt(s.question, Protocol(), tiny_tokenizer)
        assert r["sample_idx"] == 0 and 0 <= r["num_tokens"] <= 8
        assert r["finish_reason"] in ("stop", "length")
        # the verdicts are the grader's, applied to the stored completion
        assert r["pred_strict"] == fmt.extract_strict(r["completion"])
        assert r["pred_flexible"] == fmt.extract_flexible(r["completion"])
        assert r["correct_strict"] == answers_match(r["pred_strict"], r["gold"])
        assert r["correct_flexible"] == answers_match(r["pred_flexible"], r["gold"])
        assert r["has_answer"] == (r["pred_strict"] is not None)
        assert r["has_reasoning"] == fmt.has_reasoning(r["completion"])
    # rows follow the order of the --limit subset, not the generation order
    wanted = [s.id for s in subsample(task.load_test(), 6, 1234)]
    with (out / "results.csv").open(newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["id"] for r in csv_rows] == wanted
    assert ROW_FIELDS <= set(csv_rows[0])
    assert [r["completion"] for r in csv_rows] == [{r["id"]: r for r in rows}[i]["completion"] for i in wanted]


def test_summary_fields(first_run, tiny_model_dir):
    out, summary = first_run
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    rows = read_rows(out)
    assert saved["n"] == 6 and saved["n_completions"] == 6
    for key in ("accuracy_strict", "accuracy_flexible", "thinking_proportion", "answer_proportion"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["accuracy_flexible"] == round(sum(r["correct_flexible"] for r in rows) / 6, 4)
    assert saved["answer_proportion"] == round(sum(r["has_answer"] for r in rows) / 6, 4)
    assert saved["thinking_proportion"] == round(sum(r["has_reasoning"] for r in rows) / 6, 4)
    assert saved["mean_tokens"] == round(sum(r["num_tokens"] for r in rows) / 6, 1)
    assert saved["protocol"]["format"] == "gsm8k" and saved["protocol"]["chat_template"] is True
    assert saved["protocol"]["strict_pattern"] == FORMATS["gsm8k"].strict_pattern
    assert saved["model"]["revision"] == models.model_revision(str(tiny_model_dir), "local")
    assert saved["model"]["revision"] and saved["model"]["dtype"] == "float32"
    assert {"python", "torch", "transformers", "mathrl"} <= set(saved["versions"])
    expected = {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "num_samples": 1, "seed": 0,
                "backend": "hf", "batch_size": 4, "batch_memory_gb": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "stop": [],
                "sampler": "greedy", "no_repeat_ngram_size": 0, "model_generation_config": "ignored"}
    assert saved["decoding"] == expected  # the effective settings, neutral values included
    assert saved["task"]["name"] == "arithmetic" and saved["task"]["limit"] == 6
    assert saved["generation"]["generated_tokens"] == sum(r["num_tokens"] for r in rows)
    config = json.loads((out / "run_config.json").read_text())
    assert config["identity"]["limit"] == 6 and config["identity"]["model"] == str(tiny_model_dir)


def _ids(out: Path) -> list[str]:
    return [r["id"] for r in read_rows(out)]


def test_limit_subset_is_the_same_for_every_model(first_run, build_tiny, tmp_path):
    out, _ = first_run
    other = build_tiny(tmp_path / "other-model", seed=1)
    summary = run_eval(make_cfg(other, tmp_path / "other", max_new_tokens=4, batch_size=1))
    assert sorted(_ids(tmp_path / "other")) == sorted(_ids(out))
    assert summary["model"]["revision"] != json.loads((out / "summary.json").read_text())["model"]["revision"]
    expected = [s.id for s in subsample(get_task("arithmetic").load_test(), 6, 1234)]
    assert sorted(_ids(out)) == sorted(expected)
    run_eval(make_cfg(other, tmp_path / "seed", max_new_tokens=4, sample_seed=99))
    assert sorted(_ids(tmp_path / "seed")) != sorted(_ids(out))  # the subset follows --sample-seed


def test_resume_after_torn_write(tiny_model_dir, tmp_path, spy_generation):
    out = tmp_path / "run"
    cfg = make_cfg(tiny_model_dir, out, batch_size=2)
    run_eval(cfg)
    full = read_rows(out)
    assert len(full) == 6 and len(spy_generation["prompts"]) == 1
    # a kill mid-append: two whole rows and half of the third line
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    kept = {r["id"] for r in full[:2]}

    summary = run_eval(cfg)
    assert len(spy_generation["prompts"]) == 2
    regenerated = spy_generation["prompts"][1]
    by_prompt = {r["prompt"]: r["id"] for r in full}
    assert sorted(by_prompt[p] for p in regenerated) == sorted({r["id"] for r in full} - kept)  # exactly the missing 4
    rows = read_rows(out)  # every line parses again: the torn line was cut, not left in the middle
    assert len(rows) == 6 and len({r["id"] for r in rows}) == 6
    assert [r["id"] for r in rows[:2]] == [r["id"] for r in full[:2]]
    assert {r["id"]: r["completion"] for r in rows} == {r["id"]: r["completion"] for r in full}  # greedy fp32
    assert summary["n"] == 6
    assert len(list(csv.DictReader((out / "results.csv").open(newline="")))) == 6

    # nothing left to do: no model load, no generation, same numbers
    loads = len(spy_generation["loads"])
    again = run_eval(cfg)
    assert len(spy_generation["prompts"]) == 2 and len(spy_generation["loads"]) == loads
    assert again["n"] == 6 and again["accuracy_flexible"] == summary["accuracy_flexible"]
    assert again["model"]["revision"] == summary["model"]["revision"]
    assert len(read_rows(out)) == 6


def test_summary_rebuilt_from_complete_results_keeps_model_revision(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(tiny_model_dir, out, limit=2)
    first = run_eval(cfg)
    (out / "summary.json").unlink()
    again = run_eval(cfg)
    assert again["n"] == 2
    assert again["model"].get("revision") == first["model"]["revision"]


def test_resume_refuses_other_settings_and_overwrite_works(tiny_model_dir, tmp_path, spy_generation):
    out = tmp_path / "run"
    run_eval(make_cfg(tiny_model_dir, out, limit=3))
    for change in (dict(max_new_tokens=9), dict(limit=4), dict(protocol=Protocol(format="tags"))):
        with pytest.raises(MathrlError, match="other settings.*--overwrite"):
            run_eval(make_cfg(tiny_model_dir, out, **({"limit": 3} | change)))
    assert len(read_rows(out)) == 3  # the refused runs did not touch the results
    summary = run_eval(make_cfg(tiny_model_dir, out, limit=4, max_new_tokens=3, overwrite=True))
    rows = read_rows(out)
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4
    assert all(r["num_tokens"] <= 3 for r in rows)
    assert summary["n"] == 4 and summary["decoding"]["max_new_tokens"] == 3
    assert json.loads((out / "run_config.json").read_text())["identity"]["limit"] == 4


def test_num_samples_pass_and_maj(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    summary = run_eval(make_cfg(tiny_model_dir, out, limit=3, completions_per_question=3, temperature=0.8, max_new_tokens=4))
    rows = read_rows(out)
    assert len(rows) == 9
    assert sorted((r["id"], r["sample_idx"]) for r in rows) == sorted((i, k) for i in {r["id"] for r in rows} for k in range(3))
    assert summary["n"] == 3 and summary["n_completions"] == 9
    for kind in ("strict", "flexible"):
        for key in (f"pass@3_{kind}", f"maj@3_{kind}"):
            assert key in summary and 0.0 <= summary[key] <= 1.0
        assert summary[f"maj@3_{kind}"] <= summary[f"pass@3_{kind}"]
    assert summary["decoding"]["num_samples"] == 3 and summary["decoding"]["temperature"] == 0.8


def test_invalid_settings(tiny_model_dir, tmp_path):
    with pytest.raises(MathrlError, match="--batch-size"):
        run_eval(make_cfg(tiny_model_dir, tmp_path / "a", batch_size=0))
    with pytest.raises(MathrlError, match="--num-samples > 1"):
        run_eval(make_cfg(tiny_model_dir, tmp_path / "b", completions_per_question=2))
    with pytest.raises(MathrlError, match="--limit"):
        run_eval(make_cfg(tiny_model_dir, tmp_path / "c", limit=0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MathrlError, match="no config.json"):
        run_eval(make_cfg(tmp_path / "empty", tmp_path / "d"))
    with pytest.raises(MathrlError, match="unknown model"):
        run_eval(make_cfg("not-a-model", tmp_path / "e"))


def test_model_bundle_is_reused(tiny_bundle, tiny_model_dir, tmp_path, spy_generation):
    summary = run_eval(make_cfg(tiny_model_dir, tmp_path / "run", limit=2), model_bundle=tiny_bundle)
    assert spy_generation["loads"] == [] and summary["n"] == 2


# --------------------------------------------------------------------------------------------------
# summarize


def _row(qid, k, strict, flex, gold, level=None, tokens=10, finish="stop"):
    r = {"id": qid, "sample_idx": k, "pred_strict": strict, "pred_flexible": flex,
         "correct_strict": strict is not None and strict == gold, "correct_flexible": flex is not None and flex == gold,
         "has_reasoning": k == 0, "has_answer": strict is not None, "num_tokens": tokens, "finish_reason": finish}
    if level is not None:
        r["level"] = level
    return r


def test_summarize_pass_and_maj():
    spec = {  # id: gold, strict preds, flexible preds
        "q1": ("7", ["5", "5", "7"], ["5", "5", "7"]),  # pass yes, majority wrong
        "q2": ("3", ["3", "3", None], ["3", "3", "1"]),  # pass yes, majority right
        "q3": ("4", [None, None, "4"], ["4", "4", "9"]),  # missing answers do not vote: majority right
        "q4": ("2", ["1", "2", "2"], ["1", "2", "2"]),  # majority right
        "q5": ("1", ["8", "8", "9"], ["8", "8", "9"]),  # all wrong
    }
    rows = [_row(q, k, s[k], f[k], g, finish="length" if q == "q1" else "stop")
            for q, (g, s, f) in spec.items() for k in range(3)]
    out = summarize(rows, 3)
    assert out["n"] == 5 and out["n_completions"] == 15 and out["num_samples"] == 3
    assert out["accuracy_strict"] == 0.4 and out["accuracy_flexible"] == round(7 / 15, 4)
    assert out["pass@3_strict"] == 0.8 and out["maj@3_strict"] == 0.6
    assert out["pass@3_flexible"] == 0.8 and out["maj@3_flexible"] == 0.6
    assert out["answer_proportion"] == 0.8
    assert out["thinking_proportion"] == round(5 / 15, 4)
    assert out["truncated_proportion"] == 0.2
    assert out["mean_tokens"] == 10.0
    # the interval is over the 5 questions (their samples are correlated), not over 15 independent verdicts
    import numpy as np

    per_q = [np.mean([r["correct_strict"] for r in rows if r["id"] == q]) for q in spec]
    half = 1.96 * np.std(per_q, ddof=1) / np.sqrt(len(per_q))
    assert out["ci95_strict"] == [round(max(0.0, 0.4 - half), 4), round(min(1.0, 0.4 + half), 4)]
    assert out["ci95_method"] == "question_cluster_normal"
    naive = wilson_interval(6, 15)
    assert out["ci95_strict"][1] - out["ci95_strict"][0] > naive[1] - naive[0]
    assert "accuracy_flexible_by_level" not in out


def test_summarize_single_sample_and_levels():
    rows = [_row("a", 0, "1", "1", "1", level=1), _row("b", 0, None, "2", "2", level=2),
            _row("c", 0, None, None, "3", level=2), _row("d", 0, "4", "4", "4", level=1, tokens=30)]
    out = summarize(rows, 1)
    assert out["accuracy_strict"] == 0.5 and out["accuracy_flexible"] == 0.75
    assert not any(k.startswith(("pass@", "maj@")) for k in out)
    assert out["accuracy_flexible_by_level"] == {"1": 1.0, "2": 0.5}
    assert out["mean_tokens"] == 15.0
    assert summarize([], 1) == {"n": 0}


def test_wilson_interval():
    assert wilson_interval(0, 0) == [0.0, 0.0]
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 10)[0] == 0.0


def test_library_versions():
    v = provenance.library_versions()
    assert v["python"].count(".") == 2 and "torch" in v and "transformers" in v


def test_summarize_breaks_down_by_metadata_and_counts_treatments():
    rows = [_row("a", 0, "1", "1", "1") | {"subject": "Algebra", "perturbation_type": "p1", "answer_type": "math"},
            _row("b", 0, None, "2", "2") | {"subject": "Algebra", "perturbation_type": "p2", "answer_type": "math"},
            _row("c", 0, "3", "3", "3") | {"subject": "Geometry", "perturbation_type": "p2", "answer_type": "text"},
            _row("d", 0, "9", "9", "4") | {"subject": "Geometry", "answer_type": "no_answer"}]
    out = summarize(rows, 1)
    assert out["treatments"] == {"math": 2, "no_answer": 1, "text": 1}
    by = out["accuracy_by"]
    assert by["subject"] == {"Algebra": {"n": 2, "strict": 0.5, "flexible": 1.0},
                             "Geometry": {"n": 2, "strict": 0.5, "flexible": 0.5}}
    assert by["perturbation_type"] == {"p1": {"n": 1, "strict": 1.0, "flexible": 1.0}, "p2": {"n": 2, "strict": 0.5, "flexible": 1.0}}
    assert set(by["answer_type"]) == {"math", "text", "no_answer"} and "level" not in by
    assert "accuracy_flexible_by_level" not in out
    assert summarize([r | {"level": 1} for r in rows], 1)["accuracy_by"].get("level") is None  # one value: no breakdown


def test_a_non_positive_memory_cap_is_refused_before_the_model_loads(tmp_path):
    cfg = EvalConfig(model=str(tmp_path / "no-such-model"), task="arithmetic", limit=2, batch_memory_gb=0,
                     output_dir=str(tmp_path / "out"))
    with pytest.raises(MathrlError, match="--batch-memory-gb must be positive, got 0"):
        run_eval(cfg)
    assert not (tmp_path / "out" / "results.jsonl").exists()
