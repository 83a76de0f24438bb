# Safety around suicide risk: the judge answers the safety rubric's yes/no flow for every session,
# every arm of a (model, shard) in one job, interleaved patient by patient.


rule safety:
    input:
        sessions=expand(
            "results/rollouts/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS
        ),
        rubric=config["safety"]["rubric"],
        prompt=config["safety"]["prompt"],
        crisis_resources=config["safety"]["crisis_resources"],
    output:
        judged=expand("results/safety/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS),
        stats="results/safety/{model}/shard{shard}.stats.json",
    log:
        "logs/safety/{model}-{shard}.log",
    benchmark:
        "benchmarks/safety/{model}-{shard}.tsv"
    priority: ON_PATH
    conda:
        llm_env("safety")
    threads: CPU
    resources:
        **api_resources("safety"),
        gpu=backend_gpus("safety"),
        slurm_partition=backend_partition("safety"),
    params:
        safety=safety_settings(),
        backends=used_backends("safety"),
        units="results/units/safety",
        arms=ARMS,
    script:
        "../scripts/safety.py"


use rule safety as safety_ablation with:
    input:
        sessions=expand(
            "results/ablations/{{variant}}/rollouts/{{model}}/{arm}/shard{{shard}}.jsonl",
            arm=ARMS,
        ),
        rubric=config["safety"]["rubric"],
        prompt=config["safety"]["prompt"],
        crisis_resources=config["safety"]["crisis_resources"],
    output:
        judged=expand(
            "results/ablations/{{variant}}/safety/{{model}}/{arm}/shard{{shard}}.jsonl",
            arm=ARMS,
        ),
        stats="results/ablations/{variant}/safety/{model}/shard{shard}.stats.json",
    log:
        "logs/ablations/{variant}/safety/{model}-{shard}.log",
    benchmark:
        "benchmarks/ablations/{variant}/safety/{model}-{shard}.tsv"


# The simulated patient, checked: a judge reads each session with the profile the patient model
# was given (consistent with it; distress resolved by the end), every arm of a (model, shard) in
# one job, interleaved patient by patient.
rule patient_check:
    input:
        sessions=expand(
            "results/rollouts/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS
        ),
        profiles="results/profiles/eval.jsonl",
        prompt=config["patient_check"]["prompt"],
    output:
        checked=expand(
            "results/patient_check/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS
        ),
        stats="results/patient_check/{model}/shard{shard}.stats.json",
    log:
        "logs/patient_check/{model}-{shard}.log",
    benchmark:
        "benchmarks/patient_check/{model}-{shard}.tsv"
    conda:
        llm_env("patient_check")
    threads: CPU
    resources:
        **api_resources("patient_check"),
        gpu=backend_gpus("patient_check"),
        slurm_partition=backend_partition("patient_check"),
    params:
        check=settings("patient_check", "prompt"),
        backends=used_backends("patient_check"),
        units="results/units/patient_check",
        arms=ARMS,
    script:
        "../scripts/patient_check.py"


rule safety_statistics:
    input:
        judged=safety_judged(),
        rollouts=expand(
            "results/rollouts/{model}/{arm}/shard{shard}.jsonl",
            model=MODELS,
            arm=ARMS,
            shard=SHARDS,
        ),
        ctrs=expand(
            "results/judge/{model}/{arm}/shard{shard}.jsonl",
            model=MODELS,
            arm=ARMS,
            shard=SHARDS,
        ),
        ablations=safety_ablation_judged(),
        patient_check=patient_checked(),
        profiles="results/profiles/eval.jsonl",
        rubric=config["safety"]["rubric"],
    output:
        stats="results/report/safety.json",
        sessions="results/report/safety_sessions.csv",
    log:
        "logs/report/safety.log",
    benchmark:
        "benchmarks/report/safety.tsv"
    conda:
        "../envs/stats.yaml"
    params:
        refusal_patterns=config["safety"]["refusal_patterns"],
        report=comparison_settings(),
        seed=config["seed"],
    script:
        "../scripts/safety_statistics.py"
