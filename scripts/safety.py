"""Snakemake entry: the safety flow for every session of one (model, shard), both arms in one run
interleaved patient by patient."""

from cbtpipe.design import load_crisis_resources, load_safety_rubric
from cbtpipe.llm import make_backend
from cbtpipe.stages import judge_arms, run_safety_judging
from cbtpipe.workflow import entry, read_jsonl, write_json, write_jsonl

with entry(snakemake, "safety") as log:
    scfg = snakemake.params.safety
    rubric = load_safety_rubric(snakemake.input.rubric)
    resources = load_crisis_resources(snakemake.input.crisis_resources, scfg["country"])
    by_arm = {arm: read_jsonl(path) for arm, path in zip(snakemake.params.arms, snakemake.input.sessions, strict=True)}
    backend = make_backend(scfg["backend"], snakemake.params.backends, where="safety.backend", probe=True)
    try:
        judged, stats = judge_arms(
            by_arm,
            lambda sessions: run_safety_judging(sessions, backend, rubric, scfg, snakemake.input.prompt, resources, snakemake.params.units),
        )
    finally:
        backend.close()
    for arm, path in zip(snakemake.params.arms, snakemake.output.judged, strict=True):
        write_jsonl(path, judged[arm])
    write_json(snakemake.output.stats, stats)
    log.info("safety stats: %s", stats)
