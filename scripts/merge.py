"""Snakemake entry: merge the LoRA adapter into the full-precision base model."""

from cbtpipe.stages import merge_adapter
from cbtpipe.workflow import entry

with entry(snakemake, "merge") as log:
    info = merge_adapter(snakemake.input.base, snakemake.input.adapter, snakemake.output.hf, snakemake.params.dtype)
    log.info("merged: %s", info)
