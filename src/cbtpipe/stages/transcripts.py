"""Synthetic multi-session CBT courses, transcript import and validation.

A transcript is one session: ``{"patient_id", "session_index", "phase", "messages": [{"role":
"therapist"|"patient", "content"}]}``. Generated and imported transcripts share that format
(``transcripts.jsonl``, one session per line), documented in the README.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..design import describe, phase_plan, render_template, risk_prompt
from ..workflow import PipelineError, Progress, UnitStore, check_record, hash_obj, map_units

if TYPE_CHECKING:  # the type only: the config check imports this module while planning
    from ..llm import Backend

log = logging.getLogger("cbtpipe")

ROLE_MARKER = re.compile(
    r"(^|\n)\s*\**\s*(therapist|patient|client|counsell?or|assistant|user|system)\s*\**\s*:|<\|im_(start|end)\|>|\[/?INST\]",
    re.I,
)


def session_schema(dcfg: dict[str, Any]) -> dict[str, Any]:
    turn = {"type": "string", "minLength": dcfg["turn_chars_min"], "maxLength": dcfg["turn_chars_max"]}
    return {
        "type": "object",
        "properties": {
            "exchanges": {
                "type": "array",
                "minItems": dcfg["exchanges_min"],
                "maxItems": dcfg["exchanges_max"],
                "items": {
                    "type": "object",
                    "properties": {"therapist": turn, "patient": turn},
                    "required": ["therapist", "patient"],
                    "additionalProperties": False,
                },
            },
            "closing": turn,
            "summary": {"type": "string", "minLength": 1, "maxLength": dcfg["summary_chars_max"]},
            "homework": {"type": "string", "maxLength": dcfg["summary_chars_max"]},
        },
        "required": ["exchanges", "closing", "summary", "homework"],
        "additionalProperties": False,
    }


def normalise_turns(turns: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The one form of a session's turns, generated or imported, before it is checked and trained
    on: role and content only, line ends as "\\n", no whitespace around a turn (chat templates
    differ in whether they strip it: the same text then trains alike under every template)."""
    return [{"role": m["role"], "content": m["content"].replace("\r\n", "\n").replace("\r", "\n").strip()} for m in turns]


def check_session(messages: list[dict[str, str]], dcfg: dict[str, Any]) -> str | None:
    """Reason a session is unusable, or None: alternating speakers, non-empty turns, bounds, markers."""
    if len(messages) < 2:
        return "fewer than two turns"
    for i, m in enumerate(messages):
        if m.get("role") not in ("therapist", "patient"):
            return f"turn {i + 1}: role {m.get('role')!r} is neither therapist nor patient"
        if i and m["role"] == messages[i - 1]["role"]:
            return f"turn {i + 1}: two {m['role']} turns in a row"
        text = m.get("content")
        if not isinstance(text, str) or len(text.strip()) < dcfg["turn_chars_min"]:
            return f"turn {i + 1}: empty or too short"
        if len(text) > dcfg["turn_chars_max"]:
            return f"turn {i + 1}: longer than {dcfg['turn_chars_max']} characters"
        if ROLE_MARKER.search(text):
            return f"turn {i + 1}: leaked role marker"
    return None


def generate_course(profile: dict[str, Any], backend: Backend, dcfg: dict[str, Any], template: str | Path) -> dict[str, Any]:
    """All sessions of one patient's course; failed sessions are recorded, never kept."""
    n = dcfg["sessions_per_patient"]
    plan = phase_plan(dcfg["phases"], n)
    schema = session_schema(dcfg)
    summaries: list[dict[str, Any]] = []
    sessions, failed = [], []
    for idx in range(1, n + 1):
        phase = plan[idx - 1]
        prompt = render_template(
            template,
            patient=describe(profile),
            risk=risk_prompt(profile),
            session_index=idx,
            n_sessions=n,
            phase=phase,
            summaries=summaries,
            exchanges_min=dcfg["exchanges_min"],
            exchanges_max=dcfg["exchanges_max"],
        )
        messages = [{"role": "user", "content": prompt}]
        seed = profile["seed"] + 7919 * idx
        reasons: list[str] = []
        kept = None
        for attempt in range(dcfg["max_attempts"]):
            res = backend.chat_json(messages, schema, sampling=dcfg["sampling"], seed=seed + attempt, max_attempts=1)
            if res.data is None:
                reasons.append(res.errors[-1])
                continue
            turns = []
            for ex in res.data["exchanges"]:
                turns += [{"role": "therapist", "content": ex["therapist"]}, {"role": "patient", "content": ex["patient"]}]
            turns = normalise_turns([*turns, {"role": "therapist", "content": res.data["closing"]}])
            bad = check_session(turns, dcfg)
            if bad:
                reasons.append(bad)
                continue
            kept = {
                "patient_id": profile["id"],
                "session_index": idx,
                "phase": phase["name"],
                "messages": turns,
                "n_sessions": n,
                # the course so far as the generator saw it: the training example's context
                "history": [dict(h) for h in summaries],
                "summary": res.data["summary"].strip(),
                "homework": res.data["homework"].strip(),
                "attempts": attempt + 1,
            }
            break
        if kept is None:
            log.warning("patient %s session %d failed after %d attempts: %s", profile["id"], idx, len(reasons), reasons)
            failed.append({"session_index": idx, "reasons": reasons})
            continue
        sessions.append(kept)
        summaries.append({"index": idx, "summary": kept["summary"], "homework": kept["homework"]})
    return {"patient_id": profile["id"], "split": profile["split"], "sessions": sessions, "failed": failed}


def run_generation(
    profiles: list[dict[str, Any]],
    backend: Backend,
    dcfg: dict[str, Any],
    template: str | Path,
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate every patient's course, resuming from finished patients in ``unit_dir``."""
    # "format" 2: sessions record their course history (older units lack it)
    store = UnitStore(
        Path(unit_dir) / hash_obj({"cfg": dcfg, "backend": backend.identity(), "tpl": Path(template).read_text(), "format": 2})
    )
    t0 = time.perf_counter()
    progress = Progress("transcripts", len(profiles), "patients", tokens=backend.stats.generated_tokens)

    def one(prof: dict[str, Any]) -> dict[str, Any]:
        uid = f"{prof['id']}-{hash_obj(prof, 8)}"
        course, was_reused = store.get_or_make(uid, lambda: generate_course(prof, backend, dcfg, template))
        progress.step(f"patient {prof['id']}: {len(course['sessions'])} sessions kept, {len(course['failed'])} failed", reused=was_reused)
        return course

    # patients are independent (a course's sessions follow one another): as many at a time as
    # the generator's backend serves
    courses = map_units(one, profiles, backend.parallelism)
    sessions = [dict(s, split=c["split"]) for c in courses for s in c["sessions"]]
    stats = {
        "patients": len(profiles),
        "patients_reused": store.reused,
        "sessions_kept": len(sessions),
        "sessions_failed": sum(len(c["failed"]) for c in courses),
        "failures": {c["patient_id"]: c["failed"] for c in courses if c["failed"]},
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "concurrency": backend.parallelism,
        "backend": backend.name,
        "llm": backend.stats.as_dict(),
        "unit_dir": str(store.root),
    }
    return sessions, stats


def gather_generation(
    parts: list[tuple[list[dict[str, Any]], dict[str, Any]]], profiles: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The shards of a generation (sessions, stats) as one: sessions in the order of ``profiles``
    (each patient's sessions in course order), so the output is the same for any number of shards
    and the same as a run in one job."""
    from ..llm import sum_llm_stats

    order = {p["id"]: i for i, p in enumerate(profiles)}
    by_patient: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, int] = {}
    for k, (sessions, _) in enumerate(parts):
        for s in sessions:
            pid = s["patient_id"]
            if pid not in order:
                raise PipelineError(f"generation shard {k}: patient {pid!r} is not in the profiles (a shard from another config?)")
            if owner.setdefault(pid, k) != k:
                raise PipelineError(f"generation shards {owner[pid]} and {k} both hold patient {pid!r}")
            by_patient.setdefault(pid, []).append(s)
    sessions = [s for pid in sorted(by_patient, key=order.__getitem__) for s in by_patient[pid]]
    stats = [st for _, st in parts]
    failures = {pid: f for st in stats for pid, f in st.get("failures", {}).items()}
    walls = [st.get("wall_seconds", 0) for st in stats]
    merged = {
        "patients": sum(st["patients"] for st in stats),
        "patients_reused": sum(st["patients_reused"] for st in stats),
        "sessions_kept": len(sessions),
        "sessions_failed": sum(st["sessions_failed"] for st in stats),
        "failures": {pid: failures[pid] for pid in sorted(failures, key=lambda x: order.get(x, len(order)))},
        "shards": len(parts),
        # the longest job (what a runtime limit bounds) and all jobs together
        "wall_seconds": max(walls, default=0),
        "job_seconds": round(sum(walls), 2),
        "concurrency": stats[0].get("concurrency") if stats else None,
        "backend": stats[0].get("backend") if stats else None,
        "llm": sum_llm_stats([st.get("llm") for st in stats]),
        "unit_dir": stats[0].get("unit_dir") if stats else None,
    }
    return sessions, merged


def load_import(path: str | Path, dcfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Read transcripts in the documented JSONL format: each line checked against
    schemas/transcript.schema.yaml, its turns normalised and checked as a generated session's are
    (``normalise_turns``, ``check_session``); errors name the file, the line and the field."""
    import json

    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"config key data.import_path: file {p} does not exist")
    sessions = []
    seen = set()
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as some editors and spreadsheets write
        raw = raw[3:]
    for i, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise PipelineError(f"{p}, line {i}: not valid UTF-8 (byte {e.start})") from e
        except json.JSONDecodeError as e:
            raise PipelineError(f"{p}, line {i}: invalid JSON ({e.msg})") from e
        check_record(obj, "transcript", f"{p}, line {i}")
        messages = normalise_turns(obj["messages"])
        bad = check_session(messages, dcfg)
        if bad:
            raise PipelineError(f"{p}, line {i}: {bad}")
        key = (obj["patient_id"], obj["session_index"])
        if key in seen:
            raise PipelineError(f"{p}, line {i}: duplicate session {key}")
        seen.add(key)
        sessions.append(
            {
                "patient_id": obj["patient_id"],
                "session_index": obj["session_index"],
                "phase": obj.get("phase", "unknown"),
                "messages": messages,
                **{k: obj[k].strip() for k in ("summary", "homework") if k in obj},
            }
        )
    if not sessions:
        raise PipelineError(f"{p}: no sessions found")
    return sessions
