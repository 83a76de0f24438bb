"""Run the workflow in a throw-away copy of the repository."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


def make_workdir(dest: Path) -> Path:
    """A copy of the repository's files (no results, logs or caches)."""
    for f in tracked_files():
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)
    # The llama.cpp tools are extracted from the sdist once per machine; reuse them when present.
    for extra in ("resources/llama_cpp_tools", "resources/llama_cpp_tools.json"):
        src = ROOT / extra
        if src.is_dir():
            shutil.copytree(src, dest / extra, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, dest / extra)
    return dest


# Model weights under these folders are written only as new files that replace the old ones
# (cbtpipe.io.staged_dir, partial_path and os.replace), never opened for writing in place, and
# Snakemake unlinks an output before it runs a job again: a clone may share them with its source.
SHARED_WEIGHTS = ("results/models/", "results/gguf/")
WEIGHT_SUFFIXES = (".gguf", ".safetensors")


def clone_workdir(src: Path, dest: Path) -> Path:
    """A copy of a finished work tree. Its model weights (about 1.8 GB at CI size) are hard links
    to the source's when both lie on one file system, the rest is copied."""
    src = Path(src)

    def copy(s, d):
        rel = Path(s).relative_to(src).as_posix()
        if rel.startswith(SHARED_WEIGHTS) and rel.endswith(WEIGHT_SUFFIXES):
            with contextlib.suppress(OSError):
                os.link(s, d)
                return d
        return shutil.copy2(s, d)

    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True, copy_function=copy)
    return dest


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


def run_snakemake(workdir: Path, *args: str, timeout: float = 1500, env: dict | None = None) -> subprocess.CompletedProcess:
    """Snakemake in a process group of its own: a timeout (or an interrupted test) ends it with
    every job it started, so no job lives on to slow the tests that follow."""
    e = dict(os.environ, **(env or {}))
    cmd = snakemake_cmd(*args)
    p = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException as e:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        if isinstance(e, subprocess.TimeoutExpired):  # what it printed, for the failure message
            e.output, e.stderr = out, err
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def dry_run_jobs(workdir: Path, configfile: str, *args: str) -> dict[str, int]:
    """Rule -> number of jobs that a dry run of this config would run ({} when nothing is to do)."""
    r = run_snakemake(workdir, "-n", "--configfile", configfile, *args)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    if "Job stats:" not in out:
        assert "Nothing to be done" in out, out[-2000:]
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}
