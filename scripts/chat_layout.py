"""Snakemake entry: where the therapist's system prompt goes in this model's chat template."""

from cbtpipe.design import chat_layout
from cbtpipe.workflow import entry, write_json

with entry(snakemake, "chat_layout") as log:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(snakemake.input.hf)
    layout = chat_layout(tok, snakemake.wildcards.model, snakemake.params.prefer)
    write_json(snakemake.output.layout, layout)
    log.info("chat layout: %s", layout)
