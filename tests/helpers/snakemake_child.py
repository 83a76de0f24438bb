"""Snakemake's command line, run in a process forked from one that has imported it already.

Every test run of Snakemake used to pay for importing it (about 1.3 of a dry run's 2 s here). The
tests' runner (``tests.helpers.workdir.run_snakemake``) now starts each run as a child of a
multiprocessing fork server that imported this module, and so Snakemake, once: the child runs
Snakemake's own ``main`` with the run's arguments, folder and environment, in a session of its own
(a timeout ends it with every job it started), and writes its output to two files. Only the import
is shared: no Snakemake code has run in the server before the fork.
"""

from __future__ import annotations

import os
import sys

import snakemake.cli  # noqa: F401  (the import that the fork server does once for every run)


def run(args: list[str], cwd: str, env: dict[str, str], out_path: str, err_path: str) -> None:
    """The child: what ``python -m snakemake *args`` does, in ``cwd`` with exactly ``env``."""
    os.setsid()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, out_path), (2, err_path)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = [sys.executable, "-m", "snakemake", *args]
    try:
        snakemake.cli.main(list(args))  # ends with SystemExit(0 or 1), as the command line does
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
