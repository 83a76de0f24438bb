"""Snakemake entry: the tidy score table and per-session totals."""

from cbtpipe.design import load_rubric
from cbtpipe.stats import LONG_FIELDS, long_rows, total_fields, total_rows, write_csv
from cbtpipe.workflow import entry, read_jsonl

with entry(snakemake, "scores") as log:
    rubric = load_rubric(snakemake.input.rubric)
    judged = [j for path in snakemake.input.judged for j in read_jsonl(path)]
    write_csv(snakemake.output.long, long_rows(judged, rubric), LONG_FIELDS)
    sessions = {s["session_id"]: s for path in snakemake.input.rollouts for s in read_jsonl(path)}
    profiles = {p["id"]: p for p in read_jsonl(snakemake.input.profiles)}
    write_csv(snakemake.output.totals, total_rows(judged, rubric, sessions, profiles), total_fields(rubric))
    # the closing-instruction sensitivity analysis: the same sessions judged without their closing turn
    closing = [j for path in snakemake.input.closing for j in read_jsonl(path)]
    write_csv(snakemake.output.closing_totals, total_rows(closing, rubric, sessions, profiles), total_fields(rubric))
    log.info("%d judged sessions", len(judged))
