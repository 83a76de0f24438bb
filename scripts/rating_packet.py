"""Snakemake entry: the blinded rating packet and, apart from it, its key."""

from pathlib import Path

from cbtpipe.io import read_jsonl
from cbtpipe.packet import build_packet
from cbtpipe.rubric import load_rubric
from cbtpipe.rule import entry

with entry(snakemake, "rating_packet") as log:
    sessions = [s for path in snakemake.input.rollouts for s in read_jsonl(path)]
    rubric = load_rubric(snakemake.input.rubric)
    summary = build_packet(
        sessions, rubric, snakemake.params.packet, snakemake.params.models, Path(snakemake.output.html).parent, snakemake.output.key
    )
    log.info("rating packet %s: %d transcripts, %d items each", summary["packet_id"], summary["transcripts"], summary["items"])
