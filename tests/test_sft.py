"""SFT on a tiny random model: label masking, learning, resume, LoRA merge, config validation."""

from __future__ import annotations

import json

import pytest
import torch

from mathrl import config as cfgmod
from mathrl.errors import MathrlError
from mathrl.train.sft import SFTRunConfig, build_trainer, run_sft


def make_cfg(tiny_model_dir, tmp_path, **kw) -> SFTRunConfig:
    base = dict(model=str(tiny_model_dir), task="arithmetic", task_config="1", train_samples=8, batch_size=4,
                max_steps=2, learning_rate=1e-3, dtype="fp32", save_steps=1000, output_dir=str(tmp_path / "out"))
    base.update(kw)
    return cfgmod.build(SFTRunConfig, base)


@pytest.mark.parametrize("chat_template", [True, False])
@pytest.mark.parametrize("loss", ["completion", "full"])
def test_label_positions(tiny_model_dir, tmp_path, chat_template, loss):
    cfg = make_cfg(tiny_model_dir, tmp_path, chat_template=chat_template, loss=loss)
    trainer, samples, _, _ = build_trainer(cfg)
    tok = trainer.processing_class
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    sample = next(s for s in samples if s.question in tok.decode(ids))
    labelled = [i for i, lab in zip(ids, labels) if lab != -100]
    text = tok.decode(labelled)
    if loss == "full":
        assert labels == ids  # question and answer both carry labels
    else:
        # exactly the answer: starts after the prompt, holds the solution and the final answer, ends with EOS
        assert labelled == ids[len(ids) - len(labelled):]
        assert sample.question not in text
        assert text.strip().startswith(sample.solution.splitlines()[0])
        assert f"#### {sample.answer}" in text
        assert labelled[-1] == tok.eos_token_id
        if chat_template:
            assert "<|im_start|>" not in text and "assistant" not in text


def test_loss_falls_and_outputs_written(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, tmp_path, max_steps=12, learning_rate=1e-2, train_samples=4, batch_size=4)
    record = run_sft(cfg)
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 12
    assert losses[-1] < 0.8 * losses[0]
    out = tmp_path / "out"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "mathrl_config.json", "training_curves.png"):
        assert (out / name).exists(), name
    assert record["global_step"] == 12
    saved = json.loads((out / "mathrl_config.json").read_text())
    assert saved["config"]["learning_rate"] == 1e-2 and "torch" in saved["versions"]
    assert saved["trainer"] == "sft"  # every trainer's record names its trainer
    from mathrl import memory

    if memory.window_peak_gb() is not None:  # Linux: each log line says which part of a step reached which peak
        assert all(r["memory/forward_backward"] > 0 and r["memory/optimizer"] > 0 for r in log if "loss" in r)
        parts = record["memory_parts"]
        assert parts["memory/forward_backward"] == max(r["memory/forward_backward"] for r in log if "loss" in r)
        assert max(parts.values()) <= record["memory"]["peak_rss_gb"] + 1e-3


def test_resume_continues_at_saved_step(tiny_model_dir, tmp_path):
    run_sft(make_cfg(tiny_model_dir, tmp_path, max_steps=2, save_steps=2))
    assert (tmp_path / "out" / "checkpoint-2").exists()
    with pytest.raises(MathrlError, match="--resume"):
        run_sft(make_cfg(tiny_model_dir, tmp_path, max_steps=4, save_steps=2))
    record = run_sft(make_cfg(tiny_model_dir, tmp_path, max_steps=4, save_steps=2, resume=True))
    assert record["resumed_from"].endswith("checkpoint-2")
    assert record["global_step"] == 4
    steps = [json.loads(line)["step"] for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3, 4]  # steps 1-2 from the first run, 3-4 after resuming


def test_lora_merge_matches_adapter_logits(tiny_model_dir, tmp_path):
    from mathrl.engine.models import load_model

    cfg = make_cfg(tiny_model_dir, tmp_path, method="lora", lora_r=4, lora_alpha=8, max_steps=3,
                   learning_rate=1e-2, format="tags", merge=True)
    record = run_sft(cfg)
    # LoRA keeps the markers as text the base vocabulary spells (no resized embeddings to train)
    assert record["added_tokens"] == []
    out = tmp_path / "out"
    adapter_model, tok, _ = load_model(str(out / "adapter"), dtype="fp32", device="cpu")
    merged_model, tok2, _ = load_model(str(out), dtype="fp32", device="cpu")
    base_model, _, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    assert len(tok) == len(tok2) and "<SOLUTION>" not in tok.get_vocab()
    ids = tok("What is 12 + 30? <SOLUTION>42</SOLUTION>", return_tensors="pt").input_ids
    base_ids = ids.clamp(max=base_model.config.vocab_size - 1)
    with torch.no_grad():
        a = adapter_model(ids).logits
        m = merged_model(ids).logits
        b = base_model(base_ids).logits
    assert torch.allclose(a, m, atol=1e-4)
    assert not torch.allclose(a[..., : b.shape[-1]], b, atol=1e-3)  # training changed the model


def test_qlora_needs_cuda(tiny_model_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(MathrlError, match="qlora needs a CUDA GPU"):
        run_sft(make_cfg(tiny_model_dir, tmp_path, method="qlora"))


def test_stage_sizes_and_bad_values(tiny_model_dir, tmp_path):
    from mathrl.train.sft import training_samples

    cfg = make_cfg(tiny_model_dir, tmp_path, train_samples=None, stage="rl_prep")
    assert len(training_samples(cfg)) == 256
    with pytest.raises(MathrlError, match="loss must be"):
        make_cfg(tiny_model_dir, tmp_path, loss="half")
    with pytest.raises(MathrlError, match="stage must be"):
        make_cfg(tiny_model_dir, tmp_path, stage="huge")


def test_yaml_config_errors(tmp_path):
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("learning_rte: 0.1\n")
    with pytest.raises(MathrlError, match=r"unknown key 'learning_rte' \(did you mean 'learning_rate'\?\)"):
        cfgmod.resolve(SFTRunConfig, bad_key, {})
    bad_type = tmp_path / "b.yaml"
    bad_type.write_text("batch_size: lots\n")
    with pytest.raises(MathrlError, match="'batch_size' should be int"):
        cfgmod.resolve(SFTRunConfig, bad_type, {})
    ok = tmp_path / "c.yaml"
    ok.write_text("batch_size: 4\nlearning_rate: 1\n")
    cfg = cfgmod.resolve(SFTRunConfig, ok, {"batch_size": 8, "epochs": None})
    assert cfg.batch_size == 8 and cfg.learning_rate == 1.0 and cfg.epochs == 1.0


def test_shipped_sft_presets_load():
    from pathlib import Path

    presets = sorted((Path(__file__).resolve().parents[1] / "configs" / "sft").glob("*.yaml"))
    assert presets
    for p in presets:
        cfgmod.resolve(SFTRunConfig, p, {})


def test_time_budget_stops_training(tiny_model_dir, tmp_path):
    record = run_sft(make_cfg(tiny_model_dir, tmp_path, max_steps=500, max_minutes=1e-9))
    assert record["global_step"] == 1  # stopped after the first step, and saved
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("fmt", ["gsm8k", "tags", "think", "boxed", "answer_is"])
def test_every_format_trains_a_step_and_its_output_evaluates(tiny_model_dir, tmp_path, fmt, method):
    """Formats that add marker tokens (tags, think) crashed with LoRA (PEFT's trainable-token wrappers
    under TRL's fused LM head); every format x method must train and load for evaluation."""
    from mathrl.eval.evaluate import EvalConfig, run_eval
    from mathrl.prompts.formats import Protocol

    out = tmp_path / "out"
    record = run_sft(make_cfg(tiny_model_dir, tmp_path, format=fmt, method=method, max_steps=1, train_samples=4))
    assert record["global_step"] == 1
    weights = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    assert (out / weights).exists()
    summary = run_eval(EvalConfig(model=str(out), task="arithmetic", task_config="1", limit=2, max_new_tokens=4,
                                  dtype="fp32", protocol=Protocol(format=fmt), output_dir=str(tmp_path / "eval"),
                                  progress=False))
    assert summary["n"] == 2


def test_warmup_follows_the_ratio_and_impossible_ratios_are_refused(tiny_model_dir, tmp_path):
    trainer, _, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp_path, warmup_ratio=0.5, max_steps=4,
                                              lr_scheduler="linear"))
    assert trainer.args.get_warmup_steps(4) == 2
    with pytest.raises(MathrlError, match="warmup_ratio must be in"):
        make_cfg(tiny_model_dir, tmp_path, warmup_ratio=1.0).validate()


@pytest.fixture(scope="module")
def tied_model_dir(tmp_path_factory, build_tiny):
    """The tiny model with tied input/output embeddings, as SmolLM2 has."""
    from transformers import AutoModelForCausalLM

    path = build_tiny(tmp_path_factory.mktemp("tied"), seed=2)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.parametrize("fmt", ["tags", "think"])
def test_marker_formats_train_with_lora_on_tied_embeddings(tied_model_dir, tmp_path, fmt):
    """`mathrl sft --format tags --method lora` on SmolLM2 (tied embeddings) crashed in TRL's fused LM head."""
    record = run_sft(make_cfg(tied_model_dir, tmp_path, format=fmt, method="lora", max_steps=1, train_samples=4))
    assert record["global_step"] == 1 and (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_a_time_budget_refits_the_schedule_to_the_steps_that_fit(tiny_model_dir, tmp_path):
    """A cosine planned for 100,000 steps and stopped by a 4-second budget used to end at the peak
    learning rate; now the schedule spans the steps that fit, so it has decayed when the budget ends."""
    cfg = make_cfg(tiny_model_dir, tmp_path, max_steps=100_000, max_minutes=4 / 60, lr_scheduler="cosine",
                   warmup_ratio=0.0, train_samples=64, batch_size=2, learning_rate=1e-3, save_steps=100_000)
    record = run_sft(cfg)
    assert 3 < record["planned_steps"] < 100_000
    lrs = [r["learning_rate"] for r in map(json.loads, (tmp_path / "out" / "train_log.jsonl").read_text().splitlines())
           if "learning_rate" in r]
    assert lrs[-1] < 0.5 * 1e-3, lrs[-5:]


@pytest.mark.parametrize("verbose", [False, True])
def test_training_prints_one_live_line_and_a_summary_not_a_wall_of_dicts(tiny_model_dir, tmp_path, capfd, verbose):
    """The demo printed 123 raw `{'loss': ...}` lines; by default a stage shows a progress line and a
    summary table, and `--verbose` brings the full dicts back. train_log.jsonl has every step either way."""
    run_sft(make_cfg(tiny_model_dir, tmp_path, max_steps=5, verbose=verbose))
    out = capfd.readouterr()
    text = out.out + out.err
    assert ("{'loss'" in text) == verbose
    if not verbose:
        table = text[text.index("sft: 5 steps"):].splitlines()[1:]
        rows = [line.split() for line in table[1:] if line.split() and line.split()[0].isdigit()]
        assert table[0].split()[:3] == ["step", "loss", "lr"] and rows[0][0] == "1" and rows[-1][0] == "5"
    assert len([line for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines() if '"loss"' in line]) == 5
