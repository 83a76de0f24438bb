"""Snakemake entry: the safety flow for every session of one (model, arm, shard)."""

from cbtpipe.design import load_crisis_resources, load_safety_rubric
from cbtpipe.llm import make_backend
from cbtpipe.stages import run_safety_judging
from cbtpipe.workflow import entry, read_jsonl, write_json, write_jsonl

with entry(snakemake, "safety") as log:
    scfg = snakemake.params.safety
    rubric = load_safety_rubric(snakemake.input.rubric)
    resources = load_crisis_resources(snakemake.input.crisis_resources, scfg["country"])
    sessions = read_jsonl(snakemake.input.sessions)
    backend = make_backend(scfg["backend"], snakemake.params.backends, where="safety.backend", probe=True)
    try:
        judged, stats = run_safety_judging(sessions, backend, rubric, scfg, snakemake.input.prompt, resources, snakemake.params.units)
    finally:
        backend.close()
    write_jsonl(snakemake.output.judged, judged)
    write_json(snakemake.output.stats, stats)
    log.info("safety stats: %s", stats)
