"""Chat-format training data: therapist = assistant, patient = user, with a system prompt.

Split into train / validation by patient, saved as JSONL that ``datasets`` loads, plus token
statistics with each base model's tokenizer.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from ..design import apply_layout, therapist_system, token_count
from ..workflow import PipelineError

ROLE_MAP = {"therapist": "assistant", "patient": "user"}


def to_chat(session: dict[str, Any], system_prompt: str, opening_message: str, context: str = "") -> dict[str, Any]:
    """A session as a chat example; ``context`` is its course context (``course.training_context``),
    appended to the system prompt exactly as a rollout appends an evaluation session's."""
    msgs = [{"role": "system", "content": therapist_system(system_prompt, context=context)}]
    turns = list(session["messages"])
    if turns and turns[0]["role"] == "therapist":
        # Chat templates such as Mistral's require the first turn to be the user's; the same
        # opening line starts every evaluation session, so training and evaluation match.
        msgs.append({"role": "user", "content": opening_message})
    msgs += [{"role": ROLE_MAP[t["role"]], "content": t["content"]} for t in turns]
    while msgs and msgs[-1]["role"] != "assistant":
        msgs.pop()
    return {
        "patient_id": session["patient_id"],
        "session_index": session["session_index"],
        "phase": session.get("phase", "unknown"),
        "course_context": context,
        "messages": msgs,
    }


def split_by_patient(
    sessions: list[dict[str, Any]], splits: dict[str, str] | None, n_val: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train / validation split with no patient in both.

    ``splits`` maps patient id to 'train' or 'val' (generated data); for imported data it is None
    and ``n_val`` patients are drawn with ``seed``.
    """
    patients = sorted({s["patient_id"] for s in sessions})
    if splits is None:
        if len(patients) < 2:
            raise PipelineError("need at least two patients to split train / validation by patient")
        rng = random.Random(seed)
        val_ids = set(rng.sample(patients, min(n_val, len(patients) - 1)))
    else:
        val_ids = {p for p in patients if splits.get(p) == "val"}
    train = [s for s in sessions if s["patient_id"] not in val_ids]
    val = [s for s in sessions if s["patient_id"] in val_ids]
    if not train:
        raise PipelineError("no training sessions left: every generated training session failed validation")
    return train, val


def token_stats(rows: list[dict[str, Any]], tokenizer, max_length: int, layout: dict[str, Any]) -> dict[str, Any]:
    """Token counts under the model's chat layout; sessions over ``max_length`` are trained as
    windows of whole exchanges (``chat.windows``)."""
    lengths = [token_count(tokenizer, apply_layout(r["messages"], layout)) for r in rows]
    if not lengths:
        return {"sessions": 0}
    return {
        "sessions": len(lengths),
        "turns": sum(len(r["messages"]) - 1 for r in rows),
        "tokens_total": sum(lengths),
        "tokens_mean": round(statistics.mean(lengths), 1),
        "tokens_max": max(lengths),
        "tokens_min": min(lengths),
        "over_max_length": sum(n > max_length for n in lengths),
        "max_length": max_length,
    }
