"""Snakemake entry: extract llama.cpp's converter from the installed llama-cpp-python's sdist."""

from cbtpipe.stages import build_tools
from cbtpipe.workflow import entry

with entry(snakemake, "llama_cpp_tools") as log:
    info = build_tools(snakemake.output.tools, snakemake.output.info)
    log.info("extracted %s files from %s", info["files"], info["sdist"])
