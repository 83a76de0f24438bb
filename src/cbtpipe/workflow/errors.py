"""The pipeline's one exception type, at the bottom of the import graph: every module may raise it
and none of its importers is imported by it."""


class PipelineError(Exception):
    """An error caused by the user's input (a config key, a file, a line); the message names the
    culprit. Snakemake start-up and the entry scripts print it without a traceback."""
