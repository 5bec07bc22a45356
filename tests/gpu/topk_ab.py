#!/usr/bin/env python3
"""A/B timing of the prefill top-k (`topk_rows`) between versions of kernels.cu, in one process.

The last chunk of a CONTEXT-long prefill (131072 by default): 4,096 rows of random logits, row t
taking its first CONTEXT - 4096 + t + 1 values, top-2048 of each. Versions run alternately,
twice; every version's indices must equal the first's.

usage: topk_ab.py A.cu [B.cu ...]    (needs torch and the NVRTC wheel on LD_LIBRARY_PATH)
"""

import os
import sys

import torch

from kernel_ab import Module, launch, median_ms

T, TOPK = 4096, 2048
TOPK_ROWS_SMEM = 2048 * 4 + 2 * 4096 * 4 + 4096 * 8


def main():
    l = int(os.environ.get("CONTEXT", "131072"))
    torch.cuda.init()
    gen = torch.Generator(device="cuda").manual_seed(4)
    logits = torch.randn(T, l, device="cuda", generator=gen)
    out = torch.zeros(T, TOPK, dtype=torch.int32, device="cuda")
    mods = [Module(path) for path in sys.argv[1:]]
    fns = [(m.path, m.function("topk_rows", TOPK_ROWS_SMEM)) for m in mods]
    ref = None
    for _ in range(2):
        for path, f in fns:
            args = [logits, out, l, TOPK, l - T]
            ms = median_ms(lambda: launch(f, (T, 1), 1024, TOPK_ROWS_SMEM, args), 7)
            if ref is None:
                ref = out.clone()
            same = torch.equal(out, ref)
            print(f"{path}: {ms:.2f} ms, indices {'equal' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
