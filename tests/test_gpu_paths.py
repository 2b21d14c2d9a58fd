"""GPU-side choices checked on any machine: attention kernels, the process's GPU, vLLM errors, accelerate configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mathrl.engine import models

REPO_ROOT = Path(__file__).resolve().parents[1]


class FakeModel:
    def __init__(self, device: str, fail: Exception | None = None):
        self.device, self.fail = device, fail
        self.config = SimpleNamespace(_attn_implementation="sdpa")

    def set_attn_implementation(self, name: str) -> None:
        if self.fail:
            raise self.fail
        self.config._attn_implementation = name


@pytest.mark.parametrize("device, half, flash, expect", [
    ("cpu", True, False, "mathrl_cpu"),          # bf16 on CPU: SDPA for prefill, the copy-free kernel for decode
    ("cpu", False, True, "sdpa"),                # fp32 on CPU: unchanged
    ("cuda:0", True, True, "flash_attention_2"),  # CUDA, bf16, flash-attn installed
    ("cuda:0", True, False, "sdpa"),             # CUDA without flash-attn: sdpa
    ("cuda:0", False, True, "sdpa"),             # fp32 compute: flash-attn does not apply
])
def test_attention_choice(monkeypatch, device, half, flash, expect):
    monkeypatch.setattr(models, "flash_attention_available", lambda: flash)
    assert models.set_attention(FakeModel(device), half) == expect


def test_broken_flash_attn_falls_back_to_sdpa(monkeypatch, capsys):
    monkeypatch.setattr(models, "flash_attention_available", lambda: True)
    model = FakeModel("cuda:0", fail=ImportError("flash_attn_2_cuda: undefined symbol\nmore"))
    assert models.set_attention(model, True) == "sdpa"
    assert "flash-attn did not load (flash_attn_2_cuda: undefined symbol); using sdpa" in capsys.readouterr().out


@pytest.mark.parametrize("local_rank, expect", [(None, "cuda"), ("1", "cuda:1"), ("5", "cuda"), ("x", "cuda")])
def test_each_process_loads_onto_its_own_gpu(monkeypatch, local_rank, expect):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert models.default_device() == expect


@pytest.mark.skipif(models.default_device() != "cpu", reason="checks the messages a machine without a GPU gives")
@pytest.mark.parametrize("args, expect", [
    (["eval", "--backend", "vllm", "--task", "arithmetic", "--output-dir", "OUT"], "--backend vllm needs"),
    (["grpo", "--vllm", "on", "--task", "arithmetic", "--output-dir", "OUT"], "--vllm on needs"),
])
def test_missing_vllm_is_one_line(tmp_path, args, expect):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    proc = subprocess.run([sys.executable, "-m", "mathrl", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and expect in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, kind", [("multi_gpu", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED"),
                                        ("fsdp", "FSDP"), ("cpu_ddp", "MULTI_GPU")])
def test_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO_ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.distributed_type.value == kind
    if kind == "DEEPSPEED":
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1]) and not cfg.deepspeed_config["zero3_init_flag"]
    if kind == "FSDP":
        assert cfg.fsdp_config["fsdp_version"] == 2 and not cfg.fsdp_config["fsdp_cpu_ram_efficient_loading"]
    assert cfg.use_cpu == (name == "cpu_ddp")
