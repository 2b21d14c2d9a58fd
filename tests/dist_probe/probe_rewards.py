"""A reward that varies across random completions, so a 2-step GRPO run on the tiny model has non-zero
advantages (every rank its own) and gradients that DDP must average."""


def distinct_chars(completions, **kwargs):
    return [len(set(c if isinstance(c, str) else c[-1]["content"])) / 20.0 for c in completions]


def constant_on_rank0(completions, **kwargs):
    """Rank 0: every group's rewards are equal, so dynamic sampling refills there (and never succeeds);
    rank 1's groups vary and need nothing. The refill rounds rank 1 does not need must stay in lockstep."""
    import os

    if os.environ.get("RANK") == "0":
        return [0.0] * len(completions)
    return distinct_chars(completions)
