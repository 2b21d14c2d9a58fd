"""A stage's cache key: the sha256 of its kind, its settings and the keys of the stages it depends on
(the schema's docstring says which settings count). A stage whose key is unchanged is reused, so the key
must change exactly when the run would: settings renamed since are hashed under their old names, and
settings added since (a class's `UNHASHED_AT_DEFAULT`) are left out while at their defaults, so stages
finished before either change stay cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

NOT_HASHED = ("output_dir", "resume", "progress", "overwrite", "report_to")


def unhashed_defaults(config: Any) -> dict[str, Any]:
    """{field: default} of the fields a settings class lists in UNHASHED_AT_DEFAULT (over its bases)."""
    names = {n for k in type(config).__mro__ for n in vars(k).get("UNHASHED_AT_DEFAULT", ())}
    return {f.name: f.default for f in dataclasses.fields(config)
            if f.name in names and f.default is not dataclasses.MISSING}


def stage_key(kind: str, settings: dict[str, Any], config: Any, dep_dirs: dict[str, str],
              dep_keys: dict[str, str]) -> str:
    """`dep_dirs`: a dependency's output directory -> a placeholder (moving runs/ keeps every key)."""
    if config is None:
        view = dict(settings)
    elif kind == "eval":
        view = config.identity()
    else:
        view = dataclasses.asdict(config)
        old = {new: old for old, new in getattr(type(config), "RENAMED", {}).items()}
        view = {old.get(k, k): v for k, v in view.items()}
        added = unhashed_defaults(config)
        view = {k: v for k, v in view.items() if k not in added or v != added[k]}
    for key in NOT_HASHED:
        view.pop(key, None)
    view = {k: dep_dirs.get(v, v) if isinstance(v, str) else v for k, v in view.items()}
    blob = json.dumps({"kind": kind, "settings": view, "deps": dep_keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
