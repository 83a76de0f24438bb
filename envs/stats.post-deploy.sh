#!/usr/bin/env bash
# Snakemake runs this once after creating the conda environment, with the environment active and
# the pipeline's folder as working directory.
set -euo pipefail
test -f pyproject.toml || { echo "run snakemake from the pipeline's folder (pyproject.toml not found)" >&2; exit 1; }
# The pipeline's library (src/cbtpipe), editable: the entry scripts import it as installed.
python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
