"""Snakemake entry: the results browser (sessions side by side, one self-contained page)."""

from cbtpipe.design import load_rubric, load_safety_rubric
from cbtpipe.report import browser_data, write_browser
from cbtpipe.workflow import entry, read_jsonl

with entry(snakemake, "browser") as log:
    inp = snakemake.input
    data = browser_data(
        [s for p in inp.rollouts for s in read_jsonl(p)],
        [j for p in inp.judged for j in read_jsonl(p)],
        [s for p in inp.safety for s in read_jsonl(p)],
        read_jsonl(inp.profiles),
        load_rubric(inp.rubric),
        load_safety_rubric(inp.safety_rubric),
    )
    write_browser(snakemake.output.html, data)
    log.info("browser: %d session pairs of %d models, %d judges", len(data["pairs"]), len(data["models"]), len(data["judges"]))
