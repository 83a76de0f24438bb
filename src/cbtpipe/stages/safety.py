"""The safety judge: every question of the safety rubric's flow (design.safety_rubric) asked as one
stateless judge call, the transcript then the question, answered as JSON with the reasoning first
and then "yes" or "no"; and the turns of the first disclosure and of the first response to it.
An answer that fails the schema after the allowed attempts is missing, never "no"."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..design import evaluate_flow, first_resource_turn, is_refusal, resource_turns
from ..workflow import PipelineError, hash_obj

log = logging.getLogger("cbtpipe")


def numbered_transcript(session: dict[str, Any]) -> str:
    label = {"therapist": "Therapist", "patient": "Patient"}
    return "\n".join(f"[{i}] {label[m['role']]}: {m['content']}" for i, m in enumerate(session["messages"], 1))


def answer_schema(reasoning_chars: int) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if reasoning_chars > 0:
        props["reasoning"] = {"type": "string", "maxLength": reasoning_chars}
    props["answer"] = {"type": "string", "enum": ["yes", "no"]}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def timing_schema(messages: list[dict[str, Any]], reasoning_chars: int) -> dict[str, Any]:
    """The disclosure turn is a patient turn, the acknowledgement a therapist turn (0: none)."""
    turns = {r: [0] + [i for i, m in enumerate(messages, 1) if m["role"] == r] for r in ("patient", "therapist")}
    props: dict[str, Any] = {}
    if reasoning_chars > 0:
        props["reasoning"] = {"type": "string", "maxLength": reasoning_chars}
    props["disclosure_turn"] = {"type": "integer", "enum": turns["patient"]}
    props["acknowledgement_turn"] = {"type": "integer", "enum": turns["therapist"]}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _identity(session: dict[str, Any]) -> dict[str, Any]:
    """What a safety record copies from its session: the CTRS judge's identity, and the session's
    index within its position (to pair sessions across arms)."""
    from .judge import _identity as judged_identity

    return judged_identity(session) | {"session": session.get("session", 0)}


# Where a safety template marks the end of what every question of a session shares.
QUESTION_BREAK = "\x00question\x00"


def question_messages(prompt: str) -> list[dict[str, str]]:
    """A rendered safety prompt as chat messages: the part before the template's question_break
    (instructions and transcript, the same for every question of a session) as the system
    message and the question as the user message, so a local judge reuses the session's part
    from its cache instead of evaluating it again for each question; without the break, one
    user message."""
    shared, brk, question = prompt.partition(QUESTION_BREAK)
    if not brk:
        return [{"role": "user", "content": prompt}]
    if QUESTION_BREAK in question:
        raise PipelineError("safety.prompt: question_break appears more than once in the rendered template")
    return [{"role": "system", "content": shared.rstrip()}, {"role": "user", "content": question.strip()}]


def judge_safety(
    session: dict[str, Any], backend, rubric: dict[str, Any], scfg: dict[str, Any], template: str | Path, resources: dict[str, Any]
) -> dict[str, Any]:
    """One session through the flow, each question a stateless call; with its timing answer."""
    from ..design import render_template

    transcript = numbered_transcript(session)
    schema = answer_schema(scfg["reasoning_chars"])
    calls: dict[str, dict[str, Any]] = {}
    counts = {"prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}

    def call(qid: str, question: str, schema: dict[str, Any], answer_format: str):
        prompt = render_template(
            template,
            transcript=transcript,
            question=question,
            resources=resources["resources"],
            country=resources["country"],
            answer_format=answer_format,
            question_break=QUESTION_BREAK,
        )
        seed = scfg["seed"] + int(hash_obj(qid, 6), 16) % 100000
        res = backend.chat_json(question_messages(prompt), schema, sampling=scfg["sampling"], seed=seed, max_attempts=scfg["max_attempts"])
        refused = getattr(res, "refusals", 0) > 0 or (res.data is None and any(is_refusal(t, scfg["refusal_patterns"]) for t in res.raw))
        for k in counts:
            counts[k] += getattr(res, k)
        return res, refused

    yes_no = 'Answer in JSON: "reasoning" (one or two short sentences that cite the turns that decide it), then "answer": "yes" or "no".'
    if scfg["reasoning_chars"] <= 0:
        yes_no = 'Answer in JSON: "answer": "yes" or "no".'

    def ask(qid: str, question: str) -> str | None:
        res, refused = call(qid, question, schema, yes_no)
        ans = res.data["answer"] if res.data is not None else None
        calls[qid] = {
            "answer": ans,
            "reasoning": (res.data or {}).get("reasoning", ""),
            "attempts": res.attempts,
            "refused": refused,
            "raw_invalid": [] if res.data is not None else res.raw,
            "served": res.served,
            "calls": res.calls,  # every attempt: served model, fingerprint, time
        }
        return ans

    out = evaluate_flow(rubric, ask)
    timing = {"disclosure_turn": None, "acknowledgement_turn": None, "valid": None}
    if out["disclosed"] and scfg["timing"] and rubric["timing"]:
        fmt = 'Answer in JSON: "reasoning" (one short sentence), then "disclosure_turn" and "acknowledgement_turn" (turn numbers, 0 for none).'
        res, refused = call("timing", rubric["timing"], timing_schema(session["messages"], scfg["reasoning_chars"]), fmt)
        if res.data is not None:
            timing = {
                "disclosure_turn": res.data["disclosure_turn"] or None,
                "acknowledgement_turn": res.data["acknowledgement_turn"] or None,
                "valid": True,
            }
        else:
            timing["valid"] = False
        calls["timing"] = {
            "answer": res.data,
            "served": res.served,
            "calls": res.calls,
            "attempts": res.attempts,
            "refused": refused,
            "raw_invalid": [] if res.data is not None else res.raw,
        }
    return {
        **_identity(session),
        **out,
        "answers": calls,
        "timing": timing,
        "resources_turn": first_resource_turn(session, resources["patterns"]),
        "judge_refusals": sum(c["refused"] for c in calls.values()),
        "missing_answers": sum(c["answer"] is None for c in calls.values()),
        "rubric": rubric["name"],
        "prompt_tokens": counts["prompt_tokens"],
        "completion_tokens": counts["completion_tokens"],
        "seconds": round(counts["seconds"], 3),
    }


def not_judged(session: dict[str, Any], rubric: dict[str, Any], reason: str) -> dict[str, Any]:
    return {
        **_identity(session),
        "branch": None,
        "disclosed": None,
        "asked": [],
        "dimensions": {d["id"]: None for d in rubric["dimensions"]},
        "any_high_harm": None,
        "score": None,
        "answers": {},
        "timing": {"disclosure_turn": None, "acknowledgement_turn": None, "valid": None},
        "resources_turn": None,
        "judge_refusals": 0,
        "missing_answers": 0,
        "rubric": rubric["name"],
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "seconds": 0.0,
        "missing_reason": reason,
    }


def run_safety_judging(
    sessions: list[dict[str, Any]],
    backend,
    rubric: dict[str, Any],
    scfg: dict[str, Any],
    template: str | Path,
    resources: dict[str, Any],
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every session of a shard through the flow, resumable per session (a unit is keyed by the
    transcript's text and by everything the answers depend on)."""
    from ..workflow import Progress, UnitStore, map_units
    from .judge import render_transcript

    key = hash_obj(
        {
            "scfg": scfg,
            "rubric": rubric["sha256"],
            **backend.unit_identity(),  # a changed served model or fingerprint judges again
            "tpl": Path(template).read_text(encoding="utf-8"),
            "resources": resources,
        }
    )
    store = UnitStore(Path(unit_dir) / key)
    t0 = time.perf_counter()
    progress = Progress("safety", len(sessions), "sessions", tokens=backend.stats.generated_tokens)

    def one(s: dict[str, Any]) -> dict[str, Any]:
        sha = hash_obj(render_transcript(s), 64)
        if not s["messages"]:
            return not_judged(s, rubric, "the session has no turns") | {"transcript_sha256": sha}
        uid = f"{s['session_id']}-{sha[:16]}"
        rec, reused = store.get_or_make(
            uid, lambda: judge_safety(s, backend, rubric, scfg, template, resources) | {"transcript_sha256": sha}
        )
        progress.step(
            f"{uid}: branch {rec['branch']}, any high harm {rec['any_high_harm']}, {len(rec['answers'])} judge call(s)", reused=reused
        )
        # every therapist turn with a crisis resource (a function of the transcript: not kept in the unit)
        return rec | {"resources_turns": resource_turns(s, resources["patterns"])}

    # sessions are independent (the questions of one session follow its flow, one after another)
    out = map_units(one, sessions, backend.parallelism)
    calls = sum(len(r["answers"]) for r in out)
    ctoks = sum(r["completion_tokens"] for r in out)
    secs = sum(r["seconds"] for r in out)
    stats = {
        "sessions": len(out),
        "sessions_reused": store.reused,
        "judge_calls": calls,
        "missing_answers": sum(r["missing_answers"] for r in out),
        "judge_refusals": sum(r["judge_refusals"] for r in out),
        "prompt_tokens": sum(r["prompt_tokens"] for r in out),
        "completion_tokens": ctoks,
        "judge_seconds": round(secs, 2),
        "completion_tokens_per_second": round(ctoks / secs, 2) if secs else None,
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "concurrency": backend.parallelism,
        "llm": backend.stats.as_dict(),
        "backend": backend.name,
        "unit_dir": str(store.root),
    }
    return out, stats
