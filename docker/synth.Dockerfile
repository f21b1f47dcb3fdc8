# syntax=docker/dockerfile:1
# kokoro-pay synth (Kokoro-82M on a CUDA build of torch, gRPC on 50053); also runs the
# synth-weights Job (`python -m services.synth.weights`). From the repository root:
#   docker build -f docker/synth.Dockerfile -t kokoropay/synth .
# Runs as UID 10001 with a read-only root filesystem; HOME is /tmp, an emptyDir in the cluster.
#
# The base is NVIDIA's CUDA image (its NVIDIA_* settings and driver requirement let the NVIDIA
# container runtime expose the GPU); the "base" flavour, because the CUDA torch wheels bring
# their own cuBLAS/cuDNN and the "runtime" flavour's copies would only add gigabytes to every
# GPU node's pull. Keep TORCH_CUDA and the image's CUDA version on the same release line.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE} AS build
# torch==TORCH_VERSION must match requirements.lock; the local label picks the CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ARG PYTHON_VERSION=3.11.14
COPY --from=uv /uv /usr/local/bin/uv
# Ubuntu's own Python is 3.12; kokoro-pay is 3.11. uv installs a standalone, relocatable
# CPython under /opt/python, copied as is into the final image.
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy \
    UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=manual
RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --seed --python "${PYTHON_VERSION}" /opt/venv
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The dependencies before the code, so this layer survives code changes: the project is built
# once with empty package folders, only to install its `synth` extra, and uninstalled again.
# One resolution over PyPI and PyTorch's CUDA index: the lock pins every shared package, the
# explicit requirement picks torch's CUDA build of the locked version, and torch's own metadata
# pins its nvidia-* wheels.
COPY requirements.lock pyproject.toml README.md ./
RUN mkdir services protos \
    && uv pip install \
      --constraint requirements.lock \
      --extra-index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
      --index-strategy unsafe-best-match \
      ".[synth]" "torch==${TORCH_VERSION}+${TORCH_CUDA}" \
    && uv pip uninstall kokoro-pay
COPY protos/ protos/
COPY services/ services/
RUN uv pip install --no-deps .

FROM ${CUDA_IMAGE}
RUN groupadd --gid 10001 kokoropay \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin kokoropay
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_DISABLE_TELEMETRY=1
USER 10001:10001
EXPOSE 50053
ENTRYPOINT ["python", "-m", "services.synth"]
