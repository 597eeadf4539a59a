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

.DEFAULT_GOAL := help
.PHONY: help setup run repro test test-fast lint format push pull clean ui server schedule bench transfer-study

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
	python -m flows.pipeline_flow

repro: setup ## Run the DVC graph without Prefect (`dvc repro`).
	dvc repro

ui: setup ## MLflow UI on http://127.0.0.1:5000 over mlruns/.
	mkdir -p mlruns
	mlflow ui --backend-store-uri sqlite:///$(abspath mlruns)/mlflow.db \
	  --default-artifact-root $(abspath mlruns)/artifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

server: setup ## Prefect server + UI on http://127.0.0.1:4200: loopback, CSRF on, auth string in .radops/prefect-api-auth.
	mkdir -p "$(PREFECT_HOME)"
	python -m flows.server --port $(PREFECT_PORT)

schedule: setup ## Serve nightly retraining of this folder (cron from params.yaml; runs take no parameters).
	mkdir -p "$(PREFECT_HOME)"
	PREFECT_PORT=$(PREFECT_PORT) python -m flows.retrain

bench: setup ## Performance benchmarks: ratios against baselines, written to bench/results.json.
	python -m bench.run

transfer-study: setup ## Scratch vs autoencoder-pretrained classifier at 5/10/25/100 % labels, 3 seeds (bench/work/transfer/).
	dvc repro preprocess
	nice -n 10 python -m bench.transfer_study
	nice -n 10 python -m bench.transfer_study --freeze-epochs 0 --work bench/work/transfer-freeze0 \
	  --autoencoder bench/work/transfer/autoencoder/model \
	  --reuse-scratch bench/work/transfer/transfer_study_runs.json

test: setup ## Run the test suite.
	pytest

test-fast: setup ## Run the tests not marked slow.
	pytest -m "not slow"

lint: setup ## ruff and mypy.
	ruff check pipeline flows tests
	ruff format --check pipeline flows tests
	mypy

format: setup ## Apply ruff's formatting and safe fixes.
	ruff check --fix pipeline flows tests
	ruff format pipeline flows tests

push: setup ## Push DVC-tracked data and models to the remote (see `dvc remote list`).
	dvc push

pull: setup ## Fetch DVC-tracked data and models from the remote.
	dvc pull

clean: ## Remove stage outputs (not mlruns/ or the pseudonym key).
	rm -rf data models reports metrics plots
