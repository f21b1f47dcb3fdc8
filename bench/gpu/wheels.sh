#!/usr/bin/env bash
# The wheels bench/gpu/run.sh installs on a GPU machine, downloaded here into .whl/ (git-ignored),
# at the versions requirements.lock pins. That machine (Python 3.12, x86-64; the device tool's
# KINDS.md lists its packages) has torch, transformers, numpy, huggingface_hub, prometheus_client
# and attrs. These are what synth's engine and settings import beyond them (pydantic-settings
# and its dependencies; cryptography, for services/common/pki.py, with cffi and pycparser, which
# its metadata requires), and typing-extensions, which pydantic needs at our version at least.
set -euo pipefail
PYTHON=${PYTHON:-python3}
NAMES="kokoro loguru pydantic pydantic_core pydantic-settings annotated-types typing-inspection
python-dotenv typing_extensions cryptography cffi pycparser"
# A wheel left from an older pin would make two versions of one package: pip refuses both.
rm -rf .whl
mkdir -p .whl
for name in $NAMES; do
    pin=$(grep -i "^${name}==" requirements.lock) || {
        echo "error: $name is not in requirements.lock" >&2
        exit 1
    }
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$pin"
done
du -sh .whl
