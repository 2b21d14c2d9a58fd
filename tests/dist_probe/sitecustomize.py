"""Imported at start-up by every Python process whose PYTHONPATH holds this folder (tests/test_distributed.py).

In a process that a launcher started as one rank (RANK is set) and with MATHRL_PROBE_DIR set, it records
into MATHRL_PROBE_DIR/rank-<RANK>.jsonl what each training step was given (token rows for SFT, prompts
for GRPO), a checksum of the optimised parameters after every optimizer step, and every file write that goes through mathrl's writers or a model's save_pretrained. With
MATHRL_PROBE_FAST_CLOCK=<rank>:<factor>, that rank's perf_counter runs <factor> times fast (ranks whose
clocks disagree about a time budget).
"""

import json
import os


def _install() -> None:
    out, rank = os.environ.get("MATHRL_PROBE_DIR"), os.environ.get("RANK")
    if not out or rank is None:
        return
    fast = os.environ.get("MATHRL_PROBE_FAST_CLOCK", "")
    if fast and fast.split(":")[0] == rank:
        import time

        factor, real = float(fast.split(":")[1]), time.perf_counter
        time.perf_counter = lambda: factor * real()
    import transformers

    from mathrl import files

    path = os.path.join(out, f"rank-{rank}.jsonl")

    def record(event: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"rank": int(rank), "world_size": int(os.environ["WORLD_SIZE"]), **event}) + "\n")

    def rows_of(inputs) -> list:
        if isinstance(inputs, list):  # GRPO: the raw prompts of this rank's batch
            return [x["prompt"] for x in inputs]
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        return [r[m.bool()].tolist() if mask is not None else r.tolist() for r, m in zip(ids, mask if mask is not None else ids)]

    step = transformers.Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        record({"event": "step", "rows": rows_of(inputs)})
        return step(self, model, inputs, *args, **kwargs)

    save = transformers.PreTrainedModel.save_pretrained

    def save_pretrained(self, save_directory, *args, **kwargs):
        record({"event": "write", "path": str(save_directory)})
        return save(self, save_directory, *args, **kwargs)

    write_text, append = files.atomic_write_text, files.JsonlAppender.append

    def atomic_write_text(path_, text):
        record({"event": "write", "path": str(path_)})
        return write_text(path_, text)

    def jsonl_append(self, rows):
        record({"event": "write", "path": str(self.path)})
        return append(self, rows)

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def params_after_step(optimizer, args, kwargs):  # every optimizer step of every trainer, on every rank
        with torch.no_grad():
            params = [p for g in optimizer.param_groups for p in g["params"]]
            flat = torch.cat([p.detach().double().flatten() for p in params])
            weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64) % 7919
            record({"event": "params", "sum": float(flat.sum()), "weighted": float((flat * weights).sum()),
                    "abs": float(flat.abs().sum())})

    register_optimizer_step_post_hook(params_after_step)
    transformers.Trainer.training_step = training_step
    transformers.PreTrainedModel.save_pretrained = save_pretrained
    files.atomic_write_text = atomic_write_text
    files.JsonlAppender.append = jsonl_append


_install()
