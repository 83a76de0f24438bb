"""Simulated therapy sessions: a GGUF therapist in llama.cpp against an LLM patient.

Paired design: every model and arm meets the same evaluation patients with the same seeds, and
the therapist's system prompt is the same for both arms.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..design import apply_layout, describe, drop_oldest_exchange, render_template, risk_prompt, therapist_system
from ..llm import Backend
from ..workflow import Progress, UnitStore, hash_obj, sha256_file, shard_of

log = logging.getLogger("cbtpipe")


def shard_profiles(profiles: list[dict[str, Any]], shard: int, shards: int) -> list[dict[str, Any]]:
    return shard_of(profiles, shard, shards)


def session_plan(
    profiles: list[dict[str, Any]], rcfg: dict[str, Any], contexts: dict[tuple[str, int], str | None] | None = None
) -> list[dict[str, Any]]:
    """(patient, position, repeat) with their seeds and course contexts; identical for every model
    and arm. ``contexts`` maps (patient id, position) to the course context block, None where the
    patient has no history for that position (the session is planned and recorded as not run)."""
    plan = []
    for p in profiles:
        for pos in rcfg["positions"]:
            for k in range(rcfg["sessions_per_patient"]):
                # position 1 keeps the seeds of a plan without positions
                key = [rcfg["seed"], p["id"], k] if pos == 1 else [rcfg["seed"], p["id"], k, pos]
                base = int(hash_obj(key, 8), 16)
                plan.append(
                    {
                        "profile": p,
                        "position": pos,
                        "session": k,
                        "context": (contexts or {}).get((p["id"], pos), ""),
                        "patient_seed": base % (2**31),
                        "therapist_seed": (base // 7) % (2**31),
                    }
                )
    return plan


def _fit(
    messages: list[dict[str, str]], backend: Backend, n_ctx: int, max_tokens: int, keep: int
) -> tuple[list[dict[str, str]], int, bool]:
    """Drop the oldest whole exchanges after the first ``keep`` messages until the prompt fits
    (roles keep alternating, as templates such as Mistral's require).

    Returns (messages, prompt token estimate, whether anything was dropped)."""

    def size(msgs):
        return sum(backend.count_tokens(m["content"]) + 8 for m in msgs)

    dropped = False
    msgs = list(messages)
    while size(msgs) + max_tokens > n_ctx and drop_oldest_exchange(msgs, keep):
        dropped = True
    return msgs, size(msgs), dropped


def _may_end(rcfg: dict[str, Any], speaker: str, turns_so_far: int) -> bool:
    who = rcfg["who_may_end"]
    return turns_so_far >= rcfg["min_turns"] and (who == "either" or who == speaker)


class _Session:
    """One session as it is played: each side's conversation, the transcript, and the counts its
    record keeps."""

    def __init__(self, item, therapist, patient, rcfg, system_prompt, patient_template, layout, protocol):
        self.item, self.rcfg, self.layout = item, rcfg, layout
        self.backends = {"therapist": therapist, "patient": patient}
        prof = item["profile"]
        patient_system = render_template(
            patient_template,
            patient=describe(prof),
            style=prof["conversational_style"],
            risk=risk_prompt(prof),
            end_marker=rcfg["end_marker"],
        )
        th_system = therapist_system(system_prompt, protocol=protocol, context=item.get("context", ""))
        self.msgs = {"therapist": [{"role": "system", "content": th_system}], "patient": [{"role": "system", "content": patient_system}]}
        if rcfg["opener"] == "therapist":
            self.msgs["therapist"].append({"role": "user", "content": rcfg["opening_message"]})
        else:
            self.msgs["patient"].append({"role": "user", "content": "(You have just sat down with the therapist. Say how you are.)"})
        self.n_ctx = {"therapist": rcfg["therapist_n_ctx"], "patient": getattr(patient, "n_ctx", 10**9)}
        self.transcript: list[dict[str, Any]] = []
        self.truncations = self.ignored_markers = 0
        self.closing_prompted = False

    def _prompt(self, speaker: str, turn: int) -> tuple[list[dict[str, str]] | None, bool, bool]:
        """The speaker's prompt for this turn, fitted to its context (None: no room), whether
        exchanges were dropped, and whether this is the therapist's closing turn."""
        rcfg, is_t = self.rcfg, speaker == "therapist"
        sampling = rcfg[speaker]
        keep = 2 if rcfg["opener"] == speaker else 1
        fitted, est, dropped = _fit(self.msgs[speaker], self.backends[speaker], self.n_ctx[speaker], sampling["max_tokens"], keep)
        if est + sampling["max_tokens"] > self.n_ctx[speaker] or (dropped and rcfg["context_strategy"] == "stop"):
            return None, dropped, False
        self.truncations += int(dropped)
        # The therapist's last turn within max_turns (no room for another after the patient's reply).
        closing = is_t and rcfg["at_max_turns"] == "closing" and turn + 2 >= rcfg["max_turns"]
        if closing and fitted[-1]["role"] == "user":
            fitted = fitted[:-1] + [{"role": "user", "content": f"{fitted[-1]['content']}\n\n{rcfg['closing_instruction']}"}]
            self.closing_prompted = True
        return (apply_layout(fitted, self.layout) if is_t else fitted), dropped, closing

    def turn(self, speaker: str, turn: int) -> str | None:
        """Play one turn; the session's stop reason when it ends here, else None."""
        is_t = speaker == "therapist"
        fitted, dropped, closing = self._prompt(speaker, turn)
        if fitted is None:
            return f"context_full_{speaker}"
        seed = (self.item["therapist_seed"] if is_t else self.item["patient_seed"]) + turn
        c = self.backends[speaker].chat(fitted, sampling=self.rcfg[speaker], seed=seed)
        marker = self.rcfg["end_marker"]
        marked = marker in c.text.strip()
        text = c.text.strip().replace(marker, "").strip()
        ended = marked and _may_end(self.rcfg, speaker, turn + 1)
        self.ignored_markers += int(marked and not ended)
        if not text:
            return f"empty_{speaker}"
        self.transcript.append(
            {
                "role": speaker,
                "content": text,
                "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens,
                "seconds": round(c.seconds, 4),
                "finish_reason": c.finish_reason,
                "cached": c.cached,
                "truncated_context": dropped,
                **c.provenance(),
            }
        )
        self.msgs["therapist"].append({"role": "assistant" if is_t else "user", "content": text})
        self.msgs["patient"].append({"role": "user" if is_t else "assistant", "content": text})
        if ended:
            return f"end_marker_{speaker}"
        if closing and self.closing_prompted:
            return "closing_turn"
        return None

    def record(self, stop_reason: str) -> dict[str, Any]:
        item, transcript = self.item, self.transcript
        th = [m for m in transcript if m["role"] == "therapist"]
        return {
            "patient_id": item["profile"]["id"],
            "position": item.get("position", 1),
            "session": item["session"],
            "patient_seed": item["patient_seed"],
            "therapist_seed": item["therapist_seed"],
            "course_context": item.get("context", ""),
            "chat_layout": self.layout["system"],
            "messages": transcript,
            "turns": len(transcript),
            "stop_reason": stop_reason,
            "closing_prompted": self.closing_prompted,
            "end_markers_ignored": self.ignored_markers,
            "context_strategy": self.rcfg["context_strategy"],
            "context_truncations": self.truncations,
            "therapist_words": sum(len(m["content"].split()) for m in th),
            "therapist_tokens": sum(m["completion_tokens"] or 0 for m in th),
            "turns_cut_at_max_tokens": sum(m["finish_reason"] == "length" for m in transcript),
            "context_tokens_max": max(((m["prompt_tokens"] or 0) + (m["completion_tokens"] or 0) for m in th), default=0),
        }


def run_session(
    item: dict[str, Any],
    therapist: Backend,
    patient: Backend,
    rcfg: dict[str, Any],
    system_prompt: str,
    patient_template: str | Path,
    layout: dict[str, Any] | None = None,
    protocol: str = "",
) -> dict[str, Any]:
    """One simulated session. The therapist's system prompt is the base prompt, the risk protocol
    (``protocol``, when the rollout uses one) and the item's course context (therapist_system);
    every therapist call is laid out for the model's chat template (``layout``).

    Session control: an end marker counts only from ``min_turns`` on and only from the speakers
    ``who_may_end`` allows (otherwise it is removed and the session goes on); with ``at_max_turns:
    closing`` the therapist's last turn within ``max_turns`` is asked to close the session."""
    s = _Session(item, therapist, patient, rcfg, system_prompt, patient_template, layout or {"system": "native"}, protocol)
    speaker, stop_reason = rcfg["opener"], "max_turns"
    for turn in range(rcfg["max_turns"]):
        stop = s.turn(speaker, turn)
        if stop:
            stop_reason = stop
            break
        speaker = "patient" if speaker == "therapist" else "therapist"
    return s.record(stop_reason)


def not_run(item: dict[str, Any], layout: dict[str, Any], reason: str) -> dict[str, Any]:
    """The record of a planned session that could not be played (it is judged as missing)."""
    return {
        "patient_id": item["profile"]["id"],
        "position": item["position"],
        "session": item["session"],
        "patient_seed": item["patient_seed"],
        "therapist_seed": item["therapist_seed"],
        "course_context": None,
        "chat_layout": layout["system"],
        "messages": [],
        "turns": 0,
        "stop_reason": reason,
        "closing_prompted": False,
        "end_markers_ignored": 0,
        "context_strategy": None,
        "context_truncations": 0,
        "therapist_words": 0,
        "therapist_tokens": 0,
        "turns_cut_at_max_tokens": 0,
        "context_tokens_max": 0,
    }


def run_rollouts(
    *,
    model: str,
    arm: str,
    quantization: str,
    gguf: str | Path,
    therapist: Backend,
    unit_dir: str | Path,
    **common,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sessions of one arm (see :func:`run_arms`)."""
    return run_arms(
        model=model, quantization=quantization, arms=[{"arm": arm, "gguf": gguf, "therapist": therapist, "unit_dir": unit_dir}], **common
    )[0]


def _arm_stores(arms, rcfg, patient, system: str, layout, patient_template) -> list[dict[str, Any]]:
    """The arms (copies: the caller's dicts stay as given), each with its GGUF's sha and the unit
    store of its sessions, keyed by what makes a session: the rollout settings, the GGUF, the
    patient model (as served), the therapist's system prompt, the layout and the patient prompt."""
    arms = [dict(a) for a in arms]
    served = patient.served_model()  # an API patient: the probe learns it before any unit is read
    for a in arms:
        a["gguf_sha"] = sha256_file(a["gguf"])
        key = hash_obj(
            {
                # which positions are planned does not change a session (its position and course
                # context are part of its own unit id)
                "rcfg": {k: v for k, v in rcfg.items() if k != "positions"},
                "gguf": a["gguf_sha"],
                "patient": patient.identity() | ({"served_model": served} if served else {}),
                "system": system,
                "layout": layout["system"],
                "ptpl": Path(patient_template).read_text(encoding="utf-8"),
            }
        )
        a["store"] = UnitStore(Path(a["unit_dir"]) / key)
    return arms


def _session_uid(item: dict[str, Any]) -> str:
    """A session is a unit of the profile it plays (by content, not only by id): a patient whose
    description changed under the same id is played again."""
    pos = "" if item["position"] == 1 else f"-p{item['position']}"
    return f"{item['profile']['id']}{pos}-s{item['session']}-{hash_obj([item['profile'], item['context']], 12)}"


def _session_meta(model: str, a: dict[str, Any], quantization: str, uid: str, rcfg: dict[str, Any], patient: Backend) -> dict[str, Any]:
    """What a session's record says of where it was played."""
    return dict(
        session_id=hash_obj([model, a["arm"], quantization, uid], 12),
        model=model,
        arm=a["arm"],
        quantization=quantization,
        gguf=str(a["gguf"]),
        gguf_sha256=a["gguf_sha"],
        therapist_sampling=rcfg["therapist"],
        patient_sampling=rcfg["patient"],
        patient_backend=patient.name,
        therapist_backend=a["therapist"].kind,
    )


def run_arms(
    *,
    model: str,
    quantization: str,
    arms: list[dict[str, Any]],
    profiles: list[dict[str, Any]],
    patient: Backend,
    rcfg: dict[str, Any],
    system_prompt: str,
    patient_template: str | Path,
    layout: dict[str, Any] | None = None,
    contexts: dict[tuple[str, int], str | None] | None = None,
    protocol: str = "",
) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """The sessions of every arm (``arms``: arm, gguf, therapist backend, unit folder), played
    interleaved: each planned session in every arm before the next one, so that one patient's
    instruct and CBT sessions meet the patient model at nearly the same time (an API patient can
    change under its name between two jobs hours apart). Each arm keeps units of its own, keyed
    by its GGUF and the model the patient backend serves, so a retrained CBT model replays the
    instruct arm from its units only while the patient model is the same."""
    layout = layout or {"system": "native"}
    plan = session_plan(profiles, rcfg, contexts)
    arms = _arm_stores(arms, rcfg, patient, therapist_system(system_prompt, protocol=protocol), layout, patient_template)
    t0 = time.perf_counter()
    n_work = len(plan) * len(arms)
    progress = Progress(
        f"rollout {model}",
        n_work,
        "sessions",
        tokens=lambda: patient.stats.generated_tokens() + sum(a["therapist"].stats.generated_tokens() for a in arms),
    )

    def one(work: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
        item, a = work
        uid = _session_uid(item)
        meta = _session_meta(model, a, quantization, uid, rcfg, patient)

        def make():
            if item["context"] is None:  # no course history for this patient and position
                return not_run(item, layout, "no_course_history") | meta
            return run_session(item, a["therapist"], patient, rcfg, system_prompt, patient_template, layout, protocol) | meta

        s, was_reused = a["store"].get_or_make(uid, make)
        progress.step(f"{a['arm']} {uid}: {s['turns']} turns, stop {s['stop_reason']}", reused=was_reused)
        return s

    # Sessions are independent: with parallel_sessions > 1 they run at once, that many per arm (a
    # llama-server with as many slots decodes them in one batch). The output keeps the plan's
    # order either way.
    work = [(item, a) for item in plan for a in arms]
    workers = max(1, min(int(rcfg.get("parallel_sessions", 1)) * len(arms), len(work) or 1))
    if workers == 1:
        played = [one(w) for w in work]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="session") as pool:
            played = list(pool.map(one, work))
    wall = round(time.perf_counter() - t0, 2)
    system = therapist_system(system_prompt, protocol=protocol)
    n = len(arms)
    return [
        (played[k::n], _arm_stats(model, a, quantization, played[k::n], patient, rcfg, system, wall, workers, n))
        for k, a in enumerate(arms)
    ]


def _arm_stats(model, a, quantization, sessions, patient, rcfg, system_prompt, wall, workers, n_arms) -> dict[str, Any]:
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
    times = [m["created"] for s in sessions for m in s["messages"] if m.get("created")]
    return {
        "model": model,
        "arm": a["arm"],
        "quantization": quantization,
        "sessions": len(sessions),
        "sessions_reused": a["store"].reused,
        "turns": sum(s["turns"] for s in sessions),
        "stop_reasons": stops,
        "therapist": speed("therapist", a["therapist"]),
        # the patient backend serves every arm of the job: its counters are the job's
        "patient": speed("patient", patient),
        "wall_seconds": wall,
        "parallel_sessions": workers,
        "arms_in_job": n_arms,
        "first_call": min(times, default=None),
        "last_call": max(times, default=None),
        "served_models": sorted(
            {m["served_model"] for s in sessions for m in s["messages"] if m["role"] == "patient" and m.get("served_model")}
        ),
        "risk_protocol": bool(rcfg.get("risk_protocol")),
        "system_prompt_sha256": hash_obj(system_prompt, 16),
        "therapist_backend": a["therapist"].kind,
        "unit_dir": str(a["store"].root),
    }
