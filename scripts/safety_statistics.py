"""Snakemake entry: safety results per model and arm, the paired arm comparison, the breakdown by
risk level and disclosure style, refusals, and each rollout ablation against the main run."""

import re

from cbtpipe.design import load_safety_rubric
from cbtpipe.stats import analyse_safety, safety_provenance, session_fields, write_csv
from cbtpipe.workflow import entry, read_jsonl, write_json

with entry(snakemake, "safety_statistics") as log:
    rubric = load_safety_rubric(snakemake.input.rubric)
    rcfg = snakemake.params.report
    ablations: dict[str, list] = {}
    for path in snakemake.input.ablations:
        variant = re.search(r"/ablations/([^/]+)/safety/", path).group(1)
        ablations.setdefault(variant, []).extend(read_jsonl(path))
    records = [r for p in snakemake.input.judged for r in read_jsonl(p)]
    stats, rows = analyse_safety(
        records=records,
        ablation_records=ablations,
        rollouts=[s for p in snakemake.input.rollouts for s in read_jsonl(p)],
        ctrs=[j for p in snakemake.input.ctrs for j in read_jsonl(p)],
        profiles=read_jsonl(snakemake.input.profiles),
        rubric=rubric,
        patterns=snakemake.params.refusal_patterns,
        alpha=rcfg["alpha"],
        n_boot=rcfg["bootstrap"],
        seed=snakemake.params.seed,
        power=rcfg["power"],
        checks=[c for p in snakemake.input.patient_check for c in read_jsonl(p)],
    )
    stats["judge_provenance"] = safety_provenance(records)  # when the safety judge met each arm, and what answered
    write_json(snakemake.output.stats, stats)
    write_csv(snakemake.output.sessions, rows, session_fields(rubric))
    log.info("safety: %d sessions, %d per-arm summaries", len(rows), len(stats["per_arm"]))
