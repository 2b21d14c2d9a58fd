"""Tasks: registry, GSM8K from a local directory, user JSONL files, the synthetic generators."""

from __future__ import annotations

import ast
import json
import operator
import re
from fractions import Fraction

import pytest

from mathrl.errors import MathrlError
from mathrl.tasks import TASKS, Sample, Task, get_task, register, subsample
from mathrl.tasks.base import split_answer
from mathrl.tasks.gsm8k import clean_solution

# --------------------------------------------------------------------------------------------------
# registry


def test_builtin_tasks_registered():
    assert {"gsm8k", "arithmetic", "linear_equations", "jsonl"} <= set(TASKS)


def test_unknown_task_lists_names():
    with pytest.raises(MathrlError) as e:
        get_task("no_such_task")
    msg = str(e.value)
    assert "no_such_task" in msg
    for name in ("arithmetic", "gsm8k", "jsonl", "linear_equations"):
        assert name in msg


def test_register_custom_task():
    @register("tiny_custom_task")
    class Custom(Task):
        configs = ("a", "b")

        def load_split(self, split):
            k = int(self.options.get("k", 2))
            return [Sample(id=f"{self.config}-{i}", question=f"{i}+{i}?", answer=str(2 * i)) for i in range(k)]

    try:
        assert TASKS["tiny_custom_task"] is Custom and Custom.name == "tiny_custom_task"
        task = get_task("tiny_custom_task", "b", k=3, unused=None)  # None options are dropped
        assert task.options == {"k": 3}
        assert [s.id for s in task.load_test()] == ["b-0", "b-1", "b-2"]
        assert get_task("tiny_custom_task").config == "a"  # first config is the default
        assert task.check_answer("4.0", task.load_test()[2].answer)
        with pytest.raises(MathrlError, match="no config 'c'"):
            get_task("tiny_custom_task", "c")
        with pytest.raises(MathrlError, match="no split 'validation'"):
            task.load("validation")
    finally:
        TASKS.pop("tiny_custom_task", None)


def test_subsample_is_seeded_ordered_subset():
    samples = [Sample(id=str(i), question="q", answer="1") for i in range(50)]
    a, b = subsample(samples, 10, 7), subsample(samples, 10, 7)
    assert [s.id for s in a] == [s.id for s in b]
    assert [int(s.id) for s in a] == sorted(int(s.id) for s in a)
    assert len({s.id for s in a}) == 10
    assert [s.id for s in subsample(samples, 10, 8)] != [s.id for s in a]
    assert subsample(samples, None, 0) is samples and subsample(samples, 999, 0) is samples
    with pytest.raises(MathrlError, match="--limit"):
        subsample(samples, 0, 0)


# --------------------------------------------------------------------------------------------------
# GSM8K


def test_split_answer_and_clean_solution():
    assert split_answer("a <<1+1=2>>2\n#### 2") == ("a <<1+1=2>>2", "2")
    assert split_answer("no marker") == ("no marker", None)
    assert clean_solution("48/2 = <<48/2=24>>24 clips") == "48/2 = 24 clips"


def _raw_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_gsm8k_main_counts_and_gold(gsm8k_dir):
    task = get_task("gsm8k")
    test, train = task.load_test(), task.load_train()
    assert len(test) == 1319 and len(train) == 7473 - 465  # the validation slice is held out of train
    assert len({s.id for s in test}) == 1319
    assert test[0].answer == "18" and test[0].id == "gsm8k-main-test-0"
    raw = _raw_rows(gsm8k_dir / "test.jsonl")
    commas = negatives = 0
    for s, r in zip(test, raw):
        final = r["answer"].rsplit("####", 1)[1].strip()
        assert s.answer == final.replace(",", "")  # GSM8K finals are integers: normalised = commas stripped
        assert s.question == r["question"].strip()
        assert s.meta["raw_answer"] == r["answer"]
        assert "<<" not in s.solution and "####" not in s.solution
        commas += "," in final
        negatives += final.startswith("-")
    assert commas >= 10 and negatives >= 2  # the interesting cases are really exercised
    by_id = {s.id: s for s in test}
    assert by_id["gsm8k-main-test-611"].answer == "1450000"  # raw '1,450,000'
    assert by_id["gsm8k-main-test-489"].answer == "-10"


def test_gsm8k_socratic(gsm8k_dir):
    soc = get_task("gsm8k", "socratic").load_test()
    main = get_task("gsm8k", "main").load_test()
    assert len(soc) == 1319
    assert soc[0].id == "gsm8k-socratic-test-0"
    assert [s.answer for s in soc] == [s.answer for s in main]
    assert "**" in soc[0].meta["raw_answer"]  # the socratic sub-questions


def test_gsm8k_socratic_train_missing_is_clear(gsm8k_dir):
    with pytest.raises(MathrlError) as e:
        get_task("gsm8k", "socratic").load_train()
    msg = str(e.value)
    assert "train" in msg and "train_socratic.jsonl" in msg and str(gsm8k_dir) in msg


def test_gsm8k_explicit_data_dir_beats_env(tmp_path, gsm8k_dir):
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "Q?", "answer": "x\n#### 1,000"}) + "\n")
    samples = get_task("gsm8k", data_dir=str(tmp_path)).load_test()
    assert [(s.question, s.answer, s.solution) for s in samples] == [("Q?", "1000", "x")]


def test_gsm8k_without_data_dir_or_hub_is_clear(monkeypatch):
    import datasets

    asked = []

    def unreachable(*args, **kwargs):  # what the hub does on this machine, whatever the local HF cache holds
        asked.append(args)
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.delenv("MATHRL_DATA_DIR", raising=False)
    with pytest.raises(MathrlError, match=r"openai/gsm8k \(main/test\).*ConnectionError.*MATHRL_DATA_DIR"):
        get_task("gsm8k").load_test()
    assert asked == [("openai/gsm8k", "main")]


GOOD = {"question": "What is 2+2?", "answer": "2+2 = <<2+2=4>>4\n#### 4"}


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_gsm8k_malformed_json_names_file_and_line(tmp_path):
    _write_lines(tmp_path / "test.jsonl", [json.dumps(GOOD), "", json.dumps(GOOD), '{"question": "oops",'])
    _write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD)])
    with pytest.raises(MathrlError) as e:
        get_task("gsm8k", data_dir=str(tmp_path)).load_test()
    assert f"{tmp_path / 'test.jsonl'}:4:" in str(e.value)  # blank line 2 still counts
    assert get_task("gsm8k", data_dir=str(tmp_path)).load_train()[0].answer == "4"


def test_gsm8k_non_object_line(tmp_path):
    _write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD), "[1, 2]"])
    with pytest.raises(MathrlError, match=r"train\.jsonl:2: expected a JSON object"):
        get_task("gsm8k", data_dir=str(tmp_path)).load_train()


def test_gsm8k_missing_final_answer_names_line(tmp_path):
    bad = {"question": "Q", "answer": "no final answer here"}
    _write_lines(tmp_path / "test.jsonl", [json.dumps(GOOD), json.dumps(GOOD), json.dumps(bad)])
    with pytest.raises(MathrlError) as e:
        get_task("gsm8k", data_dir=str(tmp_path)).load_test()
    assert f"{tmp_path / 'test.jsonl'}:3:" in str(e.value) and "####" in str(e.value)


def test_gsm8k_missing_field_names_line(tmp_path):
    _write_lines(tmp_path / "test.jsonl", [json.dumps({"question": "Q"})])
    with pytest.raises(MathrlError, match=r"test\.jsonl:1: missing field 'answer'"):
        get_task("gsm8k", data_dir=str(tmp_path)).load_test()


# --------------------------------------------------------------------------------------------------
# jsonl task


def test_jsonl_task_custom_fields(tmp_path):
    path = tmp_path / "svamp.jsonl"
    rows = [
        {"id": "a1", "problem": " How many? ", "target": "1,000"},
        {"problem": "Work it out", "target": "He has <<3*4=12>>12\n#### 12"},
        {"problem": "Neg", "target": -3, "why": "because"},
        {"problem": "Float", "target": 2.50},
    ]
    _write_lines(path, [json.dumps(r) for r in rows])
    task = get_task("jsonl", path=str(path), question_field="problem", answer_field="target", solution_field="why")
    s = task.load_test()
    assert [x.answer for x in s] == ["1000", "12", "-3", "2.5"]
    assert [x.id for x in s] == ["a1", "test-1", "test-2", "test-3"]
    assert s[0].question == "How many?"
    assert s[0].solution is None
    assert s[1].solution == "He has 12"  # GSM8K-style answer split, calculator annotations removed
    assert s[2].solution == "because"


def test_jsonl_task_float_answers_in_exponent_form(tmp_path):
    path = tmp_path / "hard.jsonl"
    _write_lines(path, [json.dumps({"question": "q", "answer": 1e-05}), json.dumps({"question": "q", "answer": 3.2e16})])
    golds = [s.answer for s in get_task("jsonl", path=str(path)).load_test()]
    assert golds == ["0.00001", "32000000000000000"]


@pytest.mark.parametrize("answer", ["\\sqrt{2}", "2^{10}"])
def test_jsonl_task_latex_answer_is_not_its_first_digit(tmp_path, answer):
    path = tmp_path / "latex.jsonl"
    _write_lines(path, [json.dumps({"question": "q", "answer": answer})])
    try:
        samples = get_task("jsonl", path=str(path)).load_test()
    except MathrlError as e:
        assert "not a number" in str(e)
        return
    assert samples[0].answer != "2"


def test_jsonl_task_json_list_and_samples_object(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"question": "q", "answer": 5}]))
    (tmp_path / "b.json").write_text(json.dumps({"samples": [{"question": "q", "answer": "7"}]}))
    assert get_task("jsonl", path=str(tmp_path / "a.json")).load_test()[0].answer == "5"
    assert get_task("jsonl", path=str(tmp_path / "b.json")).load_test()[0].answer == "7"


def test_jsonl_task_non_numeric_answer(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write_lines(path, [json.dumps({"question": "q", "answer": "4"}), json.dumps({"question": "q", "answer": "blue"})])
    with pytest.raises(MathrlError) as e:
        get_task("jsonl", path=str(path)).load_test()
    assert f"{path}:2:" in str(e.value) and "blue" in str(e.value) and "not a number" in str(e.value)


def test_jsonl_task_missing_field_and_paths(tmp_path):
    path = tmp_path / "x.jsonl"
    _write_lines(path, [json.dumps({"question": "q", "answer": ""})])
    with pytest.raises(MathrlError, match=r"x\.jsonl:1: missing field 'answer'"):
        get_task("jsonl", path=str(path)).load_test()
    with pytest.raises(MathrlError, match="path="):
        get_task("jsonl").load_test()
    with pytest.raises(MathrlError, match="train_path="):
        get_task("jsonl", path=str(path)).load_train()
    with pytest.raises(MathrlError, match="no such file"):
        get_task("jsonl", path=str(tmp_path / "nope.jsonl")).load_test()


# --------------------------------------------------------------------------------------------------
# arithmetic

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _calc(expr: str) -> Fraction:
    """Evaluate + - * / on integers, independently of the generator (restricted AST, exact)."""

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        raise ValueError(f"unexpected {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval").body)


def _dump(samples):
    return [s.to_dict() for s in samples]


def test_arithmetic_deterministic_from_seed():
    a = get_task("arithmetic", seed=3, train_size=200)
    b = get_task("arithmetic", seed=3, train_size=200)
    c = get_task("arithmetic", seed=4, train_size=200)
    assert _dump(a.load_test()) == _dump(b.load_test())
    assert _dump(a.load_train()) == _dump(b.load_train())
    assert [s.question for s in a.load_test()] != [s.question for s in c.load_test()]
    assert [s.question for s in a.load_train()] != [s.question for s in c.load_train()]


def test_arithmetic_test_set_fixed_and_train_disjoint():
    small = get_task("arithmetic", test_size=50, train_size=100)
    big = get_task("arithmetic", test_size=300, train_size=3000)
    assert _dump(small.load_test()) == _dump(big.load_test())[:50]  # test set does not depend on train size
    assert len(big.load_test()) == 300 and len(big.load_train()) == 3000
    test_q = {s.question for s in big.load_test()}
    train_q = [s.question for s in big.load_train()]
    assert len(test_q) == 300 and len(set(train_q)) == 3000
    assert not test_q & set(train_q)
    assert not {s.id for s in big.load_test()} & {s.id for s in big.load_train()}


def test_arithmetic_train_excludes_test_questions_in_a_small_space(monkeypatch):
    from mathrl.tasks import arithmetic

    def tiny_level(rng):  # only 300 distinct questions: without a split rule train would repeat test ones
        a = rng.randint(1, 300)
        return f"What is {a} + 0?", [f"{a} + 0 = {a}"], a

    monkeypatch.setattr(arithmetic, "LEVELS", {1: tiny_level, 2: tiny_level, 3: tiny_level})
    task = get_task("arithmetic", "1", test_size=10, train_size=200)
    test, train = task.load_test(), task.load_train()
    assert len({s.question for s in test}) == 10 and len({s.question for s in train}) == 200
    assert not {s.question for s in test} & {s.question for s in train}
    # a space too small for the size asked is a one-line error, not an endless loop
    with pytest.raises(MathrlError, match="found only .* distinct test questions, not 100"):
        get_task("arithmetic", "1", test_size=100).load_test()


@pytest.mark.parametrize("config, levels", [("1", {1}), ("2", {2}), ("3", {3}), ("1-2", {1, 2}), ("2-3", {2, 3}),
                                            ("1-3", {1, 2, 3}), (None, {1, 2, 3})])
def test_arithmetic_worked_solutions_are_right(config, levels):
    samples = get_task("arithmetic", config, test_size=120).load_test()
    assert {s.meta["level"] for s in samples} == levels
    order = sorted(levels)
    assert [s.meta["level"] for s in samples[: len(order)]] == order  # levels interleave
    for s in samples:
        lines = s.solution.splitlines()
        assert len(lines) == s.meta["level"]  # one line per step
        for line in lines:
            lhs, rhs = line.split(" = ")
            assert _calc(lhs) == int(rhs), line  # every step is correct arithmetic
        assert lines[-1].split(" = ")[1] == s.answer
        assert int(s.answer) >= 0
        if s.meta["level"] == 1:
            m = re.fullmatch(r"What is (\d+) ([-+*/]) (\d+)\?", s.question)
            assert m and _calc(f"{m[1]} {m[2]} {m[3]}") == int(s.answer)
        else:
            # every number the solution starts from is given in the question
            first = re.findall(r"\d+", lines[0].split(" = ")[0])
            assert all(n in re.findall(r"\d+", s.question) for n in first)


def test_arithmetic_bad_config():
    with pytest.raises(MathrlError, match="no config '4'"):
        get_task("arithmetic", "4")


# --------------------------------------------------------------------------------------------------
# linear equations

_TERM = re.compile(r"([+-]?)(\d*)([xyz])")


def _parse_equation(text: str) -> tuple[dict[str, int], int]:
    lhs, rhs = text.split("=")
    lhs = lhs.replace(" ", "")
    coefs: dict[str, int] = {}
    pos = 0
    for m in _TERM.finditer(lhs):
        assert m.start() == pos, f"unparsed text in {text!r}"
        pos = m.end()
        coefs[m[3]] = (-1 if m[1] == "-" else 1) * (int(m[2]) if m[2] else 1)
    assert pos == len(lhs) or lhs == "0", f"unparsed text in {text!r}"
    return coefs, int(rhs)


def _det(m: list[list[int]]) -> Fraction:
    a = [[Fraction(v) for v in row] for row in m]
    n, det = len(a), Fraction(1)
    for k in range(n):
        p = next((i for i in range(k, n) if a[i][k] != 0), None)
        if p is None:
            return Fraction(0)
        if p != k:
            a[k], a[p], det = a[p], a[k], -det
        det *= a[k][k]
        for i in range(k + 1, n):
            f = a[i][k] / a[k][k]
            a[i] = [x - f * y for x, y in zip(a[i], a[k])]
    return det


def _check_system(sample, coef_range=9, sol_range=10):
    size, sol = sample.meta["size"], sample.meta["solution"]
    names = "xyz"[:size]
    lines = sample.question.splitlines()
    assert lines[0] == "Solve the system of equations:"
    eqs = [_parse_equation(line) for line in lines[1 : 1 + size]]
    assert lines[1 + size] == f"What is the value of {sample.meta['target']}?"
    matrix = [[c.get(v, 0) for v in names] for c, _ in eqs]
    for (coefs, rhs), row in zip(eqs, matrix):
        assert sum(a * x for a, x in zip(row, sol)) == rhs  # A·x = b with the stated solution
        assert all(abs(a) <= coef_range for a in row)
    assert all(abs(v) <= sol_range for v in sol)
    assert _det(matrix) != 0  # unique solution
    assert sample.answer == str(sol[names.index(sample.meta["target"])])
    steps = sample.solution.splitlines()
    assert steps[-1] == ", ".join(f"{v} = {x}" for v, x in zip(names, sol))
    # every equation written in the working is satisfied by the solution
    for step in steps[:-1]:
        eq = step.rsplit(": ", 1)[1] if step.startswith("Eliminate") else step.split(": ")[0].removeprefix("From ")
        if step.startswith("Swap"):
            continue
        coefs, rhs = _parse_equation(eq)
        assert sum(coefs.get(v, 0) * x for v, x in zip(names, sol)) == rhs, step
    for v, x in zip(names, sol):
        assert any(step.endswith(f": {v} = {x}") for step in steps), f"no back-substitution line for {v}"


@pytest.mark.parametrize("config, sizes", [("2", {2}), ("3", {3}), ("2-3", {2, 3})])
def test_linear_equations_have_the_stated_solution(config, sizes):
    task = get_task("linear_equations", config, test_size=150, train_size=150)
    test = task.load_test()
    assert {s.meta["size"] for s in test} == sizes
    for s in test + task.load_train():
        _check_system(s)


def test_linear_equations_ranges_option():
    for s in get_task("linear_equations", "3", test_size=60, coef_range=2, sol_range=3).load_test():
        _check_system(s, coef_range=2, sol_range=3)


def test_linear_equations_deterministic_and_disjoint():
    a = get_task("linear_equations", "2-3", seed=1, test_size=80, train_size=200)
    b = get_task("linear_equations", "2-3", seed=1, test_size=80, train_size=200)
    c = get_task("linear_equations", "2-3", seed=2, test_size=80, train_size=200)
    assert _dump(a.load_test()) == _dump(b.load_test())
    assert _dump(a.load_train()) == _dump(b.load_train())
    assert [s.question for s in a.load_test()] != [s.question for s in c.load_test()]
    test_q = {s.question for s in a.load_test()}
    assert len(test_q) == 80
    assert not test_q & {s.question for s in a.load_train()}


def test_linear_equations_train_excludes_test_in_a_small_space():
    # coefficients and solutions in {-1, 0, 1}: a few hundred distinct questions, so overlap would be likely
    task = get_task("linear_equations", "2", test_size=40, train_size=300, coef_range=1, sol_range=1)
    test, train = task.load_test(), task.load_train()
    assert len({s.question for s in train}) == 300
    assert not {s.question for s in test} & {s.question for s in train}
    for s in test[:20] + train[:20]:
        _check_system(s, coef_range=1, sol_range=1)


def test_linear_equations_bad_config():
    with pytest.raises(MathrlError, match="choose one of: 2, 3, 2-3"):
        get_task("linear_equations", "4")


# --------------------------------------------------------------------------------------------------
# generated tasks: no train question of any config, level, seed or size is a test question of any


def _questions(name, config, split, **options):
    return {s.question for s in get_task(name, config, **options).load(split)}


@pytest.mark.parametrize("name, test_variants, train_variants", [
    ("arithmetic",
     [(c, {"test_size": n}) for c in ("1", "2", "3", "1-2", "2-3", "1-3") for n in (300, 500)] + [("1-2", {"seed": 1})],
     [(c, {}) for c in ("1", "2", "3", "1-2", "2-3", "1-3")]
     + [("1-3", {"train_size": 1000}), ("1-2", {"train_size": 1000}), ("1", {"train_size": 2000, "test_size": 50}),
        ("1-2", {"seed": 1, "train_size": 3000})]),
    ("linear_equations",
     [(c, {"test_size": n}) for c in ("2", "3", "2-3") for n in (100, 500)]
     + [("2", {"test_size": 60, "coef_range": 1, "sol_range": 1}),
        ("2-3", {"test_size": 40, "coef_range": 1, "sol_range": 1})],
     [(c, {"train_size": 2000}) for c in ("2", "3", "2-3")]
     + [("2", {"train_size": 300, "test_size": 40, "coef_range": 1, "sol_range": 1}),
        ("2-3", {"train_size": 300, "coef_range": 1, "sol_range": 1})]),
], ids=["arithmetic", "linear_equations"])
def test_generated_train_and_test_disjoint_across_configs(name, test_variants, train_variants):
    tests = {(config, tuple(sorted(o.items()))): _questions(name, config, "test", **o) for config, o in test_variants}
    for config, options in train_variants:
        train = _questions(name, config, "train", **options)
        for (test_config, test_options), test in tests.items():
            shared = train & test
            assert not shared, (f"{name} train {config} {options} vs test {test_config} {dict(test_options)}: "
                                f"{len(shared)}/{len(test)} test questions in train, e.g. {sorted(shared)[0]!r}")


def test_generated_split_is_a_function_of_the_question_alone():
    from mathrl.tasks.base import generated_split

    for name, configs in (("arithmetic", ("1", "1-3")), ("linear_equations", ("2", "2-3"))):
        for config in configs:
            task = get_task(name, config, test_size=100, train_size=300)
            assert {generated_split(s.question) for s in task.load_test()} == {"test"}
            assert {generated_split(s.question) for s in task.load_train()} == {"train"}
            assert {generated_split(s.question) for s in task._generate("validation", 50)} == {"validation"}
    # a tenth of questions is test, a tenth validation (reserved), the rest train
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(20000):
        counts[generated_split(f"What is {i} + 1?")] += 1
    assert 1700 < counts["test"] < 2300 and 1700 < counts["validation"] < 2300


# validation: disjoint from train and test for every task and config that has one (by question text)


@pytest.mark.parametrize("name, configs", [("arithmetic", ("1", "2", "3", "1-2", "2-3", "1-3")),
                                           ("linear_equations", ("2", "3", "2-3"))])
def test_generated_validation_is_disjoint_from_every_train_and_test(name, configs):
    small = {"coef_range": 1, "sol_range": 1} if name == "linear_equations" else {}
    validation = {c: _questions(name, c, "validation") for c in configs}
    for c in configs:
        assert len(validation[c]) == 500
        for other in configs:
            for split in ("train", "test"):
                shared = validation[c] & _questions(name, other, split, train_size=2000)
                assert not shared, (name, c, other, split, sorted(shared)[:1])
    if small:  # a tiny space: the validation stream still draws only its own bucket
        tiny = _questions(name, "2", "validation", validation_size=5, **small)
        assert not tiny & _questions(name, "2", "train", train_size=100, test_size=5, **small)


def test_gsm8k_validation_is_a_fixed_slice_of_train_that_training_never_sees(gsm8k_dir):
    from mathrl.tasks.base import held_for_validation

    task = get_task("gsm8k")
    validation, train, test = task.load("validation"), task.load_train(), task.load_test()
    assert len(validation) == 465 and len(train) + len(validation) == 7473
    v = {s.question for s in validation}
    assert not v & {s.question for s in train} and not v & {s.question for s in test}
    assert all(held_for_validation(q) for q in v) and validation[0].id.startswith("gsm8k-main-validation-")
    # the same slice from a file in another order (a hub copy, say): it is chosen by text, not position
    lines = (gsm8k_dir / "train.jsonl").read_text().splitlines()[::-1]
    assert {s.question for s in get_task("gsm8k", data_dir=str(_reversed_copy(lines))).load("validation")} == v


def _reversed_copy(lines):
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp())
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    (d / "test.jsonl").write_text("")
    return d


def test_test_only_held_out_sets_have_no_validation_split():
    with pytest.raises(MathrlError, match="has no split 'validation'; choose one of: test"):
        get_task("svamp").load("validation")
