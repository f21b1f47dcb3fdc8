# syntax=docker/dockerfile:1
# kokoro-pay auth (accounts and API keys, gRPC on 50051). From the repository root:
#   docker build -f docker/auth.Dockerfile -t kokoropay/auth .
# Runs as UID 10001 with a read-only root filesystem; HOME is /tmp, an emptyDir in the cluster.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies before the code, so this layer survives code changes; every version comes
# from requirements.lock.
COPY requirements.lock ./
COPY docker/requirements/ docker/requirements/
RUN pip install --constraint requirements.lock --requirement docker/requirements/database.txt
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY services/ services/
# --no-deps: pyproject's dependency list also names synth's torch, which has no place here.
RUN pip install --no-deps . && python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 kokoropay \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin kokoropay
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["python", "-m", "services.auth"]
