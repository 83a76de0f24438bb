"""Snakemake entry: a synthetic course history for each evaluation patient (later positions)."""

from cbtpipe.llm import make_backend
from cbtpipe.stages import generate_history
from cbtpipe.workflow import entry, read_jsonl, write_json, write_jsonl

with entry(snakemake, "eval_history") as log:
    p = snakemake.params
    # only later positions need a history (and a generator: an import may have none)
    backend = (
        make_backend(p.course["generator"], p.backends, where="data.generator", probe=True) if max(p.course["positions"]) > 1 else None
    )
    try:
        rows, stats = generate_history(
            read_jsonl(snakemake.input.profiles), backend, p.course, p.course["positions"], snakemake.input.template, p.units
        )
    finally:
        if backend is not None:
            backend.close()
    write_jsonl(snakemake.output.history, rows)
    write_json(snakemake.output.stats, stats)
    log.info("course histories: %s", stats)
