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
        gpu=rollout_gpus,
        slurm_partition=rollout_partition,
        runtime=config["resources"]["rollout_runtime_min"],
    params:
        rollout=config["rollout"],
        backends=used_backends(("rollout", "patient_backend")),
        shards=len(SHARDS),
        units="results/units/rollouts/{model}/{arm}",
    script:
        "../scripts/rollout.py"
