# kokoro-pay: `make run` starts the whole mesh locally, `make test` checks everything.
# Both install what is missing first (.venv/, the Kokoro weights under .data/weights/).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install whenever the dependency pins change.
INSTALLED := $(VENV)/.installed
WEIGHTS := .data/weights/manifest.json
PYTEST_ARGS ?=

.PHONY: help install protos weights browser promtool run test lint unit integration e2e chaos bench gpu-wheels images \
	envoy-config lock clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | \
		awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
		"error: kokoro-pay needs Python 3.11 (set PYTHON=/path/to/python3.11)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing dependencies into $(VENV)/ (first time: a few minutes)…"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet --constraint requirements.lock --editable '.[dev]'
	@touch $@

install: $(INSTALLED) ## Create .venv/ and install pinned dependencies

protos: $(INSTALLED) ## Regenerate the gRPC stubs beside protos/**/*.proto
	$(PY) protos/generate.py

$(WEIGHTS): | $(INSTALLED)
	$(PY) -m services.synth.weights

weights: $(INSTALLED) ## Resolve the Kokoro-82M weights into .data/weights/ (offline if need be)
	$(PY) -m services.synth.weights

# The dashboard's browser tests drive Debian's Chromium (Playwright's own download is not
# reachable from everywhere); installed once, with sudo when not root.
browser: ## Install Chromium (Debian package) for the dashboard's browser tests
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (apt-get) for the dashboard's browser tests…"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; } || { \
	    echo "error: could not install chromium: run 'sudo apt-get install chromium', then retry" >&2; \
	    exit 1; }; }

# The alert rules' checks run Debian's promtool (`promtool check rules`, `promtool test rules`),
# from the package that also ships the Prometheus server; installed once, like the browser.
promtool: ## Install promtool (Debian package prometheus) for the alert rules' tests
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool (apt-get install prometheus) for the alert rules' tests…"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	      prometheus >/dev/null; } || { \
	    echo "error: could not install promtool: run 'sudo apt-get install prometheus', then retry" >&2; \
	    exit 1; }; }

run: $(INSTALLED) $(WEIGHTS) ## Start the whole mesh locally (embedded PostgreSQL unless DATABASE_URL)
	$(VENV)/bin/kokoro-pay up

lint: $(INSTALLED) ## ruff, mypy and the import boundaries (lint-imports, contracts in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-logo

test: $(INSTALLED) $(WEIGHTS) browser promtool lint ## Lint, then every test: unit, integration, e2e, deploy
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(INSTALLED) ## Only the fast unit tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: $(INSTALLED) $(WEIGHTS) ## Only the integration tests (each service on real PostgreSQL, Envoy, the model)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

e2e: $(INSTALLED) $(WEIGHTS) browser ## Only the end-to-end tests (the whole mesh through the REST API)
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

chaos: $(INSTALLED) $(WEIGHTS) ## Only the chaos suite (kill each process of the mesh, check the books)
	$(PY) -m pytest tests/chaos $(PYTEST_ARGS)

bench: $(INSTALLED) $(WEIGHTS) ## Benchmarks, each against a baseline measured in the same run
	$(PY) -m bench

gpu-wheels: $(INSTALLED) ## Wheels a GPU machine needs for bench/gpu/run.sh, into .whl/
	PYTHON=$(PY) bash bench/gpu/wheels.sh

images: ## Build the container images (one line and exit 0 where no container engine runs)
	@docker/build-images.sh

envoy-config: $(INSTALLED) ## Regenerate deploy/k8s/base/envoy/envoy.yaml from the running mesh (make run first)
	@mkdir -p build
	$(VENV)/bin/kokoro-pay envoy-config \
	  --target auth=127.0.0.1:50051 --target ledger=127.0.0.1:50052 --target synth=127.0.0.1:50053 \
	  --target predictions=127.0.0.1:50054 \
	  --upstream auth=auth-headless.kokoropay.svc.cluster.local:50051 \
	  --upstream ledger=ledger-headless.kokoropay.svc.cluster.local:50052 \
	  --upstream synth=synth-headless.kokoropay.svc.cluster.local:50053 \
	  --upstream predictions=predictions-headless.kokoropay.svc.cluster.local:50054 \
	  --health-upstream synth --out deploy/k8s/base/envoy/envoy.yaml --descriptor-out build/protos.pb

lock: $(INSTALLED) ## Re-pin requirements.lock from the current .venv
	@{ echo "# Every package kokoro-pay installs, at the versions tested together (pip install -c)."; \
	   echo "# Regenerate with: make lock"; \
	   $(PY) -m pip freeze --exclude-editable | sed "s/+cpu//"; } > requirements.lock

clean: ## Remove .venv/ (keeps .data/: database, secrets, weights)
	rm -rf $(VENV)
