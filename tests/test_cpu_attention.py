"""The copy-free grouped-query attention equals transformers' eager attention."""

from __future__ import annotations

import torch

from mathrl import cpu_attention


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
    from mathrl.models import load_model

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
