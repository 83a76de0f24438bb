"""Snakemake entry: each rollout ablation against the main run, paired by patient."""

from cbtpipe.design import load_rubric
from cbtpipe.stats import ablation_comparison, ablation_tests, read_csv, total_rows
from cbtpipe.workflow import entry, read_jsonl, write_json

with entry(snakemake, "ablation_statistics") as log:
    rubric = load_rubric(snakemake.input.rubric)
    main = read_csv(snakemake.input.totals)
    models = sorted({r["model"] for r in main})
    arms = sorted({r["arm"] for r in main})
    rcfg = snakemake.params.report
    out = {}
    for name, settings in snakemake.params.ablations.items():
        judged = [j for path in snakemake.input.judged if f"/ablations/{name}/" in path for j in read_jsonl(path)]
        sessions = {s["session_id"]: s for path in snakemake.input.rollouts if f"/ablations/{name}/" in path for s in read_jsonl(path)}
        # the score table's text form, as the main run's is read back from its CSV
        rows = [{k: "" if v is None else str(v) for k, v in r.items()} for r in total_rows(judged, rubric, sessions)]
        out[name] = {
            "settings": settings,
            "comparison": ablation_comparison(main, rows, models, arms, rcfg["alpha"], rcfg["bootstrap"], snakemake.params.seed),
        }
    # each variant's p-values registered in a family of their own (the report lists them with the rest)
    write_json(snakemake.output.stats, {"variants": out, "tests": ablation_tests(out)})
    log.info("ablations: %s", list(out))
