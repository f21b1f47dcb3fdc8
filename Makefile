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

.PHONY: help install protos weights run test lint unit integration e2e bench images \
	envoy-config lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
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

run: $(INSTALLED) $(WEIGHTS) ## Start the whole mesh locally (embedded PostgreSQL unless DATABASE_URL)
	$(VENV)/bin/kokoro-pay up

lint: $(INSTALLED) ## ruff, mypy and the import boundaries
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(INSTALLED) $(WEIGHTS) lint ## Lint, then every test: unit, integration, e2e, deploy
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(INSTALLED) ## Only the fast unit tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: $(INSTALLED) $(WEIGHTS) ## Benchmarks, each against a baseline measured in the same run
	$(PY) -m bench

lock: $(INSTALLED) ## Re-pin requirements.lock from the current .venv
	@{ echo "# Every package kokoro-pay installs, at the versions tested together (pip install -c)."; \
	   echo "# Regenerate with: make lock"; \
	   $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//'; } > requirements.lock

clean: ## Remove .venv/ (keeps .data/: database, secrets, weights)
	rm -rf $(VENV)
