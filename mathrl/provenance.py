"""What produced a result: library versions, stored with every evaluation and training record."""

from __future__ import annotations

import platform
from importlib import metadata


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mathrl", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "math-verify", "vllm"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
