"""Progress lines of long jobs: units done, rate, tokens per second and time left, counted over
the units computed in this run (units read back take no time); on a terminal when there is one."""

from __future__ import annotations

import io
import logging

from cbtpipe.workflow import Progress, progress
from cbtpipe.workflow.progress import fmt_duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_rate_and_eta_count_only_the_units_computed_in_this_run(caplog):
    clock, toks = Clock(), [0]
    p = Progress("judge", 6, "sessions", tokens=lambda: toks[0], clock=clock)
    with caplog.at_level(logging.INFO, logger="cbtpipe"):
        p.step("a", reused=True)
        p.step("b", reused=True)  # read back: no log line, no time
        clock.t += 20
        toks[0] = 400
        line = p.step("c")
    assert line.startswith("judge: 3/6 sessions (2 from finished units)")
    assert "3.00 sessions/min" in line and "20.0 tok/s" in line
    assert "ETA 1:00" in line  # 3 left at 20 s each
    assert [r.getMessage() for r in caplog.records] == [line]
    clock.t += 10
    p.step("d")
    p.step("e")
    last = p.step("f")
    assert "took 0:30" in last and "ETA" not in last


def test_terminal_lines_are_throttled_and_the_last_always_shows(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, "TERMINAL", out)
    clock = Clock()
    p = Progress("rollout m", 4, "sessions", clock=clock)
    p.step("1")
    clock.t += 1
    p.step("2")  # within TERMINAL_EVERY_S of the first line
    clock.t += progress.TERMINAL_EVERY_S
    p.step("3")
    p.step("4")  # the last
    shown = out.getvalue().splitlines()
    assert [s.split(": ")[1].split(" ")[0] for s in shown] == ["1/4", "3/4", "4/4"]


def test_a_log_line_at_most_every_few_seconds_for_many_small_steps(caplog):
    clock = Clock()
    p = Progress("train", 100, "steps", clock=clock, every_s=30)
    with caplog.at_level(logging.INFO, logger="cbtpipe"):
        for _ in range(100):
            clock.t += 1
            p.step()
    lines = [r.getMessage() for r in caplog.records]
    assert 3 <= len(lines) <= 5 and lines[-1].startswith("train: 100/100 steps")
    assert fmt_duration(3725) == "1:02:05" and fmt_duration(59.6) == "1:00"
