"""Snakemake entry: quantize a GGUF with llama.cpp's quantizer (through llama-cpp-python)."""

from cbtpipe.stages import quantize
from cbtpipe.workflow import entry

with entry(snakemake, "quantize_gguf") as log:
    secs = quantize(snakemake.input[0], snakemake.output[0], snakemake.wildcards.qtype, snakemake.threads)
    log.info("quantized %s in %.1f s", snakemake.output[0], secs)
