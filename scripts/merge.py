"""Snakemake entry: merge the LoRA adapter into the full-precision base model."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from cbtpipe.rule import entry  # noqa: E402
from cbtpipe.training import merge_adapter  # noqa: E402

with entry(snakemake, "merge") as log:
    info = merge_adapter(snakemake.input.base, snakemake.input.adapter, snakemake.output.hf, snakemake.params.dtype)
    log.info("merged: %s", info)
