"""Snakemake entry: paired, between-model and per-item statistics, judge reliability."""

from cbtpipe.analysis import analyse, read_csv
from cbtpipe.io import write_json
from cbtpipe.rubric import load_human_ratings, load_rubric
from cbtpipe.rule import entry

with entry(snakemake, "statistics") as log:
    rcfg = snakemake.params.report
    rubric = load_rubric(snakemake.input.rubric)
    r = getattr(snakemake.input, "human_ratings", None)  # one path, or an empty list without ratings
    ratings = r if isinstance(r, str) else (r[0] if r else None)
    human = load_human_ratings(ratings, rubric) if ratings else None
    res = analyse(read_csv(snakemake.input.long), read_csv(snakemake.input.totals), rubric, rcfg, snakemake.params.seed, human)
    write_json(snakemake.output.stats, res)
    log.info("statistics written: %s", list(res))
