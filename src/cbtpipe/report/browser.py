"""The results browser: one self-contained HTML page (no server, no network) to read the sessions
of a run side by side.

Pick a model, course position, patient and risk level; each patient's instruct and CBT sessions of
one position stand side by side (the paired design), with every judge's score per CTRS item and its
justifications, and the safety flow's questions and answers. The patient turn where the judge found
the disclosure, the therapist's first response to it and the turns with crisis resources are
highlighted. The page's address carries the selection (``browser.html#model=m&position=1&
patient=eval-000`` or ``#session=<id>``), so the report's table rows link straight to their
sessions.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

ARMS = ("instruct", "cbt")


def _judges(rec: dict[str, Any]) -> dict[str, Any]:
    """Per judge of the panel: its item scores, total and each sample's justifications."""
    out: dict[str, Any] = {}
    per = rec.get("judges") or {"judge": {"item_scores": rec.get("item_scores"), "total": rec.get("total")}}
    for name, j in per.items():
        why: dict[str, list[str]] = {}
        for s in rec.get("samples", []):
            if s.get("judge", "judge") == name and s.get("valid"):
                for item, text in (s.get("justifications") or {}).items():
                    if text:
                        why.setdefault(item, []).append(text)
        out[name] = {"scores": j.get("item_scores") or {}, "total": j.get("total"), "justifications": why}
    return out


def _safety(rec: dict[str, Any] | None, questions: dict[str, str]) -> dict[str, Any] | None:
    if rec is None:
        return None
    timing = rec.get("timing") or {}
    answers = []
    for qid in rec.get("asked") or list(rec.get("answers") or {}):
        a = (rec.get("answers") or {}).get(qid)
        if qid == "timing" or not isinstance(a, dict):
            continue
        answers.append({"id": qid, "question": questions.get(qid, qid), "answer": a.get("answer"), "reasoning": a.get("reasoning") or ""})
    disclosure = timing.get("disclosure_turn") or None
    ack = timing.get("acknowledgement_turn") or None
    return {
        "branch": rec.get("branch"),
        "disclosed": rec.get("disclosed"),
        "score": rec.get("score"),
        "any_high_harm": rec.get("any_high_harm"),
        "dimensions": rec.get("dimensions") or {},
        "disclosure_turn": disclosure,
        # a response comes after what it responds to: an earlier turn is not highlighted as one
        "acknowledgement_turn": ack if disclosure and ack and ack > disclosure else None,
        "resources_turns": rec.get("resources_turns") or [],
        "answers": answers,
    }


def safety_questions(safety_rubric: dict[str, Any]) -> dict[str, str]:
    """Question id -> its text, from the safety rubric's nodes and branches."""
    out = {k: str(v.get("question", k)).strip() for k, v in (safety_rubric.get("nodes") or {}).items()}
    for br in (safety_rubric.get("branches") or {}).values():
        for q in br.get("questions", []):
            out[q["id"]] = str(q.get("question", q["id"])).strip()
    return out


def browser_data(
    sessions: list[dict[str, Any]],
    judged: list[dict[str, Any]],
    safety: list[dict[str, Any]],
    profiles: list[dict[str, Any]],
    rubric: dict[str, Any],
    safety_rubric: dict[str, Any] | None = None,
    title: str = "CBT fine-tuning: sessions side by side",
) -> dict[str, Any]:
    """What the page shows: one entry per (model, patient, position, session) with its arms."""
    by_sid_j = {j["session_id"]: j for j in judged}
    by_sid_s = {s["session_id"]: s for s in safety}
    prof = {p["id"]: p for p in profiles}
    questions = safety_questions(safety_rubric or {})
    pairs: dict[tuple, dict[str, Any]] = {}
    for s in sessions:
        key = (s["model"], s["patient_id"], int(s.get("position", 1)), int(s.get("session", 0)))
        p = prof.get(s["patient_id"], {})
        risk = p.get("risk") or {}
        pair = pairs.setdefault(
            key,
            {
                "id": "|".join(map(str, key)),
                "model": s["model"],
                "patient_id": s["patient_id"],
                "position": key[2],
                "session": key[3],
                "risk_level": risk.get("level", "none"),
                "disclosure_style": risk.get("disclosure"),
                "arms": {},
            },
        )
        j = by_sid_j.get(s["session_id"])
        pair["arms"][s["arm"]] = {
            "session_id": s["session_id"],
            "turns": [{"role": m["role"], "content": m["content"]} for m in s["messages"]],
            "stop_reason": s.get("stop_reason"),
            "course_context": s.get("course_context") or "",
            "total": None if j is None else j.get("total"),
            "judges": {} if j is None else _judges(j),
            "safety": _safety(by_sid_s.get(s["session_id"]), questions),
        }
    items = [{"id": it["id"], "name": it.get("name", it["id"]), "max": it.get("max")} for it in rubric["items"]]
    judges = sorted({n for p in pairs.values() for a in p["arms"].values() for n in a["judges"]})
    return {
        "title": title,
        "arms": list(ARMS),
        "models": sorted({p["model"] for p in pairs.values()}),
        "items": items,
        "judges": judges,
        "pairs": sorted(pairs.values(), key=lambda p: (p["model"], p["patient_id"], p["position"], p["session"])),
    }


def render(data: dict[str, Any]) -> str:
    """The page: the data as JSON inside it, drawn by the page's own script."""
    tpl = resources.files("cbtpipe").joinpath("templates/browser.html").read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False, sort_keys=True).replace("</", "<\\/")
    return tpl.replace("__TITLE__", html.escape(data["title"])).replace("__DATA__", payload)


def browser_link(model: str | None = None, **filters: Any) -> str:
    """The browser's address for a selection (what a report row links to)."""
    parts = [f"model={model}"] if model else []
    parts += [f"{k}={v}" for k, v in filters.items() if v not in (None, "")]
    return "browser.html" + ("#" + "&".join(parts) if parts else "")


def write_browser(path: str | Path, data: dict[str, Any]) -> None:
    from ..workflow import atomic_write_text

    atomic_write_text(path, render(data))
