#!/usr/bin/env bash
# The wheels bench/gpu/run.sh installs on a GPU machine, downloaded here into .whl/ (git-ignored).
# That machine (Python 3.12, x86-64) already has torch, transformers, numpy, huggingface_hub,
# prometheus_client and attrs; these are what synth's engine imports beyond them, at the
# versions requirements.lock pins.
set -euo pipefail
NAMES="kokoro loguru pydantic pydantic_core pydantic-settings annotated-types typing-inspection
python-dotenv cryptography cffi pycparser"
mkdir -p .whl
for name in $NAMES; do
    pin=$(grep -i "^${name}==" requirements.lock) || { echo "error: $name is not in requirements.lock" >&2; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$pin"
done
du -sh .whl
