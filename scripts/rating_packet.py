"""Snakemake entry: the blinded rating packet and, apart from it, its key."""

from pathlib import Path

from cbtpipe.design import load_rubric
from cbtpipe.report import build_packet
from cbtpipe.workflow import entry, read_jsonl

with entry(snakemake, "rating_packet") as log:
    sessions = [s for path in snakemake.input.rollouts for s in read_jsonl(path)]
    rubric = load_rubric(snakemake.input.rubric)
    summary = build_packet(
        sessions, rubric, snakemake.params.packet, snakemake.params.models, Path(snakemake.output.html).parent, snakemake.output.key
    )
    log.info("rating packet %s: %d transcripts, %d items each", summary["packet_id"], summary["transcripts"], summary["items"])
