#!/usr/bin/env python3
"""A/B timing of sparse MLA prefill between versions of kernels.cu, in one process.

One chunk of 4,096 queries (64 heads, d_qk 576, d_v 512), each over 2,048 random distinct rows of
a CONTEXT-long cache (131072 by default), as gpu-check's prefill benchmark sees them at the end of
the context; with $VALID, only that many per row, the rest -1 (a row shorter than top-k).
Versions run alternately, $ROUNDS times (2 by default); every output is compared with the first
version's. Under ncu, REPS=1 ROUNDS=1 launches each version once.

usage: attn_ab.py A.cu [B.cu ...]    (needs torch and the NVRTC wheel on LD_LIBRARY_PATH)
"""

import os
import sys

import torch

from decode_ab import MLA_SMEM
from kernel_ab import Module, launch, median_ms

H, DQK, DV, TOPK, T = 64, 576, 512, 2048, 4096


def main():
    l = int(os.environ.get("CONTEXT", "131072"))
    reps = int(os.environ.get("REPS", "7"))
    torch.cuda.init()
    gen = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(T, H, DQK, device="cuda", generator=gen).to(torch.bfloat16)
    kv = torch.randn(l, DQK, device="cuda", generator=gen).to(torch.bfloat16)
    # 2,048 distinct positions per row, ascending, as the top-k writes them.
    idx = torch.argsort(torch.rand(T, l, device="cuda", generator=gen), dim=1)[:, :TOPK]
    idx = torch.sort(idx, dim=1)[0].to(torch.int32).contiguous()
    valid = int(os.environ.get("VALID", TOPK))
    idx[:, valid:] = -1
    out = torch.zeros(T, H, DV, device="cuda")
    lse = torch.zeros(T, H, device="cuda")
    scale_log2 = (192**-0.5) * 1.4426950408889634
    flop = 2.0 * T * H * (DQK + DV) * valid
    mods = [Module(path) for path in sys.argv[1:]]
    fns = [(m.path, m.function("sparse_mla_bf16", MLA_SMEM)) for m in mods]
    ref = None
    for _ in range(int(os.environ.get("ROUNDS", "2"))):
        for path, f in fns:
            # The last argument (groups of 64 heads a query) is ignored by versions before it.
            args = [q, kv, idx, out, lse, TOPK, l, 1, scale_log2, None, 0, 1]
            ms = median_ms(lambda: launch(f, (1, T), 256, MLA_SMEM, args), reps)
            if ref is None:
                ref = out.clone()
            diff = ((out - ref).norm() / ref.norm()).item()
            print(f"{path}: {ms:.2f} ms, {flop / ms / 1e9:.0f} TFLOP/s, output rel diff to the first {diff:.1e}")


if __name__ == "__main__":
    main()
