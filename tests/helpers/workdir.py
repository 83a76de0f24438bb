"""Run the workflow in a throw-away copy of the repository."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
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
# (cbtpipe.workflow.io.staged_dir, partial_path and os.replace), never opened for writing in place, and
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
        if rel.startswith(SNAKEMAKE_TRANSIENT):
            # a dry run in the source (another test worker) may replace or remove it meanwhile
            with contextlib.suppress(FileNotFoundError):
                return shutil.copy2(s, d)
            return d
        return shutil.copy2(s, d)

    # no lock of a run in the source: a clone starts unlocked
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True, copy_function=copy, ignore=_no_locks(src))
    return dest


# Snakemake's own files that a run or a dry run in the source rewrites or removes while it runs
# (its locks are not copied at all: _no_locks)
SNAKEMAKE_TRANSIENT = (".snakemake/iocache/", ".snakemake/log/", ".snakemake/incomplete/")


def _no_locks(src: Path):
    def ignore(folder, names):
        return set(names) if Path(folder) == src / ".snakemake" / "locks" else set()

    return ignore


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", *args]


_FORK = None


def _fork_context():
    """A multiprocessing fork server that has imported Snakemake (tests.helpers.snakemake_child),
    started on first use; each run is a child forked from it."""
    global _FORK
    if _FORK is None:
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["tests.helpers.snakemake_child"])
        _FORK = ctx
    return _FORK


class SnakemakeRun:
    """``python -m snakemake *args`` started in ``workdir``, in a session (process group) of its
    own, as a child of a fork server that imported Snakemake once (tests/helpers/snakemake_child.py)
    rather than a new interpreter: what it runs is Snakemake's own command line. ``pid`` is the
    Snakemake process; the jobs it starts are its children, in its process group."""

    def __init__(self, workdir: Path, *args: str, env: dict | None = None):
        from tests.helpers import snakemake_child

        self.cmd = snakemake_cmd(*args)
        self._tmp = tempfile.TemporaryDirectory(prefix="snakemake-run-")
        self._out = os.path.join(self._tmp.name, "stdout")
        self._err = os.path.join(self._tmp.name, "stderr")
        e = dict(os.environ, **(env or {}))
        self._proc = _fork_context().Process(target=snakemake_child.run, args=(list(args), str(workdir), e, self._out, self._err))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def output(self) -> tuple[str, str]:
        return tuple(Path(f).read_text(encoding="utf-8", errors="replace") if os.path.exists(f) else "" for f in (self._out, self._err))

    def kill(self) -> None:
        """SIGKILL to the run and every job it started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)  # in case it was killed before its setsid

    def wait(self, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Wait for the end; on a timeout (or an interrupted test) end it with every job it
        started, so no job lives on to slow the tests that follow."""
        try:
            self._proc.join(timeout)
            if self._proc.exitcode is None:
                raise subprocess.TimeoutExpired(self.cmd, timeout)
        except BaseException as exc:
            self.kill()
            self._proc.join()
            if isinstance(exc, subprocess.TimeoutExpired):  # what it printed, for the failure message
                exc.output, exc.stderr = self.output()
            self._tmp.cleanup()
            raise
        out, err = self.output()
        self._tmp.cleanup()
        return subprocess.CompletedProcess(self.cmd, self._proc.exitcode, out, err)


def run_snakemake(workdir: Path, *args: str, timeout: float = 1500, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m snakemake *args`` in ``workdir`` to its end (SnakemakeRun)."""
    return SnakemakeRun(workdir, *args, env=env).wait(timeout)


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
