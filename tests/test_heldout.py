"""Held-out tasks: loading (local layouts, the hub path), field mapping, gold treatments, bad rows,
and `mathrl grade --task T --data-dir` scoring every task's own golds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import FIXTURES, HELDOUT_FIXTURES, SHARED_DATA
from typer.testing import CliRunner

from mathrl import grading
from mathrl.cli import app
from mathrl.errors import MathrlError
from mathrl.prompts.formats import FORMATS
from mathrl.tasks import get_task
from mathrl.grading import answers
from mathrl.tasks.heldout import MATH_SUBJECTS, SPECS, last_boxed

runner = CliRunner()


def raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def need_shared(name: str) -> Path:
    if not (SHARED_DATA / name / "test.jsonl").exists():
        pytest.skip(f"{name} data not found under {SHARED_DATA}")
    return SHARED_DATA / name


# --------------------------------------------------------------------------------------------------
# the real copies: SVAMP and GSM-Hard


def test_svamp_fields_from_the_real_file():
    folder = need_shared("svamp")
    samples = get_task("svamp", data_dir=str(SHARED_DATA)).load_test()
    raw = raw_rows(folder / "test.jsonl")
    assert len(samples) == len(raw)
    for s, r in zip(samples, raw):
        assert s.question == f"{r['Body'].strip()} {r['Question'].strip()}"
        assert s.id == f"svamp-{r['ID']}"
        assert grading.answers_match(s.answer, str(r["Answer"])) and grading.is_plain_number(s.answer)
        assert s.meta["answer_type"] == "number" and s.meta["problem_type"] == r["Type"]
    # the task's own folder works as the data dir too
    assert [s.id for s in get_task("svamp", data_dir=str(folder)).load_test()] == [s.id for s in samples]


def test_gsm_hard_float_targets():
    folder = need_shared("gsm_hard")
    samples = get_task("gsm_hard", data_dir=str(folder)).load_test()
    raw = raw_rows(folder / "test.jsonl")
    assert len(samples) == len(raw) and [s.question for s in samples] == [r["input"].strip() for r in raw]
    inexact = 0
    for s, r in zip(samples, raw):
        target = float(r["target"])
        assert abs(float(s.answer) - target) <= 1e-6 * max(1.0, abs(target))
        inexact += target != int(target)
    assert inexact > 10  # non-integer targets (e.g. 3244047.0999999996) really are exercised
    assert len({s.id for s in samples}) == len(samples)


def test_data_dir_env_is_the_parent_and_other_folders_are_refused(monkeypatch, tmp_path):
    need_shared("svamp")
    monkeypatch.setenv("MATHRL_DATA_DIR", str(SHARED_DATA))
    assert len(get_task("svamp").load_test()) == len(raw_rows(SHARED_DATA / "svamp" / "test.jsonl"))
    # a folder of another task is not read as this task's data (gsm8k rows are not SVAMP rows)
    with pytest.raises(MathrlError, match=r"svamp: no test data in .*gsm8k"):
        get_task("svamp", data_dir=str(SHARED_DATA / "gsm8k")).load_test()
    # an alias of the task's own folder name is accepted
    write_rows(tmp_path / "gsm-hard" / "test.jsonl", [{"input": "Q?", "target": 2.0}])
    assert get_task("gsm_hard", data_dir=str(tmp_path / "gsm-hard")).load_test()[0].answer == "2"


# --------------------------------------------------------------------------------------------------
# fixtures: ASDiv, MAWPS, GSM-Plus, MATH-500, MATH


def test_asdiv_units_dropped_and_text_golds_kept():
    task = get_task("asdiv", data_dir=str(FIXTURES))
    samples, raw = task.load_test(), raw_rows(FIXTURES / "asdiv" / "test.jsonl")
    assert len(samples) == len(raw)
    kinds = set()
    for s, r in zip(samples, raw):
        assert s.question == f"{r['body']} {r['question']}" and s.meta["raw_answer"] == r["answer"]
        bare = re.sub(r"\s*\([^()]*\)", "", r["answer"]).strip()
        if grading.is_plain_number(bare):
            assert s.meta["answer_type"] == "number" and grading.answers_match(s.answer, bare)
        else:
            assert s.meta["answer_type"] == "text" and s.answer == r["answer"]
        kinds.add(s.meta["answer_type"])
    assert kinds == {"number", "text"}
    assert task.describe()["hub_id"] == "EleutherAI/asdiv" and task.describe()["hub_split"] == "validation"


def test_mawps_result_falls_back_to_result_float():
    raw = raw_rows(FIXTURES / "mawps" / "test.jsonl")
    samples = get_task("mawps", data_dir=str(FIXTURES)).load_test()
    for s, r in zip(samples, raw):
        value = r["result"] if grading.is_plain_number(r["result"]) else r["result_float"]
        assert grading.answers_match(s.answer, str(value)) and s.id == f"mawps-{r['id']}"
    assert any(not grading.is_plain_number(r["result"]) for r in raw)  # the fallback is exercised


def test_gsm_plus_no_answer_items_judged_or_excluded():
    raw = raw_rows(FIXTURES / "gsm_plus" / "test.jsonl")
    missing = [i for i, r in enumerate(raw) if r["answer"] in (None, "None")]
    assert missing and {raw[i]["perturbation_type"] for i in missing} == {"critical thinking"}
    judged = get_task("gsm_plus", data_dir=str(FIXTURES)).load_test()
    assert [s.meta["perturbation_type"] for s in judged] == [r["perturbation_type"] for r in raw]
    assert [i for i, s in enumerate(judged) if s.meta["answer_type"] == "no_answer"] == missing
    assert all(judged[i].answer == answers.NO_ANSWER for i in missing)
    task = get_task("gsm_plus", data_dir=str(FIXTURES), exclude="no_answer")
    kept = task.load_test()
    assert len(kept) == len(raw) - len(missing) and task.describe()["excluded"] == {"no_answer": len(missing)}
    with pytest.raises(MathrlError, match="exclude=bogus"):
        get_task("gsm_plus", exclude="bogus")


def test_math500_and_math_golds_levels_subjects():
    raw500 = raw_rows(FIXTURES / "math500" / "test.jsonl")
    m500 = get_task("math500", data_dir=str(FIXTURES)).load_test()
    for s, r in zip(m500, raw500):
        assert (s.answer, s.meta["level"], s.meta["subject"]) == (r["answer"], r["level"], r["subject"])
        assert s.meta["answer_type"] == "math"
    raw = raw_rows(FIXTURES / "math" / "test.jsonl")
    task = get_task("math", data_dir=str(FIXTURES))
    samples = task.load_test()
    for s, r in zip(samples, raw):
        assert s.answer == last_boxed(r["solution"]) and s.meta["subject"] == r["type"]
        level = r["level"].removeprefix("Level ")
        assert s.meta["level"] == (int(level) if level.isdigit() else r["level"])
    two_boxes = next(s for s, r in zip(samples, raw) if r["solution"].count("\\boxed") > 1)
    assert two_boxes.answer == "\\sqrt{2}"  # the last box, as lm-eval's hendrycks_math reads it
    assert last_boxed("so $\\boxed 6$.") == "6" and last_boxed("$\\boxed{\\frac{\\sqrt{3}}{2}}$") == "\\frac{\\sqrt{3}}{2}"
    algebra = get_task("math", "algebra", data_dir=str(FIXTURES)).load_test()
    assert {s.meta["subject"] for s in algebra} == {"Algebra"} and len(algebra) == sum(r["type"] == "Algebra" for r in raw)


@pytest.mark.parametrize("task, row, field", [
    ("svamp", {"Body": "b", "Answer": 1.0}, "'question'"),
    ("svamp", {"Body": "b", "Question": "q"}, "'answer'"),
    ("svamp", {"Body": "b", "Question": "q", "Answer": "blue"}, "'Answer' 'blue' is not a number"),
    ("asdiv", {"body": "b", "question": "q", "answer": ""}, "'answer' is empty"),
    ("math", {"problem": "p", "level": "Level 1", "type": "Algebra", "solution": "no box"}, "'solution' has no \\\\boxed"),
    ("math500", {"problem": "p", "solution": "s", "answer": "", "subject": "Algebra", "level": 1}, "'answer' is empty"),
])
def test_malformed_row_names_file_line_and_field(tmp_path, task, row, field):
    good = raw_rows(FIXTURES / task / "test.jsonl")[0] if (FIXTURES / task).exists() else {"Body": "b", "Question": "q", "Answer": 3.0}
    path = write_rows(tmp_path / task / "test.jsonl", [good, good, row])
    with pytest.raises(MathrlError) as e:
        get_task(task, data_dir=str(tmp_path)).load_test()
    assert str(e.value).startswith(f"{path}:3: ") and re.search(field, str(e.value)), str(e.value)
    assert "\n" not in str(e.value)


def test_hub_path_records_dataset_id_config_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        if path == "EleutherAI/hendrycks_math":
            return [{"problem": f"{name}?", "level": "Level 2", "type": name.title(), "solution": "$\\boxed{1}$"}]
        return [{"Body": "Tom has 2.", "Question": "How many?", "Answer": 2.0, "ID": "x1", "Type": "Addition"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.delenv("MATHRL_DATA_DIR", raising=False)
    svamp = get_task("svamp")
    assert [s.id for s in svamp.load_test()] == ["svamp-x1"]
    assert calls == [("ChilleD/SVAMP", None, "test")]
    d = svamp.describe()
    assert (d["hub_id"], d["hub_split"], d["source"]) == ("ChilleD/SVAMP", "test", {"hub": "ChilleD/SVAMP"})
    calls.clear()
    math = get_task("math")
    assert len(math.load_test()) == len(MATH_SUBJECTS)
    assert calls == [("EleutherAI/hendrycks_math", s, "test") for s in MATH_SUBJECTS]
    assert math.describe()["hub_configs"] == list(MATH_SUBJECTS)
    calls.clear()
    get_task("gsm_hard").load_split("test")
    assert calls == [(SPECS["gsm_hard"].hub_id, None, "train")]  # GSM-Hard's only split

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MathrlError, match=r"asdiv: could not load EleutherAI/asdiv \(validation\).*ConnectionError.*--data-dir"):
        get_task("asdiv").load_test()


# --------------------------------------------------------------------------------------------------
# verdicts for non-numeric golds


def test_text_and_no_answer_verdicts():
    fmt = FORMATS["answer_is"]
    asdiv = get_task("asdiv")
    for completion, gold, ok in [("The answer is Mrs. Hilt.", "Mrs. Hilt", True), ("The answer is mrs hilt", "Mrs. Hilt", True),
                                 ("The answer is yes, there are.", "Yes", True), ("The answer is Mr. Lane.", "Mrs. Hilt", False),
                                 ("The answer is 3:30 PM.", "3:30 p.m.", True), ("The answer is 3:45 p.m.", "3:30 p.m.", False),
                                 ("The answer is yesterday", "Yes", False), ("no marker at all", "Yes", False)]:
        assert asdiv.grade(fmt, completion, gold, "text")["correct_strict"] is ok, completion
    # flexible, in a format whose marker the completion lacks: the last "the answer is …", else the last line
    gsm = FORMATS["gsm8k"]
    for completion, gold, ok in [("Boys 15, girls 12.\nThe answer is yes, there are more boys.", "Yes", True),
                                 ("So the answer is that Mr. Lane has more than Mrs. Hilt. The answer is 2.", "Mrs. Hilt", False),
                                 ("The answer is that Mrs. Hilt has more.", "Mrs. Hilt", True),
                                 ("Compare them.\nMrs. Hilt", "Mrs. Hilt", True)]:
        v = asdiv.grade(gsm, completion, gold, "text")
        assert v["pred_strict"] is None and v["correct_flexible"] is ok, completion
    plus = get_task("gsm_plus")
    for completion, ok in [("The answer is: it cannot be determined from the information given.", True),
                           ("The answer is unknown: the question does not give the price.", True),
                           ("There is not enough information. The answer is 42.", False),  # strict reads 42
                           ("The answer is 17.", False), ("The answer is none of them.", False)]:
        assert plus.grade(fmt, completion, answers.NO_ANSWER, "no_answer")["correct_strict"] is ok, completion
    # flexible: saying so anywhere counts
    assert plus.grade(fmt, "There is not enough information. The answer is 42.", answers.NO_ANSWER, "no_answer")["correct_flexible"]
    math = get_task("math500")
    boxed = FORMATS["boxed"]
    v = math.grade(boxed, "So $\\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}", "math")
    assert v["pred_strict"] == "\\frac{\\sqrt{3}}{2}" and v["correct_strict"] and v["correct_flexible"]
    assert not math.grade(boxed, "$\\boxed{\\sqrt{2}}$", "2", "math")["correct_strict"]  # not read as its first number
    assert math.grade(boxed, "$\\boxed{\\frac{4}{2}}$", "2", "math")["correct_strict"]


def test_math_answers_are_judged_by_the_grader_as_math(monkeypatch):
    """Math golds go to grading.answers_match with answer_type="math" (Math-Verify), text golds to the
    normalised string match, number golds to the numeric comparison."""
    seen = []
    real = grading.answers_match

    def answers_match(pred, gold, answer_type="number"):
        seen.append(answer_type)
        return real(pred, gold, answer_type=answer_type)

    monkeypatch.setattr(grading, "answers_match", answers_match)
    fmt = FORMATS["boxed"]
    v = get_task("math500").grade(fmt, "so $\\boxed{\\frac{\\sqrt{3}}{2}}$", "\\frac{\\sqrt{3}}{2}")
    assert v["correct_strict"] and seen and set(seen) == {"math"}
    seen.clear()
    assert get_task("asdiv").grade(FORMATS["answer_is"], "The answer is Mrs. Hilt.", "Mrs. Hilt", "text")["correct_strict"]
    assert seen == []


# --------------------------------------------------------------------------------------------------
# acceptance: `mathrl grade --task T --data-dir` gives every numeric item of the task's own file 100%


def _grade(tmp_path, task, data_dir, completions, fmt):
    inp = write_rows(tmp_path / f"{task}.jsonl", completions)
    res = runner.invoke(app, ["grade", "--task", task, "--data-dir", str(data_dir), "--format", fmt, "--input", str(inp),
                              "--output", str(tmp_path / f"{task}-graded.jsonl"), "--json"])
    assert res.exit_code == 0, res.output
    graded = [json.loads(line) for line in (tmp_path / f"{task}-graded.jsonl").read_text().splitlines()]
    return json.loads(res.output.strip().splitlines()[-1]), graded


@pytest.mark.parametrize("task", ["svamp", "gsm_hard", *HELDOUT_FIXTURES])
def test_grade_scores_each_tasks_own_golds(tmp_path, task):
    data_dir = need_shared(task).parent if task in ("svamp", "gsm_hard") else FIXTURES
    t = get_task(task, data_dir=str(data_dir))
    samples = t.load_test()
    math = t.answer_type == "math"

    def completion(s):
        if s.meta["answer_type"] == "no_answer":
            return "The answer is that this cannot be determined: not enough information."
        return f"Working.\nThe final answer is $\\boxed{{{s.answer}}}$." if math else f"Working.\nThe answer is {s.meta['raw_answer']}."

    rows = [{"doc_id": i, "completion": completion(s)} for i, s in enumerate(samples)]
    summary, graded = _grade(tmp_path, task, data_dir, rows, "boxed" if math else "answer_is")
    counts = summary["treatments"]
    assert sum(n for k, n in counts.items() if k != "excluded") == len(samples) == summary["n"]
    # numeric items: number golds, and MATH golds that are plain numbers (graded by the math rule)
    numeric = [g for g in graded if g["answer_type"] == "number" or (math and grading.is_plain_number(g["gold"]))]
    assert numeric and all(g["correct_strict"] and g["correct_flexible"] for g in numeric)
    assert counts.get("number", 0) == sum(g["answer_type"] == "number" for g in graded)
    assert not math or counts == {"math": len(samples)}
    for g, s in zip(graded, samples):
        assert g["id"] == s.id and g["answer_type"] == s.meta["answer_type"]
        if g["answer_type"] in ("text", "math", "no_answer"):
            assert g["correct_strict"], g  # the other treatments score their own golds too
    # the same golds read from the lines themselves (no --data-dir) give the same verdicts
    rows = [{"completion": r["completion"], "answer": s.meta["raw_answer"] if s.meta["answer_type"] != "no_answer" else None}
            for r, s in zip(rows, samples)]
    inp = write_rows(tmp_path / "own.jsonl", rows)
    res = runner.invoke(app, ["grade", "--task", task, "--format", "boxed" if math else "answer_is", "--input", str(inp)])
    assert res.exit_code == 0, res.output
    assert f"strict={summary['accuracy_strict']:.1%}" in res.output and "answers: " in res.output


def test_grade_breakdown_and_wrong_answers(tmp_path):
    samples = get_task("gsm_plus", data_dir=str(FIXTURES)).load_test()
    rows = [{"id": s.id, "completion": "The answer is 17."} for s in samples]  # the seed question's answer everywhere
    summary, graded = _grade(tmp_path, "gsm_plus", FIXTURES, rows, "answer_is")
    by_type = summary["accuracy_by"]["perturbation_type"]
    for ptype, group in by_type.items():
        mine = [g for g in graded if g["perturbation_type"] == ptype]
        assert group["n"] == len(mine) and group["strict"] == round(sum(g["gold"] == "17" for g in mine) / len(mine), 4)
    assert by_type["critical thinking"]["strict"] == 0.0  # answering a number is wrong when there is none
    bad = write_rows(tmp_path / "bad.jsonl", [{"id": "nope", "completion": "x"}])
    res = runner.invoke(app, ["grade", "--task", "gsm_plus", "--data-dir", str(FIXTURES), "--input", str(bad)])
    assert res.exit_code != 0 and f"{bad}:1: no 'id' or 'doc_id'" in str(res.exception)


def test_grade_doc_id_is_the_row_of_the_unfiltered_file_with_exclude(tmp_path):
    """lm-eval's doc_id numbers the dataset's rows; `exclude=` must not shift which question it names."""
    raw = raw_rows(FIXTURES / "gsm_plus" / "test.jsonl")
    dropped = [i for i, r in enumerate(raw) if r["answer"] in (None, "None")]
    assert dropped == [7, 9]  # so doc 8 is the 8th kept sample, doc 10's row has gold 5600
    kept = [i for i in range(len(raw)) if i not in dropped]
    args = ["grade", "--task", "gsm_plus", "--data-dir", str(FIXTURES), "--task-arg", "exclude=no_answer",
            "--completion-field", "resps", "--format", "gsm8k"]
    # the reported case: doc 8's right answer "#### 56" graded against doc 8's gold, not doc 10's 5600
    out = tmp_path / "doc8.jsonl"
    inp = write_rows(tmp_path / "doc8-in.jsonl",
                     [{"doc_id": 8, "resps": [["#### 56"]]}, {"doc_id": 6, "resps": [["#### 17"]]}])
    res = runner.invoke(app, [*args, "--input", str(inp), "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert [(g["id"], g["gold"]) for g in raw_rows(out)] == [("gsm_plus-test-8", "56"), ("gsm_plus-test-6", "17")]
    assert json.loads(res.output.strip().splitlines()[-1])["accuracy_strict"] == 1.0
    # lm-eval sample log lines: doc_id and resps, each the right answer of its own row
    rows = [{"doc_id": i, "resps": [[f"Working.\n#### {raw[i]['answer']}"]]} for i in kept]
    inp = write_rows(tmp_path / "lm_eval_samples.jsonl", rows)
    out = tmp_path / "graded.jsonl"
    res = runner.invoke(app, [*args, "--input", str(inp), "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    graded = raw_rows(out)
    assert [g["id"] for g in graded] == [f"gsm_plus-test-{i}" for i in kept]
    assert [g["gold"] for g in graded] == [answers.read_gold(raw[i]["answer"], text=True)[0] for i in kept]
    assert summary["n"] == len(kept) and summary["accuracy_strict"] == 1.0 and summary["accuracy_flexible"] == 1.0
    # an excluded row, or one past the end, is a one-line error naming the doc_id, not a silent regrade
    past_end = f"doc_id {len(raw)} is not a row of the task's test split (rows 0-{len(raw) - 1})"
    for doc, message in ((7, "doc_id 7 (gsm_plus-test-7) was excluded by exclude=no_answer"), (len(raw), past_end)):
        bad = write_rows(tmp_path / f"bad{doc}.jsonl", [{"doc_id": doc, "resps": [["#### 1"]]}])
        res = runner.invoke(app, [*args, "--input", str(bad)])
        assert res.exit_code != 0 and isinstance(res.exception, MathrlError), res.output
        assert f"{bad}:1: {message}" in str(res.exception)
    # without exclude= every row is graded at its own position, the no-answer ones included
    samples = get_task("gsm_plus", data_dir=str(FIXTURES)).load_test()
    assert [s.id for s in samples] == [f"gsm_plus-test-{i}" for i in range(len(raw))]
