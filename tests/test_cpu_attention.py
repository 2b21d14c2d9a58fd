"""The copy-free grouped-query attention equals transformers' eager attention."""

from __future__ import annotations

import torch

from mathrl.engine import cpu_attention


def test_gqa_attention_matches_eager_on_padded_batches_and_generation(tiny_bundle):
    model, _, _ = tiny_bundle
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # really grouped
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # a left-padded row
    before = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
        with torch.no_grad():
            eager = model(input_ids=ids, attention_mask=mask).logits
            eager_gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        model.set_attn_implementation(cpu_attention.register())
        with torch.no_grad():
            grouped = model(input_ids=ids, attention_mask=mask).logits
            grouped_gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    finally:
        model.set_attn_implementation(before)
    torch.testing.assert_close(grouped[mask.bool()], eager[mask.bool()], rtol=1e-5, atol=1e-5)
    assert torch.equal(grouped_gen, eager_gen)


def test_gqa_attention_gradients_match_eager(tiny_model_dir):
    from mathrl.engine.models import load_model

    grads = {}
    for impl in ("eager", cpu_attention.register()):
        model, _, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
        model.set_attn_implementation(impl)
        model.train()
        ids = torch.arange(40).view(2, 20) % 300
        model(input_ids=ids, labels=ids).loss.backward()
        grads[impl] = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    a, b = grads.values()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gqa_attention_applies_softcap_as_gemma2_eager_does_and_refuses_sinks():
    """The kernel ignored `softcap` and `s_aux`: a Gemma 2 (soft-capped logits) or gpt-oss (sinks) model
    routed to it got other attention outputs with no error."""
    import pytest
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim = 2, 4, 2, 7, 8
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = heads // kv_heads, False
    q = torch.randn(batch, heads, length, dim) * 4  # large logits, so the cap changes them
    k, v = torch.randn(batch, kv_heads, length, dim) * 4, torch.randn(batch, kv_heads, length, dim)
    mask = torch.triu(torch.full((length, length), float("-inf")), 1)[None, None].expand(batch, 1, -1, -1)
    ref, _ = eager_attention_forward(module, q, k, v, mask, scaling=dim ** -0.5, softcap=2.0)
    got, _ = cpu_attention.gqa_attention_forward(module, q, k, v, mask, scaling=dim ** -0.5, softcap=2.0)
    uncapped, _ = cpu_attention.gqa_attention_forward(module, q, k, v, mask, scaling=dim ** -0.5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(uncapped, ref, atol=1e-3)  # the cap matters at these logits: the check is not vacuous
    with pytest.raises(NotImplementedError, match="attention sinks"):
        cpu_attention.gqa_attention_forward(module, q, k, v, mask, scaling=dim ** -0.5, s_aux=torch.zeros(heads))


def test_models_with_attention_sinks_are_not_routed_to_the_kernel():
    from types import SimpleNamespace

    assert cpu_attention.supports(SimpleNamespace(model_type="gpt_oss")) is not None
    assert cpu_attention.supports(SimpleNamespace(model_type="llama")) is None


def test_kernel_is_chosen_per_call_by_shape():
    """Decode steps take the copy-free kernel, prefills take fused SDPA, training passes switch at
    GRAD_SDPA_MIN_KEYS, and soft-capped models (no SDPA soft-cap) always take the copy-free kernel."""
    pick, cut = cpu_attention.kernel_for, cpu_attention.GRAD_SDPA_MIN_KEYS
    assert pick(1, 1000, grad=False, softcap=None) == "gqa"
    assert pick(64, 64, grad=False, softcap=None) == "sdpa"
    assert pick(200, 200, grad=True, softcap=None) == "gqa"
    assert pick(cut, cut, grad=True, softcap=None) == "sdpa"
    assert pick(512, 512, grad=False, softcap=30.0) == "gqa"


def _bf16_copy(model):
    import copy

    return copy.deepcopy(model).to(torch.bfloat16)


def test_bf16_kernels_stay_as_close_to_fp32_as_stock_transformers(tiny_bundle):
    """bf16 through `mathrl_cpu` (SDPA prefill, copy-free decode) against an fp32 reference: log-probs
    of a padded batch within 0.1 nats (bf16's ~3 significant digits over a few layers) and no worse than
    1.5x stock transformers' bf16 SDPA error; both kernels really ran."""
    model, _, _ = tiny_bundle
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (4, 48))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    keep = mask.bool()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)[keep]
        half = _bf16_copy(model)
        half.set_attn_implementation("sdpa")
        stock = half(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)[keep]
        half.set_attn_implementation(cpu_attention.register())
        before = cpu_attention.usage()
        ours = half(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)[keep]
        out = half.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                            output_scores=True, return_dict_in_generate=True)
        after = cpu_attention.usage()
    stock_err, our_err = (stock - ref).abs().max().item(), (ours - ref).abs().max().item()
    assert our_err <= 0.1 and our_err <= 1.5 * stock_err + 1e-3, (our_err, stock_err)
    used = {k: after.get(k, 0) - before.get(k, 0) for k in ("sdpa", "gqa")}
    assert used["sdpa"] > 0 and used["gqa"] > 0, used
    # the decode steps (copy-free kernel) against fp32 greedy continuation's scores
    with torch.no_grad():
        ref_gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True)
    same = torch.equal(out.sequences, ref_gen.sequences)
    first = (out.scores[0].float().log_softmax(-1) - ref_gen.scores[0].log_softmax(-1)).abs().max().item()
    assert first <= 0.1, first
    assert same or first > 1e-4  # tokens may differ only where bf16 really moved the scores


def test_long_training_passes_take_sdpa_with_eager_gradients(tiny_model_dir):
    """A training pass at GRAD_SDPA_MIN_KEYS tokens goes through SDPA (fp32 here, so exact) and its
    gradients equal eager attention's."""
    from mathrl.engine.models import load_model

    length = cpu_attention.GRAD_SDPA_MIN_KEYS
    grads, used = {}, {}
    for impl in ("eager", cpu_attention.register()):
        model, _, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
        model.set_attn_implementation(impl)
        model.train()
        ids = torch.arange(length).view(1, length) % 300
        before = cpu_attention.usage()
        model(input_ids=ids, labels=ids).loss.backward()
        used[impl] = cpu_attention.usage().get("sdpa", 0) - before.get("sdpa", 0)
        grads[impl] = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    a, b = grads.values()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert used[cpu_attention.NAME] == model.config.num_hidden_layers
