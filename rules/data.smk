# Patient profiles, synthetic transcripts (or an import) and the chat dataset.


localrules:
    gather_transcripts,


rule profiles_train:
    input:
        unpack(train_risk_inputs),
        attributes=config["profiles"]["attributes"],
    output:
        train="results/profiles/train.jsonl",
        val="results/profiles/val.jsonl",
    log:
        "logs/profiles/train.log",
    priority: ON_PATH
    conda:
        "../envs/llm.yaml"
    params:
        n_train=config["profiles"]["n_train"],
        n_val=config["profiles"]["n_val"],
        seed=config["profiles"]["seed_train"],
        risk=train_risk_settings(),
    script:
        "../scripts/profiles.py"


rule profiles_eval:
    input:
        attributes=config["profiles"]["attributes"],
        risk=config["profiles"]["risk"]["attributes"],
        train="results/profiles/train.jsonl",
        val="results/profiles/val.jsonl",
    output:
        eval="results/profiles/eval.jsonl",
    log:
        "logs/profiles/eval.log",
    priority: ON_PATH
    conda:
        "../envs/llm.yaml"
    params:
        n_eval=config["profiles"]["n_eval"],
        eval_set=config["profiles"]["eval_set"],
        seed=config["profiles"]["seed_eval"],
        risk=risk_settings(),
    script:
        "../scripts/profiles.py"


rule transcripts:
    input:
        train="results/profiles/train.jsonl",
        val="results/profiles/val.jsonl",
        template=PROMPTS["session"],
    output:
        transcripts="results/data/transcripts/shard{shard}.jsonl",
        stats="results/data/transcripts/shard{shard}.stats.json",
    log:
        "logs/data/transcripts-{shard}.log",
    benchmark:
        "benchmarks/data/transcripts-{shard}.tsv"
    priority: ON_PATH
    conda:
        llm_env("generation")
    threads: CPU
    resources:
        **api_resources("generation"),
        gpu=backend_gpus("generation"),
        slurm_partition=backend_partition("generation"),
    params:
        data=generation_settings(),
        backends=used_backends("generation"),
        shards=len(DATA_SHARDS),
    script:
        "../scripts/transcripts.py"


rule gather_transcripts:
    input:
        unpack(transcript_inputs),
    output:
        transcripts="results/data/transcripts.jsonl",
        stats="results/data/generation_stats.json",
    log:
        "logs/data/gather_transcripts.log",
    priority: ON_PATH
    conda:
        "../envs/llm.yaml"
    params:
        data=generation_settings(),
    script:
        "../scripts/gather_transcripts.py"


rule eval_history:
    input:
        profiles="results/profiles/eval.jsonl",
        template=PROMPTS["history"],
    output:
        history="results/profiles/eval_history.jsonl",
        stats="results/profiles/eval_history_stats.json",
    log:
        "logs/profiles/eval_history.log",
    benchmark:
        "benchmarks/profiles/eval_history.tsv"
    priority: ON_PATH
    conda:
        llm_env("eval_history")
    threads: CPU
    resources:
        **api_resources("eval_history"),
        gpu=backend_gpus("eval_history"),
        slurm_partition=backend_partition("eval_history"),
    params:
        course=eval_history_settings(),
        backends=used_backends("eval_history"),
        units="results/units/eval_history",
    script:
        "../scripts/eval_history.py"


rule dataset:
    input:
        transcripts="results/data/transcripts.jsonl",
        system_prompt=config["data"]["system_prompt"],
        context=PROMPTS["context"],
        val="results/profiles/val.jsonl",
    output:
        train="results/data/train.jsonl",
        val="results/data/val.jsonl",
        stats="results/data/dataset_stats.json",
    log:
        "logs/data/dataset.log",
    benchmark:
        "benchmarks/data/dataset.tsv"
    priority: ON_PATH
    conda:
        "../envs/training.yaml"
    params:
        source=config["data"]["source"],
        data={
            "phases": config["data"]["phases"],
            "sessions_per_patient": config["data"]["sessions_per_patient"],
        },
        opening=config["rollout"]["opening_message"],
        n_val=config["profiles"]["n_val"],
        seed=config["seed"],
    script:
        "../scripts/dataset.py"


# Token counts of the chat dataset under each model's tokenizer and chat layout: per model, so
# that adding a model leaves the others' datasets, training and exports as they are.


rule token_stats:
    input:
        train="results/data/train.jsonl",
        val="results/data/val.jsonl",
        tokenizer=base_hf,
        layout=chat_layout_file,
    output:
        stats="results/data/{model}/token_stats.json",
    log:
        "logs/data/token_stats-{model}.log",
    conda:
        "../envs/training.yaml"
    params:
        max_length=lambda wc: model_training_cfg(config, wc.model)["max_length"],
    script:
        "../scripts/token_stats.py"
