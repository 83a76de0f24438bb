"""LLM judge on a rubric kept as data (the modified CTRS by default).

The judge sees the rubric and the transcript, never the model name or the arm. Each session is
judged ``k`` times with different seeds; an answer that fails the schema after the allowed
attempts is recorded as missing with its raw text, never as a score of 0.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from .backends import Backend, cost_usd
from .io import hash_obj
from .prompts import render_template
from .units import UnitStore, map_units

log = logging.getLogger("cbtpipe")


def score_schema(rubric: dict[str, Any], justification_chars: int) -> dict[str, Any]:
    props = {}
    for it in rubric["items"]:
        # The enum lets llama.cpp's grammar enforce the range (its converter ignores minimum/maximum).
        rng = list(range(it["min"], it["max"] + 1))
        sub: dict[str, Any] = {"score": {"type": "integer", "minimum": it["min"], "maximum": it["max"], "enum": rng}}
        req = ["score"]
        if justification_chars > 0:
            sub["justification"] = {"type": "string", "maxLength": justification_chars}
            req.append("justification")
        props[it["id"]] = {"type": "object", "properties": sub, "required": req, "additionalProperties": False}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def render_transcript(session: dict[str, Any]) -> str:
    label = {"therapist": "Therapist", "patient": "Patient"}
    return "\n".join(f"{label[m['role']]}: {m['content']}" for m in session["messages"])


def judged_text_sha(session: dict[str, Any]) -> str:
    """The hash of what the judge reads of a session: its turns and the course context it was
    played in (a judgement is a unit of this)."""
    return hash_obj([render_transcript(session), session.get("course_context") or ""], 64)


def total_score(scores: dict[str, int | None], rubric: dict[str, Any], mode: str) -> float | None:
    """Total over items; None unless complete (``complete``) or some item is present (``prorate``)."""
    vals = [scores.get(i["id"]) for i in rubric["items"]]
    present = [v for v in vals if v is not None]
    if len(present) == len(vals):
        return float(sum(present))
    if mode == "prorate" and present:
        return float(sum(present)) * len(vals) / len(present)
    return None


def aggregate(values: list[float], how: str) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return float(statistics.median(vals) if how == "median" else statistics.fmean(vals))


def _identity(session: dict[str, Any]) -> dict[str, Any]:
    """What a judged record copies from its session."""
    return {k: session[k] for k in ("session_id", "patient_id", "model", "arm", "quantization")} | {"position": session.get("position", 1)}


def judge_session(
    session: dict[str, Any], backend: Backend, rubric: dict[str, Any], jcfg: dict[str, Any], template: str | Path
) -> dict[str, Any]:
    prompt = render_template(
        template,
        rubric=rubric,
        transcript=render_transcript(session),
        context=session.get("course_context") or "",
        excerpt=session.get("excerpt"),
    )
    schema = score_schema(rubric, jcfg["justification_chars"])
    messages = [{"role": "user", "content": prompt}]
    samples = []
    for k in range(jcfg["samples"]):
        seed = jcfg["seed"] + 101 * k
        res = backend.chat_json(messages, schema, sampling=jcfg["sampling"], seed=seed, max_attempts=jcfg["max_attempts"])
        if res.data is None:
            scores = {i["id"]: None for i in rubric["items"]}
            just = {}
        else:
            scores = {i["id"]: int(res.data[i["id"]]["score"]) for i in rubric["items"]}
            just = {i["id"]: res.data[i["id"]].get("justification", "") for i in rubric["items"]}
        samples.append(
            {
                "sample": k,
                "seed": seed,
                "valid": res.data is not None,
                "attempts": res.attempts,
                "refusals": res.refusals,
                "scores": scores,
                "justifications": just,
                "raw_invalid": [] if res.data is not None else res.raw,
                "errors": res.errors,
                "total": total_score(scores, rubric, jcfg["totals"]),
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens,
                "seconds": round(res.seconds, 3),
            }
        )
    items = {i["id"]: aggregate([s["scores"][i["id"]] for s in samples], jcfg["aggregate"]) for i in rubric["items"]}
    return {
        **_identity(session),
        "samples": samples,
        "item_scores": items,
        "total": aggregate([s["total"] for s in samples], jcfg["aggregate"]),
        "valid_samples": sum(s["valid"] for s in samples),
        "rubric": rubric["name"],
        "prompt_sha256": hash_obj(prompt, 64),
    }


def unjudged(session: dict[str, Any], rubric: dict[str, Any], transcript_sha: str, reason: str) -> dict[str, Any]:
    """The record of a session that was not judged: every score missing, with the reason."""
    return {
        **_identity(session),
        "samples": [],
        "item_scores": {i["id"]: None for i in rubric["items"]},
        "total": None,
        "valid_samples": 0,
        "rubric": rubric["name"],
        "transcript_sha256": transcript_sha,
        "missing_reason": reason,
    }


def run_judging(
    sessions: list[dict[str, Any]],
    backend: Backend,
    rubric: dict[str, Any],
    jcfg: dict[str, Any],
    template: str | Path,
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    key = hash_obj(
        {
            "jcfg": jcfg,
            "rubric": rubric["sha256"],
            "schema": score_schema(rubric, jcfg["justification_chars"]),
            "backend": backend.identity(),
            "tpl": Path(template).read_text(encoding="utf-8"),
        }
    )
    store = UnitStore(Path(unit_dir) / key)
    t0 = time.perf_counter()
    lock = threading.Lock()
    done = [0]

    def one(s: dict[str, Any]) -> dict[str, Any]:
        transcript_sha = judged_text_sha(s)
        if not s["messages"]:
            # Nothing to judge: missing, never a score, and no judge call.
            return unjudged(s, rubric, transcript_sha, "the session has no turns")
        # A judgement is a unit of the transcript it scores: a session re-run with other content
        # (a retrained model, another prompt) under the same session id is judged again.
        uid = f"{s['session_id']}-{transcript_sha[:16]}"
        j, was_reused = store.get_or_make(
            uid, lambda: judge_session(s, backend, rubric, jcfg, template) | {"transcript_sha256": transcript_sha}
        )
        with lock:
            done[0] += 1
            n = done[0]
        if not was_reused:
            log.info("judged %s: %d/%d valid samples (%d/%d sessions)", uid, j["valid_samples"], jcfg["samples"], n, len(sessions))
        return j

    # sessions are independent: as many at a time as the judge's backend serves
    out = map_units(one, sessions, backend.parallelism)
    empty = sum(not s["messages"] for s in sessions)
    n_samples = sum(len(j["samples"]) for j in out)
    n_valid = sum(j["valid_samples"] for j in out)
    ptoks = sum(s["prompt_tokens"] for j in out for s in j["samples"])
    ctoks = sum(s["completion_tokens"] for j in out for s in j["samples"])
    secs = sum(s["seconds"] for j in out for s in j["samples"])
    stats = {
        "sessions": len(out),
        "sessions_reused": store.reused,
        "sessions_without_turns": empty,
        "samples": n_samples,
        "valid_samples": n_valid,
        "valid_share": n_valid / n_samples if n_samples else None,
        "prompt_tokens": ptoks,
        "completion_tokens": ctoks,
        "judge_seconds": round(secs, 2),
        "completion_tokens_per_second": round(ctoks / secs, 2) if secs else None,
        "cost_usd": round(cost_usd(backend.spec, ptoks, ctoks), 6),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "concurrency": backend.parallelism,
        "llm": backend.stats.as_dict(),  # this run's calls, with the prompt tokens reused from the KV cache
        "backend": backend.name,
        "unit_dir": str(store.root),
    }
    return out, stats


def turn_windows(session: dict[str, Any], window: int, every: int) -> list[dict[str, Any]]:
    """Excerpts of a session for a per-turn judge pass: one ending at every ``every``-th therapist
    turn (and at the last), holding the ``window`` turns up to it, with the context the therapist
    had when it spoke that turn (its prompt plus its answer, in tokens)."""
    msgs = session["messages"]
    th = [i for i, m in enumerate(msgs) if m["role"] == "therapist"]
    ends = [t for k, t in enumerate(th, 1) if k % every == 0 or t == th[-1]]
    out = []
    for t in ends:
        first = max(0, t - window + 1)
        m = msgs[t]
        out.append(
            {
                "turn": t + 1,
                "excerpt": {"first": first + 1, "last": t + 1},
                "messages": msgs[first : t + 1],
                "context_tokens": (m.get("prompt_tokens") or 0) + (m.get("completion_tokens") or 0),
            }
        )
    return out


def run_turn_judging(
    sessions: list[dict[str, Any]],
    backend: Backend,
    rubric: dict[str, Any],
    jcfg: dict[str, Any],
    template: str | Path,
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The opt-in per-turn pass (``judge.turn_windows``): every excerpt of every session judged on
    the rubric with ``turn_windows.samples`` samples, resumable per excerpt."""
    tw = jcfg["turn_windows"]
    wcfg = dict(jcfg, samples=tw["samples"])
    key = hash_obj(
        {"jcfg": wcfg, "rubric": rubric["sha256"], "backend": backend.identity(), "tpl": Path(template).read_text(encoding="utf-8")}
    )
    store = UnitStore(Path(unit_dir) / key)
    t0 = time.perf_counter()
    windows = [(s, w) for s in sessions if s["messages"] for w in turn_windows(s, tw["window_turns"], tw["every"])]

    def one(sw) -> dict[str, Any]:
        s, w = sw
        excerpt = dict(s, messages=w["messages"], excerpt=w["excerpt"])
        uid = f"{s['session_id']}-t{w['turn']}-{judged_text_sha(excerpt)[:16]}"
        j, _ = store.get_or_make(uid, lambda: judge_session(excerpt, backend, rubric, wcfg, template))
        return {
            **_identity(s),
            "turn": w["turn"],
            "context_tokens": w["context_tokens"],
            "total": j["total"],
            "total_pct": None if j["total"] is None else 100 * j["total"] / rubric["max_total"],
            "item_scores": j["item_scores"],
            "valid_samples": j["valid_samples"],
            "samples": len(j["samples"]),
        }

    out = map_units(one, windows, backend.parallelism)
    stats = {
        "windows": len(out),
        "windows_reused": store.reused,
        "valid_windows": sum(r["total"] is not None for r in out),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "llm": backend.stats.as_dict(),
        "backend": backend.name,
    }
    return out, stats
