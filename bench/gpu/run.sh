#!/usr/bin/env bash
# Synth's GPU check (issue 18), the one command a lent GPU machine runs; README.md beside it.
# Results land in $OUT (the device tool brings them back) and on stdout.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-bench}
CONFIG=.data/weights/config.json
RECORDING=bench/data/passage_g2p.json
# The GPU deployment's synth (deploy/k8s/base/synth/deployment.yaml): workers × streams a call.
WORKERS=2
BATCH_MAX_STREAMS=16
mkdir -p "$OUT"

if [ ! -f "$CONFIG" ] || ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "error: carry .whl and $CONFIG (make gpu-wheels first; bench/gpu/README.md)" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

{
    echo "recording $(sha256sum "$RECORDING" | cut -c1-12), commit $(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (no .git here)')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c 'import sys, torch, transformers; print("python", sys.version.split()[0],
        "torch", torch.__version__, "transformers", transformers.__version__,
        "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$OUT/machine.txt"

# The model's kernels alone: one padded forward pass for B inputs against B passes.
timeout 120 python3 -m bench.batched_forward_bench --device cuda --batch 1,8,32,64 \
    --random-weights "$CONFIG" 2>&1 | tee "$OUT/forward.txt"

# The engine as the deployment runs it: N streams at once, batched against unbatched.
# --json is rewritten after each stream count: a cut-short run keeps what it measured.
timeout 330 python3 -m bench.batching_bench --device cuda --streams 1,8,32,64 --chars 1000 \
    --rounds 2 --workers "$WORKERS" --batch-max-streams "$BATCH_MAX_STREAMS" \
    --random-weights "$CONFIG" --phonemes-from "$RECORDING" \
    --json "$OUT/batching.json" 2>&1 | tee "$OUT/batching.txt"
