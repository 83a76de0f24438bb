# LoRA / QLoRA fine-tuning with trl + peft, then merging into the full-precision base (on the CPU:
# merging is one pass of additions and needs no GPU).


rule preference_pairs:
    input:
        train="results/data/train.jsonl",
        val="results/data/val.jsonl",
        gguf=lambda wc: arm_gguf(wc.model, "instruct", RQ),
        layout=chat_layout_file,
    output:
        train="results/data/{model}/pairs_train.jsonl",
        val="results/data/{model}/pairs_val.jsonl",
        stats="results/data/{model}/pairs_stats.json",
    log:
        "logs/pairs/{model}.log",
    benchmark:
        "benchmarks/pairs/{model}.tsv"
    priority: ON_PATH
    conda:
        rollout_env
    threads: CPU
    params:
        sampling=config["rollout"]["therapist"],
        seed=config["seed"],
        per_session=config["training"]["orpo_pairs_per_session"],
        n_ctx=config["rollout"]["therapist_n_ctx"],
        n_gpu_layers=config["rollout"]["therapist_n_gpu_layers"],
        units="results/units/pairs/{model}",
    script:
        "../scripts/preference_pairs.py"


rule train:
    input:
        unpack(training_inputs),
        base=base_hf,
        layout=chat_layout_file,
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
    priority: TRAINING
    conda:
        training_env
    threads: CPU
    resources:
        gpu=gpu_resources,
        slurm_partition=partition,
        mem_mb=lambda wc: config["models"][wc.model]["mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
    params:
        training=training_params,
        seed=entry_seed,
        units="results/units/train/{model}",
    script:
        "../scripts/train.py"


rule merge:
    input:
        base=base_hf,
        adapter="results/training/{model}/adapter",
    output:
        hf=directory("results/models/{model}/cbt/hf"),
    log:
        "logs/merge/{model}.log",
    benchmark:
        "benchmarks/merge/{model}.tsv"
    priority: ON_PATH
    conda:
        "../envs/training.yaml"
    threads: LIGHT_CPU
    resources:
        slurm_partition=cpu_partition,
        mem_mb=lambda wc: config["models"][wc.model]["mem_mb"],
    params:
        dtype=lambda wc: config["models"][wc.model]["dtype"],
    script:
        "../scripts/merge.py"
