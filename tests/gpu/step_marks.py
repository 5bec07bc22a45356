#!/usr/bin/env python3
"""Writes a copy of kernels.cu that records when the batch-1 decode step reaches each of its links,
for `decode_ab.py` (which prints, for a version defining `marks`, each mark's median offset from
mark 0 over 21 replays of the step's graph, in ns).

    0  indexer: block 0 starts                 7  top-k: finishing block, candidates resolved
    1  indexer: last block done                8  top-k: finishing block, positions written
    2  top-k: block 0 starts                   9  attention: block 0 starts
    3  top-k: block 0 past its wait           10  attention: block 0 past its wait
    4  top-k: block 0 found the threshold bin 11  attention: last block done
    5  top-k: last unit collected             12  combine: block 0 starts
    6  top-k: finishing block starts          13  combine: last block done

    attention, block 0 (a batch-1 step has one tile a block):
   14  its indices in shared memory           17  P·V done
   15  its tile gathered                      18  its partial and log-sum-exp written
   16  scores done                            19  the last block's tile gathered

Marks are `%globaltimer` reads by thread 0 of a block ("last" ones an atomicMax over blocks).
The copy is for timing only; each insertion point is found by its exact text, and the script
stops with the text it could not find when kernels.cu has moved on.

usage: step_marks.py kernels.cu marked.cu
   then: HEADS=128 FP8=1 EVICT=1 ROUNDS=1 python3 decode_ab.py marked.cu
"""

import sys

HELPERS = r"""
__device__ unsigned long long marks[24];
__device__ __forceinline__ unsigned long long mark_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define MARK_FIRST(i) do { if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) marks[i] = mark_now(); } while (0)
#define MARK_LAST(i) do { if (threadIdx.x == 0) atomicMax(&marks[i], mark_now()); } while (0)
#define MARK_THIS(i) do { if (threadIdx.x == 0) marks[i] = mark_now(); } while (0)
"""

# (text in kernels.cu, its replacement): each must occur exactly once.
EDITS = [
    # indexer_decode_tiles
    ('''    asm volatile("griddepcontrol.launch_dependents;");
    int t = blockIdx.y, s_begin = blockIdx.x * IX_KEYS * tiles_per_block;''',
     '''    MARK_FIRST(0);
    asm volatile("griddepcontrol.launch_dependents;");
    int t = blockIdx.y, s_begin = blockIdx.x * IX_KEYS * tiles_per_block;'''),
    ('''            if (hh[i]) atomicAdd(&hist[(size_t)t * 2 * TK_BINS + i], hh[i]);
    }
}''',
     '''            if (hh[i]) atomicAdd(&hist[(size_t)t * 2 * TK_BINS + i], hh[i]);
    }
    __syncthreads();
    MARK_LAST(1);
}'''),
    # topk_decode_fused
    ('''    int chunks = (ld + TK_CHUNK - 1) / TK_CHUNK, units = rows * chunks;
    // Launched after the indexer that writes its logits and histogram: wait for that grid's end.
    asm volatile("griddepcontrol.wait;" ::: "memory");''',
     '''    MARK_FIRST(2);
    int chunks = (ld + TK_CHUNK - 1) / TK_CHUNK, units = rows * chunks;
    // Launched after the indexer that writes its logits and histogram: wait for that grid's end.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    MARK_FIRST(3);'''),
    ('''        skip2 = min(lens[0], ld) <= k || fits;''',
     '''        skip2 = min(lens[0], ld) <= k || fits;
        MARK_FIRST(4);'''),
    ('''        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            unsigned long long* report''',
     '''        __syncthreads();
        MARK_LAST(5);
        if (threadIdx.x == 0) {
            __threadfence();
            unsigned long long* report'''),
    ('''            tk_finish(logits, len, ld, k, hist, counters, taken, cand, cap, out, t, n_taken, n_cand, shift,
                      tk_smem);''',
     '''            MARK_THIS(6);
            tk_finish(logits, len, ld, k, hist, counters, taken, cand, cap, out, t, n_taken, n_cand, shift,
                      tk_smem);
            MARK_THIS(8);'''),
    ('''    need = resolve_candidates(cs, n_cand, prefix, shift, need, n_share, sel, tie, hb, warp_tot);
    emit_selected(''',
     '''    need = resolve_candidates(cs, n_cand, prefix, shift, need, n_share, sel, tie, hb, warp_tot);
    MARK_THIS(7);
    emit_selected('''),
    # sparse_mla_body
    ('''    if (after_indices) {
        copy_query();
        asm volatile("griddepcontrol.wait;" ::: "memory");
    }''',
     '''    MARK_FIRST(9);
    if (after_indices) {
        copy_query();
        asm volatile("griddepcontrol.wait;" ::: "memory");
    }
    MARK_FIRST(10);'''),
    ('''        else cp_async_wait<1>();
        __syncthreads();''',
     '''        else cp_async_wait<1>();
        __syncthreads();
        MARK_FIRST(14);'''),
    ('''        __syncthreads();  // tile b landed; both warpgroups are done with tile b - 1''',
     '''        __syncthreads();  // tile b landed; both warpgroups are done with tile b - 1
        MARK_FIRST(15);
        if (b == b_begin) MARK_LAST(19);'''),
    ('''        wg_wait0();
        reg_fence<16>(s);''',
     '''        wg_wait0();
        reg_fence<16>(s);
        MARK_FIRST(16);'''),
    ('''        reg_fence<NV / 2>(o);
    }''',
     '''        reg_fence<NV / 2>(o);
    }
    MARK_FIRST(17);'''),
    ('''        lse_part[base + r0 + 8] = l1 > 0.f ? m[1] + log2f(l1) : NEG_INF;
    }
}''',
     '''        lse_part[base + r0 + 8] = l1 > 0.f ? m[1] + log2f(l1) : NEG_INF;
    }
    MARK_FIRST(18);
    MARK_LAST(11);
}'''),
    # mla_combine
    ('''    int t = blockIdx.x / H, h = blockIdx.x % H, lane = threadIdx.x & 31;
    const float* lse = lse_part''',
     '''    MARK_FIRST(12);
    int t = blockIdx.x / H, h = blockIdx.x % H, lane = threadIdx.x & 31;
    const float* lse = lse_part'''),
    ('''        out[((size_t)t * H + h) * dv + c] = acc * inv;
    }
}''',
     '''        out[((size_t)t * H + h) * dv + c] = acc * inv;
    }
    MARK_LAST(13);
}'''),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src = open(sys.argv[1]).read()
    at = src.index('extern "C" __global__')
    src = src[:at] + HELPERS + src[at:]
    for old, new in EDITS:
        n = src.count(old)
        if n != 1:
            sys.exit(f"step_marks.py: expected this text once in {sys.argv[1]}, found it {n} times:\n{old}")
        src = src.replace(old, new)
    open(sys.argv[2], "w").write(src)


if __name__ == "__main__":
    main()
