"""Snakemake entry: figures, Markdown and self-contained HTML report."""

from pathlib import Path

from cbtpipe.design import load_rubric
from cbtpipe.plan import build_plan
from cbtpipe.report import benchmark_table, build_markdown, collect_provenance, draw_figures, load_many, write_report
from cbtpipe.stats import declared_before, read_csv
from cbtpipe.workflow import entry, read_json, sha256_file

with entry(snakemake, "report") as log:
    inp = snakemake.input
    cfg = snakemake.params.config
    stats = read_json(inp.stats)
    losses = {m: read_csv(p) for m, p in zip(snakemake.params.models, inp.train_logs, strict=True)}
    draw_figures(read_csv(inp.totals), stats, Path(snakemake.output.figures), safety=read_json(inp.safety), losses=losses)
    prov_models = load_many(inp.provenance)
    training = [dict(read_json(p), model=m) for p, m in zip(inp.training, sorted(cfg["models"]), strict=True)]
    files = {p: sha256_file(p) for p in [*inp.rollout_stats, inp.long, inp.totals]}
    ctx = {
        "stats": stats,
        "rubric": load_rubric(inp.rubric),
        "config": cfg,
        "tiny": any("smollm2" in str(m["source"]).lower() for m in cfg["models"].values()),
        "judge_stats": load_many(inp.judge_stats),
        "rollout_stats": load_many(inp.rollout_stats),
        "training": training,
        "parity": load_many(inp.parity),
        "provenance_models": prov_models,
        "gen_stats": read_json(inp.gen_stats),
        # the dataset's split, with each model's token counts (token_stats, per model)
        "data_stats": read_json(inp.data_stats)
        | {"per_model": {m: read_json(f) for m, f in zip(snakemake.params.models, inp.token_stats, strict=True)}},
        "eval_history": read_json(inp.eval_history),
        "safety": read_json(inp.safety),
        "safety_stats": load_many(inp.safety_stats),
        "plan": build_plan(cfg, "."),
        "ablations": read_json(inp.ablations[0]) if inp.ablations else {},
        "turn_windows": read_json(inp.turn_windows[0]) if inp.turn_windows else {},
        "benchmarks": benchmark_table(snakemake.params.benchmarks),
        "provenance": collect_provenance(cfg, prov_models, files),
        "declaration": declared_before(
            read_json(inp.primary),
            cfg["report"]["primary"],
            cfg["report"]["ctrs_population"],
            (stats.get("judge_provenance") or {}).get("first_call"),
        ),
    }
    write_report(snakemake.output.md, snakemake.output.html, build_markdown(ctx))
    log.info("report written to %s", snakemake.output.html)
