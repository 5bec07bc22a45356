#!/usr/bin/env python3
"""A/B timing of the decode indexer alone between versions of kernels.cu, in one process.

One query against CONTEXT keys (131072 by default), with the top-k histogram on, as a batch-1
decode step runs it: each version's `indexer_decode_fp8` (its ring stages read from
IXD_STAGES_FP8; its tiles a block from IXD_TILES_FP8, or, where the kernel takes
`tiles_per_block`, picked as the model picks them), and the first version's
`indexer_decode_bf16` as the baseline. Each launch is captured as a CUDA graph and replayed after a 64 MB write that evicts
the keys from L2 and behind a 200 µs sleep (so the events time the GPU, not the host), the
versions interleaved; medians of 35. Every version's logits are compared with the first's.

usage: decode_indexer_ab.py A.cu B.cu [C.cu ...]   (needs torch and the NVRTC wheel on LD_LIBRARY_PATH)
"""

import os
import sys

import torch

from kernel_ab import Module, decode_fp8_smem, decode_tiles_per_block, define, e4m3_decode_operands, launch

IH, ID = 64, 128


def main():
    paths = sys.argv[1:]
    l = int(os.environ.get("CONTEXT", "131072"))
    torch.cuda.init()
    gen = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(IH, ID, device="cuda", generator=gen).to(torch.bfloat16)
    k = torch.randn(l, ID, device="cuda", generator=gen).to(torch.bfloat16)
    w = torch.randn(IH, device="cuda", generator=gen) * ID**-0.5
    q8, qsc, k8, ksc = e4m3_decode_operands(q, k, gen)
    lens = torch.tensor([l], dtype=torch.int32, device="cuda")
    hist = torch.zeros(2 * 2048, dtype=torch.int32, device="cuda")
    flush = torch.zeros(64 << 20, dtype=torch.uint8, device="cuda")
    hist_k = 2048  # rows longer than this build the histogram, as with the decode top-k
    cases = []
    for path in paths:
        m = Module(path)
        tiles, stages = define(path, "IXD_TILES_FP8", 8), define(path, "IXD_STAGES_FP8", 3)
        smem8 = decode_fp8_smem(path)
        f8 = m.function("indexer_decode_fp8", smem8)
        tpb8 = decode_tiles_per_block(path, f8, smem8, l, tiles)
        tiles = tpb8 or tiles
        out8 = torch.zeros(1, l, device="cuda")

        def run8(f8=f8, out8=out8, tiles=tiles, smem8=smem8):
            launch(f8, ((l + 64 * tiles - 1) // (64 * tiles), 1), 128, smem8,
                   [q8, qsc, k8, ksc, w, out8, lens, l, l, None, 0, hist, hist_k] + ([tiles] if tpb8 else []))

        cases.append((f"{path}: e4m3, {tiles} tiles a block, {stages} stages", run8, out8))
        if path == paths[0]:
            smemb = 1024 + (64 + 3 * 64) * 256 + 8192
            fb = m.function("indexer_decode_bf16", smemb)
            outb = torch.zeros(1, l, device="cuda")

            tpb = decode_tiles_per_block(path, fb, smemb, l, define(path, "IXD_TILES", 8))
            keys_b = 64 * (tpb or 8)

            def runb(fb=fb, outb=outb, smemb=smemb, tpb=tpb, keys_b=keys_b):
                launch(fb, ((l + keys_b - 1) // keys_b, 1), 128, smemb,
                       [q, k, w, outb, lens, l, l, None, 0, hist, hist_k] + ([tpb] if tpb else []))

            cases.append((f"{path}: bf16 (baseline)", runb, None))
    graphs = []
    for _, f, _ in cases:
        f()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            f()
        graphs.append(g)
    times = [[] for _ in cases]
    for rep in range(40):
        for g, t in zip(graphs, times):
            flush.add_(1)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(200000)
            a.record()
            g.replay()
            b.record()
            torch.cuda.synchronize()
            if rep >= 5:
                t.append(a.elapsed_time(b) * 1000)
    ref = cases[0][2]
    for (name, _, out), t in zip(cases, times):
        t.sort()
        same = "" if out is None else f", logits vs the first: {((out - ref).norm() / ref.norm()).item():.1e}"
        print(f"{name}: {t[len(t) // 2]:.2f} us (min {t[0]:.2f}){same}")


if __name__ == "__main__":
    main()
