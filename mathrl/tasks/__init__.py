"""Task registry. Importing this package registers the built-in tasks."""

from mathrl.tasks import arithmetic, gsm8k, heldout, jsonl, linear_equations  # noqa: F401 - registration
from mathrl.tasks.base import TASKS, Sample, Task, get_task, register, subsample

__all__ = ["TASKS", "Sample", "Task", "get_task", "register", "subsample"]
