# Fine-tuning LLMs to deliver CBT for depression: a reproduction and extension of Tahir (2024).
# Stages: models -> data -> training -> export -> rollouts -> judge (CTRS and safety) -> report.
from snakemake.utils import min_version, validate

from cbtpipe.workflow import SCHEMA, check_config_files

min_version("9.0")


# The embedded default; a config given with --configfile replaces it (it is a whole config, not an
# overlay), so the study config does not inherit the tiny model.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# the file, line and field of a wrong value, before Snakemake fills in the schema's defaults
check_config_files(config, workflow.configfiles, SCHEMA)
validate(config, str(SCHEMA))


# What `snakemake --report report.html` opens with.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/training.smk"
include: "rules/export.smk"
include: "rules/rollout.smk"
include: "rules/judge.smk"
include: "rules/safety.smk"
include: "rules/report.smk"


onstart:
    # API keys are needed to run, not to plan: checked here, before the first job, for the
    # backends that the jobs about to run call.
    check_api_keys(config, jobs_to_run(workflow))


rule all:
    default_target: True
    input:
        final_outputs(),
