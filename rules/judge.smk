# CTRS judging of every session, k samples each. One job judges every arm of a (model, shard),
# interleaved patient by patient, as the rollouts play them: a judge cannot meet the arms at
# different times.


rule judge:
    input:
        sessions=expand(
            "results/rollouts/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS
        ),
        rubric=config["judge"]["rubric"],
        prompts=judge_prompts(),
        # the primary endpoint is on record before any judgement (ancient: a later change of it
        # writes a new record, dated after the judgements, and judges nothing again)
        primary=ancient("results/plan/primary.json"),
    output:
        judged=expand("results/judge/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS),
        stats="results/judge/{model}/shard{shard}.stats.json",
    log:
        "logs/judge/{model}-{shard}.log",
    benchmark:
        "benchmarks/judge/{model}-{shard}.tsv"
    priority: ON_PATH
    conda:
        llm_env("judge")
    threads: CPU
    resources:
        **api_resources("judge"),
        gpu=backend_gpus("judge"),
        slurm_partition=backend_partition("judge"),
    params:
        judge=judge_settings(),
        backends=used_backends("judge"),
        units="results/units/judge",
        arms=ARMS,
        closing_turn="keep",
    script:
        "../scripts/judge.py"


# An ablation's sessions, judged as the main ones (the primary endpoint's record is not needed:
# ablations are secondary).
use rule judge as judge_ablation with:
    input:
        sessions=expand(
            "results/ablations/{{variant}}/rollouts/{{model}}/{arm}/shard{{shard}}.jsonl",
            arm=ARMS,
        ),
        rubric=config["judge"]["rubric"],
        prompts=judge_prompts(),
    output:
        judged=expand(
            "results/ablations/{{variant}}/judge/{{model}}/{arm}/shard{{shard}}.jsonl",
            arm=ARMS,
        ),
        stats="results/ablations/{variant}/judge/{model}/shard{shard}.stats.json",
    log:
        "logs/ablations/{variant}/judge/{model}-{shard}.log",
    benchmark:
        "benchmarks/ablations/{variant}/judge/{model}-{shard}.tsv"


# The closing-instruction sensitivity analysis: every session judged again without the turn the
# therapist spoke under the hidden closing instruction (both arms, every pair kept); a session
# without that turn is read back from the main judge's units.
use rule judge as judge_closing with:
    input:
        sessions=expand(
            "results/rollouts/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS
        ),
        # after the main judgements, whose units it reads back
        judged=expand("results/judge/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS),
        rubric=config["judge"]["rubric"],
        prompts=judge_prompts(),
    output:
        judged=expand(
            "results/judge_closing/{{model}}/{arm}/shard{{shard}}.jsonl", arm=ARMS
        ),
        stats="results/judge_closing/{model}/shard{shard}.stats.json",
    log:
        "logs/judge_closing/{model}-{shard}.log",
    benchmark:
        "benchmarks/judge_closing/{model}-{shard}.tsv"
    priority: 0
    params:
        judge=judge_settings(),
        backends=used_backends("judge"),
        units="results/units/judge",
        arms=ARMS,
        closing_turn="remove",


rule judge_turns:
    input:
        sessions="results/rollouts/{model}/{arm}/shard{shard}.jsonl",
        rubric=config["judge"]["rubric"],
        prompt=config["judge"]["prompt"],
    output:
        judged="results/judge_turns/{model}/{arm}/shard{shard}.jsonl",
        stats="results/judge_turns/{model}/{arm}/shard{shard}.stats.json",
    log:
        "logs/judge_turns/{model}-{arm}-{shard}.log",
    benchmark:
        "benchmarks/judge_turns/{model}-{arm}-{shard}.tsv"
    conda:
        llm_env("judge_turns")
    threads: CPU
    resources:
        **api_resources("judge_turns"),
        gpu=backend_gpus("judge_turns"),
        slurm_partition=backend_partition("judge_turns"),
    params:
        judge=settings("judge", "rubric", "prompt", "panel", "panel_reducer"),
        backends=used_backends("judge_turns"),
        units="results/units/judge_turns",
    script:
        "../scripts/judge_turns.py"
