#!/usr/bin/env bash
# Synth's GPU check (issue 18), the one command a lent GPU machine runs; README.md beside it.
# Results land in $OUT (the device tool brings them back) and on stdout.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-bench}
CONFIG=.data/weights/config.json
RECORDING=bench/data/passage_g2p.json
mkdir -p "$OUT"

if [ ! -f "$CONFIG" ] || ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: carry .whl and $CONFIG (make gpu-wheels first; bench/gpu/README.md)" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import sys, torch, transformers; print("python", sys.version.split()[0],
        "torch", torch.__version__, "transformers", transformers.__version__,
        "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$OUT/machine.txt"

# The model's kernels alone: one padded forward pass for B inputs against B passes.
timeout 150 python3 -m bench.batched_forward_bench --device cuda --batch 1,8,32,64 \
    --random-weights "$CONFIG" 2>&1 | tee "$OUT/forward.txt"

# The engine as synth runs it: N streams at once, batched against unbatched, in one run.
# --json is rewritten after each stream count: a cut-short run keeps what it measured.
timeout 360 python3 -m bench.batching_bench --device cuda --streams 1,8,32,64 --chars 1000 \
    --rounds 2 --random-weights "$CONFIG" --phonemes-from "$RECORDING" \
    --json "$OUT/batching.json" 2>&1 | tee "$OUT/batching.txt"
