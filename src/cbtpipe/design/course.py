"""A session's place in its course, defined once for training examples and evaluation sessions.

The therapist's system prompt is the configured base prompt followed by a *course context*
block (``data.prompts.context``): session k of N, its phase and the summaries and homework of the
sessions before, as the transcript generator saw them. The dataset builder gives every training
example the context of its own session; a rollout gives the evaluation session at position k the
context of a synthetic history written for the evaluation patient (:func:`generate_history`), so
both arms meet the same patients at the same positions. The judge is shown the same block.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..workflow import PipelineError, Progress, UnitStore, hash_obj, map_units
from .profiles import describe
from .prompts import render_template

if TYPE_CHECKING:
    from ..llm import Backend

log = logging.getLogger("cbtpipe")


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


def history_schema(n: int, chars_max: int) -> dict[str, Any]:
    note = {"type": "string", "minLength": 1, "maxLength": chars_max}
    return {
        "type": "object",
        "properties": {
            "sessions": {
                "type": "array",
                "minItems": n,
                "maxItems": n,
                "items": {
                    "type": "object",
                    "properties": {"summary": note, "homework": note},
                    "required": ["summary", "homework"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["sessions"],
        "additionalProperties": False,
    }


def generate_history(
    profiles: list[dict[str, Any]],
    backend: Backend | None,
    dcfg: dict[str, Any],
    positions: list[int],
    template: str | Path,
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A synthetic course history (summary and homework of sessions 1 .. max(positions) - 1) for
    each evaluation patient, resumable per patient. A patient whose history could not be written
    within ``data.max_attempts`` gets ``history: null`` and is left out of later positions (and
    counted), never given an empty history that would pass for a first session. With only
    position 1 there is nothing to write and ``backend`` may be None."""
    n_sessions = dcfg["sessions_per_patient"]
    check_positions(positions, n_sessions)
    n = max(positions) - 1
    plan = phase_plan(dcfg["phases"], n_sessions)
    sessions = [{"index": i + 1, "phase": plan[i]} for i in range(n)]
    if n == 0:
        rows = [{"patient_id": p["id"], "history": []} for p in profiles]
        return rows, {
            "patients": len(profiles),
            "sessions_each": 0,
            "patients_failed": 0,
            "patients_reused": 0,
            "backend": None,
            "llm": None,
        }
    tpl_text = Path(template).read_text(encoding="utf-8")
    store = UnitStore(
        Path(unit_dir)
        / hash_obj(
            {
                "n": n,
                "N": n_sessions,
                "phases": dcfg["phases"],
                "backend": backend.identity(),
                "tpl": tpl_text,
                "sampling": dcfg["sampling"],
                "chars": dcfg["summary_chars_max"],
                "tries": dcfg["max_attempts"],
            }
        )
    )

    progress = Progress("course histories", len(profiles), "patients", tokens=backend.stats.generated_tokens)

    def one(prof: dict[str, Any]) -> dict[str, Any]:
        def make():
            prompt = render_template(template, patient=describe(prof), sessions=sessions, n_sessions=n_sessions)
            msgs = [{"role": "user", "content": prompt}]
            errors = []
            for attempt in range(dcfg["max_attempts"]):
                res = backend.chat_json(
                    msgs,
                    history_schema(n, dcfg["summary_chars_max"]),
                    sampling=dcfg["sampling"],
                    seed=prof["seed"] + 104729 + attempt,
                    max_attempts=1,
                )
                if res.data is not None:
                    notes = res.data["sessions"]
                    return {
                        "patient_id": prof["id"],
                        "history": [
                            {
                                "index": s["index"],
                                "phase": s["phase"]["name"],
                                "summary": x["summary"].strip(),
                                "homework": x["homework"].strip(),
                            }
                            for s, x in zip(sessions, notes, strict=True)
                        ],
                    }
                errors.append(res.errors[-1])
            log.warning("patient %s: no course history after %d attempts: %s", prof["id"], len(errors), errors)
            return {"patient_id": prof["id"], "history": None, "errors": errors}

        # keyed by what the history prompt reads of the profile: not its suicide risk
        row, reused = store.get_or_make(f"{prof['id']}-{hash_obj({k: v for k, v in prof.items() if k != 'risk'}, 8)}", make)
        progress.step(f"patient {prof['id']}" + ("" if row["history"] is not None else ": no history"), reused=reused)
        return row

    out = map_units(one, profiles, backend.parallelism)  # patients are independent
    failed = sum(row["history"] is None for row in out)
    stats = {
        "patients": len(profiles),
        "sessions_each": n,
        "patients_failed": failed,
        "patients_reused": store.reused,
        "backend": backend.name,
        "llm": backend.stats.as_dict(),
    }
    return out, stats


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
