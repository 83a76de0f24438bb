"""Snakemake entry: ORPO preference pairs (chosen: synthetic therapist; rejected: instruct model)."""

from cbtpipe.llm import LlamaCppBackend
from cbtpipe.stages import build_pairs
from cbtpipe.workflow import entry, read_json, read_jsonl, write_json, write_jsonl

with entry(snakemake, "preference_pairs") as log:
    p = snakemake.params
    spec = {"n_ctx": p.n_ctx, "n_threads": snakemake.threads, "n_gpu_layers": p.n_gpu_layers}
    backend = LlamaCppBackend("instruct", spec, model_path=snakemake.input.gguf, gpu_key="rollout.therapist_n_gpu_layers")
    layout = read_json(snakemake.input.layout)
    try:
        out = {}
        for split in ("train", "val"):
            pairs, stats = build_pairs(
                read_jsonl(snakemake.input[split]), backend, p.sampling, p.seed, p.per_session, f"{p.units}/{split}", layout
            )
            write_jsonl(snakemake.output[split], pairs)
            out[split] = stats
    finally:
        backend.close()
    write_json(snakemake.output.stats, out)
    log.info("preference pairs: %s", out)
