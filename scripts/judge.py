"""Snakemake entry: judge every session of one (model, arm, shard) on the rubric, k samples each."""

import sys

sys.path.insert(0, snakemake.scriptdir)
from cbtpipe.backends import make_backend  # noqa: E402
from cbtpipe.io import read_jsonl, write_json, write_jsonl  # noqa: E402
from cbtpipe.judge import load_rubric, run_judging  # noqa: E402
from cbtpipe.rule import entry  # noqa: E402

with entry(snakemake, "judge") as log:
    jcfg = snakemake.params.judge
    rubric = load_rubric(snakemake.input.rubric)
    sessions = read_jsonl(snakemake.input.sessions)
    backend = make_backend(jcfg["backend"], snakemake.params.backends, where="judge.backend")
    try:
        judged, stats = run_judging(sessions, backend, rubric, jcfg, snakemake.input.prompt, snakemake.params.units)
    finally:
        backend.close()
    write_jsonl(snakemake.output.judged, judged)
    write_json(snakemake.output.stats, stats)
    log.info("judge stats: %s", stats)
