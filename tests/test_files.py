"""mathrl.files: errors naming file and line, atomic writes, resumable JSONL appends."""

from __future__ import annotations

import csv
import json
import os

import pytest

from mathrl import files
from mathrl.errors import MathrlError
from mathrl.files import (JsonlAppender, atomic_write_csv, atomic_write_json, atomic_write_jsonl, iter_jsonl,
                          load_partial_jsonl, read_records)


def test_iter_jsonl_line_numbers_and_errors(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"a": 1}\n\n   \n{"a": 2}\n')
    assert list(iter_jsonl(p)) == [(1, {"a": 1}), (4, {"a": 2})]
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": \n')
    with pytest.raises(MathrlError, match=rf"^{p}:3: invalid JSON"):
        list(iter_jsonl(p))
    p.write_text('{"a": 1}\n"text"\n')
    with pytest.raises(MathrlError, match=rf"^{p}:2: expected a JSON object, got str"):
        list(iter_jsonl(p))
    with pytest.raises(MathrlError, match="no such file"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


def test_read_records_json(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"x": 1}, {"x": 2}]))
    assert read_records(p) == [(1, {"x": 1}), (2, {"x": 2})]
    p.write_text(json.dumps({"samples": [{"x": 3}]}))
    assert read_records(p) == [(1, {"x": 3})]
    p.write_text('[\n{"x": 1},\n{"x": }\n]')
    with pytest.raises(MathrlError, match=rf"^{p}:3: invalid JSON"):
        read_records(p)
    p.write_text('{"x": 1}')
    with pytest.raises(MathrlError, match="expected a list"):
        read_records(p)
    with pytest.raises(MathrlError, match="no such file"):
        read_records(tmp_path / "none.json")


def test_atomic_writes(tmp_path):
    atomic_write_json(tmp_path / "sub" / "s.json", {"a": [1, 2], "é": "ü"})
    assert json.loads((tmp_path / "sub" / "s.json").read_text(encoding="utf-8")) == {"a": [1, 2], "é": "ü"}
    atomic_write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, {"b": "x"}])
    assert (tmp_path / "r.jsonl").read_text() == '{"a": 1}\n{"b": "x"}\n'
    atomic_write_csv(tmp_path / "r.csv", [{"a": 1, "l": [1, 2]}, {"b": "x,y", "a": 2}])
    with (tmp_path / "r.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["a", "l", "b"]  # union of columns, first-seen order
    assert rows[0]["l"] == "[1, 2]" and rows[1]["b"] == "x,y" and rows[1]["l"] == ""
    assert sorted(os.listdir(tmp_path)) == ["r.csv", "r.jsonl", "sub"]  # no temporary files left


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "s.json"
    target.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(target, {"new": 1})
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["s.json"]


def test_appender_and_torn_tail(tmp_path):
    p = tmp_path / "d" / "results.jsonl"
    app = JsonlAppender(p)
    app.append([{"i": 0}, {"i": 1}])
    app.append([{"i": 2}])
    assert load_partial_jsonl(p) == [{"i": 0}, {"i": 1}, {"i": 2}]
    whole = p.read_bytes()
    p.write_bytes(whole + b'{"i": 3, "te')  # killed mid-write
    assert load_partial_jsonl(p) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert p.read_bytes() == whole  # truncated to the last whole row
    app.append([{"i": 3}])
    assert [json.loads(line) for line in p.read_text().splitlines()] == [{"i": k} for k in range(4)]
    p.write_bytes(whole + b'{"i": 9}')  # complete JSON but no newline: still a torn write
    assert len(load_partial_jsonl(p)) == 3 and p.read_bytes() == whole
    assert load_partial_jsonl(tmp_path / "none.jsonl") == []


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os

    from mathrl.files import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
