"""Snakemake entry: download a hub model (needs internet; a local rule for login nodes)."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from cbtpipe.models import download_hub  # noqa: E402
from cbtpipe.rule import entry  # noqa: E402

with entry(snakemake, "download_model") as log:
    src = snakemake.params.source
    info = download_hub(src["repo_id"], src.get("revision", "main"), snakemake.output[0])
    log.info("downloaded %s", info)
