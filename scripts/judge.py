"""Snakemake entry: judge every session of one (model, arm, shard) on the rubric, k samples each."""

from cbtpipe.backends import make_backend
from cbtpipe.io import read_jsonl, write_json, write_jsonl
from cbtpipe.judge import run_judging
from cbtpipe.rubric import load_rubric
from cbtpipe.rule import entry

with entry(snakemake, "judge") as log:
    jcfg = snakemake.params.judge
    rubric = load_rubric(snakemake.input.rubric)
    sessions = read_jsonl(snakemake.input.sessions)
    backend = make_backend(jcfg["backend"], snakemake.params.backends, where="judge.backend", probe=True)
    try:
        judged, stats = run_judging(sessions, backend, rubric, jcfg, snakemake.input.prompt, snakemake.params.units)
    finally:
        backend.close()
    write_jsonl(snakemake.output.judged, judged)
    write_json(snakemake.output.stats, stats)
    log.info("judge stats: %s", stats)
