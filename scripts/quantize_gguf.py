"""Snakemake entry: quantize a GGUF with llama.cpp's quantizer (through llama-cpp-python)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from cbtpipe.export import quantize  # noqa: E402
from cbtpipe.rule import entry  # noqa: E402

with entry(snakemake, "quantize_gguf") as log:
    secs = quantize(snakemake.input[0], snakemake.output[0], snakemake.wildcards.qtype, snakemake.threads)
    log.info("quantized %s in %.1f s", snakemake.output[0], secs)
