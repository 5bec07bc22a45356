#!/usr/bin/env python3
"""The dense baselines for the GPU benchmarks, measured with PyTorch on the same GPU in the same
run as `envsynth model gpu-check`:

- prefill: causal `scaled_dot_product_attention` in bf16 at the small preset's MHA shapes
  (64 heads, d_qk 192, d_v 128), every backend PyTorch offers, and the fastest kept; the same at
  DeepSeek-V3.2's 128 heads, which `gpu-check` also runs its sparse attention at;
- decode: dense absorbed-MQA attention for one query over the whole cache (64 and 128 heads,
  d_qk 576, d_v 512), eager PyTorch.

usage: dense_baseline.py OUT.json [CONTEXTS (comma-separated)]
"""

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def prefill(L, heads, reps):
    g = torch.Generator(device="cuda").manual_seed(L + heads)
    q = torch.randn(1, heads, L, 192, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, heads, L, 192, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, heads, L, 128, device="cuda", dtype=torch.bfloat16, generator=g)
    out = {}
    for name, backend in [
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ]:
        try:
            with sdpa_kernel(backend):
                out[name] = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), reps)
        except Exception as e:  # a backend that does not take these shapes
            out[name] = None
            out[name + "_error"] = str(e).splitlines()[0][:200]
    del q, k, v
    torch.cuda.empty_cache()
    return out


def dense_decode(L, heads, reps):
    g = torch.Generator(device="cuda").manual_seed(L + heads)
    q = torch.randn(heads, 576, device="cuda", dtype=torch.bfloat16, generator=g)
    kv = torch.randn(L, 576, device="cuda", dtype=torch.bfloat16, generator=g)
    scale = 192 ** -0.5

    def step():
        s = (q @ kv.T).float() * scale
        p = torch.softmax(s, dim=-1).to(torch.bfloat16)
        return p @ kv[:, :512]

    return timed(step, reps)


def main():
    path = sys.argv[1]
    contexts = [int(c) for c in (sys.argv[2] if len(sys.argv) > 2 else "8192,32768,65536,131072").split(",")]
    rows = []
    for L in contexts:
        reps = 5 if L >= 65536 else 10
        p64 = prefill(L, 64, reps)
        best = min((v, k) for k, v in p64.items() if isinstance(v, float))
        p128 = prefill(L, 128, 3 if L >= 65536 else reps)
        best128 = min((v, k) for k, v in p128.items() if isinstance(v, float))
        row = {
            "context": L,
            "prefill_64_heads_ms": p64,
            "prefill_best_ms": best[0],
            "prefill_best_backend": best[1],
            "decode_dense_torch_ms": dense_decode(L, 64, 20),
            "prefill_128_heads_ms": p128,
            "prefill_best_h128_ms": best128[0],
            "prefill_best_h128_backend": best128[1],
            "decode_dense_torch_h128_ms": dense_decode(L, 128, 20),
        }
        flop = 2 * 64 * (192 + 128) * L * L / 2  # causal: half the score matrix
        row["prefill_best_tflops"] = flop / (best[0] * 1e-3) / 1e12
        row["prefill_best_h128_tflops"] = 2 * flop / (best128[0] * 1e-3) / 1e12
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(path, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
