# Base models and llama.cpp's conversion tools.


localrules:
    llama_cpp_tools,
    download_model,


rule llama_cpp_tools:
    output:
        tools=directory("resources/llama_cpp_tools"),
        info="resources/llama_cpp_tools.json",
    log:
        "logs/llama_cpp_tools.log",
    priority: ON_PATH
    conda:
        "../envs/llamacpp.yaml"
    script:
        "../scripts/llama_cpp_tools.py"


rule chat_layout:
    input:
        hf="results/models/{model}/instruct/hf",
    output:
        layout="results/models/{model}/chat_layout.json",
    log:
        "logs/chat_layout/{model}.log",
    priority: ON_PATH
    conda:
        "../envs/training.yaml"
    resources:
        slurm_partition=cpu_partition,
    params:
        prefer=lambda wc: config["models"][wc.model]["chat_layout"],
    script:
        "../scripts/chat_layout.py"


rule download_model:
    output:
        directory("resources/hub/{model}"),
    log:
        "logs/download/{model}.log",
    priority: ON_PATH
    conda:
        "../envs/training.yaml"
    params:
        source=lambda wc: config["models"][wc.model]["source"],
    script:
        "../scripts/download_model.py"


rule import_model:
    input:
        unpack(import_inputs),
    output:
        hf=directory("results/models/{model}/instruct/hf"),
        provenance="results/models/{model}/instruct/provenance.json",
    log:
        "logs/import/{model}.log",
    benchmark:
        "benchmarks/import/{model}.tsv"
    priority: ON_PATH
    conda:
        "../envs/training.yaml"
    threads: LIGHT_CPU
    resources:
        mem_mb=lambda wc: config["models"][wc.model]["mem_mb"],
    params:
        spec=import_spec,
        min_top1=config["parity"]["min_top1_import"],
    script:
        "../scripts/import_model.py"
