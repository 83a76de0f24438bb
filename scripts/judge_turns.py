"""Snakemake entry: the opt-in per-turn judge pass over excerpts of each session (judge.turn_windows)."""

from cbtpipe.design import load_rubric
from cbtpipe.llm import make_backend
from cbtpipe.stages import run_turn_judging
from cbtpipe.workflow import entry, read_jsonl, write_json, write_jsonl

with entry(snakemake, "judge_turns") as log:
    jcfg = snakemake.params.judge
    rubric = load_rubric(snakemake.input.rubric)
    backend = make_backend(jcfg["backend"], snakemake.params.backends, where="judge.backend", probe=True)
    try:
        rows, stats = run_turn_judging(
            read_jsonl(snakemake.input.sessions), backend, rubric, jcfg, snakemake.input.prompt, snakemake.params.units
        )
    finally:
        backend.close()
    write_jsonl(snakemake.output.judged, rows)
    write_json(snakemake.output.stats, stats)
    log.info("turn windows: %s", stats)
