"""Shared fixtures: a tiny random Llama with a real BPE tokenizer (built offline), GSM8K data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No network: set before transformers/datasets/huggingface_hub are imported (they read these at import time).
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "0 1 2 3 4 5 6 7 8 9 10 11 12 18 24 42 72 100 1,000 3.5 -7 3/4",
    "What is 12 + 30? 12 + 30 = 42. The answer is 42.",
    "Question: Ava has 5 apples and buys 3 packs with 4 apples in each pack. How many apples does Ava have now?",
    "Answer: 3 * 4 = 12\n5 + 12 = 17\n#### 17",
    "<start_working_out>3 * 4 = 12<end_working_out><SOLUTION>12</SOLUTION>",
    "<think>\n7 - 2 = 5\n</think>\n<answer>5</answer>",
    "The final answer is $\\boxed{18}$.",
    "plus minus times divided by equals sum difference product quotient total left each more fewer",
    "Solve the math problem step by step. On the last line, write '#### ' followed by the final numeric answer.",
    "Solve the system of equations: 2x + 3y = 7, x - y = 1. What is the value of x?",
    "marbles books cookies pencils stamps shells cards beads stickers friends shelves boxes pages",
    "system user assistant You are given a problem. Think about the problem and provide your working out.",
]


def build_tiny_model(target: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>", pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Directory with a tiny random LlamaForCausalLM + ChatML BPE tokenizer, made offline.

    Also pins torch to one thread: for a model this small, thread hand-offs dominate, and on a shared
    2-core machine two threads are ~30x slower than one."""
    import torch

    torch.set_num_threads(1)
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def build_tiny():
    """`build_tiny(path, seed)`: another tiny model (same tokenizer, other random weights)."""
    return build_tiny_model


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir):
    """(model, tokenizer, info) loaded through mathrl.engine.models in fp32 on CPU, shared by tests."""
    from mathrl.engine.models import load_model

    return load_model(str(tiny_model_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from mathrl.engine.models import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def gsm8k_dir(monkeypatch) -> Path:
    """Point MATHRL_DATA_DIR at ../shared/data/gsm8k; skip when that checkout-side data is absent."""
    if not (GSM8K_DIR / "test.jsonl").exists():
        pytest.skip(f"GSM8K data not found at {GSM8K_DIR}")
    monkeypatch.setenv("MATHRL_DATA_DIR", str(GSM8K_DIR))
    return GSM8K_DIR


SHARED_DATA = GSM8K_DIR.parent  # ../shared/data: gsm8k/, svamp/, gsm_hard/ (real copies, never committed)
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # small made-up rows for the other held-out sets
HELDOUT_FIXTURES = ("asdiv", "mawps", "gsm_plus", "math500", "math")


@pytest.fixture
def suite_data_dir(tmp_path) -> Path:
    """A suite data directory: DIR/<task>/test.jsonl, symlinked from the shared data and the fixtures."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("gsm8k", "svamp", "gsm_hard"):
        if not (SHARED_DATA / name / "test.jsonl").exists():
            pytest.skip(f"{name} data not found at {SHARED_DATA / name}")
        (root / name).symlink_to(SHARED_DATA / name)
    for name in HELDOUT_FIXTURES:
        (root / name).symlink_to(FIXTURES / name)
    return root
