"""Snakemake entry: the tidy score table and per-session totals."""

from cbtpipe.analysis import LONG_FIELDS, long_rows, total_rows, write_csv
from cbtpipe.io import read_jsonl
from cbtpipe.rubric import load_rubric
from cbtpipe.rule import entry

with entry(snakemake, "scores") as log:
    rubric = load_rubric(snakemake.input.rubric)
    judged = [j for path in snakemake.input.judged for j in read_jsonl(path)]
    write_csv(snakemake.output.long, long_rows(judged, rubric), LONG_FIELDS)
    totals = total_rows(judged, rubric)
    fields = ["session_id", "patient_id", "model", "arm", "quantization", "samples", "valid_samples", "total"]
    write_csv(snakemake.output.totals, totals, fields + [i["id"] for i in rubric["items"]])
    log.info("%d judged sessions", len(judged))
