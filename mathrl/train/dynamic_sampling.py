"""Dynamic sampling (DAPO) for TRL's GRPOTrainer: replace groups that carry no learning signal.

A GRPO group whose completions all got the same reward has zero advantage everywhere, so it adds
nothing to the gradient (a step made only of such groups has a gradient norm of exactly 0). Within a
step, `DynamicSamplingMixin` finds those groups and replaces them with groups for other training
prompts, generated and scored, for up to `max_refills` rounds; the step then trains on the refilled
batch, which has the same number of groups and rows as before. With `oversample` > 0, replacement
candidates (that fraction of the step's groups) are drawn in the same generation call as the step's own
groups, and refill rounds run after it only for groups still missing. Measured on a 2-core AVX512-BF16
CPU (docs/evidence.md, 2026-12-03): decode cost grows about linearly with rows there (256 rows in one
call 31-35 s, 128 rows 16-19 s), so a candidate drawn with the step costs ~0.9 of a step's row and a
refilled one ~1.5 (smaller calls), but oversampling draws candidates for every group, needed or not:
at ~50% zero-spread groups, oversample 1.0 cost as much per step as two refill rounds and filled more
groups (2% vs 11% left without spread). It may pay where refill rounds are expensive (GPU round trips,
many ranks: not measured); it is off by default (the CPU demo turns it on: its validation sweep).

How it sits in TRL (1.16): the mixin overrides `_generate_and_score_completions`. It samples and
scores every candidate group first (TRL's tokenizer and reward call, the trainer's own generation),
picks the final batch, then runs TRL's `_generate_and_score_completions` once on exactly that batch,
with generation replaced by a replay of the completions already drawn and the reward call by a replay of
their rewards (each completion is graded once: Math-Verify's wall-clock timeout can make a second
grading differ under load, and the batch was chosen by the first). So everything TRL computes
(padding, masks, old/reference log-probs, advantages for every `scale_rewards`, including "batch",
whose std then spans the final batch, `num_items_in_batch`, and all logged metrics) is TRL's own code
on the batch that is trained; nothing is spliced together from separately normalised batches.
`num_iterations > 1` and `steps_per_generation` keep TRL's semantics: the refilled generation batch
is what TRL buffers and reuses.

Logging: TRL's keys (`reward`, `rewards/*`, `frac_reward_zero_std`, `completions/*`, `num_tokens`)
describe the trained batch, like the loss (with scale_rewards="batch", TRL's `frac_reward_zero_std` is
1 or 0 for the whole batch). Per generation the mixin adds `dynamic/zero_std_before` and
`dynamic/zero_std_after` (fraction of groups with zero reward spread in the batch as drawn and as
trained), `dynamic/refills` (rounds run), `dynamic/extra_prompts` (replacement prompts generated,
used or not, all ranks), and `dynamic/sampled/reward` and `dynamic/sampled/rewards/<name>/mean`: the
rewards of the batch as drawn, the estimate of the policy's reward that plain GRPO logs (the trained
batch over-represents prompts the policy sometimes solves). "As drawn" is after the pass_rate
policy's swaps (`dynamic/policy_swaps`), when that policy is on.

Simplifications:
* Replacement prompts come from a seeded permutation of the training set per (seed, step, rank),
  skipping this rank's prompts of the step and earlier candidates; ranks draw independently, so two
  ranks may occasionally pick the same prompt.
* Multi-process: each rank refills its own groups (advantages are per group; "batch" std is TRL's
  gathered one over the final batch). Rounds run in lockstep: every rank generates the same number of
  candidate groups per round (the largest need of any rank), since generation and TRL's reward gather
  may be collectives. A rank that needs fewer discards the rest: in single-process runs nothing is wasted.
* `prompt_policy="pass_rate"` keeps, per prompt, the correctness of every group this rank scored (in
  memory: not saved in checkpoints, restarts empty on resume). Before sampling, a group whose prompt
  was always or never solved is swapped for a preferred prompt, and refills draw preferred prompts
  first: seen with mixed results, then never seen, then always/never solved. One all-wrong group is
  enough to mark a prompt "never solved"; it can still be drawn when nothing better is left.
* Supported: text prompts, synchronous or model reward functions, no tools, rollout functions or
  environments, `multi_objective_aggregation="sum_then_normalize"` (a one-line error otherwise).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
from trl import GRPOTrainer

from mathrl.errors import MathrlError
from mathrl.train.fast_grpo import FastGRPOTrainer
from mathrl.train.settings import PROMPT_POLICIES

# TRL counts a group as zero-std with torch.isclose(std, 0) (atol 1e-8); the same threshold here.
ZERO_STD = 1e-8


def group_spread(rewards_per_func: torch.Tensor, weights: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per group (rows in blocks of `group_size`): True when the weighted total rewards differ, as TRL
    totals them (nansum over functions, rows every function left unscored are NaN and skipped). A
    group with no scored row counts as no spread."""
    from trl.trainer.utils import nanstd

    total = (rewards_per_func * weights.to(rewards_per_func.device)).nansum(dim=1)
    total[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    return nanstd(total.view(-1, group_size), dim=1) > ZERO_STD  # NaN (fewer than 2 scored rows) compares False


class PassRecord:
    """Per prompt: (groups' completions solved, completions seen) from the correctness reward."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def update(self, prompts: list[str], solved: list[bool]) -> None:
        for prompt, ok in zip(prompts, solved):
            c = self.counts.setdefault(prompt, [0, 0])
            c[0] += int(ok)
            c[1] += 1

    def tier(self, prompt: str) -> int:
        """0: solved sometimes; 1: never seen; 2: always or never solved (no spread expected)."""
        c = self.counts.get(prompt)
        if c is None:
            return 1
        return 0 if 0 < c[0] < c[1] else 2


def candidate_order(prompts: list[str], seed: int, step: int, rank: int, exclude: set[str],
                    record: PassRecord | None = None) -> list[int]:
    """Indices into `prompts` to draw replacements from, in order: a permutation seeded by (seed, step,
    rank), without excluded prompts; with a record, stably sorted by its tiers."""
    order = list(range(len(prompts)))
    random.Random(f"mathrl-dynamic-sampling:{seed}:{step}:{rank}").shuffle(order)  # str seeds: sha512, stable
    order = [i for i in order if prompts[i] not in exclude]
    if record is not None:
        order.sort(key=lambda i: record.tier(prompts[i]))
    return order


@dataclass
class Sampled:
    """Rows of whole groups with their tokenized prompts, completions and this rank's rewards."""

    rows: list[dict[str, Any]]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    logprobs: list | None
    rewards: torch.Tensor  # (rows, reward functions)
    extra: dict[str, list]  # what reward functions logged with log_extra: one value per row
    metrics: dict[str, list]  # what they logged with log_metric: scalars of this draw

    def split(self, n: int) -> tuple["Sampled", "Sampled"]:
        """The first n rows and the rest (per-row extras follow their rows; the draw's metrics go with the first)."""
        def part(sl: slice, metrics: dict[str, list]) -> "Sampled":
            return Sampled(self.rows[sl], self.prompt_ids[sl], self.completion_ids[sl],
                           None if self.logprobs is None else self.logprobs[sl], self.rewards[sl].clone(),
                           {k: v[sl] for k, v in self.extra.items()}, metrics)

        return part(slice(0, n), self.metrics), part(slice(n, None), {})

    def replace_group(self, g: int, other: "Sampled", h: int, size: int) -> None:
        """Group g of self becomes group h of other."""
        dst, src = slice(g * size, (g + 1) * size), slice(h * size, (h + 1) * size)
        self.rows[dst], self.prompt_ids[dst], self.completion_ids[dst] = other.rows[src], other.prompt_ids[src], other.completion_ids[src]
        if self.logprobs is not None:
            self.logprobs[dst] = other.logprobs[src]
        self.rewards[dst] = other.rewards[src]
        for column in list(self.extra):  # a column the other draw did not log cannot describe the new rows
            if column in other.extra:
                self.extra[column][dst] = other.extra[column][src]
            else:
                del self.extra[column]


class DynamicSamplingMixin:
    """Put before a GRPOTrainer class in the bases: `class T(DynamicSamplingMixin, FastGRPOTrainer)`."""

    def __init__(self, *args: Any, max_refills: int = 2, prompt_policy: str = "uniform", oversample: float = 0.0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if max_refills < 0 or oversample < 0 or prompt_policy not in PROMPT_POLICIES:
            raise MathrlError(f"dynamic sampling: max_refills and oversample must be >= 0 and prompt_policy one of "
                              f"{PROMPT_POLICIES}")
        unsupported = [name for name, on in (
            ("tools", self.tools), ("a rollout function", self.rollout_func),
            ("environments", self.environment_factories),
            ("multi_objective_aggregation other than sum_then_normalize", self.multi_objective_aggregation != "sum_then_normalize"),
            ("an iterable dataset", not hasattr(self.train_dataset, "__getitem__"))) if on]
        if unsupported:
            raise MathrlError(f"dynamic sampling does not support {', '.join(unsupported)}; pass --no-dynamic-sampling")
        self.max_refills, self.prompt_policy, self.oversample = max_refills, prompt_policy, oversample
        self._dataset_prompts = list(self.train_dataset["prompt"])
        if any(not isinstance(p, str) for p in self._dataset_prompts[:1]):
            raise MathrlError("dynamic sampling needs text prompts (conversational ones are not supported)")
        self.pass_record = PassRecord() if prompt_policy == "pass_rate" else None
        self._correct_col = next((i for i, n in enumerate(self.reward_func_names) if n.startswith("correctness")), None)
        if self.pass_record is not None and self._correct_col is None:
            raise MathrlError("prompt_policy pass_rate needs a correctness reward in --rewards")
        self._replay: tuple[list, list, list | None] | None = None
        self._replay_scores: tuple[torch.Tensor, dict, dict] | None = None
        self.dynamic_totals = {"generations": 0, "groups": 0, "zero_before": 0, "zero_after": 0, "extra_prompts": 0,
                               "policy_swaps": 0}

    # -- TRL hooks ------------------------------------------------------------------------------------

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):  # noqa: ANN001
        if self._replay is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        want, completion_ids, logprobs = self._replay
        self._replay = None
        if [list(p) for p in prompt_ids] != want:  # TRL tokenized the final rows differently: never train on a mismatch
            raise RuntimeError("dynamic sampling: replayed completions do not belong to the prompts TRL tokenized")
        return completion_ids, logprobs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # noqa: ANN001
        """TRL's pass on the final batch reuses the rewards `_sample` computed: every completion is graded
        once (a second grading costs time, and Math-Verify's wall-clock timeout under load could give a
        verdict other than the one that chose the batch)."""
        if self._replay_scores is None:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards, extra, metrics = self._replay_scores
        self._replay_scores = None
        if rewards.size(0) != len(prompts) * self.accelerator.num_processes:
            raise RuntimeError("dynamic sampling: replayed rewards do not belong to the batch TRL scores")
        for store, logged in ((self._pending_extra_logs, extra), (self._pending_metrics, metrics)):
            for key, values in logged.items():
                store[key].extend(values)
        return rewards.clone()

    def _generate_and_score_completions(self, inputs):  # noqa: ANN001
        if not self.model.training:  # evaluation batches are measured as drawn
            return super()._generate_and_score_completions(inputs)
        size = self.num_generations
        rows = list(inputs)
        if len(rows) % size or any(rows[i]["prompt"] != rows[i - i % size]["prompt"] for i in range(len(rows))):
            raise MathrlError("dynamic sampling needs this rank's batch in whole groups of num_generations rows")
        swaps = self._apply_policy(rows) if self.pass_record is not None else 0
        used = {r["prompt"] for r in rows}
        picked = self._candidates(math.ceil(self.oversample * (len(rows) // size)), used) if self.oversample else []
        both = self._sample(rows + [dict(self.train_dataset[i]) for i in picked for _ in range(size)])
        batch, cand = both.split(len(rows))
        spread = group_spread(batch.rewards, self.reward_weights, size)
        before, drawn_rewards, drawn_metrics = spread.clone(), batch.rewards.clone(), batch.metrics
        if picked:
            self._fill(batch, spread, cand)
        rounds, extra = 0, len(picked)
        while rounds < self.max_refills:
            # every rank generates as many groups this round (see module docstring)
            picked = self._candidates(int((~spread).sum()), used)
            if not picked:
                break
            self._refilling = True  # step timing: this round's sampling is `timing/refill`
            try:
                cand = self._sample([dict(self.train_dataset[i]) for i in picked for _ in range(size)])
            finally:
                self._refilling = False
            self._fill(batch, spread, cand)
            rounds, extra = rounds + 1, extra + len(picked)
        self._replay = (batch.prompt_ids, batch.completion_ids, batch.logprobs)
        # all ranks' rewards in rank order, as TRL's reward call returns them (every rank has as many rows)
        self._replay_scores = (self.accelerator.gather(batch.rewards), batch.extra, drawn_metrics)
        try:
            out = super()._generate_and_score_completions(batch.rows)
        finally:
            self._replay = self._replay_scores = None
        self._log_dynamic(before, spread, rounds, extra, swaps, drawn_rewards)
        return out

    # -- pieces ---------------------------------------------------------------------------------------

    def _sample(self, rows: list[dict[str, Any]]) -> Sampled:
        """Generate and score whole groups with the trainer's own generation and TRL's reward call."""
        prompts = [r["prompt"] for r in rows]
        prompt_ids, images, multimodal = self._tokenize_prompts(prompts)
        completion_ids, logprobs = self._generate_single_turn(prompt_ids, images, multimodal, self.num_generations)
        completions = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        # TRL's rewards may call log_extra/log_metric: what this draw logs is kept with it and handed to TRL's
        # pass on the final batch (per-row columns follow their rows; metrics are the first draw's)
        stores = (self._pending_extra_logs, self._pending_metrics)
        pending = [{k: list(v) for k, v in store.items()} for store in stores]
        for store in stores:
            store.clear()
        gathered = self._calculate_rewards(rows, prompts, completions, completion_ids)  # all ranks, in rank order
        extra = {k: list(v) for k, v in self._pending_extra_logs.items() if len(v) == len(rows)}
        metrics = {k: list(v) for k, v in self._pending_metrics.items()}
        for store, saved in zip(stores, pending):
            store.clear()
            store.update(saved)
        start = self.accelerator.process_index * len(rows)
        rewards = gathered[start : start + len(rows)].clone()
        if self.pass_record is not None:
            self.pass_record.update(prompts, (rewards[:, self._correct_col] > 0.5).tolist())
        return Sampled(list(rows), [list(p) for p in prompt_ids], list(completion_ids),
                       None if logprobs is None else list(logprobs), rewards, extra, metrics)

    def _candidates(self, want: int, used: set[str]) -> list[int]:
        """Dataset indices of replacement prompts, marked used: as many on every rank (the largest `want` of any
        rank, or the smallest supply when that is shorter)."""
        order = candidate_order(self._dataset_prompts, self.args.seed, self.state.global_step,
                                self.accelerator.process_index, used, self.pass_record)
        need_max, avail_min = self._agree(want, len(order))
        picked = order[:min(need_max, avail_min)]
        used.update(self._dataset_prompts[i] for i in picked)
        return picked

    def _fill(self, batch: Sampled, spread: torch.Tensor, cand: Sampled) -> None:
        """Groups of `batch` without reward spread become `cand`'s groups with spread, in order."""
        size = self.num_generations
        zero = [g for g in range(len(spread)) if not spread[g]]
        good = [h for h, ok in enumerate(group_spread(cand.rewards, self.reward_weights, size).tolist()) if ok]
        for g, h in zip(zero, good):
            batch.replace_group(g, cand, h, size)
            spread[g] = True

    def _apply_policy(self, rows: list[dict[str, Any]]) -> int:
        """pass_rate: swap groups whose prompt was always or never solved for preferred prompts (before
        any generation, so it costs nothing). Returns the number of groups swapped."""
        size, record = self.num_generations, self.pass_record
        order = candidate_order(self._dataset_prompts, self.args.seed, self.state.global_step,
                                self.accelerator.process_index, {r["prompt"] for r in rows}, record)
        better = (i for i in order if record.tier(self._dataset_prompts[i]) < 2)
        swaps = 0
        for g in range(len(rows) // size):
            if record.tier(rows[g * size]["prompt"]) < 2:
                continue
            i = next(better, None)
            if i is None:
                break
            rows[g * size : (g + 1) * size] = [dict(self.train_dataset[i]) for _ in range(size)]
            swaps += 1
        return swaps

    def _agree(self, need: int, available: int) -> tuple[int, int]:
        """(largest need, smallest supply) over ranks; the same on every rank."""
        t = torch.tensor([[need, -available]], device=self.accelerator.device)
        both = self.accelerator.gather(t).max(dim=0).values.tolist()
        return int(both[0]), int(-both[1])

    def _log_dynamic(self, before: torch.Tensor, after: torch.Tensor, rounds: int, extra: int, swaps: int,
                     drawn: torch.Tensor) -> None:
        weights = self.reward_weights.to(drawn.device)
        total = (drawn * weights).nansum(dim=1)
        scored = ~torch.isnan(drawn).all(dim=1)
        local = torch.tensor([len(before), int((~before).sum()), int((~after).sum()), extra, swaps,
                              float(total[scored].sum()), int(scored.sum()),
                              *torch.nansum(drawn, dim=0).tolist(), *(~torch.isnan(drawn)).sum(dim=0).tolist()],
                             dtype=torch.float64, device=self.accelerator.device)
        s = self.accelerator.gather(local[None]).sum(dim=0).tolist()  # every rank: one collective per generation
        groups, zero_before, zero_after, extra_all, swaps_all, reward_sum, reward_n = s[:7]
        funcs = len(self.reward_func_names)
        m = self._metrics["train"]
        m["dynamic/zero_std_before"].append(zero_before / groups)
        m["dynamic/zero_std_after"].append(zero_after / groups)
        m["dynamic/refills"].append(float(rounds))
        m["dynamic/extra_prompts"].append(extra_all)
        if self.pass_record is not None:
            m["dynamic/policy_swaps"].append(swaps_all)
        m["dynamic/sampled/reward"].append(reward_sum / reward_n if reward_n else float("nan"))
        for i, name in enumerate(self.reward_func_names):
            n = s[7 + funcs + i]
            m[f"dynamic/sampled/rewards/{name}/mean"].append(s[7 + i] / n if n else float("nan"))
        t = self.dynamic_totals
        t["generations"] += 1
        for key, value in (("groups", groups), ("zero_before", zero_before), ("zero_after", zero_after),
                           ("extra_prompts", extra_all), ("policy_swaps", swaps_all)):
            t[key] += int(value)

    def dynamic_summary(self) -> dict[str, Any]:
        """Run-level figures for mathrl_config.json: this process's training (a resumed run counts from the
        resume), all ranks counted."""
        t = self.dynamic_totals
        groups = max(1, t["groups"])
        return {"max_refills": self.max_refills, "oversample": self.oversample, "prompt_policy": self.prompt_policy, "generations": t["generations"],
                "zero_std_before": round(t["zero_before"] / groups, 4), "zero_std_after": round(t["zero_after"] / groups, 4),
                "extra_prompts": t["extra_prompts"], "policy_swaps": t["policy_swaps"] if self.pass_record else None}



class DynamicFastGRPOTrainer(DynamicSamplingMixin, FastGRPOTrainer):
    """FastGRPOTrainer with dynamic sampling."""


class DynamicGRPOTrainer(DynamicSamplingMixin, GRPOTrainer):
    """Stock GRPOTrainer (its generation included) with dynamic sampling."""
