"""Where does HF generation time go on a GPU? (docs/benchmarks.md "GPU", "Where the time goes")

Prints the latency of an empty kernel launch, the wall time and the GPU time (with the kernel count) of
one batch-64 decode step of the embedded SmolLM2-135M in bf16, plain `model.generate` and mathrl's
HFGenerator on 64 GSM8K test prompts. Needs $MATHRL_DATA_DIR (or the hub) for GSM8K.

    python scripts/gpu_diag.py        # DIAG_SMALL=1: 4 prompts, 8 tokens (a smoke test, also on CPU)
"""
import os
import time

import torch

DEV = "cuda" if torch.cuda.is_available() else "cpu"
N, NEW = (4, 8) if os.environ.get("DIAG_SMALL") else (64, 128)
sync = torch.cuda.synchronize if DEV == "cuda" else (lambda: None)

from mathrl.prompts import formats
from mathrl.engine.generation import HFGenerator, SamplingParams
from mathrl.engine.models import load_model
from mathrl.tasks import get_task


def timed(fn, n=1):
    sync()
    s = time.perf_counter()
    for _ in range(n):
        r = fn()
    sync()
    return (time.perf_counter() - s) / n, r


x = torch.zeros(16, device=DEV)
timed(lambda: x.add_(1), 100)
lat, _ = timed(lambda: x.add_(1), 5000)
print(f"DIAG launch: {lat * 1e6:.1f} us per tiny kernel (x.add_(1), 5000 back to back)", flush=True)
model, tok, info = load_model("smollm2-135m", "bf16")
proto = formats.Protocol(format="gsm8k", chat_template=True)
prompts = [formats.build_prompt(s.question, proto, tok) for s in get_task("gsm8k").load("test")[:N]]
enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(DEV)
with torch.no_grad():
    out = model(**enc, use_cache=True)
    cache, nxt, mask = out.cache, out.logits[:, -1:].argmax(-1), enc.attention_mask

    def step():
        global nxt, mask
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        o = model(input_ids=nxt, attention_mask=mask, cache=cache, use_cache=True)
        nxt = o.logits[:, -1:].argmax(-1)

    timed(step, 3)
    per_step, _ = timed(step, 30)
    print(f"DIAG decode step, batch 64, plain forward loop: {per_step * 1e3:.1f} ms", flush=True)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        step()
        sync()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in kernels)
    print(f"DIAG one decode step: {len(kernels)} GPU kernels, {gpu_us / 1e3:.2f} ms of GPU time", flush=True)
    for n_new in (NEW,):
        t, g = timed(lambda: model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False))
        print(f"DIAG plain model.generate, batch 64, {n_new} tokens: {t:.2f} s = {t / n_new * 1e3:.1f} ms/step, "
              f"{N * n_new / t:.0f} tokens/s", flush=True)
for seg in (32, 128):
    gen = HFGenerator(model, tok, batch_size=N, progress=False, segment_tokens=seg)
    t, res = timed(lambda: gen.generate(prompts, SamplingParams(max_new_tokens=2 * NEW, stop=formats.default_stop(proto))))
    ntok = sum(c[0].num_tokens for c in res)
    print(f"DIAG mathrl HFGenerator, batch 64, segment {seg}: {t:.2f} s, {ntok} tokens, {ntok / t:.0f} tokens/s", flush=True)
