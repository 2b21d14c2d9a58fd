"""PPO's arithmetic as small pure tensor functions (tests check them against hand-computed values).

Every tensor is (rollouts, completion tokens); `mask` is 1 at real completion tokens (EOS included)
and 0 at the right padding after them. Padding only ever follows the real tokens.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Biased variance over the masked-in entries."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked-in entries; zeros at padding."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + eps) * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (0 for an empty row)."""
    return (mask.sum(dim=1).long() - 1).clamp(min=0)


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards, per-token KL estimate): every completion token pays -kl_coef·(log π − log π_ref),
    and the rule-based score of the whole completion arrives at its last real token."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation, backwards over each completion:
    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γ·λ·A_{t+1},  with V = 0 after the last real token
    (the episode ends there); returns = A + V are the value targets."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    steps = rewards.size(1)
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, −min(ρ·A, clip(ρ, 1±ε)·A) averaged over tokens, with the clip fraction
    (tokens where the clipped term was the one used) and the approximate KL to the rollout policy."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
             "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(½·max((V−R)², (V_clipped−R)²) over tokens, fraction of tokens where the clipped error was larger);
    V_clipped keeps the new value within ±clip of the rollout's."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    return loss, masked_mean((err_clipped > err).float(), mask).detach()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R): 1 is a perfect critic, 0 no better than a constant, < 0 worse; nan when
    the returns do not vary."""
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)
