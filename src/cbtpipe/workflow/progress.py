"""Progress of a long job: units done of the total, the rate, tokens per second and the time
left, in the rule's log (``tail -f`` it) and, when the job was started from a terminal, on it.

The rate and the time left count only the units computed in this run: units read back from a
resumed run's store take no time and would make the estimate meaningless.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, TextIO

log = logging.getLogger("cbtpipe")

# The terminal the job was started from (rule.entry sets it when stderr is a TTY); None otherwise.
TERMINAL: TextIO | None = None
TERMINAL_EVERY_S = 5.0


def fmt_duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Thread-safe: ``step()`` once per finished unit (``reused`` for one read back), with the
    completion tokens it made when known (else ``tokens`` reads a running total, e.g. a backend's
    stats)."""

    def __init__(
        self, what: str, total: int, unit: str = "units", tokens: Any = None, clock: Any = time.perf_counter, every_s: float = 0.0
    ):
        self.what, self.total, self.unit = what, int(total), unit
        self.every_s = every_s  # at most one log line per every_s seconds (the last one always)
        self._last_log = float("-inf")
        self._tokens = tokens  # callable -> completion tokens so far, or None
        self._clock = clock
        self.t0 = clock()
        self._tok0 = self._read_tokens()
        self.done = 0
        self.reused = 0
        self._lock = threading.Lock()
        self._last_terminal = float("-inf")

    def _read_tokens(self) -> int | None:
        if self._tokens is None:
            return None
        try:
            return int(self._tokens() or 0)
        except Exception:  # noqa: BLE001 - a progress line never fails a job
            return None

    def line(self, label: str = "") -> str:
        elapsed = self._clock() - self.t0
        fresh = self.done - self.reused
        parts = [f"{self.what}: {self.done}/{self.total} {self.unit}"]
        if self.reused:
            parts[0] += f" ({self.reused} from finished units)"
        if fresh and elapsed > 0:
            per = elapsed / fresh
            parts.append(f"{60 / per:.2f} {self.unit}/min" if per >= 1 else f"{1 / per:.2f} {self.unit}/s")
            tok = self._read_tokens()
            if tok is not None and self._tok0 is not None and tok > self._tok0:
                parts.append(f"{(tok - self._tok0) / elapsed:.1f} tok/s")
            left = self.total - self.done
            parts.append(f"ETA {fmt_duration(left * per)}" if left > 0 else f"took {fmt_duration(elapsed)}")
        elif self.done >= self.total:
            parts.append(f"took {fmt_duration(elapsed)}")
        text = ", ".join(parts)
        return f"{text} [{label}]" if label else text

    def step(self, label: str = "", reused: bool = False) -> str:
        with self._lock:
            self.done += 1
            self.reused += bool(reused)
            text = self.line(label)
            now = self._clock()
            last = self.done >= self.total
            to_terminal = TERMINAL is not None and (last or now - self._last_terminal >= TERMINAL_EVERY_S)
            if to_terminal:
                self._last_terminal = now
            to_log = not reused and (last or now - self._last_log >= self.every_s)
            if to_log:
                self._last_log = now
        if to_log:
            log.info("%s", text)
        if to_terminal:
            with contextlib.suppress(OSError, ValueError):
                print(text, file=TERMINAL, flush=True)
        return text
