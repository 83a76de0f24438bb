"""Snakemake entry: convert a Hugging Face model to GGUF with llama.cpp's own converter."""

from cbtpipe.stages import check_tools_version, convert_to_gguf
from cbtpipe.workflow import entry, read_json

with entry(snakemake, "convert_gguf") as log:
    check_tools_version(read_json(snakemake.input.info))
    secs = convert_to_gguf(snakemake.input.hf, snakemake.output[0], snakemake.input.tools, snakemake.wildcards.outtype)
    log.info("converted %s in %.1f s", snakemake.output[0], secs)
