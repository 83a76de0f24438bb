"""Snakemake entry: the run's plan (calls, tokens, cost, GPU hours, wall time per stage) from the
config, before any call is made; the report puts it beside what the run used."""

from cbtpipe.plan import build_plan, plan_markdown
from cbtpipe.workflow import atomic_write_text, entry, write_json

with entry(snakemake, "plan") as log:
    plan = build_plan(snakemake.params.config, ".")
    write_json(snakemake.output.json, plan)
    atomic_write_text(snakemake.output.md, plan_markdown(plan))
    log.info("plan: %d sessions, %.2f USD estimated", plan["sessions"], plan["cost_usd"])
