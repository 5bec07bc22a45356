#!/usr/bin/env bash
# The GPU check-and-benchmark run, in one call on the GPU machine (see BENCHMARKS.md):
# every kernel against the CPU reference on fresh random inputs, our DSA kernels at the small
# preset's shapes for 8K-128K contexts, PyTorch's dense attention on the same GPU, and the
# side-by-side table. Usage: tests/gpu/run.sh [ENVSYNTH_BINARY] (results in $OUT or out/gpu).
set -euo pipefail
BIN=${1:-target/release/envsynth}
OUT=${OUT:-out/gpu}
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH="$SP/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
mkdir -p "$OUT"
"$BIN" model gpu-check --json "$OUT/gpu_check.json" | tee "$OUT/gpu_check.md"
python3 -W ignore tests/gpu/dense_baseline.py "$OUT/dense.json" > "$OUT/dense.log"
python3 tests/gpu/side_by_side.py "$OUT/gpu_check.json" "$OUT/dense.json" | tee "$OUT/side_by_side.md"
