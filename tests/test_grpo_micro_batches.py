"""GRPO micro-batches (`micro_batch_size`): the same completions, the same update, in slices of whole groups."""

from __future__ import annotations

import json

import pytest
import torch

from mathrl.errors import MathrlError
from mathrl.train.fast_grpo import shuffle_groups
from mathrl.train.grpo import build_trainer
from test_grpo import make_cfg


def test_shuffle_groups_keeps_every_group_whole_and_contiguous():
    torch.manual_seed(0)
    batch = {"ids": torch.arange(12).repeat_interleave(2).view(12, 2), "prompt": [f"p{i // 4}" for i in range(12)],
             "scalar": torch.tensor(3.0), "none": None}
    out = shuffle_groups(batch, 4)
    assert out["none"] is None and out["scalar"] == 3.0
    groups = [out["prompt"][g * 4:(g + 1) * 4] for g in range(3)]
    assert all(len(set(g)) == 1 for g in groups) and sorted(g[0] for g in groups) == ["p0", "p1", "p2"]
    assert sorted(out["ids"][:, 0].tolist()) == list(range(12))  # a permutation, rows kept with their values
    assert [out["prompt"][i] for i in range(12)] == [f"p{int(out['ids'][i, 0]) // 4}" for i in range(12)]


def _one_step(tiny_model_dir, tmp_path, name, **kw):
    cfg = make_cfg(tiny_model_dir, tmp_path, output_dir=str(tmp_path / name), prompts_per_step=4, num_generations=4,
                   max_steps=1, dynamic_sampling=False, loss_type=kw.pop("loss_type", "dapo"), **kw)
    trainer, _, _ = build_trainer(cfg)
    seen = []
    score = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: seen.append(score(inputs)) or seen[-1]
    trainer.train()
    log = [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines() if '"reward"' in x]
    return trainer, log, seen, {k: p.detach().clone() for k, p in trainer.model.named_parameters()}


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_micro_batches_give_the_same_update_as_one_pass(tiny_model_dir, tmp_path, loss_type):
    whole, log_w, seen_w, w_w = _one_step(tiny_model_dir, tmp_path, "whole", loss_type=loss_type)
    micro, log_m, seen_m, w_m = _one_step(tiny_model_dir, tmp_path, "micro", micro_batch_size=4, loss_type=loss_type)
    assert micro.args.per_device_train_batch_size == 4 and micro.args.gradient_accumulation_steps == 4
    assert len(seen_w) == len(seen_m) == 1  # one generation of all 16 completions per step in both
    assert torch.equal(seen_w[0]["completion_ids"], seen_m[0]["completion_ids"])
    assert log_m[0]["loss"] == pytest.approx(log_w[0]["loss"], rel=1e-4, abs=1e-6)
    assert log_m[0]["grad_norm"] == pytest.approx(log_w[0]["grad_norm"], rel=1e-4)
    for k in w_w:
        torch.testing.assert_close(w_m[k], w_w[k], rtol=1e-4, atol=1e-6)


def test_each_micro_batch_holds_whole_groups(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, tmp_path, prompts_per_step=4, num_generations=4, max_steps=1,
                   dynamic_sampling=False, micro_batch_size=8)
    trainer, _, _ = build_trainer(cfg)
    slices = []
    compute = trainer.compute_loss

    def spy(model, inputs, *a, **k):
        slices.append(inputs["prompt_ids"].clone())
        return compute(model, inputs, *a, **k)

    trainer.compute_loss = spy
    trainer.train()
    assert len(slices) == 2
    for ids in slices:  # 8 rows = 2 groups of 4 identical prompts
        assert len({tuple(r.tolist()) for r in ids}) == 2


@pytest.mark.parametrize("micro", [3, 6, 32])
def test_micro_batch_size_must_be_whole_groups_dividing_the_step(tiny_model_dir, tmp_path, micro):
    with pytest.raises(MathrlError, match="micro_batch_size"):
        make_cfg(tiny_model_dir, tmp_path, prompts_per_step=4, num_generations=4, micro_batch_size=micro).validate()
