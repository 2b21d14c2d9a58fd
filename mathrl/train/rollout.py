"""PPO rollouts: sample completions, score them with the reward registry, and attach the old log-probs,
values, reference log-probs, GAE advantages and returns that the PPO update needs."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch

from mathrl.train import ppo_core


@dataclass
class Rollout:
    """One batch of rollouts. `input_ids`/`attention_mask` are the left-padded prompt followed by the
    right-padded completion; every other tensor covers the completion positions only."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor  # float, 1 at real completion tokens
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def size(self) -> int:
        return self.input_ids.size(0)

    def select(self, rows: torch.Tensor) -> "Rollout":
        """These rows, with padding columns that no selected row uses cut away (left of the prompts,
        right of the completions)."""
        rows = rows.to(self.input_ids.device)
        n_comp = self.mask.size(1)
        keep_comp = max(1, int(self.mask[rows].sum(1).max()))
        prompt_mask = self.attention_mask[rows, :-n_comp]
        used = prompt_mask.any(0).nonzero()
        first = int(used[0]) if used.numel() else prompt_mask.size(1) - 1
        cols = slice(first, self.input_ids.size(1) - n_comp + keep_comp)
        return Rollout(self.input_ids[rows, cols], self.attention_mask[rows, cols],
                       *(getattr(self, f.name)[rows, :keep_comp] for f in fields(self)[2:]))


def prompt_indices(pool: int, step: int, per_step: int, rank: int, world: int, seed: int) -> list[int]:
    """Training prompts for this step and process: an epoch-wise shuffled walk through the pool, each
    process taking its own slice, so ranks see disjoint prompts and a resumed run the same ones."""
    out = []
    for j in range(per_step):
        g = (step * world + rank) * per_step + j
        epoch, pos = divmod(g, pool)
        order = list(range(pool))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        out.append(order[pos])
    return out


def policy_token_stats(policy: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                       temperature: float, entropy_grad: bool = False, value_head: Any = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(log-probs, entropies, values or None) at the completion positions; only those positions go
    through the LM head (the shared-prompt pass of `FastGRPOTrainer`)."""
    from mathrl.engine.models import unwrap_causal_lm
    from mathrl.train.fast_grpo import shared_prefix_hidden, token_logps

    n = completion_mask.size(1)
    hidden = shared_prefix_hidden(policy, input_ids, attention_mask, n)
    mask = completion_mask.bool()
    logps, ents = token_logps(unwrap_causal_lm(policy).get_output_embeddings(), hidden, input_ids[:, -n:], mask, temperature,
                              entropy=True, entropy_grad=entropy_grad)
    values = None
    if value_head is not None:
        # the head stays fp32 when the policy runs in bf16: its input is cast, not its weights
        values = value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float() * completion_mask
    return logps, ents, values


def _pad(prompt_ids: list[list[int]], completions: list[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width, length = max(map(len, prompt_ids)), max(map(len, completions))
    ids, attn, cmask = [], [], []
    for p, c in zip(prompt_ids, completions):
        ids.append([pad_id] * (width - len(p)) + p + c + [pad_id] * (length - len(c)))
        attn.append([0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (length - len(c)))
        cmask.append([1.0] * len(c) + [0.0] * (length - len(c)))
    return torch.tensor(ids), torch.tensor(attn), torch.tensor(cmask)


def _in_chunks(fn: Callable[[slice], tuple], n: int, chunk: int) -> list[torch.Tensor]:
    parts = [fn(slice(s, s + chunk)) for s in range(0, n, chunk)]
    return [torch.cat(cols) if cols[0] is not None else None for cols in zip(*parts)]


def collect_rollouts(agent: Any, ref: Any, tokenizer: Any, prompts: list[str], golds: list[str], cfg: Any,
                     settings: Any, reward_funcs: list[Callable], weights: list[float], autocast: Callable,
                     answer_types: list[str] | None = None) -> tuple[Rollout, dict[str, float], tuple[list, list, list]]:
    """(rollout batch, its statistics for the log, (prompts, completions, scores) per rollout).

    Completions come from the evaluation engine (`generation.sample_shared_prompts` with `settings`),
    on evaluation's prompt ids, and end where evaluation's do (EOS or a stop string)."""
    from mathrl.engine import decoding
    from mathrl.engine.generation import sample_shared_prompts

    policy, device = agent.policy, agent.value_head.weight.device
    reps = cfg.rollouts_per_prompt
    prompts = [p for p in prompts for _ in range(reps)]
    kinds = [k for k in (answer_types or [None] * len(golds)) for _ in range(reps)]
    golds = [g for g in golds for _ in range(reps)]
    prompt_ids = decoding.encode_prompts(tokenizer, prompts)
    eos = decoding.eos_token_ids(tokenizer, policy)
    pad_id = decoding.pad_token_id(tokenizer, eos)
    agent.eval()
    t0 = time.perf_counter()
    with torch.no_grad(), autocast():
        drawn = sample_shared_prompts(policy, tokenizer, prompt_ids, settings, cfg.segment_tokens)
    generate_time = time.perf_counter() - t0
    completions = [c.token_ids for c in drawn]
    texts = [c.text for c in drawn]
    per_reward = torch.tensor([f(prompts=prompts, completions=texts, completion_ids=completions, answer=golds,
                                 answer_type=kinds) for f in reward_funcs],
                              dtype=torch.float32)
    scores = (torch.tensor(weights, dtype=torch.float32)[:, None] * per_reward).sum(0)
    input_ids, attention_mask, mask = (t.to(device) for t in _pad(prompt_ids, completions, pad_id))

    def stats(model: Any, head: Any) -> Callable[[slice], tuple]:
        def run(rows: slice) -> tuple:
            with torch.no_grad(), autocast():
                return policy_token_stats(model, input_ids[rows], attention_mask[rows], mask[rows], cfg.temperature,
                                          value_head=head)
        return run

    chunk = max(cfg.mini_batch_size, 8)
    old_logps, _, old_values = _in_chunks(stats(policy, agent.value_head), len(prompts), chunk)
    if cfg.kl_coef == 0:
        ref_logps = old_logps
    elif ref is None:  # LoRA: the reference is the base model under the adapter
        with policy.disable_adapter():
            ref_logps = _in_chunks(stats(policy, None), len(prompts), chunk)[0]
    else:
        ref_logps = _in_chunks(stats(ref, None), len(prompts), chunk)[0]
    rewards, kl = ppo_core.token_rewards(scores.to(device), old_logps, ref_logps, mask, cfg.kl_coef)
    advantages, returns = ppo_core.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = ppo_core.whiten(advantages, mask)
    lengths = mask.sum(1)
    row: dict[str, float] = {"reward": float(scores.mean()), "reward_std": float(scores.std(unbiased=False))}
    for f, vals in zip(reward_funcs, per_reward):
        row[f"rewards/{f.__name__}/mean"] = float(vals.mean())
        row[f"rewards/{f.__name__}/std"] = float(vals.std(unbiased=False))
    explained = ppo_core.explained_variance(old_values, returns, mask)
    row.update({
        "kl": float(kl.sum(1).mean()), "non_score_reward": float((-cfg.kl_coef * kl).sum(1).mean()),
        "value_mean": float(ppo_core.masked_mean(old_values, mask)),
        "explained_variance": explained,  # nan when the returns do not vary: dropped from the log
        "completion_length": float(lengths.float().mean()),
        "completions/clipped_ratio": float(sum(1 for c in drawn if c.finish_reason == "length") / len(drawn)),
        "generate_time": generate_time,
    })
    batch = Rollout(input_ids, attention_mask, mask, old_logps, old_values, advantages, returns)
    return batch, row, (prompts, texts, scores.tolist())
