"""Which process this is when a launcher (torchrun, accelerate launch, deepspeed, mpirun) started several.

Read from the launcher's environment, so it answers before any process group exists (before a
trainer is built). Trainers write their outputs from the main process only; commands that are not
data-parallel (eval, run) refuse to run as several processes, which would write the same files twice.
"""

from __future__ import annotations

import os

from mathrl.errors import MathrlError

_RANK = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_WORLD_SIZE = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise MathrlError(f"${name} must be an integer, got {value!r}") from None
    return default


def rank() -> int:
    return _env_int(_RANK, 0)


def world_size() -> int:
    return _env_int(_WORLD_SIZE, 1)


def is_main_process() -> bool:
    return rank() == 0


def require_single_process(command: str) -> None:
    """`mathrl eval` and `mathrl run` are one process each; under a launcher every rank would write the same files."""
    n = world_size()
    if n > 1:
        raise MathrlError(f"mathrl {command} runs as one process, but this launch started {n}; "
                          f"start it with `mathrl {command}` or `python -m mathrl {command}` (only sft, grpo and ppo "
                          "run under torchrun / accelerate launch)")


def agree(values: list[float]) -> list[float]:
    """Rank 0's `values` on every rank (a broadcast), or `values` unchanged without a process group.

    For decisions every rank must take together (stop now, the schedule's horizon): each rank's own clock
    would let one rank stop while another starts a step that waits for it in an all-reduce."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()
