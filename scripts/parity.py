"""Snakemake entry: logit parity of the exported GGUF files against the Hugging Face model."""

from cbtpipe.stages import parity_report
from cbtpipe.workflow import PipelineError, entry, write_json

with entry(snakemake, "parity") as log:
    p = snakemake.params
    ggufs = dict(zip(p.labels, snakemake.input.ggufs, strict=True))
    res = parity_report(snakemake.input.hf, ggufs, p.prompts, snakemake.threads)
    unq = p.labels[0]
    out = {
        "model": snakemake.wildcards.model,
        "arm": snakemake.wildcards.arm,
        "results": res,
        "min_top1_unquantized": p.min_top1,
        "passed": res[unq]["top1_agreement"] >= p.min_top1,
    }
    write_json(snakemake.output[0], out)
    for k, v in res.items():
        log.info("%s: top-1 %.3f, max |dlogit| %.3f", k, v["top1_agreement"], v["max_abs_logit_diff"])
    if not out["passed"]:
        raise PipelineError(
            f"parity: {unq} GGUF agrees with the Hugging Face model on only {res[unq]['top1_agreement']:.3f} "
            f"of positions (< parity.min_top1_unquantized {p.min_top1})"
        )
