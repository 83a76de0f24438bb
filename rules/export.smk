# GGUF conversion with llama.cpp's own converter, quantization, and logit parity.
# The instruct base and the CBT-tuned merge take exactly the same path.


rule convert_gguf:
    input:
        hf=hf_dir,
        tools="resources/llama_cpp_tools",
        info="resources/llama_cpp_tools.json",
    output:
        "results/gguf/{model}/{arm}/{model}-{arm}-{outtype}.gguf",
    log:
        "logs/export/{model}-{arm}-{outtype}.log",
    benchmark:
        "benchmarks/export/{model}-{arm}-{outtype}.tsv"
    priority: ON_PATH
    conda:
        "../envs/llamacpp.yaml"
    threads: LIGHT_CPU
    resources:
        mem_mb=lambda wc: config["models"][wc.model]["mem_mb"],
    script:
        "../scripts/convert_gguf.py"


rule quantize_gguf:
    input:
        gguf_path("{model}", "{arm}", OUTTYPE),
    output:
        "results/gguf/{model}/{arm}/{model}-{arm}-{qtype}.gguf",
    log:
        "logs/export/{model}-{arm}-{qtype}.log",
    benchmark:
        "benchmarks/export/{model}-{arm}-{qtype}.tsv"
    priority: ON_PATH
    conda:
        "../envs/llamacpp.yaml"
    threads: CPU
    script:
        "../scripts/quantize_gguf.py"


rule parity:
    input:
        hf=hf_dir,
        ggufs=parity_ggufs,
    output:
        "results/export/{model}/{arm}/parity.json",
    log:
        "logs/parity/{model}-{arm}.log",
    benchmark:
        "benchmarks/parity/{model}-{arm}.tsv"
    conda:
        "../envs/training.yaml"
    threads: LIGHT_CPU
    resources:
        mem_mb=lambda wc: config["models"][wc.model]["mem_mb"],
    params:
        prompts=config["parity"]["prompts"],
        labels=[OUTTYPE, *QUANTS],
        min_top1=config["parity"]["min_top1_unquantized"],
    script:
        "../scripts/parity.py"
