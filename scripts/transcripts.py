"""Snakemake entry: generate the synthetic CBT courses of one shard of the patients (resumable)."""

from cbtpipe.llm import make_backend
from cbtpipe.stages import run_generation
from cbtpipe.workflow import entry, read_jsonl, shard_of, write_json, write_jsonl

with entry(snakemake, "transcripts") as log:
    dcfg = snakemake.params.data
    shard, shards = int(snakemake.wildcards.shard), snakemake.params.shards
    profiles = shard_of(read_jsonl(snakemake.input.train) + read_jsonl(snakemake.input.val), shard, shards)
    backend = make_backend(dcfg["generator"], snakemake.params.backends, where="data.generator", probe=True)
    try:
        sessions, stats = run_generation(profiles, backend, dcfg, snakemake.input.template, "results/units/transcripts")
    finally:
        backend.close()
    stats |= {"source": "generate", "shard": shard}
    write_jsonl(snakemake.output.transcripts, sessions)
    write_json(snakemake.output.stats, stats)
    log.info("transcripts, shard %d of %d: %s", shard, shards, {k: v for k, v in stats.items() if k != "failures"})
