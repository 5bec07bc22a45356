#!/usr/bin/env python3
"""A/B timing of the FP8 indexer's rotation and quantization (`hadamard_quant_e4m3`) between
versions of kernels.cu, in one process: one prefill chunk of queries (4,096 tokens x 64 heads,
the rows `gpu-check` rotates before each chunk's FP8 logits) and a 128K key cache. Each
version's e4m3 bytes and scales are compared with the first version's, bit for bit.

usage: quant_ab.py A.cu:ROWS_PER_BLOCK B.cu:ROWS_PER_BLOCK ...
       (rows a 256-thread block takes: 8 for the warp-per-row kernel, 32 for eight lanes a row;
       needs torch and the NVRTC wheel on LD_LIBRARY_PATH)
"""

import sys

import torch

from kernel_ab import Module, launch, median_ms

SHAPES = [("4096 x 64 query rows", 4096 * 64), ("131072 key rows", 131072)]
ROUNDS = 3


def main():
    versions = [arg.rsplit(":", 1) for arg in sys.argv[1:]]
    torch.cuda.init()
    torch.zeros(1, device="cuda")  # makes the context current for the driver calls
    gen = torch.Generator(device="cuda").manual_seed(3)
    mods = [(Module(path), path, int(per_block)) for path, per_block in versions]
    fns = [(m.function("hadamard_quant_e4m3", 0), path, per_block) for m, path, per_block in mods]
    for label, rows in SHAPES:
        x = torch.randn(rows, 128, device="cuda", generator=gen).to(torch.bfloat16)
        outs = [(torch.zeros(rows, 128, dtype=torch.uint8, device="cuda"),
                 torch.zeros(rows, device="cuda")) for _ in fns]
        bytes_moved = rows * (256 + 128 + 4)
        times = [[] for _ in fns]
        for _ in range(ROUNDS):
            for (f, _, per_block), (q8, sc), t in zip(fns, outs, times):
                grid = (-(-rows // per_block), 1)
                run = lambda: launch(f, grid, 256, 0, [x, q8, sc, rows])  # noqa: E731
                run()
                t.append(median_ms(run, 50))
        for (f, path, _), (q8, sc), t in zip(fns, outs, times):
            same = torch.equal(q8, outs[0][0]) and torch.equal(sc, outs[0][1])
            ms = min(t)
            print(f"{label}: {path}: {ms * 1e3:.1f} us ({bytes_moved / ms / 1e9:.2f} TB/s), "
                  f"rounds {' '.join(f'{v * 1e3:.1f}' for v in t)}, "
                  f"{'the same bits as' if same else 'DIFFERENT from'} the first")


if __name__ == "__main__":
    main()
