"""GRPO on a tiny random model: FastGRPOTrainer matches stock TRL, a step trains, validation, the alarm."""

from __future__ import annotations

import json

import pytest
import torch
from trl import GRPOTrainer

from mathrl import config as cfgmod
from mathrl.errors import MathrlError
from mathrl.train.rewards import REWARDS, register_reward
from mathrl.engine.decoding import DecodingSettings
from mathrl.engine.generation import group_rows, sample_shared_prompts
from mathrl.train.fast_grpo import FastGRPOTrainer
from mathrl.train.grpo import GRPORunConfig, build_trainer, run_grpo
from mathrl.train.rl import check_markers, hacking_alarm

if "distinct_chars" not in REWARDS:
    @register_reward("distinct_chars", description="test reward that varies across random completions")
    def distinct_chars(completions, **kwargs):
        return [len(set(c if isinstance(c, str) else c[-1]["content"])) / 20.0 for c in completions]


def make_cfg(tiny_model_dir, tmp_path, **kw) -> GRPORunConfig:
    base = dict(model=str(tiny_model_dir), task="arithmetic", task_config="1", prompts=16, prompts_per_step=2,
                num_generations=4, max_completion_length=8, max_steps=1, dtype="fp32", learning_rate=1e-3,
                rewards="correctness,distinct_chars", save_steps=1000, output_dir=str(tmp_path / "out"))
    base.update(kw)
    return cfgmod.build(GRPORunConfig, base)


def test_group_rows_finds_repeated_prompts():
    ids = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6], [1, 2, 3], [0, 5, 7]])
    mask = torch.ones_like(ids)
    first, inverse = group_rows(ids, mask)
    assert torch.equal(ids[first][inverse], ids)
    assert len(first) == 3
    # the same tokens with a different mask are a different prompt
    mask[0, 0] = 0
    assert len(group_rows(ids, mask)[0]) == 4


def _captured_batch(trainer):
    """Run one real step, keeping the inputs TRL hands to compute_loss."""
    seen = {}
    original = trainer.compute_loss

    def spy(model, inputs, *a, **k):
        seen.setdefault("inputs", {k2: v for k2, v in inputs.items()})
        return original(model, inputs, *a, **k)

    trainer.compute_loss = spy
    trainer.train()
    return seen["inputs"]


@pytest.mark.parametrize("method, checkpointing", [("full", False), ("lora", False), ("full", True)])
def test_fast_logps_loss_and_gradients_match_stock_trl(tiny_model_dir, tmp_path, method, checkpointing):
    cfg = make_cfg(tiny_model_dir, tmp_path, method=method, max_completion_length=12, beta=0.0,
                   gradient_checkpointing=checkpointing)
    trainer, _, _ = build_trainer(cfg)
    assert isinstance(trainer, FastGRPOTrainer)
    inputs = _captured_batch(trainer)
    model = trainer.model
    prompt_mask = inputs["prompt_mask"]
    assert (prompt_mask == 0).any(), "the batch should hold left-padded prompts"
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([prompt_mask, inputs["completion_mask"]], 1)
    n = inputs["completion_ids"].size(1)

    # without checkpointing the comparison below really exercises the fast path; with it, TRL's pass runs
    assert trainer._fast_path_ok(model, False, {}) or checkpointing
    with torch.enable_grad():
        assert trainer._fast_path_ok(model.train(), False, {}) != checkpointing
    fast_logps, fast_ents, _ = FastGRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, n, compute_entropy=True)
    ref_logps, ref_ents, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, n, compute_entropy=True)
    cmask = inputs["completion_mask"].bool()
    torch.testing.assert_close(fast_logps[cmask], ref_logps[cmask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_ents[cmask], ref_ents[cmask], atol=1e-4, rtol=1e-4)

    def loss_and_grads(impl):
        model.zero_grad()
        trainer._get_per_token_logps_and_entropies = impl.__get__(trainer)
        loss = trainer._compute_loss(model, inputs)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        del trainer._get_per_token_logps_and_entropies
        return loss.detach(), grads

    fast_loss, fast_grads = loss_and_grads(FastGRPOTrainer._get_per_token_logps_and_entropies)
    ref_loss, ref_grads = loss_and_grads(GRPOTrainer._get_per_token_logps_and_entropies)
    torch.testing.assert_close(fast_loss, ref_loss, atol=1e-5, rtol=1e-4)
    assert fast_grads.keys() == ref_grads.keys() and fast_grads
    assert any(g.abs().sum() > 0 for g in ref_grads.values())
    for k in ref_grads:
        torch.testing.assert_close(fast_grads[k], ref_grads[k], atol=1e-5, rtol=1e-3, msg=k)


def test_shared_prompt_generation_matches_plain_greedy_generate(tiny_bundle):
    model, tok, _ = tiny_bundle
    prompts = [tok("What is 2 + 3?")["input_ids"], tok("Add 10 and 4, then double it.")["input_ids"]]
    rows = [prompts[0]] * 3 + [prompts[1]] * 2
    eos = [tok.eos_token_id]
    got = [c.token_ids for c in sample_shared_prompts(model, tok, rows, DecodingSettings(max_new_tokens=9), segment_tokens=2)]
    for row, out in zip(rows, got):
        ref = model.generate(torch.tensor([row]), max_new_tokens=9, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=eos)[0, len(row):].tolist()
        stop = next((i for i, t in enumerate(ref) if t in eos), None)
        assert out == (ref if stop is None else ref[: stop + 1])


def test_one_step_changes_trainable_parameters_and_logs(tiny_model_dir, tmp_path):
    cfg = make_cfg(tiny_model_dir, tmp_path, max_steps=2, save_steps=1)
    trainer, _, _ = build_trainer(cfg)
    before = {k: p.detach().clone() for k, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [k for k, p in trainer.model.named_parameters() if not torch.equal(before[k], p.detach())]
    assert len(changed) > len(before) // 2
    log = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "reward" in r]
    assert len(steps) == 2
    for key in ("rewards/correctness/mean", "rewards/distinct_chars/std", "reward_std", "frac_reward_zero_std",
                "completions/mean_length", "completions/clipped_ratio", "entropy", "step_time"):
        assert key in steps[0], key


def test_run_grpo_writes_model_and_resumes(tiny_model_dir, tmp_path):
    record = run_grpo(make_cfg(tiny_model_dir, tmp_path, max_steps=2, save_steps=1, method="lora"))
    out = tmp_path / "out"
    assert record["global_step"] == 2 and record["fast_path"] and record["trainer"] == "grpo"
    for name in ("adapter_model.safetensors", "adapter_config.json", "mathrl_config.json", "training_curves.png"):
        assert (out / name).exists(), name
    with pytest.raises(MathrlError, match="--resume"):
        run_grpo(make_cfg(tiny_model_dir, tmp_path, max_steps=3, save_steps=1, method="lora"))
    again = run_grpo(make_cfg(tiny_model_dir, tmp_path, max_steps=3, save_steps=1, method="lora", resume=True))
    assert again["global_step"] == 3 and again["resumed_from"].endswith("checkpoint-2")
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines() if '"reward"' in x]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("kw, message", [
    (dict(prompts_per_step=2, num_generations=4, batch_size=6), "batch_size 6 is not divisible by num_generations 4"),
    (dict(num_generations=1, batch_size=4), "num_generations must be at least 2"),
    (dict(loss_type="ppo"), "loss_type must be one of"),
    (dict(rewards="correctness,nonsense"), "unknown reward 'nonsense'"),
    (dict(temperature=0.0), "temperature must be > 0"),
])
def test_validation_errors_name_the_culprit(tiny_model_dir, tmp_path, kw, message):
    with pytest.raises(MathrlError, match=message):
        make_cfg(tiny_model_dir, tmp_path, **kw).validate()


def test_task_without_train_data_is_refused(tiny_model_dir, tmp_path):
    data = tmp_path / "test_only.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    cfg = make_cfg(tiny_model_dir, tmp_path, task="jsonl", task_config=None, task_args={"train_path": None,
                   "test_path": str(data)})
    with pytest.raises(MathrlError, match="train"):
        build_trainer(cfg)


def test_markers_that_a_tokenizer_cannot_represent_are_refused():
    class Lossy:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [0] * len(text)}

        def decode(self, ids):
            return "?" * len(ids)

    with pytest.raises(MathrlError, match="format marker '<SOLUTION>'"):
        check_markers(Lossy(), ["<SOLUTION>"])


def _rows(fmt, correct):
    return [{"reward": f + c, "rewards/format/mean": f, "rewards/correctness/mean": c} for f, c in zip(fmt, correct)]


def test_reward_hacking_alarm():
    rising = [i / 10 for i in range(10)]
    assert "reward hacking" in hacking_alarm(_rows(rising, [0.0] * 10), window=10)
    assert hacking_alarm(_rows(rising, [i / 20 for i in range(10)]), window=10) is None  # correctness rises too
    assert hacking_alarm(_rows([0.5] * 10, [0.0] * 10), window=10) is None  # format flat
    assert hacking_alarm(_rows(rising[:5], [0.0] * 5), window=10) is None  # not enough history


def test_fast_trainer_samples_with_the_run_settings(tiny_model_dir, tmp_path):
    trainer, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp_path, temperature=0.7, top_p=0.9))
    assert isinstance(trainer, FastGRPOTrainer)
    d = trainer.decoding
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty, d.max_new_tokens) == (0.7, 0.9, 0, 1.0, 8)
    assert trainer.temperature == 0.7  # TRL scores log-probs at the temperature the samples were drawn with


def test_cli_grpo_trains_and_reports(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from mathrl.cli import app

    out = tmp_path / "cli-out"
    result = CliRunner().invoke(app, ["grpo", "--model", str(tiny_model_dir), "--task", "arithmetic",
                                      "--task-config", "1", "--num-samples", "8", "--prompts-per-step", "2",
                                      "--num-generations", "2", "--max-completion-length", "4", "--max-steps", "1",
                                      "--dtype", "fp32", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "trained 1 GRPO steps" in result.output
    assert json.loads((out / "mathrl_config.json").read_text())["global_step"] == 1


@pytest.mark.parametrize("name", ["arithmetic_cpu.yaml", "gsm8k_tags.yaml"])
def test_shipped_grpo_configs_are_valid(name):
    from pathlib import Path

    cfg = cfgmod.resolve(GRPORunConfig, Path(__file__).parent.parent / "configs" / "grpo" / name, {})
    cfg.validate()


def test_shared_prompt_sampling_draws_from_the_model_for_left_padded_rows(tiny_bundle):
    """Samples must come from the distribution the trainer scores them with. A position-sensitive model
    (large random weights) shows it: the first sampled token of a left-padded row is drawn from
    softmax(logits of the plain forward), checked with the exact log-likelihood of many draws."""
    from transformers import LlamaForCausalLM

    _, tok, _ = tiny_bundle
    torch.manual_seed(0)
    config = tiny_bundle[0].config.__class__.from_dict({**tiny_bundle[0].config.to_dict(), "initializer_range": 0.6})
    model = LlamaForCausalLM(config).eval()
    short, long = tok("What is 2 + 3?")["input_ids"], tok("Ava has 5 apples and buys 3 packs with 4 apples each.")["input_ids"]
    rows = [short] * 200 + [long] * 2
    settings = DecodingSettings(max_new_tokens=1, temperature=1.0)
    with torch.no_grad():
        got = [c.token_ids for c in sample_shared_prompts(model, tok, rows, settings, segment_tokens=1)]
        probs = torch.softmax(model(torch.tensor([short])).logits[0, -1].float(), -1)
    counts = torch.bincount(torch.tensor([g[0] for g in got[:200]]), minlength=probs.numel()).float()
    top = int(probs.argmax())
    assert probs.max() > 0.05, "the test model should have a clear favourite token"
    # the favourite's frequency within 5 standard errors of its probability
    p = float(probs[top])
    assert abs(counts[top] / 200 - p) < 5 * (p * (1 - p) / 200) ** 0.5 + 1e-3


def test_untested_trl_falls_back_to_stock_grpo_with_one_warning(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """FastGRPOTrainer overrides TRL 1.16 private methods; another TRL (1.9 passes other arguments to
    `_generate_single_turn`: a TypeError at step 1) gets stock GRPOTrainer and a one-line warning."""
    import trl

    from mathrl.train import fast_grpo

    assert fast_grpo.fast_path_supported() is None  # the installed TRL is the tested one
    monkeypatch.setattr(trl, "__version__", "1.9.0")
    assert "outside the tested range" in fast_grpo.fast_path_supported()
    trainer, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp_path))
    assert type(trainer) is GRPOTrainer
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 1 and "stock GRPOTrainer" in lines[0]


def test_changed_private_signatures_are_detected(monkeypatch):
    from mathrl.train import fast_grpo

    def other(self, prompts, num_generations):  # TRL 1.9-like
        return None

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", other)
    assert "_generate_single_turn" in fast_grpo.fast_path_supported()


def test_dependency_ranges_have_upper_bounds():
    import tomllib
    from pathlib import Path

    from mathrl.train.fast_grpo import TESTED_TRL

    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip(): d for d in deps}
    for name in ("transformers", "trl", "peft", "accelerate"):
        assert "<" in spec[name], spec[name]
    assert all(bound in spec["trl"].replace(" ", "") for bound in TESTED_TRL)


def test_optimizer_settings_reach_trl(tiny_model_dir, tmp_path):
    """max_grad_norm and weight_decay were once swallowed by a comment in build_trainer (TRL's defaults ran)."""
    trainer, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp_path, max_grad_norm=0.3, weight_decay=0.1))
    assert (trainer.args.max_grad_norm, trainer.args.weight_decay) == (0.3, 0.1)


def test_qlora_grpo_needs_cuda_and_says_so_before_loading(tiny_model_dir, tmp_path):
    """Study 5's GPU recipe (4-bit LoRA GRPO): accepted by the settings, refused on CPU in one line."""
    cfg = make_cfg(tiny_model_dir, tmp_path, method="qlora")
    cfg.validate()
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(MathrlError, match="qlora needs a CUDA GPU"):
        build_trainer(cfg)


def test_the_ddp_pass_keeps_the_forward_accelerate_installed(tmp_path):
    """`_through_wrapper` deleted the inner module's instance `forward` after its pass: under accelerate's
    mixed precision that is the autocast wrapper, so every later forward ran without autocast."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mathrl.train.fast_grpo import _through_wrapper

    if not dist.is_gloo_available():
        pytest.skip("gloo is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        inner = torch.nn.Linear(3, 3)
        plain = inner.forward
        inner.forward = lambda x: plain(x) * 0 + 7  # what accelerate does: an instance attribute wrapping forward
        wrapped = DistributedDataParallel(inner)
        x = torch.ones(1, 3)
        out = _through_wrapper(wrapped, lambda: plain(x).sum())
        out.backward()
        assert inner.weight.grad is not None  # the pass ran inside DDP's forward
        assert torch.equal(wrapped(x), torch.full((1, 3), 7.0)), "the installed forward was lost"
    finally:
        dist.destroy_process_group()


def test_completions_that_end_at_a_stop_string_are_not_truncated(tiny_model_dir, tmp_path):
    """They end on the stop's last token, not EOS, and TRL's rule (last id in EOS + pad) flagged them:
    `completions/clipped_ratio` was inflated and `mask_truncated_completions` dropped finished completions."""
    trainer, _, _ = build_trainer(make_cfg(tiny_model_dir, tmp_path, mask_truncated_completions=True,
                                           dynamic_sampling=False, chat_template=False))
    tok = trainer.processing_class
    assert trainer.decoding.stop  # raw prompts stop at the next "Question:"
    stop = tok(trainer.decoding.stop[0], add_special_tokens=False)["input_ids"]
    filler = [t for t in range(5, 400) if t not in trainer.eos_token_ids and t != tok.pad_token_id
              and not set(tok.decode([t])) & set("Q\n")][:8]
    # per group of 4: two end at the stop string, one at EOS, one runs to the 8-token limit
    fixed = [filler[:2] + stop, filler[2:3] + stop, filler[:3] + [tok.eos_token_id], filler[:8]]
    assert len(fixed[3]) == trainer.max_completion_length
    trainer._generate_single_turn = lambda prompt_ids, *a, **k: ([fixed[i % 4] for i in range(len(prompt_ids))], None)
    trainer.model.train()
    rows = [dict(trainer.train_dataset[g]) for g in range(2) for _ in range(4)]
    out = trainer._generate_and_score_completions(rows)
    assert trainer._metrics["train"]["completions/clipped_ratio"][-1] == 0.25  # TRL's rule: 0.75
    kept = out["completion_mask"].sum(1).tolist()
    assert kept == [len(fixed[i % 4]) if i % 4 != 3 else 0 for i in range(8)]  # TRL's: only the EOS rows kept
    assert int(out["num_items_in_batch"]) == sum(kept)


def test_grpo_console_shows_reward_and_accuracy_not_dicts(tiny_model_dir, tmp_path, capfd):
    run_grpo(make_cfg(tiny_model_dir, tmp_path, max_steps=2))
    out = capfd.readouterr()
    text = out.out + out.err
    assert "{'loss'" not in text and "'dynamic/" not in text
    header = text[text.index("grpo: 2 steps"):].splitlines()[1].split()
    assert header[:4] == ["step", "reward", "acc", "lr"]


def test_length_chunks_cover_every_row_once_longest_first():
    from mathrl.train.fast_grpo import length_chunks

    lengths = [3, 20, 19, 0, 7, 15, 16, 1]
    chunks = length_chunks(lengths, max_chunks=3)
    assert sorted(i for idx, _ in chunks for i in idx) == list(range(len(lengths)))
    assert [c[1] for c in chunks] == sorted((c[1] for c in chunks), reverse=True)
    for idx, longest in chunks:
        assert longest == max(lengths[i] for i in idx)
    assert len(chunks) == 3  # 20..16, then 7 (< 0.8 x 16), the rest once max_chunks are open


def test_shared_prefix_hidden_in_length_chunks_matches_one_padded_pass(tiny_bundle):
    """Rows of very different completion lengths (several chunks): the states at every real completion
    position equal those of one plain forward over the padded batch, and gradients flow to the prompt."""
    from mathrl.train.fast_grpo import shared_prefix_hidden

    model, tok, _ = tiny_bundle
    torch.manual_seed(0)
    p_len, n = 6, 12
    prompts = torch.randint(5, 100, (2, p_len))
    prompts[1, :2] = tok.pad_token_id
    p_mask = torch.ones(2, p_len, dtype=torch.long)
    p_mask[1, :2] = 0
    lengths = [12, 11, 5, 2, 9, 1]
    rows = [0, 0, 0, 1, 1, 1]
    comp = torch.randint(5, 100, (6, n))
    c_mask = torch.zeros(6, n, dtype=torch.long)
    for r, ln in enumerate(lengths):
        c_mask[r, :ln] = 1
    ids = torch.cat([prompts[rows], comp], 1)
    mask = torch.cat([p_mask[rows], c_mask], 1)
    got = shared_prefix_hidden(model, ids, mask, n)
    ref = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -n - 1 : -1]
    real = c_mask.bool()
    assert torch.allclose(got[real], ref[real], atol=1e-5)
    got[real].sum().backward()
    assert model.model.embed_tokens.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_sampling_copy_is_bf16_and_follows_the_policy_after_a_step(build_tiny, tmp_path):
    """Under bf16 compute a plain fp32 CPU policy samples from a bf16 copy that is re-synced when the
    version (optimizer step) changes, never in between; fp32 compute and LoRA models sample from themselves."""
    from transformers import AutoModelForCausalLM

    from mathrl.train.sampling_copy import SamplingCopy

    model = AutoModelForCausalLM.from_pretrained(build_tiny(tmp_path / "m"))
    assert SamplingCopy(bf16_compute=False).get(model, 0) is model
    sc = SamplingCopy(bf16_compute=True)
    copy0 = sc.get(model, 0)
    assert copy0 is not model and next(copy0.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in copy0.parameters())
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # "an optimizer step"
    w = model.lm_head.weight.to(torch.bfloat16)
    assert not torch.equal(sc.get(model, 0).lm_head.weight, w)  # same version: not re-synced
    assert sc.get(model, 1) is copy0 and torch.equal(copy0.lm_head.weight, w)

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert SamplingCopy(bf16_compute=True).get(lora, 0) is lora


def test_sampling_copy_drops_the_policys_autocast_wrappers(build_tiny, tmp_path):
    """accelerate wraps the policy's forward (bf16 autocast, outputs cast to fp32) as an instance attribute;
    the bf16 copy runs the class's plain forward (its logits stay bf16), which made each decode step cheaper."""
    import types

    from accelerate.utils.operations import convert_outputs_to_fp32
    from transformers import AutoModelForCausalLM

    from mathrl.train.sampling_copy import SamplingCopy

    model = AutoModelForCausalLM.from_pretrained(build_tiny(tmp_path / "m"))
    wrapped = torch.autocast(device_type="cpu", dtype=torch.bfloat16)(convert_outputs_to_fp32(model.forward.__func__))
    model.forward = types.MethodType(wrapped, model)
    copy0 = SamplingCopy(bf16_compute=True).get(model, 0)
    assert "forward" not in vars(copy0)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert copy0(input_ids=ids).logits.dtype == torch.bfloat16
        assert model(input_ids=ids).logits.dtype == torch.float32  # the policy keeps its wrappers
