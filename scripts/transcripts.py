"""Snakemake entry: generate synthetic CBT courses (resumable) or import transcripts."""

from cbtpipe.backends import make_backend
from cbtpipe.io import read_jsonl, write_json, write_jsonl
from cbtpipe.rule import entry
from cbtpipe.transcripts import load_import, run_generation

with entry(snakemake, "transcripts") as log:
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
        profiles = read_jsonl(snakemake.input.train) + read_jsonl(snakemake.input.val)
        backend = make_backend(dcfg["generator"], snakemake.params.backends, where="data.generator", probe=True)
        try:
            sessions, stats = run_generation(profiles, backend, dcfg, snakemake.input.template, "results/units/transcripts")
        finally:
            backend.close()
        stats["source"] = "generate"
    write_jsonl(snakemake.output.transcripts, sessions)
    write_json(snakemake.output.stats, stats)
    log.info("transcripts: %s", {k: v for k, v in stats.items() if k != "failures"})
