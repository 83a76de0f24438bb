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

from .errors import PipelineError
from .secrets import RedactingFilter


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

    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(RedactingFilter())
        logger.addHandler(h)
    logger.propagate = False
    return logger


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
    workflow.rule), the partial folder is removed; after a SIGKILL, the next run removes it first."""
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
