"""GRPO's loss, clipping, KL and advantage settings: TRL's own knobs, passed through, and two advantage
estimators TRL does not have.

Every field named in `TRL_FIELDS` is a field of TRL's `GRPOConfig` with the same name and meaning, handed to
it unchanged (tests/test_grpo_loss.py checks each against the installed TRL's dataclass); TRL's
`_compute_loss` does the maths on both mathrl's fast path and stock TRL (the fast path replaces only how
log-probs are computed and how completions are generated), and the same tests show loss and gradients equal
for every loss type x importance-sampling level. Settings TRL would accept but mathrl cannot honour are
refused here with the reason, never ignored.

Advantages (`advantage`), over a group of G completions of one prompt with total rewards r_1..r_G:
  group         TRL's: A_i = r_i - mean(r), divided by the group's std (`scale_rewards` group), the batch's
                std (batch) or nothing (none) [Shao et al. 2024, DeepSeekMath; Dr. GRPO: none].
  rloo          leave-one-out baseline: A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean(r)), then scaled
                as `scale_rewards` says [Ahmadian et al. 2024, "Back to Basics"; Kool et al. 2019].
  reinforce_pp  REINFORCE++ with a baseline: A_i = r_i - mean(r) (the group's), then whitened over the whole
                batch: (A - mean(A)) / (std(A) + 1e-4) [Hu 2025, REINFORCE++; verl's
                `reinforce_plus_plus_baseline`]. Simplified: verl whitens over tokens (a long completion
                weighs more); here over completions. Needs scale_rewards "batch", which is what it means.
Unscorable completions (every reward None) get advantage 0 and stay out of the baselines, as in TRL.

KL (`beta` > 0): TRL's k3 estimator exp(ref - logp) - (ref - logp) - 1 in the loss, times the importance
ratio when `use_bias_correction_kl`. Simplified: no k1/k2 choice and no KL-in-reward (verl's
`use_kl_in_reward`); those need a reference pass at generation time that TRL's loop does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import math

from mathrl.config import opt

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
ADVANTAGES = ("group", "rloo", "reinforce_pp")
# handed to trl.GRPOConfig under the same names (checked against the installed TRL by the tests)
TRL_FIELDS = ("beta", "loss_type", "epsilon", "epsilon_high", "delta", "importance_sampling_level", "num_iterations",
              "scale_rewards", "multi_objective_aggregation", "mask_truncated_completions", "top_entropy_quantile",
              "entropy_coef", "off_policy_mask_threshold", "use_bias_correction_kl", "sapo_temperature_pos",
              "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg",
              "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps")


@dataclass
class GRPOLossSettings:
    """GRPO's objective: loss type, clipping, importance sampling, KL, entropy, advantages (a mixin of
    GRPORunConfig; its own panel in `mathrl grpo --help`)."""

    beta: float = opt(0.0, "KL coefficient (TRL's k3 estimator in the loss); > 0 loads a reference model")
    loss_type: str = opt("dapo", "grpo | dr_grpo | dapo | bnpo | cispo | sapo | luspo | vespo (TRL's loss_type; "
                         "luspo needs importance_sampling_level sequence, cispo an explicit epsilon_high)")
    epsilon: float = opt(0.2, "policy ratio clip (lower bound 1 - epsilon)")
    epsilon_high: float | None = opt(None, "upper clip 1 + epsilon_high (DAPO's clip-higher: 0.28); cispo: the "
                                     "ratio's cap (ScaleRL: 5.0); None: epsilon")
    delta: float | None = opt(None, "two-sided clip: the ratio is also capped at delta (INTELLECT-2; > 1 + epsilon)")
    importance_sampling_level: str = opt("token", "token | sequence (GSPO: one length-averaged ratio per completion)")
    num_iterations: int = opt(1, "optimisation passes per generation batch (mu)")
    scale_rewards: str = opt("group", "group | batch | none: the std advantages are divided by")
    multi_objective_aggregation: str = opt("sum_then_normalize", "sum_then_normalize | normalize_then_sum (GDPO: "
                                           "each reward normalised in its group before the weighted sum)")
    mask_truncated_completions: bool = opt(False, "leave completions cut at max_completion_length out of the loss")
    top_entropy_quantile: float = opt(1.0, "keep in the loss only this top fraction of tokens by entropy "
                                      "(Beyond the 80/20 Rule: 0.2); 1.0: all")
    entropy_coef: float = opt(0.0, "entropy bonus weight (mean per-token entropy)")
    off_policy_mask_threshold: float | None = opt(None, "mask sequences with negative advantage whose KL to the "
                                                  "sampling policy exceeds this (DeepSeek-V3.2; e.g. 0.5)")
    use_bias_correction_kl: bool = opt(True, "multiply the KL term by the importance ratio (unbiased reverse-KL "
                                       "gradient, DeepSeek-V3.2)")
    sapo_temperature_pos: float = opt(1.0, "sapo: gate temperature for positive advantages")
    sapo_temperature_neg: float = opt(1.05, "sapo: gate temperature for non-positive advantages")
    vespo_k_pos: float = opt(2.0, "vespo: power exponent for positive advantages")
    vespo_lambda_pos: float = opt(3.0, "vespo: decay factor for positive advantages")
    vespo_k_neg: float = opt(3.0, "vespo: power exponent for negative advantages")
    vespo_lambda_neg: float = opt(2.0, "vespo: decay factor for negative advantages")
    sync_ref_model: bool = opt(False, "TR-DPO: move the reference model toward the policy every "
                               "ref_model_sync_steps (needs beta > 0)")
    ref_model_mixup_alpha: float = opt(0.6, "sync_ref_model: the policy's share of the mix")
    ref_model_sync_steps: int = opt(512, "sync_ref_model: steps between syncs")
    advantage: str = opt("group", "group (TRL's) | rloo (leave-one-out baseline) | reinforce_pp (group baseline, "
                         "batch-whitened; needs scale_rewards batch): mathrl.train.grpo_loss")

    # added after GRPO stages were cached: at their defaults TRL runs as before, so cached stages stay valid
    UNHASHED_AT_DEFAULT: ClassVar[tuple[str, ...]] = (
        "epsilon_high", "delta", "importance_sampling_level", "multi_objective_aggregation", "top_entropy_quantile",
        "entropy_coef", "off_policy_mask_threshold", "use_bias_correction_kl", "sapo_temperature_pos",
        "sapo_temperature_neg", "vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg", "sync_ref_model",
        "ref_model_mixup_alpha", "ref_model_sync_steps", "advantage")

    def trl_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TRL_FIELDS}

    def checks(self) -> list[tuple[bool, str]]:
        base = super().checks() if hasattr(super(), "checks") else []
        eps_high = self.epsilon_high
        return base + [
            (self.loss_type in LOSS_TYPES, f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}"),
            (self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.epsilon > 0, f"epsilon must be > 0, got {self.epsilon}"),
            (eps_high is None or eps_high > 0, f"epsilon_high must be > 0, got {eps_high}"),
            (self.loss_type != "cispo" or eps_high is not None,
             "loss_type cispo caps the ratio at epsilon_high, and its default (epsilon, 0.2) would cap it below 1: "
             "give --epsilon-high (ScaleRL recommends 5.0)"),
            (self.delta is None or self.delta > 1 + self.epsilon,
             f"delta (two-sided clip) must be > 1 + epsilon = {1 + self.epsilon:g}, got {self.delta}"),
            (self.importance_sampling_level in ("token", "sequence"),
             f"importance_sampling_level must be token or sequence, got {self.importance_sampling_level!r}"),
            (self.loss_type != "luspo" or self.importance_sampling_level == "sequence",
             "loss_type luspo is sequence-level: add --importance-sampling-level sequence"),
            (self.num_iterations >= 1, f"num_iterations must be at least 1, got {self.num_iterations}"),
            (self.scale_rewards in ("group", "batch", "none"),
             f"scale_rewards must be group, batch or none, got {self.scale_rewards!r}"),
            (self.multi_objective_aggregation in ("sum_then_normalize", "normalize_then_sum"),
             f"multi_objective_aggregation must be sum_then_normalize or normalize_then_sum, "
             f"got {self.multi_objective_aggregation!r}"),
            (0 <= self.top_entropy_quantile <= 1, f"top_entropy_quantile must be in [0, 1], got {self.top_entropy_quantile}"),
            (self.entropy_coef >= 0, f"entropy_coef must be >= 0, got {self.entropy_coef}"),
            (self.off_policy_mask_threshold is None or self.off_policy_mask_threshold > 0,
             f"off_policy_mask_threshold must be positive, got {self.off_policy_mask_threshold}"),
            (not self.sync_ref_model or self.beta > 0, "sync_ref_model moves a reference model that only beta > 0 loads"),
            (0 <= self.ref_model_mixup_alpha <= 1, f"ref_model_mixup_alpha must be in [0, 1], got {self.ref_model_mixup_alpha}"),
            (self.ref_model_sync_steps >= 1, f"ref_model_sync_steps must be at least 1, got {self.ref_model_sync_steps}"),
            (self.advantage in ADVANTAGES, f"advantage must be one of {', '.join(ADVANTAGES)}, got {self.advantage!r}"),
            (self.advantage != "reinforce_pp" or self.scale_rewards == "batch",
             "advantage reinforce_pp whitens over the batch: add --scale-rewards batch"),
            (self.advantage == "group" or self.multi_objective_aggregation == "sum_then_normalize",
             f"advantage {self.advantage} works on summed rewards: multi_objective_aggregation normalize_then_sum "
             "is TRL's own estimator (use advantage group)"),
        ]


def compute_advantages(rewards: Any, group: int, estimator: str, scale: str) -> Any:
    """Advantages for `rewards` (one total per completion, NaN = unscorable, groups of `group` in a row) by
    the module docstring's formulas. TRL's `group` is computed by TRL itself; this function has it too, for
    the tests that hold the others to the same conventions (nan-aware means, std + 1e-4)."""
    import torch

    grouped = rewards.view(-1, group)
    valid = ~torch.isnan(grouped)
    count = valid.sum(1, keepdim=True)
    total = torch.where(valid, grouped, torch.zeros_like(grouped)).sum(1, keepdim=True)
    mean = total / count.clamp(min=1)
    if estimator == "rloo":
        others = (count - 1).clamp(min=1)
        adv = torch.where(count > 1, (grouped - mean) * count / others, torch.zeros_like(grouped))
    else:
        adv = grouped - mean
    adv = adv.reshape(-1)
    if estimator == "reinforce_pp":  # whitened over the batch
        adv = (adv - torch.nanmean(adv)) / (_nanstd(adv) + 1e-4)
    elif scale == "batch":  # TRL's convention: the batch std of the rewards themselves
        adv = adv / (_nanstd(rewards) + 1e-4)
    elif scale == "group":
        std = torch.stack([_nanstd(g) for g in rewards.view(-1, group)]).repeat_interleave(group)
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def _nanstd(x: Any) -> Any:
    """TRL's `nanstd`: the unbiased std over the non-NaN entries (NaN below two)."""
    import torch

    n = (~torch.isnan(x)).sum()
    if n < 2:
        return torch.tensor(math.nan, dtype=x.dtype)
    mean = torch.nanmean(x)
    return torch.sqrt(torch.nansum((x - mean) ** 2) / (n - 1))


class AdvantageMixin:
    """Replaces TRL's advantages with `advantage`'s when it is not "group". Put first in the bases (before
    DynamicSamplingMixin): the rewards it reads are the last `_calculate_rewards` result of a generation,
    which under dynamic sampling is the replayed final batch's (the batch that is trained)."""

    def __init__(self, *args: Any, advantage: str = "group", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mathrl_advantage = advantage
        self._last_rewards = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001
        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = out
        return out

    def _generate_and_score_completions(self, inputs):  # noqa: ANN001
        out = super()._generate_and_score_completions(inputs)
        if self.mathrl_advantage == "group" or self._last_rewards is None:
            return out
        import torch

        per_func = self._last_rewards  # every process's rows, as TRL gathered them
        weights = self.reward_weights.to(per_func.device)
        rewards = (per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        adv = compute_advantages(rewards, self.num_generations, self.mathrl_advantage, self.scale_rewards)
        n = out["advantages"].size(0)
        start = self.accelerator.process_index * n
        out["advantages"] = adv[start:start + n].to(out["advantages"].device, out["advantages"].dtype)
        return out
