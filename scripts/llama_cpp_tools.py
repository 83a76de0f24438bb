"""Snakemake entry: extract llama.cpp's converter from the installed llama-cpp-python's sdist."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from cbtpipe.rule import entry  # noqa: E402
from cbtpipe.tools import build_tools  # noqa: E402

with entry(snakemake, "llama_cpp_tools") as log:
    info = build_tools(snakemake.output.tools, snakemake.output.info)
    log.info("extracted %s files from %s", info["files"], info["sdist"])
