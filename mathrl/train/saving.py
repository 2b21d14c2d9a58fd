"""Writing a trained model: full weights, a LoRA adapter (optionally merged) and the run record.
One module for every trainer, so SFT, GRPO and PPO outputs load the same way (`models.load_model`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathrl.files import atomic_write_json


def weights_sharded(trainer: Any) -> bool:
    """FSDP or DeepSpeed ZeRO-3: no process holds whole weights outside the wrapped model's forward."""
    return bool(trainer.is_fsdp_enabled or (trainer.is_deepspeed_enabled
                                            and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3))


def finish_run(trainer: Any, out: Path, base_name: str, merge: bool, record: dict[str, Any]) -> None:
    """Save model + tokenizer and `mathrl_config.json`. Every process must call this; only the main one writes.
    Under ZeRO-3 or FSDP the sharded weights are gathered by `trainer.save_model` first."""
    record["world_size"] = trainer.args.world_size
    is_peft = hasattr(trainer.model, "peft_config")
    sharded = weights_sharded(trainer)
    adapter_dir = out / "adapter" if is_peft and merge else out
    if not is_peft or sharded:
        trainer.save_model(str(adapter_dir))  # collective; writes weights + tokenizer on the main process
    if trainer.is_world_process_zero():
        if is_peft and sharded:
            name_adapter_base(adapter_dir, base_name)
            if merge:  # the adapter is on disk whole: merge from there
                from mathrl.engine import models

                merged, tokenizer, _ = models.load_model(str(adapter_dir), dtype="fp32", device="cpu")
                save_model(merged, tokenizer, out, base_name, merge=True)
        elif is_peft:
            save_model(trainer.model, trainer.processing_class, out, base_name, merge)
        atomic_write_json(out / "mathrl_config.json", record)
    trainer.accelerator.wait_for_everyone()


def name_adapter_base(adapter_dir: Path, base_name: str) -> None:
    """Record the base by its mathrl name (e.g. smollm2-135m), so the adapter loads offline anywhere."""
    cfg_path = adapter_dir / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    adapter_cfg["base_model_name_or_path"] = base_name
    atomic_write_json(cfg_path, adapter_cfg)


def save_model(model: Any, tokenizer: Any, out: Path, base_name: str, merge: bool) -> None:
    """Full model → safetensors in `out`. LoRA → adapter in `out` (or `out/adapter` plus merged weights
    in `out` with merge), its base recorded by mathrl name so it loads offline."""
    is_peft = hasattr(model, "peft_config")
    if not is_peft:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return
    adapter_dir = out / "adapter" if merge else out
    model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    name_adapter_base(adapter_dir, base_name)
    if merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
