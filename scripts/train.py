"""Snakemake entry: LoRA / QLoRA fine-tuning of one base model (resumable)."""

from cbtpipe.stages import train_adapter
from cbtpipe.workflow import entry

with entry(snakemake, "train") as log:
    tcfg = dict(snakemake.params.training, threads=snakemake.threads)
    metrics = train_adapter(
        model_dir=snakemake.input.base,
        train_path=snakemake.input.train,
        val_path=snakemake.input.val,
        layout_path=snakemake.input.layout,
        tcfg=tcfg,
        seed=snakemake.params.seed,
        unit_root=snakemake.params.units,
        out_adapter=snakemake.output.adapter,
        out_csv=snakemake.output.log_csv,
        out_metrics=snakemake.output.metrics,
        out_plot=snakemake.output.plot,
        title=f"{snakemake.wildcards.model}: {tcfg['method']}",
        n_gpus=snakemake.resources.gpu,
        gpu_key=f"models.{snakemake.wildcards.model}.gpus",
    )
    log.info("training metrics: %s", metrics)
