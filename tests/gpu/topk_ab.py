#!/usr/bin/env python3
"""A/B timing of the prefill top-k (`topk_rows`) between versions of kernels.cu, in one process.

The last chunk of a CONTEXT-long prefill (131072 by default): 4,096 rows of random logits, row t
taking its first CONTEXT - 4096 + t + 1 values, top-2048 of each. Versions run alternately,
twice; every version's indices must equal the first's. Beside them, "floor" is a kernel that
only reads the same rows (a block of 1,024 threads a row, two a multiprocessor, eight loads a
thread in flight, the values summed): the HBM floor a one-pass top-k could reach.

usage: topk_ab.py A.cu [B.cu ...]    (needs torch and the NVRTC wheel on LD_LIBRARY_PATH)
"""

import os
import sys
import tempfile

import torch

from kernel_ab import Module, define, launch, median_ms

T, TOPK = 4096, 2048
TOPK_ROWS_SMEM = 2048 * 4 + 2 * 4096 * 4 + 4096 * 8

# Reads row t's first min(first_pos + t + 1, ld) values as topk_rows does, and nothing else.
FLOOR_SRC = r"""
extern "C" __global__ void __launch_bounds__(1024, 2)
read_rows(const float* logits, int* out, int ld, int k, int first_pos) {
    int t = blockIdx.x, len = min(first_pos + t + 1, ld);
    const float* row = logits + (size_t)t * ld;
    float acc = 0.f;
    for (int base = 0; base < len; base += 8 * 1024) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int i = base + u * 1024 + threadIdx.x;
            v[u] = i < len ? row[i] : 0.f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) acc += v[u];
    }
    if (acc == 1234.5f) out[(size_t)t * k] = 1;  // never in practice; keeps the loads
}
"""


def main():
    l = int(os.environ.get("CONTEXT", "131072"))
    torch.cuda.init()
    gen = torch.Generator(device="cuda").manual_seed(4)
    logits = torch.randn(T, l, device="cuda", generator=gen)
    out = torch.zeros(T, TOPK, dtype=torch.int32, device="cuda")
    mods = [Module(path) for path in sys.argv[1:]]
    # Each version launched with its own block size (TKR_THREADS, 1,024 before 2026-12-03).
    fns = [(m.path, m.function("topk_rows", TOPK_ROWS_SMEM), define(m.path, "TKR_THREADS", 1024)) for m in mods]
    with tempfile.NamedTemporaryFile("w", suffix=".cu", delete=False) as f:
        f.write(FLOOR_SRC)
    floor = Module(f.name).function("read_rows", 0)
    os.unlink(f.name)
    scratch = torch.zeros_like(out)
    args = [logits, out, l, TOPK, l - T]
    ref = None
    for _ in range(2):
        for path, f, threads in fns:
            ms = median_ms(lambda: launch(f, (T, 1), threads, TOPK_ROWS_SMEM, args), 7)
            if ref is None:
                ref = out.clone()
            same = torch.equal(out, ref)
            print(f"{path}: {ms:.3f} ms, indices {'equal' if same else 'DIFFER'}")
        ms = median_ms(lambda: launch(floor, (T, 1), 1024, 0, [logits, scratch, l, TOPK, l - T]), 7)
        print(f"floor (reading the rows only): {ms:.3f} ms")
    gb = sum(min(l - T + t + 1, l) for t in range(T)) * 4 / 1e9
    print(f"the rows: {gb:.3f} GB")


if __name__ == "__main__":
    main()
