"""A `trl.SFTTrainer` subclass that computes TRL's SFT loss with less work on CPUs.

Every SFT row starts with the same tokens: the format's instruction (the system message) and the chat
template's header, about a third of an arithmetic row for SmolLM2. Stock TRL runs each row in full,
pads every row to the longest of the micro-batch, and on devices without Triton its fused LM head
projects every position (prompt and padding included) onto the vocabulary. `compute_loss` here:

* runs the longest token prefix that every row of the micro-batch shares once (batch 1) and hands its
  KV cache to every row; autograd sums the gradients of the copies back into the one prefix pass, so
  gradients are exact (as `fast_grpo.shared_prefix_hidden` does for a GRPO group's prompt). Prefix
  positions that carry labels (`loss="full"`) predict the same token in every row: they are scored
  once and counted once per row;
* runs the rest of the rows on that cache in length buckets (rows sorted by length, cut where the
  padding a bucket would compute costs more than another backbone call), each trimmed to its own
  longest row: columns past it (`pad_to_multiple_of`'s included) are never computed, and the padding
  left inside buckets is what the cost model judged cheaper than another call (on the arithmetic
  workload at batch 16, 6% of the tokens run);
* projects only positions with a label through the LM head, with TRL's own chunked kernel
  (`trl.kernels.ChunkedLogProbFunction`, which TRL's fused head calls), so log-probs, entropy and top-1
  flags come from the same code as stock.

Loss normalisation (per-token mean over the micro-batch, or `num_items_in_batch` under gradient
accumulation, times the world size with `average_tokens_across_devices`) and the metrics logged
(entropy, mean_token_accuracy, num_tokens) are TRL 1.16's compute_loss's. Simplified: the bucket cost
model counts tokens only (attention's quadratic term and matmul efficiency are left out), and the
prefix is found per micro-batch (rows that share a longer prefix among themselves do not share more).
Anything the fast path does not cover (see `_blocker`) runs TRL's own compute_loss.
`tests/test_sft_fast.py` checks loss, metrics and gradients against stock TRL on the same batches.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from trl import SFTTrainer

from mathrl.engine.models import unwrap_causal_lm
from mathrl.train.fast_grpo import _MULTIMODAL, _through_wrapper, plain_model_blocker, trl_mismatch

MIN_PREFIX = 16  # shorter shared prefixes are not worth a backbone call of their own
# Padded tokens one more backbone call is worth, on CPU: a call's fixed cost (~30 layers of small ops)
# is a few ms, one token's forward+backward at fp32 on 2 cores tens of ms. On CUDA a call costs far
# more than computing padding, so there the rows stay in one bucket (None).
CPU_CALL_TOKENS = 32
_OVERRIDDEN = {"compute_loss": ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]}


def fast_path_supported() -> str | None:
    """None when the installed TRL is the tested one with the compute_loss this trainer replaces."""
    reason = trl_mismatch(SFTTrainer, _OVERRIDDEN)
    if reason is None:
        try:
            from trl.kernels import ChunkedLogProbFunction  # noqa: F401
            from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE  # noqa: F401
        except ImportError as e:
            reason = f"TRL's chunked log-prob kernel is missing ({e})"
    return reason


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """Length of the longest prefix that is real, identical tokens in every row and whose labels agree too
    (so its positions predict the same thing in every row); at most the shortest row minus one, so every
    row keeps a token to run on top of the shared cache."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    same[1:] &= (labels[:, 1:] == labels[:1, 1:]).all(0)
    length = int(same.long().cumprod(0).sum())
    return min(length, int(attention_mask.sum(1).min()) - 1)


def length_buckets(lengths: list[int], call_tokens: int | None) -> list[list[int]]:
    """Row indices grouped into buckets of similar length: rows sorted longest first, cut into runs that
    minimise (rows x the run's longest row, summed) + call_tokens per run (exact dynamic programme).
    call_tokens None: one bucket."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if call_tokens is None:
        return [order]
    n = len(order)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows order[i:j] form the last run; order[i] is its longest
            cost = best[i] + (j - i) * lengths[order[i]] + call_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], n
    while j:
        runs.append(order[cut[j]:j])
        j = cut[j]
    return runs[::-1]


def plan_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, min_prefix: int,
               call_tokens: int | None) -> tuple[int, list[list[int]], int]:
    """(length of the prefix run once, 0 for none; buckets of row indices; tokens the backbone will run)."""
    lengths = attention_mask.sum(1).tolist()
    prefix = shared_prefix_length(input_ids, attention_mask, labels) if len(lengths) > 1 else 0
    prefix = prefix if prefix >= min_prefix else 0
    buckets = length_buckets([n - prefix for n in lengths], call_tokens)
    return prefix, buckets, prefix + sum(len(b) * (max(lengths[i] for i in b) - prefix) for b in buckets)


def _score(lm: Any, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TRL's fused-head kernel on the given positions: (log p(target), entropy, target is the argmax)."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    head = lm.get_output_embeddings()
    logps, entropy, _, _, is_top1 = ChunkedLogProbFunction.apply(
        hidden.to(head.weight.device), head.weight, head.bias, targets.to(head.weight.device), 1.0,
        _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs", "entropy", "is_top1"))
    return logps, entropy, is_top1


def _cache_for(lm: Any, prefix_kv: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> Any:
    """A fresh cache holding the one prefix pass's keys/values for `rows` rows (expand: the copies'
    gradients sum back into the prefix pass)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.config)
    for layer, (k, v) in zip(cache.layers, prefix_kv):
        layer.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
    return cache


def prefix_shared_scores(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                         min_prefix: int, call_tokens: int | None) -> tuple[Any, ...]:
    """(log-probs, entropies, top-1 flags, weights, stats) of every labelled next-token prediction of a
    right-padded batch that has at least one; a weight counts how many rows that prediction stands for.
    stats: (shared prefix length, buckets, tokens through the backbone)."""
    from transformers import DynamicCache

    backbone = lm.base_model
    rows = input_ids.size(0)
    lengths = attention_mask.sum(1).tolist()
    prefix, buckets, run_tokens = plan_batch(input_ids, attention_mask, labels, min_prefix, call_tokens)
    hidden, targets, weights = [], [], []
    prefix_kv, last = None, None
    if prefix:
        cache = DynamicCache(config=lm.config)
        h = backbone(input_ids=input_ids[:1, :prefix], attention_mask=attention_mask[:1, :prefix], cache=cache,
                     use_cache=True).last_hidden_state[0]
        shared = labels[0, 1:prefix]  # what positions 0..prefix-2 predict, the same in every row
        keep = shared != -100
        hidden.append(h[:-1][keep])
        targets.append(shared[keep])
        weights.append(torch.full((int(keep.sum()),), rows, dtype=torch.long, device=labels.device))
        prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]
        last = h[-1:]  # predicts column `prefix`, which differs between rows
    start = max(prefix, 1)  # first column predicted by a row's own positions
    for bucket in buckets:
        idx = torch.tensor(bucket, device=input_ids.device)
        end = max(lengths[i] for i in bucket)  # trim the bucket to its longest real row
        cache = _cache_for(lm, prefix_kv, len(bucket)) if prefix_kv else None
        h = backbone(input_ids=input_ids[idx, prefix:end], attention_mask=attention_mask[idx, :end], cache=cache,
                     use_cache=cache is not None).last_hidden_state
        pred = torch.cat([last.expand(len(bucket), 1, -1), h[:, :-1]], 1) if prefix else h[:, :-1]
        target = labels[idx, start:end]
        keep = target != -100
        hidden.append(pred[keep])
        targets.append(target[keep])
        weights.append(torch.ones(int(keep.sum()), dtype=torch.long, device=labels.device))
    logps, entropy, is_top1 = _score(lm, torch.cat(hidden), torch.cat(targets))
    return logps, entropy, is_top1, torch.cat(weights).to(logps.device), (prefix, len(buckets), run_tokens)


class FastSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose compute_loss runs a batch's shared prompt prefix once and skips padding.

    `min_prefix`: shortest shared prefix worth its own pass; `call_tokens`: padded tokens one more
    backbone call is worth (None: one bucket; default CPU_CALL_TOKENS on CPU, None elsewhere).
    `fast_stats` counts micro-batches by path, fallback reasons and tokens run (this process's only)."""

    def __init__(self, *args: Any, min_prefix: int = MIN_PREFIX, call_tokens: int | None | str = "auto",
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.min_prefix = min_prefix
        self.call_tokens = (CPU_CALL_TOKENS if self.args.device.type == "cpu" else None) if call_tokens == "auto" \
            else call_tokens
        self.fast_stats: dict[str, Any] = {"fast": 0, "fallback": 0, "reasons": Counter(), "shared_prefix_tokens": 0,
                                           "buckets": 0, "tokens_run": 0, "tokens_padded_batch": 0}

    def _blocker(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> str | None:
        """Why this micro-batch must go through TRL's own compute_loss (None: the fast path computes it)."""
        from transformers import DynamicCache

        if return_outputs:
            return "outputs requested"
        if self.compute_loss_func is not None or self.label_smoother is not None or self.args.loss_type != "nll":
            return "custom loss"
        if self.aux_loss_enabled:
            return "MoE auxiliary loss"
        pc = self.accelerator.parallelism_config
        if pc is not None and (pc.cp_enabled or pc.sp_enabled or pc.tp_enabled):
            return "context, sequence or tensor parallelism"
        if "attention_mask" not in inputs or "position_ids" in inputs or "shift_labels" in inputs:
            return "padding-free or pre-positioned inputs"
        if any(inputs.get(k) is not None for k in _MULTIMODAL):
            return "multimodal inputs"
        lm = unwrap_causal_lm(model)
        if type(lm.get_output_embeddings()) is not torch.nn.Linear:  # TRL itself refuses a LoRA adapter there
            return "LM head is not a plain nn.Linear (PEFT wrapper, trainable tokens, custom head)"
        if any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=lm.config).layers):
            return "sliding-window attention"
        mask, labels = inputs["attention_mask"], inputs["labels"]
        if bool((mask[:, 1:] > mask[:, :-1]).any()) or bool(((mask == 0) & (labels != -100)).any()):
            return "rows are not right-padded"
        if not bool((labels[:, 1:] != -100).any()):  # TRL drops such rows; its pass keeps a zero-gradient graph
            return "no labelled position"
        return plain_model_blocker(self, model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001 - TRL's
        reason = self._blocker(model, inputs, return_outputs)
        if reason is not None:
            self.fast_stats["fallback"] += 1
            self.fast_stats["reasons"][reason] += 1
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

        def run() -> tuple[Any, ...]:
            with self.accelerator.autocast():  # accelerate puts autocast around the model's forward, bypassed here
                return prefix_shared_scores(unwrap_causal_lm(model), inputs["input_ids"], inputs["attention_mask"],
                                            inputs["labels"], self.min_prefix, self.call_tokens)

        scores = _through_wrapper(model, run)
        logps, entropy, is_top1, weights, (prefix, buckets, run_tokens) = scores
        stats = self.fast_stats
        stats["fast"] += 1
        stats["shared_prefix_tokens"] += prefix
        stats["buckets"] += buckets
        stats["tokens_run"] += run_tokens
        stats["tokens_padded_batch"] += inputs["input_ids"].numel()
        # From here on, TRL 1.16's SFTTrainer.compute_loss (loss_type "nll"), with weighted counts
        num_tokens = weights.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -(logps * weights).sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._log_metrics(inputs, weights, (entropy.detach() * weights).sum(), (is_top1 * weights).sum())
        return loss

    def _log_metrics(self, inputs: dict[str, Any], weights: torch.Tensor, entropy_sum: torch.Tensor,
                     num_correct: torch.Tensor) -> None:
        """TRL's metrics: entropy and token accuracy over labelled positions, running count of real tokens."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(weights.sum()).sum()
        entropy_sum, num_correct = gather(entropy_sum).sum(), gather(num_correct).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def fast_path_record(self) -> dict[str, Any]:
        """What the run record says about the path taken (this process's micro-batches)."""
        s = self.fast_stats
        return {"trainer": type(self).__name__, "fast_batches": s["fast"], "fallback_batches": s["fallback"],
                "fallback_reasons": dict(s["reasons"]),
                "mean_shared_prefix": round(s["shared_prefix_tokens"] / s["fast"], 1) if s["fast"] else None,
                "backbone_tokens_vs_stock": round(s["tokens_run"] / s["tokens_padded_batch"], 3) if s["fast"] else None}
