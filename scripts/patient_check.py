"""Snakemake entry: the simulated-patient check of every session of one (model, shard), both arms
in one run interleaved patient by patient."""

from cbtpipe.llm import make_backend
from cbtpipe.stages import judge_arms, run_patient_check
from cbtpipe.workflow import entry, read_jsonl, write_json, write_jsonl

with entry(snakemake, "patient_check") as log:
    ccfg = snakemake.params.check
    profiles = {p["id"]: p for p in read_jsonl(snakemake.input.profiles)}
    by_arm = {arm: read_jsonl(path) for arm, path in zip(snakemake.params.arms, snakemake.input.sessions, strict=True)}
    backend = make_backend(ccfg["backend"], snakemake.params.backends, where="patient_check.backend", probe=True)
    try:
        checked, stats = judge_arms(
            by_arm, lambda sessions: run_patient_check(sessions, backend, profiles, ccfg, snakemake.input.prompt, snakemake.params.units)
        )
    finally:
        backend.close()
    for arm, path in zip(snakemake.params.arms, snakemake.output.checked, strict=True):
        write_jsonl(path, checked[arm])
    write_json(snakemake.output.stats, stats)
    log.info("patient check: %s", {k: v for k, v in stats.items() if k != "llm"})
