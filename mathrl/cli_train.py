"""Training commands (`mathrl sft`, `mathrl grpo`, `mathrl ppo`): flags override a YAML config; None means "not given"."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mathrl.cli_common import parse_kv
from mathrl.distributed import is_main_process


def sft(
    model: Optional[str] = typer.Option(None, help="Base model: local dir, hub id or smollm2-135m."),
    task: Optional[str] = typer.Option(None, help="Task whose train split is used."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of SFT settings (configs/sft/); flags override it."),
    task_config: Optional[str] = typer.Option(None, help="Task config (e.g. arithmetic levels 1-2)."),
    task_arg: Optional[list[str]] = typer.Option(None, "--task-arg", help="Task option key=value (repeatable)."),
    data_dir: Optional[str] = typer.Option(None, help="Local data directory (else $MATHRL_DATA_DIR, else the hub)."),
    format: Optional[str] = typer.Option(None, "--format", help="Output format of the training solutions."),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template"),
    loss: Optional[str] = typer.Option(None, help="completion (prompt masked) or full."),
    method: Optional[str] = typer.Option(None, help="full, lora or qlora (CUDA only)."),
    stage: Optional[str] = typer.Option(None, help="full (1,024 samples) or rl_prep (256)."),
    num_samples: Optional[int] = typer.Option(None, help="Training samples (overrides --stage)."),
    epochs: Optional[float] = typer.Option(None),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (and save) after this much training time."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    batch_size: Optional[int] = typer.Option(None),
    grad_accum: Optional[int] = typer.Option(None),
    lora_r: Optional[int] = typer.Option(None), lora_alpha: Optional[int] = typer.Option(None),
    lora_targets: Optional[str] = typer.Option(None, help="Comma-separated module names, or all-linear."),
    dtype: Optional[str] = typer.Option(None, help="auto (fp32 weights + bf16 autocast where fast), bf16, fp32."),
    save_steps: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
    report_to: Optional[str] = typer.Option(None, help="none, tensorboard, trackio or wandb."),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="LoRA: also write merged weights."),
    fast: Optional[bool] = typer.Option(None, "--fast/--stock", help="mathrl's shared-prefix trainer, or stock TRL."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --output-dir."),
    output_dir: Optional[str] = typer.Option(None, help="Where the model, log and curves go."),
) -> None:
    """Supervised fine-tuning on a task's worked solutions (TRL SFTTrainer; full, LoRA or QLoRA)."""
    from mathrl import config as cfgmod
    from mathrl.train.sft import SFTRunConfig, run_sft

    targets = lora_targets.split(",") if lora_targets and lora_targets != "all-linear" else lora_targets
    overrides = dict(model=model, task=task, task_config=task_config, data_dir=data_dir, format=format,
                     chat_template=chat_template, loss=loss, method=method, stage=stage, num_samples=num_samples,
                     epochs=epochs, max_steps=max_steps, max_minutes=max_minutes, learning_rate=lr, batch_size=batch_size, grad_accum=grad_accum,
                     lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=targets, dtype=dtype, save_steps=save_steps,
                     seed=seed, report_to=report_to, merge=merge, fast=fast, resume=resume or None,
                     output_dir=output_dir)
    if task_arg:
        overrides["task_args"] = parse_kv(task_arg, "--task-arg")
    cfg = cfgmod.resolve(SFTRunConfig, config, overrides)
    record = run_sft(cfg)
    if not is_main_process():
        return
    typer.echo(f"trained {record['global_step']} steps on {record['num_samples']} samples in {record['train_seconds']} s; "
               f"final loss {record['train_loss']}; model in {cfg.output_dir}")


def grpo(
    model: Optional[str] = typer.Option(None, help="Start model: local dir (e.g. an SFT output), hub id or smollm2-135m."),
    task: Optional[str] = typer.Option(None, help="Task whose train prompts and gold answers are used."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of GRPO settings (configs/grpo/); flags override it."),
    task_config: Optional[str] = typer.Option(None, help="Task config (e.g. arithmetic levels 1-2)."),
    task_arg: Optional[list[str]] = typer.Option(None, "--task-arg", help="Task option key=value (repeatable)."),
    data_dir: Optional[str] = typer.Option(None, help="Local data directory (else $MATHRL_DATA_DIR, else the hub)."),
    format: Optional[str] = typer.Option(None, "--format", help="Output format the rewards check."),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template"),
    rewards: Optional[str] = typer.Option(None, help="NAME[:WEIGHT],... e.g. correctness,format:0.5 (see mathrl.rewards)."),
    num_generations: Optional[int] = typer.Option(None, help="Completions per prompt (the group)."),
    prompts_per_step: Optional[int] = typer.Option(None, help="Distinct prompts per optimizer step."),
    batch_size: Optional[int] = typer.Option(None, help="Completions per device step (default prompts x generations)."),
    max_completion_length: Optional[int] = typer.Option(None, help="New-token budget per completion."),
    num_samples: Optional[int] = typer.Option(None, help="Training prompts drawn from the train split."),
    beta: Optional[float] = typer.Option(None, help="KL coefficient (> 0 loads a reference model)."),
    loss_type: Optional[str] = typer.Option(None, help="grpo, dr_grpo, dapo or bnpo."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
    method: Optional[str] = typer.Option(None, help="full or lora."),
    max_steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (and save) after this much training time."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    dtype: Optional[str] = typer.Option(None, help="auto (fp32 weights + bf16 autocast where fast), bf16, fp32."),
    vllm: Optional[str] = typer.Option(None, help="auto (CUDA + vllm installed), on or off."),
    vllm_mode: Optional[str] = typer.Option(None, help="colocate or server (start `trl vllm-serve` first)."),
    vllm_server_url: Optional[str] = typer.Option(None, help="Server mode: the vLLM server's URL (default http://0.0.0.0:8000)."),
    fast: Optional[bool] = typer.Option(None, "--fast/--stock", help="mathrl's shared-prompt trainer, or stock TRL."),
    dynamic_sampling: Optional[bool] = typer.Option(
        None, "--dynamic-sampling/--no-dynamic-sampling",
        help="Replace groups whose rewards are all equal (no gradient) by groups for other prompts (default on)."),
    max_refills: Optional[int] = typer.Option(None, help="Dynamic sampling: replacement rounds per step (0: only measure)."),
    prompt_policy: Optional[str] = typer.Option(None, help="uniform, or pass_rate (prefer prompts sometimes solved)."),
    save_steps: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
    report_to: Optional[str] = typer.Option(None, help="none, tensorboard, trackio or wandb."),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="LoRA: also write merged weights."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --output-dir."),
    output_dir: Optional[str] = typer.Option(None, help="Where the model, log and reward curves go."),
) -> None:
    """GRPO with verifiable rewards (TRL GRPOTrainer; mathrl's faster trainer on the HF path, vLLM on GPUs)."""
    from mathrl import config as cfgmod
    from mathrl.train.grpo import GRPORunConfig, run_grpo

    overrides = dict(model=model, task=task, task_config=task_config, data_dir=data_dir, format=format,
                     chat_template=chat_template, rewards=rewards, num_generations=num_generations,
                     prompts_per_step=prompts_per_step, batch_size=batch_size,
                     max_completion_length=max_completion_length, num_samples=num_samples, beta=beta,
                     loss_type=loss_type, temperature=temperature, method=method, max_steps=max_steps,
                     max_minutes=max_minutes, learning_rate=lr, dtype=dtype, vllm=vllm, vllm_mode=vllm_mode,
                     vllm_server_url=vllm_server_url, fast=fast, dynamic_sampling=dynamic_sampling,
                     max_refills=max_refills, prompt_policy=prompt_policy,
                     save_steps=save_steps, seed=seed, report_to=report_to, merge=merge, resume=resume or None,
                     output_dir=output_dir)
    if task_arg:
        overrides["task_args"] = parse_kv(task_arg, "--task-arg")
    cfg = cfgmod.resolve(GRPORunConfig, config, overrides)
    record = run_grpo(cfg)
    if not is_main_process():
        return
    typer.echo(f"trained {record['global_step']} GRPO steps in {record['train_seconds']} s "
               f"({record['seconds_per_step']} s/step); reward {record['reward_first']} -> {record['reward_last']}; "
               f"model in {cfg.output_dir}")
    for alarm in record["alarms"][-1:]:
        typer.secho(f"warning: {alarm}", fg="yellow", err=True)


def ppo(
    model: Optional[str] = typer.Option(None, help="Start model: local dir (e.g. an SFT output), hub id or smollm2-135m."),
    task: Optional[str] = typer.Option(None, help="Task whose train prompts and gold answers are used."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of PPO settings (configs/ppo/); flags override it."),
    task_config: Optional[str] = typer.Option(None, help="Task config (e.g. arithmetic levels 1-2)."),
    task_arg: Optional[list[str]] = typer.Option(None, "--task-arg", help="Task option key=value (repeatable)."),
    data_dir: Optional[str] = typer.Option(None, help="Local data directory (else $MATHRL_DATA_DIR, else the hub)."),
    format: Optional[str] = typer.Option(None, "--format", help="Output format the rewards check."),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template"),
    rewards: Optional[str] = typer.Option(None, help="NAME[:WEIGHT],... given at the last token (see mathrl.rewards)."),
    prompts_per_step: Optional[int] = typer.Option(None, help="Training prompts per rollout batch."),
    rollouts_per_prompt: Optional[int] = typer.Option(None, help="Sampled completions per prompt."),
    mini_batch_size: Optional[int] = typer.Option(None, help="Rollouts per optimizer step."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per mini-batch."),
    ppo_epochs: Optional[int] = typer.Option(None, help="Passes over each rollout batch."),
    max_completion_length: Optional[int] = typer.Option(None, help="New-token budget per completion."),
    num_samples: Optional[int] = typer.Option(None, help="Training prompts drawn from the train split."),
    kl_coef: Optional[float] = typer.Option(None, help="Per-token KL penalty to the reference (0: no reference)."),
    gamma: Optional[float] = typer.Option(None), lam: Optional[float] = typer.Option(None, help="GAE lambda."),
    clip: Optional[float] = typer.Option(None, help="Policy ratio clip."),
    value_clip: Optional[float] = typer.Option(None), vf_coef: Optional[float] = typer.Option(None),
    ent_coef: Optional[float] = typer.Option(None),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature."),
    method: Optional[str] = typer.Option(None, help="full or lora."),
    max_steps: Optional[int] = typer.Option(None, help="Rollout + update steps."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop (and save) after this much training time."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Policy learning rate."),
    value_lr: Optional[float] = typer.Option(None, "--value-lr", help="Value head learning rate (default 10 x --lr)."),
    dtype: Optional[str] = typer.Option(None, help="auto (fp32 weights + bf16 autocast where fast), bf16, fp32."),
    save_steps: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
    merge: Optional[bool] = typer.Option(None, "--merge/--no-merge", help="LoRA: also write merged weights."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --output-dir."),
    output_dir: Optional[str] = typer.Option(None, help="Where the model, value head, log and curves go."),
) -> None:
    """PPO with rule-based rewards: value head, GAE, per-token KL to the start model, clipped updates."""
    from mathrl import config as cfgmod
    from mathrl.train.ppo import PPORunConfig, run_ppo

    overrides = dict(model=model, task=task, task_config=task_config, data_dir=data_dir, format=format,
                     chat_template=chat_template, rewards=rewards, prompts_per_step=prompts_per_step,
                     rollouts_per_prompt=rollouts_per_prompt, mini_batch_size=mini_batch_size, grad_accum=grad_accum,
                     ppo_epochs=ppo_epochs, max_completion_length=max_completion_length, num_samples=num_samples,
                     kl_coef=kl_coef, gamma=gamma, lam=lam, clip=clip, value_clip=value_clip, vf_coef=vf_coef,
                     ent_coef=ent_coef, temperature=temperature, method=method, max_steps=max_steps,
                     max_minutes=max_minutes, learning_rate=lr, value_learning_rate=value_lr, dtype=dtype,
                     save_steps=save_steps, seed=seed, merge=merge, resume=resume or None, output_dir=output_dir)
    if task_arg:
        overrides["task_args"] = parse_kv(task_arg, "--task-arg")
    cfg = cfgmod.resolve(PPORunConfig, config, overrides)
    record = run_ppo(cfg)
    if not is_main_process():
        return
    typer.echo(f"trained {record['global_step']} PPO steps in {record['train_seconds']} s "
               f"({record['seconds_per_step']} s/step); reward {record['reward_first']} -> {record['reward_last']}; "
               f"model in {cfg.output_dir}")
    for alarm in record["alarms"][-1:]:
        typer.secho(f"warning: {alarm}", fg="yellow", err=True)
