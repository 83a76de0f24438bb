"""Snakemake entry: token counts of the chat dataset under one model's tokenizer and chat layout."""

from cbtpipe.stages import token_stats
from cbtpipe.workflow import entry, read_json, read_jsonl, write_json

with entry(snakemake, "token_stats") as log:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(snakemake.input.tokenizer)
    layout = read_json(snakemake.input.layout)
    ml = snakemake.params.max_length
    stats = {
        "chat_layout": layout["system"],
        "train": token_stats(read_jsonl(snakemake.input.train), tok, ml, layout),
        "val": token_stats(read_jsonl(snakemake.input.val), tok, ml, layout),
    }
    write_json(snakemake.output.stats, stats)
    log.info("token stats of %s: %s", snakemake.wildcards.model, stats["train"])
