#!/usr/bin/env bash
# `make images`: builds kokoro-pay's seven images from the repository root with docker (or
# podman), tagged $IMAGE_PREFIX/<name>:$TAG: auth, ledger, predictions, gateway and dashboard from
# docker/service.Dockerfile (SERVICE=<name>, installing the pyproject extra of that name), synth
# and envoy from their own Dockerfiles. Where no container engine answers, it says so in one
# line and exits 0: the Dockerfiles are still linted and checked by `make test`.
#   IMAGE_PREFIX  default kokoropay (e.g. registry.example.com/kokoropay)
#   TAG           default dev
#   IMAGES        default "auth ledger predictions gateway dashboard envoy synth"
#   PUSH=1        push after building
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="${IMAGE_PREFIX:-kokoropay}"
tag="${TAG:-dev}"
images="${IMAGES:-auth ledger predictions gateway dashboard envoy synth}"

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

# The default ports are written once, in services/common/mesh.py (no dependencies to import).
port_of() {
  python3 -c 'import sys; from services.common.mesh import PORTS; print(PORTS[sys.argv[1]])' "$1"
}

for name in $images; do
  case "$name" in
    auth|ledger|predictions|gateway|dashboard)
      build=(--file docker/service.Dockerfile
             --build-arg "SERVICE=$name" --build-arg "PORT=$(port_of "$name")") ;;
    synth|envoy)
      build=(--file "docker/$name.Dockerfile") ;;
    *)
      echo "make images: no image called $name (auth ledger predictions gateway dashboard envoy synth)" >&2
      exit 2 ;;
  esac
  echo "building $prefix/$name:$tag ($engine)"
  # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile, keeping the context small.
  DOCKER_BUILDKIT=1 "$engine" build "${build[@]}" --tag "$prefix/$name:$tag" .
  if [ "${PUSH:-0}" = 1 ]; then
    "$engine" push "$prefix/$name:$tag"
  fi
done
