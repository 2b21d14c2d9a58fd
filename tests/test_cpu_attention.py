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
