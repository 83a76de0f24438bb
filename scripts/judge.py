"""Snakemake entry: judge every session of one (model, arm, shard) on the rubric, by every judge
of the panel, k samples each."""

from cbtpipe.backends import make_backend
from cbtpipe.io import read_jsonl, write_json, write_jsonl
from cbtpipe.judge import run_panel
from cbtpipe.rubric import load_rubric
from cbtpipe.rule import entry

with entry(snakemake, "judge") as log:
    jp = snakemake.params.judge
    rubric = load_rubric(snakemake.input.rubric)
    sessions = read_jsonl(snakemake.input.sessions)
    backends = {}
    try:
        for m in jp["members"]:
            if m["backend"] not in backends:
                where = "judge.backend" if len(jp["members"]) == 1 else f"judge.panel ({m['name']}).backend"
                backends[m["backend"]] = make_backend(m["backend"], snakemake.params.backends, where=where, probe=True)
        judged, stats = run_panel(
            sessions, backends, rubric, jp["members"], list(snakemake.input.prompts), snakemake.params.units, jp["reducer"]
        )
    finally:
        for b in backends.values():
            b.close()
    write_jsonl(snakemake.output.judged, judged)
    write_json(snakemake.output.stats, stats)
    log.info("judge stats: %s", {k: v for k, v in stats.items() if k != "judges"})
