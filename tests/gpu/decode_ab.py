#!/usr/bin/env python3
"""A/B timing of the batch-1 sparse decode step between versions of kernels.cu, in one process.

The step at the end of a CONTEXT-long cache (131072 by default): indexer logits of one query,
top-k 2048 of them, sparse MLA over the chosen rows for $HEADS query heads (64 by default, in
groups of 64). The indexer is the bf16 one, or with FP8=1 the e4m3 one (`indexer_decode_fp8`,
as `gpu-check`'s headline step runs it) on random e4m3 query and keys with per-head and per-key
scales. Each stage is captured as a CUDA graph and replayed behind a 200 µs `hold`, as
`envsynth model gpu-check` does, so the figures are GPU time. The cache stays in L2 between
replays unless EVICT=1, which writes 64 MB before every replay, so the step reads its keys and
rows from HBM, as in `gpu-check`, where each step follows a dense one. "dense" is the same attention over all CONTEXT rows, split as the model splits
it (min(multiprocessors / groups, CONTEXT / 64)); "floor" is a graph of
one, and of four, kernels that do nothing. Each version's chosen indices are checked against
torch.topk of its own logits, and its output compared with the first version's. Versions are
timed in ROUNDS (2 by default) alternating rounds, so drift in the GPU's clocks falls on every
version alike. A version that defines `topk_decode_fused` has its top-k launched as that one
kernel (after an indexer that builds its first histogram, if the indexer takes `hist_k`);
otherwise as topk_hist1, topk_hist2, topk_collect and topk_finish. A version that defines
`sparse_mla_bf16_vsplit` has its attention's value columns split over two blocks where the splits
leave room, as the model does. A version whose attention takes `after_indices` has it launched in
the step with programmatic stream serialization after the top-k, as gpu-check's step does (the
attention timed alone, and the dense one, launch plainly); likewise a version whose top-k waits
for its indexer (`griddepcontrol.wait`) has it launched that way (and cooperatively), and one
whose combine waits for the attention has the combine launched that way. $SPLITS (e.g. "32,16,8")
also times the last version's attention with those split counts, and $WHOLE_VALUES without the
value split. A version that defines
`__device__ long long marks[24]` (%globaltimer values written by a throwaway copy of the
kernels, e.g. one `step_marks.py` writes) has their median offsets from mark 0 printed.

usage: decode_ab.py A.cu B.cu [C.cu ...]    (needs torch and the NVRTC wheel on LD_LIBRARY_PATH)
"""

import ctypes
import os
import sys

import torch

from kernel_ab import (Module, check, cuda, decode_fp8_smem, decode_tiles_per_block, define, e4m3_decode_operands,
                       launch, sm_count)


DQK, DV, IH, ID, TOPK = 576, 512, 64, 128, 2048
# Query heads of the attention ($HEADS, a multiple of 64: 128 is DeepSeek-V3.2's); the kernels
# take them in groups of 64, one block row each.
H = int(os.environ.get("HEADS", "64"))
G = H // 64
TK_CAP = 8192
MLA_SMEM = 3 * 64 * 576 * 2 + 64 * 64 * 2 + 2 * 2 * 64 * 4 + 2 * 64 * 4 + 1024
TOPK_FUSED_SMEM = 48 * 1024
MARKS = 24  # `marks[MARKS]`, as step_marks.py declares it


def waits(src, kernel):
    """Whether `kernel`'s body in `src` waits for the kernel before it (griddepcontrol.wait): then
    it is launched with programmatic stream serialization."""
    body = src[src.index(kernel + "("):]
    return "griddepcontrol.wait" in body[:body.index("\n}\n")]


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
    fp8 = os.environ.get("FP8") == "1"
    q8, qsc, k8, ksc = e4m3_decode_operands(q, k, gen)
    flush = torch.zeros(64 << 20, dtype=torch.uint8, device="cuda") if os.environ.get("EVICT") == "1" else None

    def evict():
        """With EVICT=1, pushes the step's data out of L2 (a 64 MB write)."""
        if flush is not None:
            flush.add_(1)
    lens = torch.tensor([l], dtype=torch.int32, device="cuda")
    splits = TOPK // 64
    dense_splits = min(sm_count() // G, l // 64)
    every = torch.arange(l, dtype=torch.int32, device="cuda")
    scale_log2 = (192**-0.5) * 1.4426950408889634

    def version(path):
        """One version's graphs, its step's check and its buffers (its own closures and names)."""
        m = Module(path)
        src = open(path).read()
        indexer_hist = "int hist_k" in src
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
        if fp8:
            ix_smem = decode_fp8_smem(path)
        ix = m.function("indexer_decode_fp8" if fp8 else "indexer_decode_bf16", ix_smem)
        cap = define(path, "IXD_TILES_FP8", 4) if fp8 else define(path, "IXD_TILES", 8)
        tpb = decode_tiles_per_block(path, ix, ix_smem, l, cap)
        if tpb:
            ixd_keys = ix_keys * tpb
        mla = m.function("sparse_mla_bf16", MLA_SMEM)
        # A version with `sparse_mla_bf16_vsplit` splits the value columns over 2 blocks where
        # the splits leave the multiprocessors that room, and one whose combine takes its
        # columns from blockIdx.y runs it as 2 blocks of 256 a head (as the model does).
        has_vsplit = cuda.cuModuleGetFunction(ctypes.byref(probe), m.mod, b"sparse_mla_bf16_vsplit") == 0
        vsplit = m.function("sparse_mla_bf16_vsplit", MLA_SMEM) if has_vsplit else None
        comb_parts = 2 if "c_step" in src else 1
        comb = m.function("mla_combine", 0)
        comb_pdl = waits(src, "mla_combine")
        logits = torch.zeros(1, l, device="cuda")
        hist = torch.zeros(2 * 2048, dtype=torch.int32, device="cuda")
        counters = torch.zeros(4, dtype=torch.int32, device="cuda")  # 2 before the 11-bit collect
        # The taken keys: a list of TOPK positions, or (since the bitmap version) a bitmap of
        # 131072 / 32 words; the larger serves both.
        taken = torch.zeros(max(TOPK, 131072 // 32), dtype=torch.int32, device="cuda")
        cand = torch.zeros(TK_CAP, dtype=torch.int64, device="cuda")
        sync = torch.zeros(2, dtype=torch.int32, device="cuda")
        idx = torch.zeros(TOPK, dtype=torch.int32, device="cuda")
        part = torch.zeros(max(splits, dense_splits) * H * DV, device="cuda")
        lse = torch.zeros(max(splits, dense_splits) * H, device="cuda")
        out = torch.zeros(H * DV, device="cuda")
        chunks = (l + 1023) // 1024
        if has_fused:
            fused = m.function("topk_decode_fused", fused_smem)
            grid = min(sm_count(), chunks)

            tk_pdl = waits(src, "topk_decode_fused")  # as gpu-check's step launches it

            def topk():
                launch(fused, (grid, 1), tk_threads, fused_smem,
                       [logits, lens, l, TOPK, hist, counters, taken, cand, TK_CAP, idx, sync, 1,
                        int(indexer_hist)], pdl=tk_pdl, cooperative=tk_pdl)
        else:
            fns = [m.function(n, 0) for n in ("topk_hist1", "topk_hist2", "topk_collect", "topk_finish")]

            def topk():
                launch(fns[0], (chunks, 1), 512, 0, [logits, lens, l, hist])
                launch(fns[1], (chunks, 1), 512, 0, [logits, lens, l, TOPK, hist])
                launch(fns[2], (chunks, 1), 512, 0, [logits, lens, l, TOPK, hist, counters, taken, cand, TK_CAP])
                launch(fns[3], (1, 1), 1024, 0, [logits, lens, l, TOPK, hist, counters, taken, cand, TK_CAP, idx])

        def indexer():
            extra = [hist, TOPK] if indexer_hist else []
            extra += [tpb] if tpb else []
            operands = [q8, qsc, k8, ksc] if fp8 else [q, k]
            launch(ix, ((l + ixd_keys - 1) // ixd_keys, 1), 128, ix_smem,
                   operands + [w, logits, lens, l, l, None, 0] + extra)

        # A version whose attention takes `after_indices` is launched in the step with programmatic
        # stream serialization after the top-k (its query copied before it waits for the indices).
        pdl = "int after_indices" in src

        def attention(sp=splits, rows=idx, n=TOPK, halves=None, after_indices=False):
            """halves: split the value columns over two blocks (None: where the model would)."""
            if halves is None:
                halves = 2 * G * sp <= sm_count()
            args = [qm, kv, rows, part, lse, n, l, sp, scale_log2, None, 0, G] + ([int(after_indices)] if pdl else [])
            if vsplit and halves:
                launch(vsplit, (sp, G, 2), 256, MLA_SMEM, args, pdl=after_indices)
            else:
                launch(mla, (sp, G), 256, MLA_SMEM, args, pdl=after_indices)
            launch(comb, (G * 64, comb_parts), 512 // comb_parts, 0, [part, lse, out, 64, sp, DV], pdl=comb_pdl)

        def step():
            indexer()
            topk()
            attention(after_indices=pdl)

        # The indexer feeds top-k's histogram, which top-k consumes and zeroes: "topk" is timed
        # as the difference of indexer + top-k and the indexer alone, and every replay of the
        # indexer alone is followed by an untimed top-k, so the histogram never piles up.
        stages = [("step", step), ("indexer", indexer), ("ix_topk", lambda: (indexer(), topk())), ("attention", attention),
                  ("dense", lambda: attention(dense_splits, every, l))]
        # The fixed cost of a graph of one, and of four, kernels that do nothing (hold(0)): the
        # step is four kernels, the dense attention two.
        hold = m.function("hold", 0)
        stages += [("floor1", lambda: launch(hold, (1, 1), 1, 0, [None])),
                   ("floor4", lambda: [launch(hold, (1, 1), 1, 0, [None]) for _ in range(4)])]
        if os.environ.get("MLA_ALONE"):
            stages.append(("mla", lambda: launch(mla, (splits, G), 256, MLA_SMEM,
                                                 [qm, kv, idx, part, lse, TOPK, l, splits, scale_log2, None, 0, G])))
        if path == paths[-1]:
            for sp in [int(x) for x in os.environ.get("SPLITS", "").split(",") if x]:
                stages.append((f"attention/{sp}", lambda sp=sp: attention(sp)))
            if os.environ.get("WHOLE_VALUES"):
                stages.append(("attention/whole", lambda: attention(halves=False)))

        def capture(f):
            """A graph of f, after one plain run of it (with its histogram's producer or consumer)."""
            if f is topk:
                indexer()
            f()
            if f is indexer:
                topk()
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                f()
            return g

        g_topk = capture(topk)
        graphs = [(name, capture(f), g_topk if f is indexer else None) for name, f in stages]

        def chosen():
            """Runs the step; its indices, checked against torch.topk of its own logits."""
            step()
            torch.cuda.synchronize()
            want = torch.sort(torch.topk(logits[0, :l], TOPK).indices.int())[0]
            return idx.clone(), out.clone(), torch.equal(torch.sort(idx)[0], want)

        def marks():
            """With `__device__ long long marks[24]` in the source (timer values a throwaway copy
            of a kernel records), the median over 21 replays of the step's graph of each mark
            after mark 0."""
            ptr, size = ctypes.c_uint64(), ctypes.c_size_t()
            if cuda.cuModuleGetGlobal_v2(ctypes.byref(ptr), ctypes.byref(size), m.mod, b"marks") != 0:
                return None
            runs = []
            g_step = graphs[0][1]  # the step's graph, so the marks show its kernels' overlap
            for _ in range(21):
                evict()
                g_step.replay()
                torch.cuda.synchronize()
                buf = (ctypes.c_longlong * MARKS)()
                check(cuda.cuMemcpyDtoH_v2(buf, ptr, ctypes.c_size_t(8 * MARKS)), "cuMemcpyDtoH")
                runs.append([v - buf[0] if v else 0 for v in buf])
            return [sorted(r[i] for r in runs)[10] for i in range(MARKS)]

        # The graphs hold raw pointers: the version's buffers must live as long as they do.
        buffers = [logits, hist, counters, taken, cand, sync, idx, part, lse, out]
        return path, graphs, chosen, buffers, hold, marks

    versions = [version(path) for path in paths]
    i0, o0, _ = versions[0][2]()
    for r in range(int(os.environ.get("ROUNDS", "2"))):
        print(f"round {r + 1}, context {l}:")
        for path, graphs, chosen, _, hold, _ in versions:
            t = {}
            for name, g, after in graphs:
                reps = []
                for _ in range(60):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    evict()
                    # 200 us of GPU time queued first, so the graph is queued before the GPU
                    # reaches the first event: GPU time, not the host's launch latency.
                    launch(hold, (1, 1), 1, 0, [ctypes.c_int64(200_000)])
                    a.record()
                    g.replay()
                    b.record()
                    if after is not None:
                        after.replay()
                    torch.cuda.synchronize()
                    reps.append(a.elapsed_time(b) * 1000)
                t[name] = sorted(reps[10:])[len(reps[10:]) // 2]
            i, o, same = chosen()
            t["topk"] = t["ix_topk"] - t["indexer"]
            diff = ((o - o0).norm() / o0.norm()).item()
            print(
                f"  {path}: step {t['step']:.1f} us = indexer {t['indexer']:.1f} + top-k {t['topk']:.1f} + "
                f"attention {t['attention']:.1f}; dense {t['dense']:.1f} ({t['dense'] / t['step']:.2f}x); "
                f"indices {'= torch.topk' if same else 'WRONG'}{'' if torch.equal(i, i0) else ' (another order)'}, "
                f"output rel diff from the first {diff:.1e}"
            )
            print(f"    graph of 1 empty kernel {t['floor1']:.1f} us, of 4 {t['floor4']:.1f} us")
            for name, v in t.items():
                if name == "attention/whole":
                    print(f"    attention without the value split: {v:.1f} us")
                elif name.startswith("attention/"):
                    print(f"    {name} splits: {v:.1f} us")
                if name == "mla":
                    print(f"    sparse_mla_bf16 alone: {v:.1f} us")

    for path, *_, marks in versions:
        offsets = marks()
        if offsets:
            shown = ", ".join(f"{i}: {c / 1000:.2f}" for i, c in enumerate(offsets) if c)
            print(f"{path} marks, us after mark 0 (median of 21 steps): {shown}")


if __name__ == "__main__":
    main()
