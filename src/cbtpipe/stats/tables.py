"""The score tables of the judged sessions: one row per (session, judge, sample, item) and one per
session with its totals, lengths and risk, as CSV."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..design import SESSION_COLUMNS

LONG_FIELDS = ["session_id", "patient_id", "model", "arm", "quantization", "judge", "judge_sample", "valid", "item", "score"]


def long_rows(judged: list[dict[str, Any]], rubric: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for j in judged:
        for s in j["samples"]:
            for it in rubric["items"]:
                v = s["scores"].get(it["id"])
                rows.append(
                    {
                        "session_id": j["session_id"],
                        "patient_id": j["patient_id"],
                        "model": j["model"],
                        "arm": j["arm"],
                        "quantization": j["quantization"],
                        "judge": s.get("judge", "judge"),
                        "judge_sample": s["sample"],
                        "valid": int(s["valid"]),
                        "item": it["id"],
                        "score": "" if v is None else v,
                    }
                )
    return rows


def session_lengths(session: dict[str, Any]) -> dict[str, Any]:
    """The length columns of one rollout session (``rubric.SESSION_COLUMNS``)."""
    th = sum(m["role"] == "therapist" for m in session["messages"])
    words = session.get("therapist_words", 0)
    return {
        "position": session.get("position", 1),
        "session": session.get("session", 0),
        "turns": session["turns"],
        "therapist_turns": th,
        "therapist_words": words,
        "words_per_therapist_turn": round(words / th, 2) if th else "",
        "therapist_tokens": session.get("therapist_tokens", ""),
        "turns_cut_at_max_tokens": session.get("turns_cut_at_max_tokens", ""),
        "context_truncations": session.get("context_truncations", 0),
        "context_tokens_max": session.get("context_tokens_max", ""),
        "stop_reason": session["stop_reason"],
        "closing_prompted": int(bool(session.get("closing_prompted"))),
    }


def risk_level(profile: dict[str, Any] | None) -> str:
    """A persona's risk level ("none" without a risk block)."""
    return ((profile or {}).get("risk") or {}).get("level", "none")


def total_rows(
    judged: list[dict[str, Any]],
    rubric: dict[str, Any],
    sessions: dict[str, dict[str, Any]] | None = None,
    profiles: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per judged session: the total (also as percent of the scale's maximum), the
    rubric's subtotals, each item, the persona's risk level, and the session's position and
    length from its rollout."""
    rows = []
    for j in judged:
        r = {
            "session_id": j["session_id"],
            "patient_id": j["patient_id"],
            "model": j["model"],
            "arm": j["arm"],
            "quantization": j["quantization"],
            "risk_level": risk_level((profiles or {}).get(j["patient_id"])),
            "persona_set": ((profiles or {}).get(j["patient_id"]) or {}).get("set", "in_distribution"),
            "samples": len(j["samples"]),
            "valid_samples": j["valid_samples"],
            "total": "" if j["total"] is None else round(j["total"], 4),
            "total_pct": "" if j["total"] is None else round(100 * j["total"] / rubric["max_total"], 4),
        }
        for sid, sub in rubric.get("subtotals", {}).items():
            vals = [j["item_scores"].get(i) for i in sub["items"]]
            r[sid] = round(sum(vals), 4) if all(v is not None for v in vals) else ""
        for it in rubric["items"]:
            v = j["item_scores"].get(it["id"])
            r[it["id"]] = "" if v is None else round(v, 4)
        if sessions is not None:
            r |= session_lengths(sessions[j["session_id"]])
        rows.append(r)
    return rows


def total_fields(rubric: dict[str, Any]) -> list[str]:
    head = [
        "session_id",
        "patient_id",
        "model",
        "arm",
        "quantization",
        "risk_level",
        "persona_set",
        "samples",
        "valid_samples",
        "total",
        "total_pct",
    ]
    return head + list(rubric.get("subtotals", {})) + [i["id"] for i in rubric["items"]] + list(SESSION_COLUMNS)


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    import io

    from ..workflow import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))
