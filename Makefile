# radops — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.radops-installed
# Prefect's state (local server database, settings) stays inside the project.
export PREFECT_HOME ?= $(abspath .radops/prefect)
# The MLflow UI's port: base.mlflow_ui_port in params.yaml (the run summary links to it).
MLFLOW_PORT ?= $(or $(shell sed -n 's/^ *mlflow_ui_port: *\([0-9]*\).*/\1/p' params.yaml),5000)
PREFECT_PORT ?= 4200
# make stack: Prefect workers in the process work pool; optuna-dashboard's port.
STACK_WORKERS ?= 2
# pytest-xdist workers for `make test` (the tests sharing a session fixture stay together:
# tests/conftest.py groups them); 2 fits the 2-core machine CI runs on.
TEST_WORKERS ?= 2
TUNE_UI_PORT ?= 8080
STACK_ENV := .radops/stack/env
# While `make stack` is up, recipes get its client settings (MLflow server, PostgreSQL study,
# Prefect API); otherwise the embedded defaults (SQLite, an ephemeral Prefect server).
WITH_STACK = if python -m ops.stack check; then set -a; . ./$(STACK_ENV); set +a; fi;
# apt-get needs root; others get sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.DEFAULT_GOAL := help
.PHONY: help setup run repro test test-fast lint format push pull clean ui server schedule bench \
	stack stack-down stack-deps browser-deps tune-ui transfer-study quality docs gpu-check

help: ## List the targets.
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv and install radops with its pinned dependencies (idempotent).

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build of torch from the local wheel first, so nothing pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

run: setup ## Run the whole pipeline (Prefect flow over the DVC graph; temporary local Prefect server).
	mkdir -p "$(PREFECT_HOME)"
	$(WITH_STACK) python -m flows.pipeline_flow

repro: setup ## Run the DVC graph without Prefect (`dvc repro`).
	dvc repro

ui: setup ## MLflow UI on http://127.0.0.1:5000 over mlruns/, basic auth: admin, .radops/mlflow-admin-password (the stack's server while it is up).
	@$(WITH_STACK) if [ -n "$$MLFLOW_TRACKING_URI" ]; then \
	  echo "make stack is up: its MLflow server serves the UI at" \
	    "$$MLFLOW_TRACKING_URI/#/experiments?workflowType=machine_learning"; exit 0; fi; \
	mkdir -p mlruns; \
	python -m pipeline.tracking_auth --port $(MLFLOW_PORT)

tune-ui: setup ## optuna-dashboard over the study storage (SQLite, journal or the stack's PostgreSQL) on 127.0.0.1.
	$(WITH_STACK) python -m pipeline.training.tune_ui --port $(TUNE_UI_PORT)

server: setup ## Prefect server + UI on http://127.0.0.1:4200: loopback, CSRF on, auth string in .radops/prefect-api-auth.
	mkdir -p "$(PREFECT_HOME)"
	python -m ops.prefect_server --port $(PREFECT_PORT)

schedule: setup ## Serve nightly retraining of this folder (cron from params.yaml; runs take no parameters).
	mkdir -p "$(PREFECT_HOME)"
	@if python -m ops.stack check; then python -m ops.stack deploy; \
	else PREFECT_PORT=$(PREFECT_PORT) python -m flows.retrain; fi

stack: setup stack-deps ## PostgreSQL, MLflow server, Prefect server + STACK_WORKERS workers on 127.0.0.1 (state in .radops/stack).
	python -m ops.stack up --workers $(STACK_WORKERS)

stack-down: setup ## Stop everything `make stack` started (databases kept; rm -rf .radops/stack forgets them).
	python -m ops.stack down

stack-deps: ## Install PostgreSQL from the system's packages if initdb/pg_ctl are absent (Debian/Ubuntu).
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends postgresql; }

browser-deps: ## Install Debian's Chromium for the browser tests if absent (Playwright drives it).
	@command -v chromium >/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

bench: setup ## Performance benchmarks: ratios against baselines, written to bench/results.json.
	python -m bench.run

gpu-check: setup ## Training on accelerator auto vs CPU (epochs/s, peak GPU memory, test AUC in the CPU CI); skips the GPU part without one.
	python -m bench.gpu_check

transfer-study: setup ## Scratch vs autoencoder-pretrained classifier at 5/10/25/100 % labels, 3 seeds (bench/work/transfer/).
	dvc repro preprocess
	nice -n 10 python -m bench.transfer_study
	nice -n 10 python -m bench.transfer_study --freeze-epochs 0 --work bench/work/transfer-freeze0 \
	  --autoencoder bench/work/transfer/autoencoder/model \
	  --reuse-scratch bench/work/transfer/transfer_study_runs.json

quality: setup ## Model quality study (not in `make test`): test AUC/ECE/Brier/CPU per cohort variant x config -> bench/work/quality/quality.md.
	nice -n 10 python -m bench.quality $(QUALITY_ARGS)

test: setup stack-deps browser-deps ## Run the test suite on $(TEST_WORKERS) workers (installs PostgreSQL and Chromium if absent).
	pytest -n $(TEST_WORKERS) --dist loadgroup

test-fast: setup ## Run the tests not marked slow.
	pytest -m "not slow"

lint: setup ## ruff, mypy, the import layers (lint-imports) and the documentation site (mkdocs --strict: broken links fail).
	ruff check pipeline flows ops tests
	ruff format --check pipeline flows ops tests
	mypy
	lint-imports
	mkdocs build --strict --quiet --site-dir site

docs: setup ## Build the documentation site from docs/ into site/ (mkdocs --strict).
	mkdocs build --strict --site-dir site

format: setup ## Apply ruff's formatting and safe fixes.
	ruff check --fix pipeline flows ops tests
	ruff format pipeline flows ops tests

push: setup ## Push DVC-tracked data and models to the remote (see `dvc remote list`).
	dvc push

pull: setup ## Fetch DVC-tracked data and models from the remote.
	dvc pull

clean: setup ## Remove the stage outputs radops wrote (other files stay; not mlruns/ or the key).
	radops clean
