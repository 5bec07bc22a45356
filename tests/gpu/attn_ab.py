#!/usr/bin/env python3
"""A/B timing of sparse MLA prefill between versions of kernels.cu, in one process.

One chunk of 4,096 queries ($HEADS heads, 64 by default, a multiple of 64: the kernel runs
HEADS / 64 blocks a query, as the model does for DeepSeek-V3.2's 128; d_qk 576, d_v 512), each
over 2,048 random distinct rows of a CONTEXT-long cache (131072 by default), as gpu-check's
prefill benchmark sees them at the end of the context; with $VALID, only that many per row, the
rest -1 (a row shorter than top-k). Versions run alternately, $ROUNDS times (2 by default); every
output is compared with the first version's. Each version gets the arguments its kernel takes
(`groups` since 2026-12-02, `after_indices`, 0 here, since 2026-12-02). Under ncu, REPS=1
ROUNDS=1 launches each version once.

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
    heads = int(os.environ.get("HEADS", str(H)))
    if heads % H:
        sys.exit(f"HEADS must be a multiple of {H}, not {heads}")
    g = heads // H
    torch.cuda.init()
    gen = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(T, heads, DQK, device="cuda", generator=gen).to(torch.bfloat16)
    kv = torch.randn(l, DQK, device="cuda", generator=gen).to(torch.bfloat16)
    # 2,048 distinct positions per row, ascending, as the top-k writes them.
    idx = torch.argsort(torch.rand(T, l, device="cuda", generator=gen), dim=1)[:, :TOPK]
    idx = torch.sort(idx, dim=1)[0].to(torch.int32).contiguous()
    valid = int(os.environ.get("VALID", TOPK))
    idx[:, valid:] = -1
    out = torch.zeros(T, heads, DV, device="cuda")
    lse = torch.zeros(T, heads, device="cuda")
    scale_log2 = (192**-0.5) * 1.4426950408889634
    flop = 2.0 * T * heads * (DQK + DV) * valid
    mods = [Module(path) for path in sys.argv[1:]]
    fns = []
    for m in mods:
        src = open(m.path).read()
        at = src.index("sparse_mla_bf16(")
        sig = src[at : src.index(")", at)]
        # The arguments after page_size that this version's kernel takes: without them, the launch
        # would read past its parameter list.
        extra = ([g] if "int groups" in sig else []) + ([0] if "int after_indices" in sig else [])
        if g > 1 and "int groups" not in sig:
            sys.exit(f"{m.path}: its sparse_mla_bf16 takes no `groups`, so HEADS must be {H}")
        fns.append((m.path, m.function("sparse_mla_bf16", MLA_SMEM), extra))
    ref = None
    for _ in range(int(os.environ.get("ROUNDS", "2"))):
        for path, f, extra in fns:
            args = [q, kv, idx, out, lse, TOPK, l, 1, scale_log2, None, 0] + extra
            ms = median_ms(lambda: launch(f, (1, T * g), 256, MLA_SMEM, args), reps)
            if ref is None:
                ref = out.clone()
            diff = ((out - ref).norm() / ref.norm()).item()
            print(f"{path}: {ms:.2f} ms, {flop / ms / 1e9:.0f} TFLOP/s, output rel diff to the first {diff:.1e}")


if __name__ == "__main__":
    main()
