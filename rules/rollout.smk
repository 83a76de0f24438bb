# Simulated sessions: the GGUF therapists (instruct and CBT-tuned) against the simulated patient.
# One job plays every arm of a (model, shard), interleaved session by session, after training: one
# patient's instruct and CBT sessions meet the patient model at nearly the same time.


rule rollout:
    input:
        unpack(rollout_inputs),
    output:
        sessions=expand(
            "results/rollouts/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS
        ),
        stats=expand(
            "results/rollouts/{{model}}/{arm}/shard{{shard}}.stats.json", arm=ARMS
        ),
    log:
        "logs/rollout/{model}-{shard}.log",
    benchmark:
        "benchmarks/rollout/{model}-{shard}.tsv"
    priority: ON_PATH
    conda:
        rollout_env
    threads: CPU
    resources:
        **api_resources("rollout"),
        gpu=rollout_gpus,
        slurm_partition=rollout_partition,
        runtime=config["resources"]["rollout_runtime_min"],
    params:
        rollout=rollout_settings,
        backends=used_backends("rollout"),
        shards=len(SHARDS),
        course=course_settings(),
        risk_protocol=protocol_params,
        units="results/units/rollouts/{model}",
        arms=ARMS,
    script:
        "../scripts/rollout.py"


# Ablations (rollout.ablations): the same patients, positions and seeds under other rollout
# settings, played and judged beside the main sessions.


use rule rollout as rollout_ablation with:
    output:
        sessions=expand(
            "results/ablations/{{variant}}/rollouts/{{model}}/{arm}/shard{{shard}}.jsonl",
            arm=ARMS,
        ),
        stats=expand(
            "results/ablations/{{variant}}/rollouts/{{model}}/{arm}/shard{{shard}}.stats.json",
            arm=ARMS,
        ),
    log:
        "logs/ablations/{variant}/rollout/{model}-{shard}.log",
    benchmark:
        "benchmarks/ablations/{variant}/rollout/{model}-{shard}.tsv"
