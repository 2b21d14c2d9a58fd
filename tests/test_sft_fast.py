"""FastSFTTrainer: the loss, metrics and gradients of stock TRL's SFTTrainer.compute_loss, with less work."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from trl import SFTTrainer

from mathrl import config as cfgmod
from mathrl.train.sft import SFTRunConfig, build_trainer, run_sft
from mathrl.train.sft_fast import FastSFTTrainer, length_buckets, shared_prefix_length

ROWS = 6


def fast_cfg(model_dir, tmp_path, **kw) -> SFTRunConfig:
    base = dict(model=str(model_dir), task="arithmetic", task_config="1", train_samples=12, batch_size=ROWS,
                max_steps=2, learning_rate=1e-3, dtype="fp32", save_steps=1000, output_dir=str(tmp_path / "out"))
    return cfgmod.build(SFTRunConfig, {**base, **kw})


@pytest.fixture(scope="module")
def trained_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model after a few SFT steps, so that some next tokens are its top-1 (accuracy above 0)."""
    tmp = tmp_path_factory.mktemp("trained")
    run_sft(fast_cfg(tiny_model_dir, tmp, max_steps=12, learning_rate=1e-2, train_samples=4, batch_size=4))
    return tmp / "out"


def test_shared_prefix_length_and_buckets():
    ids = torch.tensor([[5, 6, 7, 8, 9, 1], [5, 6, 7, 8, 2, 0], [5, 6, 7, 3, 4, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    labels = torch.full_like(ids, -100)
    assert shared_prefix_length(ids, mask, labels) == 3
    labels[:, 2] = ids[:, 2]
    labels[2, 2] = -100  # row 2 does not learn token 2: position 1, which predicts it, ends the prefix
    assert shared_prefix_length(ids, mask, labels) == 2  # (the prefix's last position is scored per row)
    # every row keeps at least one token beyond the prefix, for the pass on top of the shared cache
    assert shared_prefix_length(ids[:, :3], mask[:, :3], torch.full_like(ids[:, :3], -100)) == 2
    lengths = [90, 12, 88, 10, 89, 11]
    assert length_buckets(lengths, None) == [[0, 4, 2, 1, 5, 3]]
    assert length_buckets(lengths, 0) == [[0], [4], [2], [1], [5], [3]]
    assert length_buckets(lengths, 30) == [[0, 4, 2], [1, 5, 3]]  # 3 x 78 padded tokens > one call
    assert length_buckets(lengths, 10_000) == [[0, 4, 2, 1, 5, 3]]


def _batch(trainer, pad_to: int | None = None):
    collator = trainer.data_collator
    collator.pad_to_multiple_of = pad_to  # padding the fast path must not compute
    return collator([trainer.train_dataset[i] for i in range(ROWS)])


def _loss_grads_metrics(trainer, impl, batch, num_items=None):
    model = trainer.model.train()
    model.zero_grad()
    trainer._metrics["train"].clear()
    trainer._total_train_tokens = 0
    loss = impl(trainer, model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return loss.detach(), grads, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("chat_template", [True, False])
@pytest.mark.parametrize("loss", ["completion", "full"])
def test_fast_loss_metrics_and_gradients_match_stock_trl(trained_dir, tmp_path, method, chat_template, loss):
    trainer, _, _, _ = build_trainer(fast_cfg(trained_dir, tmp_path, method=method, chat_template=chat_template,
                                              loss=loss))
    assert isinstance(trainer, FastSFTTrainer)
    batch = _batch(trainer, pad_to=32)
    mask = batch["attention_mask"]
    assert (mask == 0).any() and len(set(mask.sum(1).tolist())) > 2, "rows of several lengths, right-padded"
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    # no accumulation (per-token mean of this micro-batch), then accumulation's count over several micro-batches
    for num_items in (None, torch.tensor(3 * labelled)):
        ref_loss, ref_grads, ref_metrics = _loss_grads_metrics(trainer, SFTTrainer.compute_loss, batch, num_items)
        assert ref_metrics["mean_token_accuracy"] > 0 and ref_grads
        for call_tokens in (None, 0, 32):  # one bucket, one per length, the CPU default
            trainer.call_tokens = call_tokens
            before = dict(trainer.fast_stats)
            loss_, grads, metrics = _loss_grads_metrics(trainer, FastSFTTrainer.compute_loss, batch, num_items)
            assert trainer.fast_stats["fast"] == before["fast"] + 1, trainer.fast_stats["reasons"]
            assert trainer.fast_stats["shared_prefix_tokens"] - before["shared_prefix_tokens"] >= 16
            if call_tokens == 0:
                assert trainer.fast_stats["buckets"] - before["buckets"] > 2
            torch.testing.assert_close(loss_, ref_loss, atol=1e-5, rtol=1e-4)
            assert grads.keys() == ref_grads.keys()
            for k in ref_grads:
                torch.testing.assert_close(grads[k], ref_grads[k], atol=1e-5, rtol=1e-4, msg=k)
            assert metrics["num_tokens"] == ref_metrics["num_tokens"] == int(mask.sum())
            for k in ("entropy", "mean_token_accuracy"):
                assert metrics[k] == pytest.approx(ref_metrics[k], abs=1e-5), k
    stats = trainer.fast_path_record()
    assert stats["fallback_batches"] == 0 and stats["backbone_tokens_vs_stock"] < 0.8


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_fast_training_run_matches_stock_run(tiny_model_dir, tmp_path, grad_accum):
    """Two optimizer steps (SGD: Adam's normalisation would turn rounding in near-zero gradients into
    lr-sized steps) give the stock run's losses, token counts and weights, and change the weights."""
    from safetensors.torch import load_file

    runs = {}
    for fast in (True, False):
        cfg = fast_cfg(tiny_model_dir, tmp_path / str(fast), fast=fast, grad_accum=grad_accum, batch_size=3,
                       optim="sgd", learning_rate=0.5, lr_scheduler="constant", warmup_ratio=0.0)
        record = run_sft(cfg)
        out = tmp_path / str(fast) / "out"
        runs[fast] = (record, [r for r in _log(out) if "loss" in r], load_file(out / "model.safetensors"))
    (record, log, weights), (stock_record, stock_log, stock_weights) = runs[True], runs[False]
    assert record["fast_path"]["fast_batches"] == 2 * grad_accum and record["fast_path"]["fallback_batches"] == 0
    assert stock_record["fast_path"] is None
    assert [r["step"] for r in log] == [1, 2]
    for r, s in zip(log, stock_log):
        assert r["num_tokens"] == s["num_tokens"] > 0
        for k in ("loss", "mean_token_accuracy", "entropy"):
            assert r[k] == pytest.approx(s[k], abs=1e-4), k
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(weights[k], base[k]) for k in base)
    for k in stock_weights:
        torch.testing.assert_close(weights[k], stock_weights[k], atol=1e-5, rtol=1e-4, msg=k)


def _left_padded(batch):
    out = {k: v.clone() for k, v in batch.items()}
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        for k in out:
            out[k][i] = torch.roll(batch[k][i], batch[k].size(1) - n)
    return out


@pytest.mark.parametrize("case, reason", [
    ("checkpointing", "activation checkpointing"),
    ("wrapped_head", "not a plain nn.Linear"),
    ("padding_free", "padding-free"),
    ("left_padded", "not right-padded"),
    ("outputs", "outputs requested"),
])
def test_fallback_runs_stock_compute_loss(tiny_model_dir, tmp_path, case, reason):
    kw = {"checkpointing": dict(gradient_checkpointing=True)}.get(case, {})
    trainer, _, _, _ = build_trainer(fast_cfg(tiny_model_dir, tmp_path, **kw))
    assert isinstance(trainer, FastSFTTrainer)
    if case == "checkpointing":  # transformers turns it on when training starts
        trainer.train()
        assert trainer.fast_stats["fast"] == 0 and trainer.fast_stats["reasons"] == {reason: 2}
        return
    batch = _batch(trainer)
    if case == "padding_free":
        batch = {**batch, "position_ids": torch.arange(batch["input_ids"].size(1)).expand_as(batch["input_ids"])}
    if case == "left_padded":
        batch = _left_padded(batch)
    model = trainer.model.train()
    if case == "wrapped_head":  # e.g. PEFT's modules_to_save / trainable-token wrappers: not a plain projection
        head = model.lm_head
        model.lm_head = type("Head", (torch.nn.Linear,), {})(head.in_features, head.out_features, bias=False)
        model.lm_head.weight = head.weight
    outputs = case == "outputs"
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL's notice that return_outputs is deprecated
        loss = trainer.compute_loss(model, dict(batch), return_outputs=outputs)
        ref = SFTTrainer.compute_loss(trainer, model, dict(batch), return_outputs=outputs)
    loss, ref = (loss[0], ref[0]) if outputs else (loss, ref)
    assert trainer.fast_stats["fast"] == 0 and trainer.fast_stats["fallback"] == 1
    assert [r for r in trainer.fast_stats["reasons"] if reason in r]
    torch.testing.assert_close(loss, ref)


def test_stock_flag_and_untested_trl_run_stock_sfttrainer(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import trl
    from typer.testing import CliRunner

    from mathrl.cli import app

    assert "--stock" in CliRunner().invoke(app, ["sft", "--help"], terminal_width=200).output
    assert type(build_trainer(fast_cfg(tiny_model_dir, tmp_path, fast=False))[0]) is SFTTrainer
    monkeypatch.setattr(trl, "__version__", "1.9.0")
    assert type(build_trainer(fast_cfg(tiny_model_dir, tmp_path))[0]) is SFTTrainer
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "outside the tested range" in lines[0] and "stock SFTTrainer" in lines[0]
