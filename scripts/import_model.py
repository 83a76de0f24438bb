"""Snakemake entry: import a base model as a clean Hugging Face directory, with provenance.

For a GGUF source, the written model is checked against llama.cpp running the original file."""

from cbtpipe.stages import IMPORT_CHECK_PROMPTS, import_model, parity_report
from cbtpipe.workflow import PipelineError, entry, write_json

with entry(snakemake, "import_model") as log:
    model = snakemake.wildcards.model
    hub = snakemake.input.get("hub") if hasattr(snakemake.input, "get") else None
    prov = import_model(model, snakemake.params.spec, snakemake.output.hf, hub_dir=hub)
    if "source_file" in prov:
        par = parity_report(snakemake.output.hf, {"source_gguf": prov["source_file"]}, IMPORT_CHECK_PROMPTS, snakemake.threads)
        prov["parity_vs_source_gguf"] = par["source_gguf"]
        log.info("parity with the source GGUF: %s", par["source_gguf"])
        if par["source_gguf"]["top1_agreement"] < snakemake.params.min_top1:
            raise PipelineError(
                f"imported model disagrees with llama.cpp on its source GGUF: top-1 agreement "
                f"{par['source_gguf']['top1_agreement']:.3f} < parity.min_top1_import {snakemake.params.min_top1}"
            )
    write_json(snakemake.output.provenance, prov)
