"""The simulated-patient check: a judge reads the profile the patient model was given and the
session it played, and answers two yes/no questions (did the patient stay consistent with the
profile; was the distress resolved by the end). One stateless call per session, resumable per
session; an answer that fails the schema after the allowed attempts is missing, never "no"."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..design import describe, render_template, risk_prompt
from ..workflow import Progress, UnitStore, hash_obj, map_units

QUESTIONS = ("consistent", "resolved")


def check_schema(reasoning_chars: int) -> dict[str, Any]:
    """Per question, a short reason first (when ``reasoning_chars`` > 0), then "yes" or "no"."""
    props: dict[str, Any] = {}
    for q in QUESTIONS:
        if reasoning_chars > 0:
            props[f"{q}_reasoning"] = {"type": "string", "maxLength": reasoning_chars}
        props[q] = {"type": "string", "enum": ["yes", "no"]}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _answer_format(reasoning_chars: int) -> str:
    if reasoning_chars <= 0:
        return 'Answer in JSON: "consistent": "yes" or "no", then "resolved": "yes" or "no".'
    return (
        'Answer in JSON: "consistent_reasoning" (one short sentence citing the turns that decide it), "consistent": "yes" or "no", '
        'then "resolved_reasoning" (one short sentence), "resolved": "yes" or "no".'
    )


def _identity(session: dict[str, Any]) -> dict[str, Any]:
    from .safety import _identity as safety_identity

    return safety_identity(session)


def check_session(session: dict[str, Any], profile: dict[str, Any], backend, ccfg: dict[str, Any], template: str | Path) -> dict[str, Any]:
    """One session's check: one call; each answer True, False or None (missing)."""
    from .judge import render_transcript

    prompt = render_template(
        template,
        patient=describe(profile),
        style=profile["conversational_style"],
        risk=risk_prompt(profile),
        transcript=render_transcript(session),
        answer_format=_answer_format(ccfg["reasoning_chars"]),
    )
    res = backend.chat_json(
        [{"role": "user", "content": prompt}],
        check_schema(ccfg["reasoning_chars"]),
        sampling=ccfg["sampling"],
        seed=ccfg["seed"],
        max_attempts=ccfg["max_attempts"],
    )
    data = res.data or {}
    return {
        **_identity(session),
        **{q: (data[q] == "yes") if q in data else None for q in QUESTIONS},
        "reasoning": {q: data.get(f"{q}_reasoning", "") for q in QUESTIONS},
        "valid": res.data is not None,
        "attempts": res.attempts,
        "raw_invalid": [] if res.data is not None else res.raw,
        "calls": res.calls,
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "seconds": round(res.seconds, 3),
    }


def not_checked(session: dict[str, Any], reason: str) -> dict[str, Any]:
    return {
        **_identity(session),
        **dict.fromkeys(QUESTIONS),
        "reasoning": {},
        "valid": None,
        "attempts": 0,
        "raw_invalid": [],
        "calls": [],
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "seconds": 0.0,
        "missing_reason": reason,
    }


def run_patient_check(
    sessions: list[dict[str, Any]],
    backend,
    profiles: dict[str, dict[str, Any]],
    ccfg: dict[str, Any],
    template: str | Path,
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every session checked, resumable per session: a unit is keyed by the settings, the judge
    (and the model and fingerprint it serves), the template, and the session's transcript and
    profile."""
    from .judge import render_transcript

    key = hash_obj(
        {
            "ccfg": ccfg,
            **backend.unit_identity(),  # a changed served model or fingerprint judges again
            "tpl": Path(template).read_text(encoding="utf-8"),
        }
    )
    store = UnitStore(Path(unit_dir) / key)
    t0 = time.perf_counter()
    progress = Progress("patient check", len(sessions), "sessions", tokens=backend.stats.generated_tokens)

    def one(s: dict[str, Any]) -> dict[str, Any]:
        profile = profiles.get(s["patient_id"])
        if profile is None:
            return not_checked(s, "no profile for this patient")
        if not s["messages"]:
            return not_checked(s, "the session has no turns")
        sha = hash_obj([render_transcript(s), profile], 64)
        uid = f"{s['session_id']}-{sha[:16]}"
        rec, reused = store.get_or_make(uid, lambda: check_session(s, profile, backend, ccfg, template) | {"input_sha256": sha})
        progress.step(f"{uid}: consistent {rec['consistent']}, resolved {rec['resolved']}", reused=reused)
        return rec

    out = map_units(one, sessions, backend.parallelism)
    stats = {
        "sessions": len(out),
        "sessions_reused": store.reused,
        "valid": sum(bool(r["valid"]) for r in out),
        "missing": sum(r["valid"] is False for r in out),
        "prompt_tokens": sum(r["prompt_tokens"] for r in out),
        "completion_tokens": sum(r["completion_tokens"] for r in out),
        "judge_seconds": round(sum(r["seconds"] for r in out), 2),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "llm": backend.stats.as_dict(),
        "backend": backend.name,
        "unit_dir": str(store.root),
    }
    return out, stats
