"""Option parsing shared by the command modules."""

from __future__ import annotations

import json
from typing import Any

from mathrl.errors import MathrlError
from mathrl.files import json_object


def parse_kv(items: list[str] | None, flag: str) -> dict[str, Any]:
    """key=value pairs; values that parse as JSON (numbers, true/false) are converted."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MathrlError(f"{flag} expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def parse_json_option(text: str | None, flag: str) -> dict[str, Any]:
    return json_object(text, flag, invalid="is not valid JSON") if text else {}
