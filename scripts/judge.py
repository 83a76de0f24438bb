"""Snakemake entry: judge every session of one (model, shard), both arms in one run interleaved
patient by patient, on the rubric, by every judge of the panel, k samples each."""

from cbtpipe.design import load_rubric
from cbtpipe.llm import make_backend
from cbtpipe.stages import judge_arms, run_panel
from cbtpipe.workflow import entry, read_jsonl, write_json, write_jsonl

with entry(snakemake, "judge") as log:
    jp = snakemake.params.judge
    rubric = load_rubric(snakemake.input.rubric)
    by_arm = {arm: read_jsonl(path) for arm, path in zip(snakemake.params.arms, snakemake.input.sessions, strict=True)}
    backends = {}
    try:
        for m in jp["members"]:
            if m["backend"] not in backends:
                where = "judge.backend" if len(jp["members"]) == 1 else f"judge.panel ({m['name']}).backend"
                backends[m["backend"]] = make_backend(m["backend"], snakemake.params.backends, where=where, probe=True)
        judged, stats = judge_arms(
            by_arm,
            lambda sessions: run_panel(
                sessions, backends, rubric, jp["members"], list(snakemake.input.prompts), snakemake.params.units, jp["reducer"]
            ),
        )
    finally:
        for b in backends.values():
            b.close()
    for arm, path in zip(snakemake.params.arms, snakemake.output.judged, strict=True):
        write_jsonl(path, judged[arm])
    write_json(snakemake.output.stats, stats)
    log.info("judge stats: %s", {k: v for k, v in stats.items() if k != "judges"})
