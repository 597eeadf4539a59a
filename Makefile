# radops — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.radops-installed

.DEFAULT_GOAL := help
.PHONY: help setup run test test-fast lint format push pull clean

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

run: setup ## Run the whole pipeline on the bundled synthetic cohort.
	dvc repro

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
