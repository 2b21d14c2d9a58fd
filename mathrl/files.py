"""Reading user files with errors that name file and line; atomic writes for every result."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from mathrl.errors import MathrlError


def json_object(text: str, where: str, invalid: str = "invalid JSON") -> dict[str, Any]:
    """`text` parsed as one JSON object; otherwise an error starting with `where` (a file:line or a
    flag) and naming what was wrong."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise MathrlError(f"{where}: {invalid} ({e.msg})") from None
    if not isinstance(value, dict):
        raise MathrlError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a malformed line is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise MathrlError(f"{path}: no such file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield lineno, json_object(line, f"{path}:{lineno}")


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a .jsonl, .json (a list of objects) or .parquet file, each with its line/row number."""
    path = Path(path)
    if path.suffix == ".json":
        if not path.exists():
            raise MathrlError(f"{path}: no such file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise MathrlError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("samples"), list):
            data = data["samples"]
        if not isinstance(data, list):
            raise MathrlError(f"{path}: expected a list of objects")
        return list(enumerate(data, 1))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    return list(iter_jsonl(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any written file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    import io

    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


class JsonlAppender:
    """Appends rows and fsyncs each batch, so a killed run keeps every row it reported."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def load_partial_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results file written by `JsonlAppender`; a torn last line (a kill mid-write) is
    dropped and the file truncated to the last whole row so appends continue cleanly."""
    path = Path(path)
    if not path.exists():
        return []
    rows, good_bytes = [], 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return rows
