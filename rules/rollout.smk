# Simulated sessions: the GGUF therapist (instruct or CBT-tuned) against the simulated patient.


rule rollout:
    input:
        unpack(rollout_inputs),
    output:
        sessions="results/rollouts/{model}/{arm}/shard{shard}.jsonl",
        stats="results/rollouts/{model}/{arm}/shard{shard}.stats.json",
    log:
        "logs/rollout/{model}-{arm}-{shard}.log",
    benchmark:
        "benchmarks/rollout/{model}-{arm}-{shard}.tsv"
    conda:
        rollout_env
    threads: CPU
    resources:
        **api_resources(("rollout", "patient_backend")),
        gpu=rollout_gpus,
        slurm_partition=rollout_partition,
        runtime=config["resources"]["rollout_runtime_min"],
    params:
        rollout=rollout_settings,
        backends=used_backends(("rollout", "patient_backend")),
        shards=len(SHARDS),
        course=course_settings(),
        risk_protocol=protocol_params,
        units="results/units/rollouts/{model}/{arm}",
    script:
        "../scripts/rollout.py"


# Ablations (rollout.ablations): the same patients, positions and seeds under other rollout
# settings, played and judged beside the main sessions.


rule rollout_ablation:
    input:
        unpack(rollout_inputs),
    output:
        sessions="results/ablations/{variant}/rollouts/{model}/{arm}/shard{shard}.jsonl",
        stats="results/ablations/{variant}/rollouts/{model}/{arm}/shard{shard}.stats.json",
    log:
        "logs/ablations/{variant}/rollout/{model}-{arm}-{shard}.log",
    benchmark:
        "benchmarks/ablations/{variant}/rollout/{model}-{arm}-{shard}.tsv"
    conda:
        rollout_env
    threads: CPU
    resources:
        **api_resources(("rollout", "patient_backend")),
        gpu=rollout_gpus,
        slurm_partition=rollout_partition,
        runtime=config["resources"]["rollout_runtime_min"],
    params:
        rollout=rollout_settings,
        backends=used_backends(("rollout", "patient_backend")),
        shards=len(SHARDS),
        course=course_settings(),
        risk_protocol=protocol_params,
        units="results/units/rollouts/{model}/{arm}",
    script:
        "../scripts/rollout.py"
