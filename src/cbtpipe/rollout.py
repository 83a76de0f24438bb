"""Simulated therapy sessions: a GGUF therapist in llama.cpp against an LLM patient.

Paired design: every model and arm meets the same evaluation patients with the same seeds, and
the therapist's system prompt is the same for both arms.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .backends import Backend
from .io import hash_obj, sha256_file
from .profiles import describe
from .prompts import render_template
from .units import UnitStore

log = logging.getLogger("cbtpipe")


def shard_profiles(profiles: list[dict[str, Any]], shard: int, shards: int) -> list[dict[str, Any]]:
    return sorted(profiles, key=lambda p: p["id"])[shard::shards]


def session_plan(profiles: list[dict[str, Any]], rcfg: dict[str, Any]) -> list[dict[str, Any]]:
    """(patient, session) pairs with their seeds; identical for every model and arm."""
    plan = []
    for p in profiles:
        for k in range(rcfg["sessions_per_patient"]):
            base = int(hash_obj([rcfg["seed"], p["id"], k], 8), 16)
            plan.append({"profile": p, "session": k, "patient_seed": base % (2**31), "therapist_seed": (base // 7) % (2**31)})
    return plan


def _fit(
    messages: list[dict[str, str]], backend: Backend, n_ctx: int, max_tokens: int, keep: int
) -> tuple[list[dict[str, str]], int, bool]:
    """Drop the oldest turns after the first ``keep`` messages until the prompt fits.

    Returns (messages, prompt token estimate, whether anything was dropped)."""

    def size(msgs):
        return sum(backend.count_tokens(m["content"]) + 8 for m in msgs)

    dropped = False
    msgs = list(messages)
    while size(msgs) + max_tokens > n_ctx and len(msgs) > keep + 1:
        del msgs[keep]
        dropped = True
    return msgs, size(msgs), dropped


def run_session(
    item: dict[str, Any],
    therapist: Backend,
    patient: Backend,
    rcfg: dict[str, Any],
    system_prompt: str,
    patient_template: str | Path,
) -> dict[str, Any]:
    prof = item["profile"]
    marker = rcfg["end_marker"]
    patient_system = render_template(patient_template, patient=describe(prof), style=prof["conversational_style"], end_marker=marker)
    th_msgs = [{"role": "system", "content": system_prompt}]
    pa_msgs = [{"role": "system", "content": patient_system}]
    if rcfg["opener"] == "therapist":
        th_msgs.append({"role": "user", "content": rcfg["opening_message"]})
    else:
        pa_msgs.append({"role": "user", "content": "(You have just sat down with the therapist. Say how you are.)"})
    transcript: list[dict[str, Any]] = []
    speaker = rcfg["opener"]
    stop_reason = "max_turns"
    truncations = 0
    n_ctx = {"therapist": rcfg["therapist_n_ctx"], "patient": getattr(patient, "n_ctx", 10**9)}
    for turn in range(rcfg["max_turns"]):
        is_t = speaker == "therapist"
        backend = therapist if is_t else patient
        sampling = rcfg["therapist"] if is_t else rcfg["patient"]
        msgs = th_msgs if is_t else pa_msgs
        keep = 2 if (is_t and rcfg["opener"] == "therapist") or (not is_t and rcfg["opener"] == "patient") else 1
        fitted, est, dropped = _fit(msgs, backend, n_ctx[speaker], sampling["max_tokens"], keep)
        if est + sampling["max_tokens"] > n_ctx[speaker] or (dropped and rcfg["context_strategy"] == "stop"):
            stop_reason = f"context_full_{speaker}"
            break
        truncations += int(dropped)
        seed = (item["therapist_seed"] if is_t else item["patient_seed"]) + turn
        c = backend.chat(fitted, sampling=sampling, seed=seed)
        text = c.text.strip()
        ended = marker in text
        text = text.replace(marker, "").strip()
        transcript.append(
            {
                "role": speaker,
                "content": text,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "seconds": round(c.seconds, 4),
                "finish_reason": c.finish_reason,
                "cached": c.cached,
                "truncated_context": dropped,
            }
        )
        if not text:
            stop_reason = f"empty_{speaker}"
            transcript.pop()
            break
        th_msgs.append({"role": "assistant" if is_t else "user", "content": text})
        pa_msgs.append({"role": "user" if is_t else "assistant", "content": text})
        if ended:
            stop_reason = f"end_marker_{speaker}"
            break
        speaker = "patient" if is_t else "therapist"
    return {
        "patient_id": prof["id"],
        "session": item["session"],
        "patient_seed": item["patient_seed"],
        "therapist_seed": item["therapist_seed"],
        "messages": transcript,
        "turns": len(transcript),
        "stop_reason": stop_reason,
        "context_strategy": rcfg["context_strategy"],
        "context_truncations": truncations,
    }


def run_rollouts(
    *,
    model: str,
    arm: str,
    quantization: str,
    gguf: str | Path,
    profiles: list[dict[str, Any]],
    therapist: Backend,
    patient: Backend,
    rcfg: dict[str, Any],
    system_prompt: str,
    patient_template: str | Path,
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    gguf_sha = sha256_file(gguf)
    key = hash_obj(
        {
            "rcfg": rcfg,
            "gguf": gguf_sha,
            "patient": patient.identity(),
            "system": system_prompt,
            "ptpl": Path(patient_template).read_text(encoding="utf-8"),
        }
    )
    store = UnitStore(Path(unit_dir) / key)
    plan = session_plan(profiles, rcfg)
    done = 0
    lock = threading.Lock()
    t0 = time.perf_counter()

    def one(item: dict[str, Any]) -> dict[str, Any]:
        nonlocal done
        # A session is a unit of the profile it plays (by content, not only by id): a patient whose
        # description changed under the same id is played again.
        uid = f"{item['profile']['id']}-s{item['session']}-{hash_obj(item['profile'], 12)}"

        def make():
            return run_session(item, therapist, patient, rcfg, system_prompt, patient_template) | dict(
                session_id=hash_obj([model, arm, quantization, uid], 12),
                model=model,
                arm=arm,
                quantization=quantization,
                gguf=str(gguf),
                gguf_sha256=gguf_sha,
                therapist_sampling=rcfg["therapist"],
                patient_sampling=rcfg["patient"],
                patient_backend=patient.name,
                therapist_backend=therapist.kind,
            )

        s, was_reused = store.get_or_make(uid, make)
        with lock:
            done += 1
            n = done
        if was_reused:
            return s
        log.info("%s/%s %s: %d turns, stop %s (%d/%d sessions)", model, arm, uid, s["turns"], s["stop_reason"], n, len(plan))
        return s

    # Sessions are independent: with parallel_sessions > 1 they run at once (a llama-server with as
    # many slots decodes them in one batch). The output keeps the plan's order either way.
    workers = max(1, min(int(rcfg.get("parallel_sessions", 1)), len(plan) or 1))
    if workers == 1:
        sessions = [one(item) for item in plan]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="session") as pool:
            sessions = list(pool.map(one, plan))

    def speed(role, backend):
        toks = sum(m["completion_tokens"] for s in sessions for m in s["messages"] if m["role"] == role and not m["cached"])
        secs = sum(m["seconds"] for s in sessions for m in s["messages"] if m["role"] == role and not m["cached"])
        return {
            "completion_tokens": toks,
            "seconds": round(secs, 3),
            "tokens_per_second": round(toks / secs, 2) if secs else None,
            # this run's calls only: how much of their prompts came from the reused KV cache
            "prompt_tokens": backend.stats.prompt_tokens,
            "prompt_tokens_reused": backend.stats.prompt_tokens_reused,
        }

    stops: dict[str, int] = {}
    for s in sessions:
        stops[s["stop_reason"]] = stops.get(s["stop_reason"], 0) + 1
    stats = {
        "model": model,
        "arm": arm,
        "quantization": quantization,
        "sessions": len(sessions),
        "sessions_reused": store.reused,
        "turns": sum(s["turns"] for s in sessions),
        "stop_reasons": stops,
        "therapist": speed("therapist", therapist),
        "patient": speed("patient", patient),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "parallel_sessions": workers,
        "therapist_backend": therapist.kind,
        "unit_dir": str(store.root),
    }
    return sessions, stats
