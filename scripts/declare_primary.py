"""Snakemake entry: the primary endpoint on record, with its hash and the time it was recorded."""

from cbtpipe.stats import declaration
from cbtpipe.workflow import entry, write_json

with entry(snakemake, "declare_primary") as log:
    rec = declaration(snakemake.params.primary, snakemake.params.population)
    write_json(snakemake.output[0], rec)
    log.info("primary endpoint declared: %s", rec)
