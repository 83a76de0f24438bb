# Score table, statistics, figures and the report.


rule scores:
    input:
        judged=expand(
            "results/judge/{model}/{arm}/shard{shard}.jsonl",
            model=MODELS,
            arm=ARMS,
            shard=SHARDS,
        ),
        rollouts=expand(
            "results/rollouts/{model}/{arm}/shard{shard}.jsonl",
            model=MODELS,
            arm=ARMS,
            shard=SHARDS,
        ),
        profiles="results/profiles/eval.jsonl",
        rubric=config["judge"]["rubric"],
        closing=closing_judged(),
    output:
        long=report(
            "results/report/scores_long.csv",
            caption="../report/scores.rst",
            category="Scores",
        ),
        totals="results/report/session_totals.csv",
        # the same sessions judged without their closing turn (empty without the closing instruction)
        closing_totals="results/report/session_totals_without_closing.csv",
    log:
        "logs/report/scores.log",
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/scores.py"


rule statistics:
    input:
        unpack(packet_ratings),
        long="results/report/scores_long.csv",
        totals="results/report/session_totals.csv",
        closing_totals="results/report/session_totals_without_closing.csv",
        judged=rules.scores.input.judged,
        rubric=config["judge"]["rubric"],
        human_ratings=human_ratings,
    output:
        stats="results/report/statistics.json",
    log:
        "logs/report/statistics.log",
    benchmark:
        "benchmarks/report/statistics.tsv"
    conda:
        "../envs/stats.yaml"
    params:
        report=settings("report", "human_ratings", "packet_ratings"),
        seed=config["seed"],
        # each model entry's model and training seed (training.seeds)
        replicates=REPLICATES,
    script:
        "../scripts/statistical_tests.py"


rule ablation_statistics:
    input:
        totals="results/report/session_totals.csv",
        judged=ablation_judged(),
        rollouts=expand(
            "results/ablations/{variant}/rollouts/{model}/{arm}/shard{shard}.jsonl",
            variant=ABLATIONS,
            model=MODELS,
            arm=ARMS,
            shard=SHARDS,
        ),
        rubric=config["judge"]["rubric"],
    output:
        stats="results/report/ablations.json",
    log:
        "logs/report/ablations.log",
    conda:
        "../envs/stats.yaml"
    params:
        ablations=config["rollout"]["ablations"],
        report=comparison_settings(),
        seed=config["seed"],
    script:
        "../scripts/ablation_statistics.py"


rule turn_statistics:
    input:
        judged=turn_judged(),
    output:
        stats="results/report/turn_windows.json",
    log:
        "logs/report/turn_windows.log",
    conda:
        "../envs/stats.yaml"
    params:
        windows=config["judge"]["turn_windows"],
    script:
        "../scripts/turn_statistics.py"


# The primary endpoint on record before the first judgement: the report says "declared before
# the run" only when this record predates every judge call.


rule declare_primary:
    output:
        "results/plan/primary.json",
    log:
        "logs/report/declare_primary.log",
    priority: ON_PATH
    localrule: True
    conda:
        "../envs/stats.yaml"
    params:
        primary=config["report"]["primary"],
        population=config["report"]["ctrs_population"],
    script:
        "../scripts/declare_primary.py"


# Not part of a run: `snakemake results/plan/plan.md` prints the plan before any call is made
# (the report makes the same plan and puts it beside what the run used).
rule plan:
    input:
        plan_inputs(),
    output:
        json="results/plan/plan.json",
        md="results/plan/plan.md",
    log:
        "logs/report/plan.log",
    conda:
        "../envs/stats.yaml"
    params:
        config=config,
    script:
        "../scripts/plan.py"


rule report:
    input:
        stats="results/report/statistics.json",
        long="results/report/scores_long.csv",
        totals="results/report/session_totals.csv",
        rubric=config["judge"]["rubric"],
        parity=parity_files(),
        provenance=expand(
            "results/models/{model}/instruct/provenance.json", model=BASES
        ),
        training=expand("results/training/{model}/metrics.json", model=MODELS),
        train_logs=expand("results/training/{model}/train_log.csv", model=MODELS),
        data_stats="results/data/dataset_stats.json",
        token_stats=expand("results/data/{model}/token_stats.json", model=MODELS),
        gen_stats="results/data/generation_stats.json",
        rollout_stats=expand(
            "results/rollouts/{model}/{arm}/shard{shard}.stats.json",
            model=MODELS,
            arm=ARMS,
            shard=SHARDS,
        ),
        judge_stats=expand(
            "results/judge/{model}/shard{shard}.stats.json",
            model=MODELS,
            shard=SHARDS,
        ),
        ablations=["results/report/ablations.json"] if ABLATIONS else [],
        turn_windows=(
            ["results/report/turn_windows.json"]
            if config["judge"]["turn_windows"]["enabled"]
            else []
        ),
        eval_history="results/profiles/eval_history_stats.json",
        safety="results/report/safety.json",
        safety_rubric=config["safety"]["rubric"],
        safety_stats=expand(
            "results/safety/{model}/shard{shard}.stats.json",
            model=MODELS,
            shard=SHARDS,
        ),
        plan_files=plan_inputs(),
        primary="results/plan/primary.json",
    output:
        md="results/report/report.md",
        html=report(
            "results/report/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
        figures=report(
            directory("results/report/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/report/report.log",
    conda:
        "../envs/stats.yaml"
    params:
        config=config,
        models=MODELS,
        benchmarks="benchmarks",
    script:
        "../scripts/report.py"


# The results browser: every session pair side by side with its scores and safety answers (one
# self-contained page; the report's rows link to it).


rule browser:
    input:
        rollouts=rules.scores.input.rollouts,
        judged=rules.scores.input.judged,
        safety=safety_judged(),
        profiles="results/profiles/eval.jsonl",
        rubric=config["judge"]["rubric"],
        safety_rubric=config["safety"]["rubric"],
    output:
        html=report(
            "results/report/browser.html",
            caption="../report/browser.rst",
            category="Sessions",
        ),
    log:
        "logs/report/browser.log",
    conda:
        "../envs/stats.yaml"
    script:
        "../scripts/browser.py"


# A blinded rating packet for human raters; its key stays outside the packet's folder.


rule rating_packet:
    input:
        rollouts=expand(
            "results/rollouts/{model}/{arm}/shard{shard}.jsonl",
            model=MODELS,
            arm=ARMS,
            shard=SHARDS,
        ),
        rubric=config["judge"]["rubric"],
    output:
        html="results/rating_packet/packet.html",
        template="results/rating_packet/ratings_template.csv",
        key="results/rating_key/key.csv",
    log:
        "logs/report/rating_packet.log",
    conda:
        "../envs/stats.yaml"
    params:
        packet=config["rating_packet"],
        models=MODELS,
    script:
        "../scripts/rating_packet.py"
