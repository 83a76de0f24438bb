"""Small file helpers: atomic writes, hashing, JSON(L) I/O and per-rule logging."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class PipelineError(Exception):
    """An error caused by the user's input; the message names the culprit."""


def ensure_parent(path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The file gets the mode a plain ``open`` would give it (0666 less the user's umask), not the
    0600 of a temporary file: a lab group on a shared cluster can read the results."""
    p = ensure_parent(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps(obj: Any) -> str:
    """Canonical JSON text: sorted keys, UTF-8, stable across runs."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj))


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(path, text)


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PipelineError(f"{path}, line {i}: invalid JSON ({e.msg})") from e
    return rows


_SHA256_SEEN: dict[tuple[str, int, int, int], str] = {}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, computed once per process for a given file state (path, inode, size,
    mtime): a job that keys its units on a model and then records it in provenance reads a
    multi-gigabyte file once."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _SHA256_SEEN:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
        _SHA256_SEEN[key] = h.hexdigest()
    return _SHA256_SEEN[key]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_obj(obj: Any, length: int = 16) -> str:
    """Short stable hash of a JSON-serializable object (used to key resumable units)."""
    return sha256_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str))[:length]


def setup_logging(log_path: str | os.PathLike | None = None, name: str = "cbtpipe") -> logging.Logger:
    """Log to the rule's log file (and stderr), with timestamps."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        ensure_parent(log_path)
        handlers.append(logging.FileHandler(log_path, mode="a", encoding="utf-8"))
    from .secrets import RedactingFilter

    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(RedactingFilter())
        logger.addHandler(h)
    logger.propagate = False
    return logger


def move_aside(path: Path, error: Exception, what: str) -> Path:
    """Rename an unreadable file to ``<name>.unreadable`` (kept for inspection, never read again)
    and say so in the log, naming it."""
    aside = path.with_name(path.name + ".unreadable")
    os.replace(path, aside)
    logging.getLogger("cbtpipe").warning("%s %s is unreadable (%s): moved to %s and computed again", what, path, error, aside.name)
    return aside


class UnitStore:
    """A folder of finished units (a patient, a session, a judged transcript).

    Snakemake deletes the declared outputs of a failed or killed job, so finished units live in a
    folder that no rule declares, keyed by a hash of everything that determines them. A re-run
    picks up what is there. Each unit is one JSON file written atomically; a counter file records
    how many units were computed (not loaded) so tests can show nothing was done twice.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, unit_id: str) -> Path:
        return self.root / f"{unit_id}.json"

    def get(self, unit_id: str) -> Any | None:
        """The stored unit, or None when there is none. An unreadable one (a damaged disk, a hand
        edit) is moved aside with a warning that names it and counts as missing: it is computed
        again."""
        p = self.path(unit_id)
        try:
            return read_json(p)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            move_aside(p, e, "unit")
            return None

    def save(self, unit_id: str, obj: Any) -> None:
        write_json(self.path(unit_id), obj)
        with open(self.root / "computed.log", "a", encoding="utf-8") as fh:
            fh.write(unit_id + "\n")

    def computed_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        log = self.root / "computed.log"
        if log.exists():
            for line in log.read_text(encoding="utf-8").splitlines():
                if line:
                    counts[line] = counts.get(line, 0) + 1
        return counts


def die_with_parent() -> None:
    """``preexec_fn`` for a job's child processes (llama.cpp's converter, llama-server): on Linux
    the child gets SIGKILL when the job that started it dies, however it dies (SIGKILL, the OOM
    killer), so no orphan goes on writing a file or holding a GPU after its job is gone."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def partial_path(out: str | os.PathLike) -> Path:
    """The one place a step writes ``out`` before renaming it into place: a fixed name beside it,
    so a step killed before it could clean up leaves one leftover that its next run removes."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def remove_partial(tmp: Path) -> None:
    import shutil

    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Write a directory output whole or not at all: the body fills the yielded folder (at
    :func:`partial_path`), which then replaces ``out``. On any error, SIGTERM included (see
    cbtpipe.rule), the partial folder is removed; after a SIGKILL, the next run removes it first."""
    import shutil

    out = Path(out)
    tmp = partial_path(out)
    remove_partial(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        remove_partial(tmp)
