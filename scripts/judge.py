"""Snakemake entry: judge every session of one (model, shard), both arms in one run interleaved
patient by patient, on the rubric, by every judge of the panel, k samples each. With
``closing_turn: remove`` (rule judge_closing, the closing-instruction sensitivity analysis) every
session is judged without the turn its therapist spoke under the hidden closing instruction; a
session without that turn is read back from the main judge's units."""

from cbtpipe.design import load_rubric
from cbtpipe.llm import make_backend
from cbtpipe.stages import judge_arms, run_panel, without_closing_turn
from cbtpipe.workflow import entry, read_jsonl, write_json, write_jsonl

remove = snakemake.params.closing_turn == "remove"
# the job's name (its provenance record's): the closing re-judging is a job of its own
with entry(snakemake, "judge_closing" if remove else "judge") as log:
    jp = snakemake.params.judge
    rubric = load_rubric(snakemake.input.rubric)
    by_arm = {
        arm: [without_closing_turn(s) if remove else s for s in read_jsonl(path)]
        for arm, path in zip(snakemake.params.arms, snakemake.input.sessions, strict=True)
    }
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
    if remove:
        stats["closing_turns_removed"] = {arm: sum(bool(s.get("closing_turn_removed")) for s in ss) for arm, ss in by_arm.items()}
    write_json(snakemake.output.stats, stats)
    log.info("judge stats: %s", {k: v for k, v in stats.items() if k != "judges"})
