"""A reward that varies across random completions, so a 2-step GRPO run on the tiny model has non-zero
advantages (every rank its own) and gradients that DDP must average."""


def distinct_chars(completions, **kwargs):
    return [len(set(c if isinstance(c, str) else c[-1]["content"])) / 20.0 for c in completions]
