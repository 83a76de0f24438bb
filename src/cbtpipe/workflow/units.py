"""Finished units of the resumable stages (a patient's course, a session, a judged transcript)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .io import read_json, write_json


def move_aside(path: Path, error: Exception, what: str) -> Path:
    """Rename an unreadable file to ``<name>.unreadable`` (kept for inspection, never read again)
    and say so in the log, naming it."""
    aside = path.with_name(path.name + ".unreadable")
    os.replace(path, aside)
    logging.getLogger("cbtpipe").warning("%s %s is unreadable (%s): moved to %s and computed again", what, path, error, aside.name)
    return aside


def map_units(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    """``[fn(x) for x in items]``, with up to ``workers`` items at a time (threads: the work is
    waiting on an LLM backend). The results keep the order of ``items``, so the output of a job is
    the same whatever its concurrency; each unit's seeds come from the unit, never from the order
    in which units finish."""
    workers = max(1, min(int(workers), len(items)))
    if workers == 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unit") as pool:
        return list(pool.map(fn, items))


def shard_of(items: list[dict[str, Any]], shard: int, shards: int, key: str = "id") -> list[dict[str, Any]]:
    """The items of one shard of ``shards``: every ``shards``-th item by ``key``, starting at
    ``shard``. A shard's members depend on the keys only, never on the order of the input."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of {shards}")
    return sorted(items, key=lambda x: x[key])[shard::shards]


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
        self.reused = 0  # units loaded instead of computed, by get_or_make
        self._lock = threading.Lock()

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

    def get_or_make(self, unit_id: str, make: Callable[[], Any]) -> tuple[Any, bool]:
        """The stored unit, or ``make()`` saved as the unit; and whether it was reused. The one
        "compute or reload" step of every resumable stage (safe from several threads)."""
        stored = self.get(unit_id)
        if stored is not None:
            with self._lock:
                self.reused += 1
            return stored, True
        obj = make()
        self.save(unit_id, obj)
        return obj, False

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
