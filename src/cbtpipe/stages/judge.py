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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..design import render_template
from ..llm import Backend, cost_usd
from ..workflow import Progress, UnitStore, hash_obj, map_units

log = logging.getLogger("cbtpipe")


def score_schema(
    rubric: dict[str, Any], justification_chars: int, reasoning_first: bool = True, items: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The answer's JSON schema: for each item (all of the rubric's, or ``items``) an object with
    its score and a justification, first when ``reasoning_first`` (the properties' order is the
    order the judge writes them in); with ``justification_chars`` <= 0 the item's score alone
    (``{"agenda": 3, ...}``: half the tokens of ``{"agenda": {"score": 3}, ...}``)."""
    props = {}
    for it in items or rubric["items"]:
        # The enum lets llama.cpp's grammar enforce the range (its converter ignores minimum/maximum).
        rng = list(range(it["min"], it["max"] + 1))
        score = {"type": "integer", "minimum": it["min"], "maximum": it["max"], "enum": rng}
        why = {"type": "string", "maxLength": justification_chars}
        if justification_chars <= 0:
            props[it["id"]] = score
            continue
        sub: dict[str, Any] = {"justification": why, "score": score} if reasoning_first else {"score": score, "justification": why}
        props[it["id"]] = {"type": "object", "properties": sub, "required": list(sub), "additionalProperties": False}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def item_score(answer: Any) -> int:
    """An item's score in a schema-valid answer: the item's value, or its ``score``."""
    return int(answer["score"] if isinstance(answer, dict) else answer)


def item_justification(answer: Any) -> str:
    return str(answer.get("justification", "")) if isinstance(answer, dict) else ""


def _groups(rubric: dict[str, Any], jcfg: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The items each call rates: all of them at once, or one per call (``mode: per_item``)."""
    return [[it] for it in rubric["items"]] if jcfg.get("mode") == "per_item" else [rubric["items"]]


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
    """``jcfg["samples"]`` samples of a session's scores: each one call for every item, or one call
    per item (``mode: per_item``). An item whose call fails the schema is missing in its sample."""
    reasoning_first = jcfg.get("reasoning_first", True)
    calls = []
    for g in _groups(rubric, jcfg):
        prompt = render_template(
            template,
            rubric=dict(rubric, items=g),
            transcript=render_transcript(session),
            context=session.get("course_context") or "",
            excerpt=session.get("excerpt"),
            reasoning_first=reasoning_first,
            justification_chars=jcfg["justification_chars"],
        )
        calls.append((g, [{"role": "user", "content": prompt}], score_schema(rubric, jcfg["justification_chars"], reasoning_first, g)))
    per_item = len(calls) > 1
    samples = []
    for k in range(jcfg["samples"]):
        seed = jcfg["seed"] + 101 * k
        scores: dict[str, int | None] = {}
        just: dict[str, str] = {}
        sample = {"sample": k, "seed": seed, "valid": True, "attempts": 0, "refusals": 0, "raw_invalid": [], "errors": []}
        toks = {"prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0}
        for gi, (g, messages, schema) in enumerate(calls):
            res = backend.chat_json(
                messages, schema, sampling=jcfg["sampling"], seed=seed + 7919 * gi if per_item else seed, max_attempts=jcfg["max_attempts"]
            )
            sample["attempts"] += res.attempts
            sample["refusals"] += res.refusals
            sample["served"] = res.served  # what answered last (served model, fingerprint, time)
            sample.setdefault("calls", []).extend(res.calls)  # and every call of the sample
            sample["errors"] += res.errors
            for t in toks:
                toks[t] += getattr(res, t)
            if res.data is None:
                sample["valid"] = False
                sample["raw_invalid"] += res.raw
                scores |= {i["id"]: None for i in g}
            else:
                scores |= {i["id"]: item_score(res.data[i["id"]]) for i in g}
                just |= {i["id"]: item_justification(res.data[i["id"]]) for i in g}
        samples.append(
            sample
            | {
                "scores": scores,
                "justifications": just,
                "total": total_score(scores, rubric, jcfg["totals"]),
                "prompt_tokens": toks["prompt_tokens"],
                "completion_tokens": toks["completion_tokens"],
                "seconds": round(toks["seconds"], 3),
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
        "prompt_sha256": hash_obj(calls[0][1][0]["content"] if len(calls) == 1 else [m[0]["content"] for _, m, _ in calls], 64),
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


class _Judge:
    """One judge's resumable judging: ``one(session)`` gives the session's judged record, from
    its unit when there is one; ``stats(out)`` sums what the records of a run hold."""

    def __init__(
        self,
        backend: Backend,
        rubric: dict[str, Any],
        jcfg: dict[str, Any],
        template: str | Path,
        unit_dir: str | Path,
        name: str = "judge",
        n_sessions: int = 0,
    ):
        key = hash_obj(
            {
                "jcfg": jcfg,
                "rubric": rubric["sha256"],
                "schema": [
                    score_schema(rubric, jcfg["justification_chars"], jcfg.get("reasoning_first", True), g) for g in _groups(rubric, jcfg)
                ],
                **backend.unit_identity(),  # a changed served model or fingerprint judges again
                "tpl": Path(template).read_text(encoding="utf-8"),
            }
        )
        self.backend, self.rubric, self.jcfg, self.template, self.name = backend, rubric, jcfg, template, name
        self.store = UnitStore(Path(unit_dir) / key)
        self.fresh: set[str] = set()  # units judged in this run (the others were read back)
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        # started with the job, so the first session's rate counts its own time
        self.progress = Progress(name, n_sessions, "sessions", tokens=backend.stats.generated_tokens)

    def one(self, s: dict[str, Any]) -> dict[str, Any]:
        transcript_sha = judged_text_sha(s)
        if not s["messages"]:
            # Nothing to judge: missing, never a score, and no judge call.
            return unjudged(s, self.rubric, transcript_sha, "the session has no turns")
        # A judgement is a unit of the transcript it scores: a session re-run with other content
        # (a retrained model, another prompt) under the same session id is judged again.
        uid = f"{s['session_id']}-{transcript_sha[:16]}"
        j, was_reused = self.store.get_or_make(
            uid, lambda: judge_session(s, self.backend, self.rubric, self.jcfg, self.template) | {"transcript_sha256": transcript_sha}
        )
        with self._lock:
            if not was_reused:
                self.fresh.add(uid)
        self.progress.step(f"{uid}: {j['valid_samples']}/{self.jcfg['samples']} valid samples", reused=was_reused)
        return j

    def stats(self, out: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> dict[str, Any]:
        n_samples = sum(len(j["samples"]) for j in out)
        n_valid = sum(j["valid_samples"] for j in out)
        ptoks = sum(s["prompt_tokens"] for j in out for s in j["samples"])
        ctoks = sum(s["completion_tokens"] for j in out for s in j["samples"])
        secs = sum(s["seconds"] for j in out for s in j["samples"])
        made = [s for j in out if f"{j['session_id']}-{j.get('transcript_sha256', '')[:16]}" in self.fresh for s in j["samples"]]
        return {
            "sessions": len(out),
            "sessions_reused": self.store.reused,
            "sessions_without_turns": sum(not s["messages"] for s in sessions),
            "samples": n_samples,
            "valid_samples": n_valid,
            "valid_share": n_valid / n_samples if n_samples else None,
            "prompt_tokens": ptoks,
            "completion_tokens": ctoks,
            "judge_seconds": round(secs, 2),
            "completion_tokens_per_second": round(ctoks / secs, 2) if secs else None,
            "cost_usd": round(cost_usd(self.backend.spec, ptoks, ctoks), 6),
            "wall_seconds": round(time.perf_counter() - self.t0, 2),
            "concurrency": self.backend.parallelism,
            # this judge's calls in this run (units read back made none)
            "llm": {
                "calls": sum(s["attempts"] for s in made),
                "prompt_tokens": sum(s["prompt_tokens"] for s in made),
                "completion_tokens": sum(s["completion_tokens"] for s in made),
                "seconds": round(sum(s["seconds"] for s in made), 3),
            },
            "backend": self.backend.name,
            "unit_dir": str(self.store.root),
        }


def run_judging(
    sessions: list[dict[str, Any]],
    backend: Backend,
    rubric: dict[str, Any],
    jcfg: dict[str, Any],
    template: str | Path,
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every session judged by one judge, resumable per session."""
    judge = _Judge(backend, rubric, jcfg, template, unit_dir, n_sessions=len(sessions))
    # sessions are independent: as many at a time as the judge's backend serves
    out = map_units(judge.one, sessions, backend.parallelism)
    stats = judge.stats(out, sessions)
    stats["llm"] = backend.stats.as_dict()  # with the prompt tokens reused from the KV cache
    return out, stats


def without_closing_turn(session: dict[str, Any]) -> dict[str, Any]:
    """The session as the judge reads it without the turn the therapist spoke under the hidden
    closing instruction (rollout.at_max_turns: closing): that turn is its last, the session having
    stopped after it. A session that did not receive the instruction, or whose closing answer was
    empty (and so is not in its transcript), is returned as it is, and so is judged as it was."""
    msgs = session["messages"]
    if not session.get("closing_prompted") or str(session.get("stop_reason", "")).startswith("empty_") or not msgs:
        return session
    if msgs[-1]["role"] != "therapist":
        return session
    return dict(session, messages=msgs[:-1], closing_turn_removed=True)


def pairing_key(session: dict[str, Any]) -> tuple[str, int, int]:
    """What a session shares with its counterpart in the other arm: patient, position and index."""
    return (session["patient_id"], int(session.get("position", 1)), int(session.get("session", 0)))


def judge_arms(
    by_arm: dict[str, list[dict[str, Any]]], judge: Callable[[list[dict[str, Any]]], tuple[list[dict[str, Any]], dict[str, Any]]]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Every arm's sessions of a (model, shard) judged in one run, interleaved patient by patient
    (one patient's instruct and CBT sessions one after the other), so that a judge that changes
    under its name (an API alias, a new deployment) cannot meet the arms at different times.
    ``judge`` judges a list of sessions in order; each arm gets its records back in its own order."""
    order: dict[tuple[str, int, int], list[tuple[str, int]]] = {}
    for arm, sessions in by_arm.items():
        for i, s in enumerate(sessions):
            order.setdefault(pairing_key(s), []).append((arm, i))
    slots = [slot for group in order.values() for slot in group]
    records, stats = judge([by_arm[arm][i] for arm, i in slots])
    out: dict[str, list[Any]] = {arm: [None] * len(sessions) for arm, sessions in by_arm.items()}
    for (arm, i), rec in zip(slots, records, strict=True):
        out[arm][i] = rec
    return out, stats | {"arms": {arm: len(sessions) for arm, sessions in by_arm.items()}, "interleaved": True}


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
    progress = Progress("per-turn judge", len(windows), "excerpts", tokens=backend.stats.generated_tokens)

    def one(sw) -> dict[str, Any]:
        s, w = sw
        excerpt = dict(s, messages=w["messages"], excerpt=w["excerpt"])
        uid = f"{s['session_id']}-t{w['turn']}-{judged_text_sha(excerpt)[:16]}"
        j, reused = store.get_or_make(uid, lambda: judge_session(excerpt, backend, rubric, wcfg, template))
        progress.step(uid, reused=reused)
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


def member_settings(member: dict[str, Any]) -> dict[str, Any]:
    """What a panel member's judgements depend on (its name and the path of its prompt do not:
    the prompt's content is part of the unit key)."""
    return {k: v for k, v in member.items() if k not in ("name", "prompt")}


def _panel_record(
    i: int, per: list[tuple[str, list[dict[str, Any]], dict[str, Any]]], rubric: dict[str, Any], reducer: str
) -> dict[str, Any]:
    """Session ``i`` as the panel judged it: every judge's scores and samples, and the items and
    total reduced over the judges (missing unless every judge gave one)."""

    def reduce(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else aggregate(values, reducer)

    recs = {name: judged[i] for name, judged, _ in per}
    first = next(iter(recs.values()))
    rec = {k: v for k, v in first.items() if k not in ("samples", "item_scores", "total", "valid_samples", "prompt_sha256")}
    rec["judges"] = {
        name: {k: r.get(k) for k in ("item_scores", "total", "valid_samples", "prompt_sha256")} | {"samples": len(r["samples"])}
        for name, r in recs.items()
    }
    rec["samples"] = [dict(s, judge=name) for name, r in recs.items() for s in r["samples"]]
    rec["item_scores"] = {it["id"]: reduce([r["item_scores"][it["id"]] for r in recs.values()]) for it in rubric["items"]}
    rec["total"] = reduce([r["total"] for r in recs.values()])
    rec["valid_samples"] = sum(r["valid_samples"] for r in recs.values())
    return rec


def run_panel(
    sessions: list[dict[str, Any]],
    backends: dict[str, Backend],
    rubric: dict[str, Any],
    members: list[dict[str, Any]],
    templates: list[str | Path],
    unit_dir: str | Path,
    reducer: str = "mean",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every session judged by every member of the panel (one member: the single judge). Each
    member's judgements are units of its own settings, so a changed member re-judges alone. A
    session's record keeps every judge's scores (``judges``, and each sample tagged with its
    judge); its item scores and total are ``reducer`` over the judges, missing unless every judge
    gave one."""
    from ..llm import sum_llm_stats

    judges = [
        (
            m["name"],
            _Judge(backends[m["backend"]], rubric, member_settings(m), tpl, unit_dir, name=f"judge {m['name']}", n_sessions=len(sessions)),
        )
        for m, tpl in zip(members, templates, strict=True)
    ]
    before = {n: b.stats.as_dict() for n, b in backends.items()}
    t0 = time.perf_counter()

    def one(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
        # every judge of a session one after another: judges that share an in-process backend
        # and a prompt then reuse the transcript's key/value cache instead of reading it again
        return {name: j.one(s) for name, j in judges}

    workers = min(b.parallelism for b in backends.values()) if backends else 1
    by_session = map_units(one, sessions, workers)
    per = []
    for name, j in judges:
        judged = [r[name] for r in by_session]
        per.append((name, judged, j.stats(judged, sessions)))
        log.info("judge %s: %d of %d samples valid", name, per[-1][2]["valid_samples"], per[-1][2]["samples"])

    out = [_panel_record(i, per, rubric, reducer) for i in range(len(sessions))]
    stats_list = [st for _, _, st in per]
    n_samples = sum(st["samples"] for st in stats_list)
    n_valid = sum(st["valid_samples"] for st in stats_list)
    stats = {
        "sessions": len(out),
        "sessions_without_turns": stats_list[0]["sessions_without_turns"] if stats_list else 0,
        "samples": n_samples,
        "valid_samples": n_valid,
        "valid_share": n_valid / n_samples if n_samples else None,
        "prompt_tokens": sum(st["prompt_tokens"] for st in stats_list),
        "completion_tokens": sum(st["completion_tokens"] for st in stats_list),
        "judge_seconds": round(sum(st["judge_seconds"] for st in stats_list), 2),
        "cost_usd": round(sum(st["cost_usd"] for st in stats_list), 6),
        # the judges of a session take turns, so each judge's own wall time spans the whole run
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "panel_reducer": reducer,
        "judges": {name: st for name, _, st in per},
        # every backend's calls in this run (a plan's measured rates read these)
        "llm": sum_llm_stats(
            [b.stats.as_dict() for b in backends.values()]
            + [{k: -v for k, v in before[n].items() if isinstance(v, (int, float)) and not isinstance(v, bool)} for n in backends]
        ),
        "backend": ",".join(dict.fromkeys(m["backend"] for m in members)),
        "sessions_reused": min((st["sessions_reused"] for st in stats_list), default=0),
    }
    return out, stats
