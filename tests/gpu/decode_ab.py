#!/usr/bin/env python3
"""A/B timing of the batch-1 sparse decode step between versions of kernels.cu, in one process.

The step at the end of a CONTEXT-long cache (131072 by default): indexer logits of one query,
top-k 2048 of them, sparse MLA over the chosen rows, each stage captured as a CUDA graph and
replayed, as `envsynth model gpu-check` does. Every version's chosen indices and output are
compared with the first's. A version that defines `topk_decode_fused` has its top-k launched as
that one kernel (after an indexer that builds its first histogram, if the indexer takes
`hist_k`); otherwise as topk_hist1, topk_hist2, topk_collect and topk_finish. $SPLITS (e.g.
"32,16,8") also times the last version's attention with those split counts.

usage: decode_ab.py A.cu B.cu [C.cu ...]    (needs torch and the NVRTC wheel on LD_LIBRARY_PATH)
"""

import ctypes
import os
import sys

import torch

from kernel_ab import Module, cuda, define, launch


H, DQK, DV, IH, ID, TOPK = 64, 576, 512, 64, 128, 2048
TK_CAP = 8192
MLA_SMEM = 3 * 64 * 576 * 2 + 64 * 64 * 2 + 2 * 2 * 64 * 4 + 2 * 64 * 4 + 1024
TOPK_FUSED_SMEM = 48 * 1024


def sm_count():
    return torch.cuda.get_device_properties(0).multi_processor_count


def main():
    paths = sys.argv[1:]
    l = int(os.environ.get("CONTEXT", "131072"))
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(IH, ID, device="cuda", generator=gen).to(torch.bfloat16)
    k = torch.randn(l, ID, device="cuda", generator=gen).to(torch.bfloat16)
    w = torch.randn(IH, device="cuda", generator=gen) * ID**-0.5
    qm = torch.randn(H, DQK, device="cuda", generator=gen).to(torch.bfloat16)
    kv = torch.randn(l, DQK, device="cuda", generator=gen).to(torch.bfloat16)
    lens = torch.tensor([l], dtype=torch.int32, device="cuda")
    splits = TOPK // 64
    scale_log2 = (192**-0.5) * 1.4426950408889634
    results = []
    for path in paths:
        m = Module(path)
        indexer_hist = "int hist_k" in open(path).read()
        ix_keys = define(path, "IX_KEYS", 128)
        ixd_keys = ix_keys * define(path, "IXD_TILES", 4)
        # indexer_decode_bf16's shared memory: with IXD_STAGES (the wgmma version) the query and
        # a ring of key tiles, swizzled, 1 KB for alignment and the histogram; before it, the
        # query, two padded key tiles, sums, weights and the histogram.
        stages = define(path, "IXD_STAGES", 0)
        if stages:
            ix_smem = 1024 + (64 + stages * ix_keys) * 256 + 8192
        else:
            ix_smem = (64 + 2 * ix_keys) * 136 * 2 + 4 * ix_keys * 4 + 64 * 4 + 8192
        probe = ctypes.c_void_p()
        has_fused = cuda.cuModuleGetFunction(ctypes.byref(probe), m.mod, b"topk_decode_fused") == 0
        # The finish keeps its candidates in shared memory where the source defines TK_CAP.
        tk_cap = define(path, "TK_CAP", 0)
        fused_smem = tk_cap * 8 + 2 * 4096 * 4 + 2048 * 4 if tk_cap else TOPK_FUSED_SMEM
        tk_threads = define(path, "TK_THREADS", 512)
        ix = m.function("indexer_decode_bf16", ix_smem)
        mla = m.function("sparse_mla_bf16", MLA_SMEM)
        comb = m.function("mla_combine", 0)
        logits = torch.zeros(1, l, device="cuda")
        hist = torch.zeros(2 * 2048, dtype=torch.int32, device="cuda")
        counters = torch.zeros(4, dtype=torch.int32, device="cuda")  # 2 before the 11-bit collect
        # The taken keys: a list of TOPK positions, or (since the bitmap version) a bitmap of
        # 131072 / 32 words; the larger serves both.
        taken = torch.zeros(max(TOPK, 131072 // 32), dtype=torch.int32, device="cuda")
        cand = torch.zeros(TK_CAP, dtype=torch.int64, device="cuda")
        sync = torch.zeros(2, dtype=torch.int32, device="cuda")
        idx = torch.zeros(TOPK, dtype=torch.int32, device="cuda")
        part = torch.zeros(splits * H * DV, device="cuda")
        lse = torch.zeros(splits * H, device="cuda")
        out = torch.zeros(H * DV, device="cuda")
        chunks = (l + 1023) // 1024
        if has_fused:
            fused = m.function("topk_decode_fused", fused_smem)
            grid = min(sm_count(), chunks)

            def topk():
                launch(fused, (grid, 1), tk_threads, fused_smem,
                       [logits, lens, l, TOPK, hist, counters, taken, cand, TK_CAP, idx, sync, 1,
                        int(indexer_hist)])
        else:
            fns = [m.function(n, 0) for n in ("topk_hist1", "topk_hist2", "topk_collect", "topk_finish")]

            def topk():
                launch(fns[0], (chunks, 1), 512, 0, [logits, lens, l, hist])
                launch(fns[1], (chunks, 1), 512, 0, [logits, lens, l, TOPK, hist])
                launch(fns[2], (chunks, 1), 512, 0, [logits, lens, l, TOPK, hist, counters, taken, cand, TK_CAP])
                launch(fns[3], (1, 1), 1024, 0, [logits, lens, l, TOPK, hist, counters, taken, cand, TK_CAP, idx])

        def indexer():
            extra = [hist, TOPK] if indexer_hist else []
            launch(ix, ((l + ixd_keys - 1) // ixd_keys, 1), 128, ix_smem,
                   [q, k, w, logits, lens, l, l, None, 0] + extra)

        def attention(sp=splits):
            launch(mla, (sp, 1), 256, MLA_SMEM, [qm, kv, idx, part, lse, TOPK, l, sp, scale_log2, None, 0])
            launch(comb, (H, 1), 512, 0, [part, lse, out, H, sp, DV])

        def step():
            indexer()
            topk()
            attention()

        times = {}
        # The indexer and top-k graphs only make sense together when the indexer feeds top-k's
        # histogram, so "topk" is timed as the difference.
        stages = [("step", step), ("indexer", indexer), ("ix_topk", lambda: (indexer(), topk())), ("attention", attention)]
        if os.environ.get("MLA_ALONE"):
            stages.append(("mla", lambda: launch(mla, (splits, 1), 256, MLA_SMEM,
                                                 [qm, kv, idx, part, lse, TOPK, l, splits, scale_log2, None, 0])))
        if path == paths[-1]:
            for sp in [int(x) for x in os.environ.get("SPLITS", "").split(",") if x]:
                stages.append((f"attention/{sp}", lambda sp=sp: attention(sp)))
        for name, f in stages:
            f()
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                f()
            reps = []
            for _ in range(60):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                g.replay()
                b.record()
                torch.cuda.synchronize()
                reps.append(a.elapsed_time(b) * 1000)
            times[name] = sorted(reps[10:])[len(reps[10:]) // 2]
        times["topk"] = times["ix_topk"] - times["indexer"]
        step()
        torch.cuda.synchronize()
        results.append((path, times, idx.clone(), out.clone()))
    i0, o0 = results[0][2], results[0][3]
    for path, t, i, o in results:
        same = torch.equal(torch.sort(i)[0], torch.sort(i0)[0])
        diff = ((o - o0).norm() / o0.norm()).item()
        print(
            f"{path}: step {t['step']:.1f} us = indexer {t['indexer']:.1f} + top-k {t['topk']:.1f} + "
            f"attention {t['attention']:.1f}; indices {'equal' if same else 'DIFFER'}, output rel diff {diff:.1e}"
        )
        for name, v in t.items():
            if name.startswith("attention/"):
                print(f"  {name} splits: {v:.1f} us")
            if name == "mla":
                print(f"  sparse_mla_bf16 alone: {v:.1f} us")


if __name__ == "__main__":
    main()
