# syntax=docker/dockerfile:1
# kokoro-pay's Python services without a GPU, one image each from this file:
#   auth (accounts and API keys), ledger (credits, holds and the journal), predictions (the
#   asynchronous predictions API; its workers run the same image with
#   `python -m services.predictions.worker`), gateway (the REST API), dashboard (the customers'
#   web pages; its templates and static files ship as package data).
# SERVICE names the service and the pyproject extra the image installs (`.[auth]`, …); PORT is
# its default port (services/common/mesh.py), for EXPOSE only. synth has its own Dockerfile
# (CUDA base). `make images` builds them all; one by hand, from the repository root:
#   docker build -f docker/service.Dockerfile --build-arg SERVICE=auth --build-arg PORT=50051 \
#     -t kokoropay/auth .
# Runs as UID 10001 with a read-only root filesystem; HOME is /tmp, an emptyDir in the cluster.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN case "${SERVICE}" in \
      auth|ledger|predictions|gateway|dashboard) ;; \
      *) echo "build with --build-arg SERVICE=auth|ledger|predictions|gateway|dashboard" \
              "(synth: its own)" >&2; \
         exit 1 ;; \
    esac \
    && python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The service's dependencies before the code, so this layer survives code changes: the project
# is built once with empty package folders, only to install its extra (every version from
# requirements.lock), and uninstalled again; the code goes in next, resolving nothing.
COPY requirements.lock pyproject.toml README.md ./
RUN mkdir services protos \
    && pip install --constraint requirements.lock ".[${SERVICE}]" \
    && pip uninstall --yes kokoro-pay
COPY protos/ protos/
COPY services/ services/
RUN pip install --no-deps . && python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
ARG SERVICE
ARG PORT
RUN groupadd --gid 10001 kokoropay \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin kokoropay
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    KOKOROPAY_SERVICE=${SERVICE}
USER 10001:10001
EXPOSE ${PORT}
# `exec`: python replaces the shell as PID 1, so SIGTERM reaches the service's drain.
ENTRYPOINT ["/bin/sh", "-c", "exec python -m \"services.${KOKOROPAY_SERVICE}\" \"$@\"", "kokoropay"]
