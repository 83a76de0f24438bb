"""Preference pairs for ORPO: the chosen reply is the synthetic therapist's turn, the rejected
reply is what the instruct model (its exported GGUF, in llama.cpp) says in the same context."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..design import apply_layout
from ..llm import Backend
from ..workflow import UnitStore, hash_obj

log = logging.getLogger("cbtpipe")


def contexts(row: dict[str, Any], max_per_session: int) -> list[tuple[list[dict[str, str]], str]]:
    """(prompt messages, chosen reply) for the first ``max_per_session`` assistant turns."""
    out = []
    msgs = row["messages"]
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and len(out) < max_per_session:
            out.append((msgs[:i], m["content"]))
    return out


def build_pairs(
    rows: list[dict[str, Any]],
    backend: Backend,
    sampling: dict[str, Any],
    seed: int,
    max_per_session: int,
    unit_dir: str | Path,
    layout: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pairs whose prompts are laid out for the model's chat template (``chat.apply_layout``), as
    the instruct model is asked and as ORPO will render them."""
    mode = (layout or {"system": "native"})["system"]
    key = {"backend": backend.identity(), "sampling": sampling, "seed": seed, "k": max_per_session, "layout": mode}
    store = UnitStore(Path(unit_dir) / hash_obj(key))
    pairs, t0 = [], time.perf_counter()
    for row in rows:
        uid = f"{row['patient_id']}-s{row['session_index']}-{hash_obj(row['messages'], 8)}"

        def make(row=row):
            unit = []
            for j, (prompt, chosen) in enumerate(contexts(row, max_per_session)):
                prompt = apply_layout(prompt, mode)
                c = backend.chat(prompt, sampling=sampling, seed=seed + j)
                if c.text.strip() and c.text.strip() != chosen.strip():
                    unit.append(
                        {
                            "prompt": prompt,
                            "chosen": [{"role": "assistant", "content": chosen}],
                            "rejected": [{"role": "assistant", "content": c.text.strip()}],
                            "patient_id": row["patient_id"],
                        }
                    )
            return unit

        unit, _ = store.get_or_make(uid, make)
        pairs += unit
    stats = {
        "sessions": len(rows),
        "sessions_reused": store.reused,
        "pairs": len(pairs),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "llm": backend.stats.as_dict(),
    }
    return pairs, stats
