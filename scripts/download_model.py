"""Snakemake entry: download a hub model at its commit, and record the commit (needs internet; a local
rule for login nodes)."""

from cbtpipe.stages import download_hub
from cbtpipe.workflow import entry

with entry(snakemake, "download_model") as log:
    src = snakemake.params.source
    info = download_hub(src["repo_id"], src.get("revision", "main"), snakemake.output[0], name=snakemake.wildcards.model)
    log.info("downloaded %s", info)
