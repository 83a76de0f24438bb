"""Snakemake entry: per-turn judge scores against the context the therapist had reached."""

from cbtpipe.stats import turn_scores_vs_context, turn_tests
from cbtpipe.workflow import entry, read_jsonl, write_json

with entry(snakemake, "turn_statistics") as log:
    rows = [r for path in snakemake.input.judged for r in read_jsonl(path)]
    res = turn_scores_vs_context(rows) | {"settings": snakemake.params.windows}
    res["tests"] = turn_tests(res)
    write_json(snakemake.output.stats, res)
    log.info("turn windows: %d excerpts", len(rows))
