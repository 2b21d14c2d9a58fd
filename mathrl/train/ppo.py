"""PPO with rule-based rewards: a value head on the policy, per-token KL to a reference, GAE, clipping.

TRL 1.x no longer ships a PPO trainer, so the loop is here, in one readable module (the arithmetic
is in `ppo_core.py`); accelerate does devices, mixed precision and multi-process (DDP under
`accelerate launch` or `torchrun`). One step:

1. rollout: `prompts_per_step` training prompts, `rollouts_per_prompt` sampled completions each
   (the same shared-prompt, compacting generation as `mathrl grpo`);
2. score: the weighted sum of the reward registry's functions (`--rewards`, as GRPO), given at the
   completion's last token; every token pays `kl_coef`·(log π − log π_ref);
3. values and old log-probs from the policy, reference log-probs from the frozen start model (with
   LoRA: the base with the adapter switched off); GAE(γ, λ) advantages, whitened over the batch;
4. `ppo_epochs` passes over the rollouts in shuffled mini-batches (each `grad_accum` micro-batches):
   clipped policy loss + `vf_coef`·clipped value loss − `ent_coef`·entropy.

Simplifications, stated: the value head is a linear layer on the policy's last hidden state (shared
trunk, as TRL's former `AutoModelForCausalLMWithValueHead`), zero-initialised and trained with its own
learning rate; the reward is not normalised (rule-based scores are already in [−1, 2]); no adaptive KL
controller; completions cut at `max_completion_length` are scored like finished ones.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mathrl.prompts import formats
from mathrl.errors import MathrlError
from mathrl.tasks import get_task
from mathrl.train.settings import PPORunConfig  # noqa: F401 - in settings.py so the CLI need not import torch
from mathrl.files import JsonlAppender, atomic_write_json
from mathrl.train import ppo_core
from mathrl.train.rl import reward_record
from mathrl.train.rollout import Rollout, collect_rollouts, policy_token_stats, prompt_indices


class PolicyAndValue(nn.Module):
    """The causal LM plus a scalar value head on its last hidden state; one module, so DDP syncs both."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        hidden = policy.get_input_embeddings().weight.shape[1]
        self.value_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                temperature: float, entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-probs, entropies, values) at the completion positions, each (rows, completion tokens)."""
        return policy_token_stats(self.policy, input_ids, attention_mask, completion_mask, temperature,
                                  entropy_grad=entropy_grad, value_head=self.value_head)


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def save_checkpoint(out: Path, step: int, agent: PolicyAndValue, optimizer: Any, scheduler: Any, keep: int,
                    budget: Any = None) -> Path:
    """Trainable weights (safetensors), optimizer and scheduler state, step, the time budget's state;
    written to a temp dir and renamed, so a kill mid-save leaves the previous checkpoint as the last one."""
    from mathrl.train.common import save_budget

    from safetensors.torch import save_file

    final, tmp = out / f"checkpoint-{step}", out / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().contiguous().cpu() for n, p in agent.named_parameters() if p.requires_grad}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    atomic_write_json(tmp / "trainer_state.json", {"global_step": step})
    save_budget(tmp, budget)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, agent: PolicyAndValue, optimizer: Any, scheduler: Any) -> int:
    from safetensors.torch import load_file

    path = Path(path)
    result = agent.load_state_dict(load_file(str(path / "trainable.safetensors")), strict=False)
    if result.unexpected_keys:
        raise MathrlError(f"checkpoint {path} does not fit this model (unexpected {result.unexpected_keys[:3]}); "
                          "was it written with other --method or model?")
    state = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(json.loads((path / "trainer_state.json").read_text())["global_step"])


def optimize(agent: Any, accelerator: Any, optimizer: Any, scheduler: Any, batch: Rollout, cfg: PPORunConfig,
             autocast: Any) -> dict[str, float]:
    """`ppo_epochs` passes of clipped PPO updates over one rollout batch; mean stats over micro-batches."""
    sums: dict[str, float] = {}
    micro = cfg.mini_batch_size // cfg.grad_accum
    n = batch.size()
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n)
        for start in range(0, n, cfg.mini_batch_size):
            mini = order[start : start + cfg.mini_batch_size]
            for k in range(cfg.grad_accum):
                mb = batch.select(mini[k * micro : (k + 1) * micro])
                sync = nullcontext() if k == cfg.grad_accum - 1 else accelerator.no_sync(agent)
                with sync:
                    with autocast():
                        logps, ents, values = agent(mb.input_ids, mb.attention_mask, mb.mask, cfg.temperature,
                                                    cfg.ent_coef > 0)
                    pg, pg_stats = ppo_core.policy_loss(logps, mb.old_logps, mb.advantages, mb.mask, cfg.clip)
                    vf, vf_clipfrac = ppo_core.value_loss(values, mb.old_values, mb.returns, mb.mask, cfg.value_clip)
                    entropy = ppo_core.masked_mean(ents, mb.mask)
                    loss = pg + cfg.vf_coef * vf - cfg.ent_coef * entropy
                    accelerator.backward(loss / cfg.grad_accum)
                for key, value in (("loss", loss), ("policy_loss", pg), ("value_loss", vf), ("entropy", entropy),
                                   ("value_clipfrac", vf_clipfrac), *pg_stats.items()):
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) / (cfg.ppo_epochs * n // micro)
            norm = accelerator.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(norm) / (cfg.ppo_epochs * n // cfg.mini_batch_size)
    return sums


def _reference(model: Any, cfg: PPORunConfig) -> Any:
    """A frozen copy of the start model (None with LoRA, whose reference is the adapter switched off, or
    without a KL penalty)."""
    if cfg.kl_coef == 0 or cfg.method == "lora":
        return None
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


def _build(cfg: PPORunConfig, accelerator: Any, checkpoint: str | None) -> dict[str, Any]:
    """The policy (+ value head), reference model, optimizer and scheduler, restored from `checkpoint`."""
    from transformers import get_scheduler

    from mathrl.engine import models
    from mathrl.train import common
    from mathrl.train.rl import check_markers

    fast_bf16 = common.cuda_available() or models.cpu_has_fast_bf16()
    model, tokenizer, info = models.load_model(cfg.model, cfg.weight_dtype(), device=str(accelerator.device))
    check_markers(tokenizer, cfg.protocol().resolved_format().markers)
    models.set_attention(model, cfg.half_compute(fast_bf16))
    ref = _reference(model, cfg)
    if cfg.method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, common.lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets))
    agent = PolicyAndValue(model).to(accelerator.device)
    policy_params = [p for p in agent.policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": policy_params, "lr": cfg.learning_rate},
        {"params": list(agent.value_head.parameters()), "lr": cfg.value_learning_rate or 10 * cfg.learning_rate},
    ], weight_decay=cfg.weight_decay)
    updates_per_step = cfg.ppo_epochs * (cfg.rollouts_per_step() // cfg.mini_batch_size)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps * updates_per_step,
                              num_training_steps=cfg.max_steps * updates_per_step)
    start_step = load_checkpoint(checkpoint, agent, optimizer, scheduler) if checkpoint else 0
    agent, optimizer = accelerator.prepare(agent, optimizer)
    return {"agent": agent, "unwrapped": accelerator.unwrap_model(agent), "ref": ref, "tokenizer": tokenizer,
            "info": info, "optimizer": optimizer, "scheduler": scheduler, "updates_per_step": updates_per_step,
            "start_step": start_step,
            # a fresh context per use: bf16 autocast where the device computes bf16 fast, else none
            "autocast": (functools.partial(torch.autocast, accelerator.device.type, dtype=torch.bfloat16)
                         if cfg.autocast_bf16(fast_bf16) else nullcontext)}


def _step_row(step: int, stats: dict[str, Any], lr: float, seconds: float, accelerator: Any) -> dict[str, Any]:
    """One log row: every figure averaged over ranks, NaNs dropped, rounded."""
    row = {**stats, "learning_rate": lr, "step_time": seconds}
    row = {k: float(v) for k, v in zip(row, accelerator.reduce(torch.tensor(list(row.values()),
                                                                             device=accelerator.device), "mean"))}
    return {"step": step, "time": round(time.time(), 2), **{k: round(v, 6) for k, v in row.items() if v == v}}


def _log_step(cfg: PPORunConfig, row: dict[str, Any], rows: list[dict[str, Any]], logs: tuple | None, texts: Any,
              bar: Any) -> None:
    """Append the step's row (with a reward-hacking alarm, when one fires) to the log, its completions to the
    completions log (`logs` is None off the main process), and show it on the progress bar."""
    from mathrl.train.rl import hacking_alarm

    step = row["step"]
    rows.append(row)
    alarm = hacking_alarm(rows, cfg.alarm_window)
    if alarm:
        row["alarm"] = alarm
        if logs is not None:
            print(f"warning: step {step}: {alarm}", flush=True)
    if logs is not None:
        log, samples_log = logs
        log.append([row])
        if samples_log:
            samples_log.append([{"step": step, "prompt": p, "completion": c, "reward": r} for p, c, r in zip(*texts)])
    bar.update(1)
    bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row.get('kl', 0.0):.3f}")
    if cfg.verbose and logs is not None:
        bar.write(str(row))


def _refit(cfg: PPORunConfig, scheduler: Any, updates_per_step: int, horizon: int | None) -> int | None:
    """A step budget's horizon below max_steps: the schedule now spans it (not the max_steps it was built
    for); returns it, or None when there is nothing to refit."""
    from mathrl.train import common

    if horizon is None or horizon >= cfg.max_steps:
        return None
    common.fit_schedule(scheduler, cfg.lr_scheduler, cfg.warmup_steps * updates_per_step, horizon * updates_per_step)
    return horizon


def _reward_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"reward_first": rows[0]["reward"] if rows else None, "reward_last": rows[-1]["reward"] if rows else None,
            "alarms": [r["alarm"] for r in rows if "alarm" in r]}


def _save_run(cfg: PPORunConfig, out: Path, built: dict[str, Any], log_path: Path, record: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from mathrl.train import common
    from mathrl.train.saving import save_model

    unwrapped = built["unwrapped"]
    save_model(unwrapped.policy, built["tokenizer"], out, cfg.model, cfg.merge)
    save_file({k: v.contiguous() for k, v in unwrapped.value_head.state_dict().items()}, str(out / "value_head.safetensors"))
    common.plot_curves(log_path, out / "training_curves.png",
                       ("reward", "kl", "policy_loss", "value_loss", "explained_variance", "completion_length"))
    atomic_write_json(out / "mathrl_config.json", record)


def run_ppo(cfg: PPORunConfig) -> dict[str, Any]:
    """Train; save model + tokenizer + value head + log + curves into cfg.output_dir; return the run record."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from mathrl import memory
    from mathrl.provenance import library_versions
    from mathrl.train.rewards import build_rewards
    from mathrl.train import common
    from mathrl.train.rl import cpu_budget_note, training_prompts

    cfg.validate()
    memory.reset_peak()  # this run's peak, in the record (a runner process ran other stages before)
    out = Path(cfg.output_dir)
    checkpoint = common.checkpoint_to_resume(out, cfg.resume)
    samples = training_prompts(cfg)
    protocol = cfg.protocol()
    settings = cfg.decoding(protocol)
    task = get_task(cfg.task, cfg.task_config, data_dir=cfg.data_dir, **cfg.task_args)
    reward_funcs, weights = build_rewards(cfg.rewards, cfg.format, task, settings.stop, cfg.max_completion_length)
    accelerator = Accelerator(cpu=not common.cuda_available())
    note = None if common.cuda_available() else cpu_budget_note(cfg.rollouts_per_step(), cfg)
    if note and accelerator.is_main_process:
        print(note, flush=True)
    built = _build(cfg, accelerator, checkpoint)
    agent, unwrapped, optimizer, scheduler = built["agent"], built["unwrapped"], built["optimizer"], built["scheduler"]
    tokenizer, updates_per_step, start_step = built["tokenizer"], built["updates_per_step"], built["start_step"]
    autocast = built["autocast"]
    prompts = [formats.build_prompt(s.question, protocol, tokenizer) for s in samples]
    main = accelerator.is_main_process
    log_path = out / "train_log.jsonl"
    if main:  # (checkpoint_to_resume kept only the rows up to start_step)
        out.mkdir(parents=True, exist_ok=True)
    logs = (JsonlAppender(log_path), JsonlAppender(out / "completions.jsonl") if cfg.log_completions and main else None)
    rows: list[dict[str, Any]] = [r for r in common.read_log(log_path) if "reward" in r]
    began, step = time.perf_counter(), start_step
    budget = common.resumed_budget(cfg.max_minutes, checkpoint, start_step) if cfg.max_minutes else None
    planned = _refit(cfg, scheduler, updates_per_step, budget.stop_after if budget else None) or cfg.max_steps  # resumed
    bar = tqdm(total=planned, initial=start_step, desc="ppo", unit="step", disable=not main, dynamic_ncols=True)
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed + 1009 * step + accelerator.process_index)  # resumes draw the same rollouts
        idx = prompt_indices(len(samples), step, cfg.prompts_per_step, accelerator.process_index,
                             accelerator.num_processes, cfg.seed)
        batch, rollout_stats, texts = collect_rollouts(
            unwrapped, built["ref"], tokenizer, [prompts[i] for i in idx], [samples[i].answer for i in idx], cfg,
            settings, reward_funcs, weights, autocast, [task.sample_answer_type(samples[i]) for i in idx])
        agent.train()
        stats = optimize(agent, accelerator, optimizer, scheduler, batch, cfg, autocast)
        step += 1
        row = _step_row(step, {**rollout_stats, **stats}, scheduler.get_last_lr()[0], time.perf_counter() - t0, accelerator)
        _log_step(cfg, row, rows, logs if main else None, texts, bar)
        horizon, out_of_time = budget.decide(step, cfg.max_steps) if budget else (None, False)
        if _refit(cfg, scheduler, updates_per_step, horizon):
            planned = bar.total = horizon
            if main:
                print(f"[mathrl] {cfg.max_minutes:g}-minute budget: {planned} of {cfg.max_steps} steps fit", flush=True)
        if main and (step % cfg.save_steps == 0 or out_of_time or step == cfg.max_steps):
            save_checkpoint(out, step, unwrapped, optimizer, scheduler, cfg.save_total_limit, budget)
        accelerator.wait_for_everyone()
        if out_of_time:
            break
    bar.close()
    train_seconds = time.perf_counter() - began
    if main:
        from mathrl.train.progress import summary_table

        print(summary_table(rows, f"ppo: {step} steps, {train_seconds / max(1, step - start_step):.1f} s/step", rl=True),
              flush=True)
    record = {
        "trainer": "ppo", "config": asdict(cfg), "base_model": built["info"], "num_prompts": len(samples),
        "train_seconds": round(train_seconds, 1), "global_step": step, "planned_steps": planned,
        "seconds_per_step": round(train_seconds / max(1, step - start_step), 2), **_reward_summary(rows),
        "resumed_from": checkpoint, "world_size": accelerator.num_processes, "decoding": settings.effective(),
        "rewards": reward_record(reward_funcs, weights), "versions": library_versions(), "memory": memory.peak(),
    }
    if main:
        _save_run(cfg, out, built, log_path, record)
    accelerator.wait_for_everyone()
    return record
