"""A session's place in its course, defined once for training examples and evaluation sessions.

The therapist's system prompt is the configured base prompt followed by a *course context*
block (``data.prompts.context``): session k of N, its phase and the summaries and homework of the
sessions before, as the transcript generator saw them. The dataset builder gives every training
example the context of its own session; a rollout gives the evaluation session at position k the
context of a synthetic history written for the evaluation patient (``stages.generate_history``), so
both arms meet the same patients at the same positions. The judge is shown the same block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..workflow import PipelineError
from .prompts import render_template


def phase_plan(phases: list[dict[str, Any]], n_sessions: int) -> list[dict[str, Any]]:
    """Assign a phase to each session index (1-based) by the phases' shares, in order."""
    total = sum(p["share"] for p in phases)
    bounds, acc = [], 0.0
    for p in phases:
        acc += p["share"] / total
        bounds.append(acc)
    plan = []
    for i in range(n_sessions):
        pos = (i + 0.5) / n_sessions
        k = next(j for j, b in enumerate(bounds) if pos <= b + 1e-9)
        plan.append(phases[k])
    return plan


def context_block(
    template: str | Path, *, session_index: int, n_sessions: int, phase: dict[str, Any], history: list[dict[str, Any]]
) -> str:
    return render_template(template, session_index=session_index, n_sessions=n_sessions, phase=phase, history=history).strip()


def phase_named(phases: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((p for p in phases if p["name"] == name), {"name": name, "focus": "as the course requires"})


def training_context(session: dict[str, Any], sessions_of_patient: list[dict[str, Any]], dcfg: dict[str, Any], template: str | Path) -> str:
    """The context block of a training session: the history its generator saw (recorded with the
    session), or for imported sessions the summaries and homework of the patient's earlier
    sessions where the import carries them."""
    idx = session["session_index"]
    if "history" in session:
        history = session["history"]
    else:
        history = [
            {"index": s["session_index"], "summary": s.get("summary", ""), "homework": s.get("homework", "")}
            for s in sorted(sessions_of_patient, key=lambda s: s["session_index"])
            if s["session_index"] < idx and (s.get("summary") or s.get("homework"))
        ]
    n = session.get("n_sessions") or max(dcfg["sessions_per_patient"], max(s["session_index"] for s in sessions_of_patient))
    phase = (
        phase_named(dcfg["phases"], session["phase"])
        if session.get("phase", "unknown") != "unknown"
        else phase_plan(dcfg["phases"], n)[min(idx, n) - 1]
    )
    return context_block(template, session_index=idx, n_sessions=n, phase=phase, history=history)


def check_positions(positions: list[int], n_sessions: int) -> None:
    bad = [p for p in positions if p < 1 or p > n_sessions]
    if bad:
        raise PipelineError(f"config key rollout.positions: {bad} outside the course of data.sessions_per_patient = {n_sessions} sessions")


def eval_context(
    history_row: dict[str, Any] | None, position: int, n_sessions: int, phases: list[dict[str, Any]], template: str | Path
) -> str | None:
    """The context block of an evaluation session at ``position``; None when the patient has no
    history for it."""
    if position == 1:
        hist: list[dict[str, Any]] = []
    else:
        if not history_row or history_row.get("history") is None or len(history_row["history"]) < position - 1:
            return None
        hist = history_row["history"][: position - 1]
    phase = phase_plan(phases, n_sessions)[position - 1]
    return context_block(template, session_index=position, n_sessions=n_sessions, phase=phase, history=hist)
