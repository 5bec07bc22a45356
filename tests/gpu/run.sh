#!/usr/bin/env bash
# The GPU check-and-benchmark run, in one call on the GPU machine (see BENCHMARKS.md):
# every kernel against the CPU reference on fresh random inputs, our DSA kernels at the small
# preset's shapes for 8K-128K contexts, PyTorch's dense attention on the same GPU, the whole
# small-preset model decoding end to end against a PyTorch eager implementation of it, and the
# side-by-side tables, then rollouts through the local GPU policy with each indexer, and a rerun
# that must give the same bytes.
# Usage: tests/gpu/run.sh [ENVSYNTH_BINARY] (results in $OUT or out/gpu).
set -euo pipefail
BIN=${1:-target/release/envsynth}
OUT=${OUT:-out/gpu}
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
export LD_LIBRARY_PATH="$SP/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
mkdir -p "$OUT"
MODEL=$(mktemp -d)/small  # random small-preset weights, outside $OUT (200 MB)
"$BIN" model init --preset small --dtype bf16 --seed 7 --out "$MODEL" > /dev/null
"$BIN" model gpu-check --model "$MODEL" --json "$OUT/gpu_check.json" | tee "$OUT/gpu_check.md"
python3 -W ignore tests/gpu/dense_baseline.py "$OUT/dense.json" > "$OUT/dense.log"
python3 tests/gpu/eager_decode.py "$MODEL" "$OUT/eager.json" | tee "$OUT/eager.log"
python3 tests/gpu/side_by_side.py "$OUT/gpu_check.json" "$OUT/dense.json" "$OUT/eager.json" | tee "$OUT/side_by_side.md"
# Rollouts through the local policy on the GPU, with each indexer: the random weights fail every
# task, but each turn runs the model, parses its reply and scores the episode.
"$BIN" generate --count 4 --mix easy --out "$(dirname "$MODEL")/tasks" > /dev/null
for DEV in gpu gpu-fp8; do
  "$BIN" rollout --tasks "$(dirname "$MODEL")/tasks" --policy "local:$MODEL" --device "$DEV" --k 2 \
    --max-turns 2 --max-tokens 64 --seed 3 --out "$OUT/rollouts-$DEV" > "$OUT/rollouts-$DEV.log"
  echo "rollouts on --device $DEV: $(wc -l < "$OUT/rollouts-$DEV/rollouts.jsonl") written"
  # Each carries the tokens the GPU sampled: a loss mask over its completion tokens, each with
  # a log-probability.
  python3 - "$OUT/rollouts-$DEV/rollouts.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    [t] = r["tokens"]  # the local policy continues its own tokens: one sequence
    assert len(t["ids"]) == len(t["mask"]) == len(t["logprobs"]), r["rollout_id"]
    assert sum(t["mask"]) == r["usage"]["completion_tokens"], r["rollout_id"]
    assert all(l <= 0 if m else l == 0 for m, l in zip(t["mask"], t["logprobs"])), r["rollout_id"]
print("  token traces: ok")
PY
done
# DeepSeek-V3.2's 128 query heads: a checkpoint with them plays the same tasks on the GPU.
"$BIN" model init --preset small --num-attention-heads 128 --dtype bf16 --seed 7 --out "$MODEL-128" > /dev/null
"$BIN" rollout --tasks "$(dirname "$MODEL")/tasks" --policy "local:$MODEL-128" --device gpu-fp8 --k 2 \
  --max-turns 2 --max-tokens 64 --seed 3 --out "$OUT/rollouts-128-heads" > "$OUT/rollouts-128-heads.log"
echo "rollouts with 128 query heads on --device gpu-fp8: $(wc -l < "$OUT/rollouts-128-heads/rollouts.jsonl") written"
# Twice more on the GPU with 3 in flight, fewer than the 8 rollouts, so requests join the batch
# as others leave it, at moments that vary from run to run: the bytes must not.
for RUN in a b; do
  "$BIN" rollout --tasks "$(dirname "$MODEL")/tasks" --policy "local:$MODEL" --device gpu --k 2 \
    --max-turns 2 --max-tokens 64 --seed 3 --concurrency 3 --out "$OUT/rollouts-gpu-3-$RUN" > /dev/null
done
if cmp -s "$OUT/rollouts-gpu-3-a/rollouts.jsonl" "$OUT/rollouts-gpu-3-b/rollouts.jsonl"; then
  echo "rollouts on --device gpu with 3 in flight, run twice: byte-identical"
else
  echo "rollouts on --device gpu with 3 in flight, run twice: DIFFERENT" >&2
  exit 1
fi
