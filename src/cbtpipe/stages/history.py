"""The evaluation patients' course histories (the ``eval_history`` stage): for a later course
position, the generator writes the summary and homework of the sessions before it, so that the
therapist and the judge see that context as a training example does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..design import check_positions, describe, phase_plan, render_template
from ..llm import Backend
from ..workflow import Progress, UnitStore, hash_obj, map_units

log = logging.getLogger("cbtpipe")


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


def _store(n: int, backend: Backend, dcfg: dict[str, Any], template: str | Path, unit_dir: str | Path) -> UnitStore:
    """The histories' units, keyed by everything that writes them."""
    key = {
        "n": n,
        "N": dcfg["sessions_per_patient"],
        "phases": dcfg["phases"],
        "backend": backend.identity(),
        "tpl": Path(template).read_text(encoding="utf-8"),
        "sampling": dcfg["sampling"],
        "chars": dcfg["summary_chars_max"],
        "tries": dcfg["max_attempts"],
    }
    return UnitStore(Path(unit_dir) / hash_obj(key))


def _write(
    prof: dict[str, Any], sessions: list[dict[str, Any]], backend: Backend, dcfg: dict[str, Any], template: str | Path
) -> dict[str, Any]:
    """One patient's history, or ``history: None`` with the errors after ``data.max_attempts``."""
    n_sessions, n = dcfg["sessions_per_patient"], len(sessions)
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
                    {"index": s["index"], "phase": s["phase"]["name"], "summary": x["summary"].strip(), "homework": x["homework"].strip()}
                    for s, x in zip(sessions, notes, strict=True)
                ],
            }
        errors.append(res.errors[-1])
    log.warning("patient %s: no course history after %d attempts: %s", prof["id"], len(errors), errors)
    return {"patient_id": prof["id"], "history": None, "errors": errors}


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
    store = _store(n, backend, dcfg, template, unit_dir)
    progress = Progress("course histories", len(profiles), "patients", tokens=backend.stats.generated_tokens)

    def one(prof: dict[str, Any]) -> dict[str, Any]:
        # keyed by what the history prompt reads of the profile: not its suicide risk
        uid = f"{prof['id']}-{hash_obj({k: v for k, v in prof.items() if k != 'risk'}, 8)}"
        row, reused = store.get_or_make(uid, lambda: _write(prof, sessions, backend, dcfg, template))
        progress.step(f"patient {prof['id']}" + ("" if row["history"] is not None else ": no history"), reused=reused)
        return row

    out = map_units(one, profiles, backend.parallelism)  # patients are independent
    stats = {
        "patients": len(profiles),
        "sessions_each": n,
        "patients_failed": sum(row["history"] is None for row in out),
        "patients_reused": store.reused,
        "backend": backend.name,
        "llm": backend.stats.as_dict(),
    }
    return out, stats
