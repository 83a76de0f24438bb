# LoRA / QLoRA fine-tuning with trl + peft, then merging into the full-precision base.


rule train:
    input:
        train="results/data/train.jsonl",
        val="results/data/val.jsonl",
        base="results/models/{model}/instruct/hf",
    output:
        adapter=directory("results/training/{model}/adapter"),
        log_csv="results/training/{model}/train_log.csv",
        metrics="results/training/{model}/metrics.json",
        plot=report(
            "results/training/{model}/loss.png",
            caption="../report/loss.rst",
            category="Training",
        ),
    log:
        "logs/train/{model}.log",
    benchmark:
        "benchmarks/train/{model}.tsv"
    conda:
        "../envs/training.yaml"
    threads: CPU
    resources:
        gpu=gpu_resources,
        gres=gres,
        slurm_partition=partition,
        mem_mb=lambda wc: config["models"][wc.model]["mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
    params:
        training=training_params,
        seed=config["seed"],
        units="results/units/train/{model}",
    script:
        "../scripts/train.py"


rule merge:
    input:
        base="results/models/{model}/instruct/hf",
        adapter="results/training/{model}/adapter",
    output:
        hf=directory("results/models/{model}/cbt/hf"),
    log:
        "logs/merge/{model}.log",
    benchmark:
        "benchmarks/merge/{model}.tsv"
    conda:
        "../envs/training.yaml"
    threads: CPU
    resources:
        gpu=gpu_resources,
        gres=gres,
        slurm_partition=partition,
        mem_mb=lambda wc: config["models"][wc.model]["mem_mb"],
    params:
        dtype=lambda wc: config["models"][wc.model]["dtype"],
    script:
        "../scripts/merge.py"
