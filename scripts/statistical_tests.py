"""Snakemake entry: paired, between-model and per-item statistics, judge reliability."""

from cbtpipe.design import load_human_ratings, load_rubric
from cbtpipe.report import load_packet_ratings
from cbtpipe.stats import analyse, judge_provenance, read_csv
from cbtpipe.workflow import entry, read_jsonl, write_json

with entry(snakemake, "statistics") as log:
    rcfg = snakemake.params.report
    rubric = load_rubric(snakemake.input.rubric)
    r = getattr(snakemake.input, "human_ratings", None)  # one path, or an empty list without ratings
    ratings = r if isinstance(r, str) else (r[0] if r else None)
    human = load_human_ratings(ratings, rubric) if ratings else None
    packet = getattr(snakemake.input, "packet_ratings", None)
    if packet:  # a filled blinded packet, mapped back to its sessions through the key
        human = (human or []) + load_packet_ratings(packet, snakemake.input.packet_key, rubric)
    res = analyse(
        read_csv(snakemake.input.long),
        read_csv(snakemake.input.totals),
        rubric,
        rcfg,
        snakemake.params.seed,
        human,
        closing_totals=read_csv(snakemake.input.closing_totals),
        replicates=snakemake.params.replicates,
    )
    res["judge_provenance"] = judge_provenance([j for p in snakemake.input.judged for j in read_jsonl(p)])
    write_json(snakemake.output.stats, res)
    log.info("statistics written: %s", list(res))
