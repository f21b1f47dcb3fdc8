#!/usr/bin/env bash
# `make images`: builds kokoro-pay's five images from the repository root with docker (or
# podman), tagged $IMAGE_PREFIX/<name>:$TAG. Where no container engine answers, it says so in
# one line and exits 0: the Dockerfiles are still linted and checked by `make test`.
#   IMAGE_PREFIX  default kokoropay (e.g. registry.example.com/kokoropay)
#   TAG           default dev
#   IMAGES        default "auth ledger gateway envoy synth"
#   PUSH=1        push after building
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="${IMAGE_PREFIX:-kokoropay}"
tag="${TAG:-dev}"
images="${IMAGES:-auth ledger gateway envoy synth}"

engine=""
for candidate in "${CONTAINER_ENGINE:-}" docker podman; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" info >/dev/null 2>&1; then
    engine="$candidate"
    break
  fi
done
if [ -z "$engine" ]; then
  echo "make images: no container engine answers here (docker/podman info failed); skipped building $images"
  exit 0
fi

for name in $images; do
  echo "building $prefix/$name:$tag ($engine)"
  # BuildKit reads docker/<name>.Dockerfile.dockerignore, keeping the context small.
  DOCKER_BUILDKIT=1 "$engine" build --file "docker/$name.Dockerfile" --tag "$prefix/$name:$tag" .
  if [ "${PUSH:-0}" = 1 ]; then
    "$engine" push "$prefix/$name:$tag"
  fi
done
