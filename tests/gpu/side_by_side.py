#!/usr/bin/env python3
"""Prints the side-by-side table of one GPU run: envsynth's sparse path (gpu-check JSON) against
PyTorch's dense attention (dense_baseline.py JSON), per context length.

With EAGER.json (eager_decode.py), also the end-to-end decode of the same checkpoint against the
PyTorch eager implementation, and whether the greedy tokens agree.

usage: side_by_side.py GPU_CHECK.json DENSE.json [EAGER.json]
"""

import json
import os
import sys
import time


def host():
    """The host's CPU model, its cores and a timing of it: both end-to-end columns spend part of
    every step on the host, so a run's host is part of its figures (BENCHMARKS.md, 2026-12-04)."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown CPU")
    except OSError:
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {probe_ms():.1f} ms for a million steps of a Python loop"


def probe_ms():
    """The host's single-core speed at what PyTorch eager's launches cost: the best of five
    timings of a fixed Python loop, comparable between runs."""
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x = 0
        for i in range(1_000_000):
            x += i & 7
        best = min(best, time.perf_counter() - t)
    return best * 1e3


ours = json.load(open(sys.argv[1]))
dense = {r["context"]: r for r in json.load(open(sys.argv[2]))["rows"]}
print(f"device: {ours['device']} ({ours['multiprocessors']} SMs), seed {ours['seed']}; host: {host()}")
print("| context | dense prefill ms (backend) | ours prefill ms, bf16 / FP8 indexer | speed-up | dense decode ms (ours / torch) | ours decode ms, bf16 / FP8 indexer | speed-up vs ours dense |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for b in ours["bench"]:
    d = dense.get(b["context"])
    if d is None:
        continue
    print(
        f"| {b['context']} | {d['prefill_best_ms']:.1f} ({d['prefill_best_backend']}) | {b['prefill_total_ms']:.1f} / {b['prefill_total_fp8_ms']:.1f} | "
        f"{d['prefill_best_ms'] / b['prefill_total_ms']:.2f}x / {d['prefill_best_ms'] / b['prefill_total_fp8_ms']:.2f}x | {b['decode_dense_ms']:.3f} / {d['decode_dense_torch_ms']:.3f} | "
        f"{b['decode_sparse_ms']:.3f} / {b['decode_sparse_fp8_ms']:.3f} | "
        f"{b['decode_dense_ms'] / b['decode_sparse_ms']:.2f}x / {b['decode_dense_ms'] / b['decode_sparse_fp8_ms']:.2f}x |"
    )
print()
print("At DeepSeek-V3.2's 128 query heads (the indexer and top-k as above; attention two blocks a query):")
print("| context | dense prefill ms (backend) | ours prefill ms, bf16 / FP8 indexer | speed-up | ours attention TFLOP/s | dense decode ms (ours / torch) | ours decode ms, bf16 / FP8 indexer | speed-up vs ours dense |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for b in ours["bench"]:
    d = dense.get(b["context"])
    if d is None or "prefill_best_h128_ms" not in d:
        continue
    dp, dd = d["prefill_best_h128_ms"], b["decode_dense_h128_ms"]
    print(
        f"| {b['context']} | {dp:.1f} ({d['prefill_best_h128_backend']}) | {b['prefill_total_h128_ms']:.1f} / {b['prefill_total_fp8_h128_ms']:.1f} | "
        f"{dp / b['prefill_total_h128_ms']:.2f}x / {dp / b['prefill_total_fp8_h128_ms']:.2f}x | {b['prefill_attention_h128_tflops']:.0f} | "
        f"{dd:.3f} / {d['decode_dense_torch_h128_ms']:.3f} | {b['decode_sparse_h128_ms']:.3f} / {b['decode_sparse_fp8_h128_ms']:.3f} | "
        f"{dd / b['decode_sparse_h128_ms']:.2f}x / {dd / b['decode_sparse_fp8_h128_ms']:.2f}x |"
    )
print()
print(f"sparse decode, batch {ours['decode_batch']}: {ours['decode_batch_tflops']:.0f} TFLOP/s")

if len(sys.argv) > 3 and ours.get("e2e"):
    eager = {r["batch"]: r for r in json.load(open(sys.argv[3]))["eager"]}
    print()
    print("| indexer | batch | prompt | decode steps | ours tok/s | PyTorch eager tok/s | speed-up | greedy tokens of sequence 0 equal |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in ours["e2e"]:
        e = eager.get(r["batch"])
        if e is None:
            continue
        same = sum(1 for a, b in zip(r["tokens0"], e["tokens0"]) if a == b)
        print(
            f"| {'FP8' if r.get('fp8_indexer') else 'bf16'} | {r['batch']} | {r['prompt']} | {r['steps']} | "
            f"{r['decode_tokens_per_s']:.0f} | {e['decode_tokens_per_s']:.0f} | "
            f"{r['decode_tokens_per_s'] / e['decode_tokens_per_s']:.1f}x | {same} of {len(r['tokens0'])} |"
        )
