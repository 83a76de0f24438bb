"""Glue for Snakemake entry scripts: logging to the rule's log, clear errors, no tracebacks for
user errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import PipelineError
from .io import hash_obj, setup_logging, sha256_file, write_json
from .secrets import redact

PROVENANCE_DIR = "results/provenance"


def path_digest(path: str) -> str | None:
    """sha256 of a file, or of a directory's files (names and contents), or None if absent."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if p.is_dir():
        return hash_obj({str(f.relative_to(p)): sha256_file(f) for f in sorted(p.rglob("*")) if f.is_file()}, 64)
    return None


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if callable(x):
        return repr(x)
    return x


def write_provenance(smk: Any, name: str, seconds: float) -> None:
    """Record what made this job's outputs: the params (the config values the rule depends on),
    the input and output hashes. One JSON per job under results/provenance/."""
    wc = dict(getattr(smk, "wildcards", {}) or {})
    params = _plain(dict(smk.params.items())) if hasattr(smk.params, "items") else {}
    rec = {
        "rule": name,
        "wildcards": wc,
        "params_sha256": hash_obj(params, 64),
        "inputs": {str(f): path_digest(str(f)) for f in smk.input},
        "outputs": {str(f): path_digest(str(f)) for f in smk.output},
        "seconds": round(seconds, 2),
    }
    tag = "-".join([name, *(str(v) for _, v in sorted(wc.items()))])
    write_json(Path(PROVENANCE_DIR) / f"{tag}.json", rec)


def load_llama_cpp_first() -> None:
    """Load llama.cpp's C++ libraries before any other native extension of the job.

    A Python extension that bundles its own C++ runtime (sentencepiece, which gguf and slow
    tokenizers import) loaded before llama.cpp made llama.cpp crash (SIGSEGV while loading a
    model) on a CUDA machine image; loaded first, both work. Environments without llama.cpp
    (statistics) skip this."""
    with contextlib.suppress(ImportError):
        import llama_cpp  # noqa: F401


class Terminated(BaseException):
    """SIGTERM (what SLURM sends at a time limit, what ``kill`` sends): raised in the job's main
    thread so that every ``finally`` runs (partial outputs removed, llama-server stopped) before
    the job ends; finished units are already on disk."""


def _on_sigterm(signum: int, frame: Any) -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
    raise Terminated()


def _profiler() -> Any:
    """cProfile on, when the environment variable CBT_PROFILE names a folder for the profiles
    (a developer's look at where a job's time goes: ``CBT_PROFILE=prof snakemake ...``)."""
    if not os.environ.get("CBT_PROFILE"):
        return None
    import cProfile

    p = cProfile.Profile()
    p.enable()
    return p


def _dump_profile(profiler: Any, name: str, smk: Any, logger: logging.Logger) -> None:
    profiler.disable()
    wc = "-".join(str(v) for v in dict(getattr(smk, "wildcards", {})).values())
    out = Path(os.environ["CBT_PROFILE"]) / f"{name}{'-' + wc if wc else ''}.prof"
    out.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(out)
    logger.info("%s: profile written to %s (python -m pstats)", name, out)


@contextlib.contextmanager
def entry(smk: Any, name: str) -> Iterator[logging.Logger]:
    """Run a rule's body: progress and logs go to the rule's log file (``tail -f`` it), a
    PipelineError ends the job with its message and a non-zero exit, and nothing else is hidden."""
    load_llama_cpp_first()
    log_path = smk.log[0] if len(smk.log) else None
    real_stderr = sys.stderr
    fh = open(log_path, "a", encoding="utf-8", buffering=1) if log_path else None  # noqa: SIM115
    real_stdout = sys.stdout
    if fh is not None:
        sys.stderr = fh  # tqdm progress bars land in the rule's log
        sys.stdout = fh
    from . import progress

    # started from a terminal (a local snakemake run): progress lines with rate and ETA go there too
    progress.TERMINAL = real_stderr if fh is not None and real_stderr.isatty() else None

    def restore() -> None:
        sys.stderr, sys.stdout = real_stderr, real_stdout
        if fh is not None:
            fh.close()

    logger = setup_logging(None, "cbtpipe")
    logger.handlers[0].stream = sys.stderr
    threads = str(getattr(smk, "threads", 1) or 1)
    # the job's threads, whatever the environment that started Snakemake said (as Snakemake does
    # for shell jobs): torch, OpenMP and hardware.job_threads (n_threads: null) read it
    os.environ["OMP_NUM_THREADS"] = threads
    t0 = time.perf_counter()
    logger.info("%s: start (threads=%s, wildcards=%s)", name, threads, dict(getattr(smk, "wildcards", {})))
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    profiler = _profiler()
    try:
        yield logger
        if profiler is not None:
            _dump_profile(profiler, name, smk, logger)
        # Still inside the handler's reach: a SIGTERM while the provenance is written stops the
        # job as cleanly as one during the work.
        logger.info("%s: done in %.1f s", name, time.perf_counter() - t0)
        write_provenance(smk, name, time.perf_counter() - t0)
    except Terminated:
        msg = f"{name}: stopped by SIGTERM after {time.perf_counter() - t0:.1f} s; finished units are kept and the next run continues from them"
        logger.warning("%s", msg)
        print(f"ERROR in {msg}", file=real_stderr)
        restore()
        # Worker threads (parallel sessions) may still be in a call: do not wait for them.
        logging.shutdown()
        os._exit(128 + signal.SIGTERM)
    except PipelineError as e:
        logger.error("%s: %s", name, e)
        print(f"ERROR in {name}: {redact(e)}", file=real_stderr)
        restore()
        sys.exit(1)
    except Exception:
        import traceback

        # A traceback can quote a URL or a response: masked like every other line we write.
        text = redact(traceback.format_exc())
        print(text, file=sys.stderr)
        if fh is not None:
            print(text, file=real_stderr)
        restore()
        sys.exit(1)
    # Done: a SIGTERM from here on has nothing left to stop (the outputs are complete).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    restore()
