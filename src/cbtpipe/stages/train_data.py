"""Training examples: sessions tokenized under the model's chat layout with the therapist-only loss
mask (``design.mask_example``, checked per example), long sessions as windows of whole exchanges,
and the fixed subsample the losses before and after training are computed on."""

from __future__ import annotations

from typing import Any

from ..design import mask_example, windows


def build_examples(
    rows: list[dict[str, Any]], tokenizer, layout: dict[str, Any], max_length: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Tokenized examples with the therapist-only loss mask (``chat.mask_example``, checked per
    example) and how many sessions had to be shortened.

    A session longer than ``max_length`` is split into windows of whole exchanges (``chat.windows``),
    so its closing summary and homework stay in training; only a single exchange longer than
    ``max_length`` is cut, and counted."""
    examples, counts = [], {"sessions": len(rows), "examples": 0, "sessions_windowed": 0, "windows_cut": 0, "windows_dropped": 0}
    for r in rows:
        wins = windows(tokenizer, r["messages"], layout, max_length)
        counts["sessions_windowed"] += int(len(wins) > 1)
        for w in wins:
            ex = mask_example(tokenizer, w, layout)
            if len(ex["input_ids"]) > max_length:
                counts["windows_cut"] += 1
                if not any(ex["assistant_masks"][:max_length]):  # nothing left to learn from
                    counts["windows_dropped"] += 1
                    continue
            examples.append({"input_ids": ex["input_ids"][:max_length], "assistant_masks": ex["assistant_masks"][:max_length]})
    counts["examples"] = len(examples)
    return examples, counts


def build_dataset(rows: list[dict[str, Any]], tokenizer, layout: dict[str, Any], max_length: int):
    from datasets import Dataset

    examples, counts = build_examples(rows, tokenizer, layout, max_length)
    return Dataset.from_list(examples), counts


def loss_subsample(ds, n: int, seed: int):
    """A fixed, seeded subsample of at most ``n`` examples (the whole split when it is smaller)."""
    if ds is None or len(ds) <= n:
        return ds
    import random

    idx = sorted(random.Random(seed).sample(range(len(ds)), n))
    return ds.select(idx)
