"""Snakemake entry: the transcripts as one file, from the generation shards or from an import."""

from cbtpipe.stages import gather_generation, load_import
from cbtpipe.workflow import entry, read_json, read_jsonl, write_json, write_jsonl

with entry(snakemake, "gather_transcripts") as log:
    dcfg = snakemake.params.data
    if dcfg["source"] == "import":
        sessions = load_import(snakemake.input.imported, dcfg)
        stats = {
            "source": "import",
            "path": snakemake.input.imported,
            "sessions_kept": len(sessions),
            "patients": len({s["patient_id"] for s in sessions}),
        }
    else:
        parts = [(read_jsonl(t), read_json(s)) for t, s in zip(snakemake.input.shards, snakemake.input.shard_stats, strict=True)]
        profiles = read_jsonl(snakemake.input.train) + read_jsonl(snakemake.input.val)
        sessions, stats = gather_generation(parts, profiles)
        stats["source"] = "generate"
    write_jsonl(snakemake.output.transcripts, sessions)
    write_json(snakemake.output.stats, stats)
    log.info("transcripts: %s", {k: v for k, v in stats.items() if k != "failures"})
