"""Saved key/value caches of the conversations one llama.cpp context serves in turn.

One context serves one call at a time. When calls of several conversations alternate on it (two
simulated sessions in threads, the two arms of a rollout job meeting their patients together,
one patient model for both), each call would find the cache holding another conversation and
evaluate its own prompt again from the start. Before a call throws away a long canonical prefix,
that prefix's cache (sequence 0 of the context, ``llama_state_seq_get_data``) is copied here; a
later call whose prompt continues a saved prefix further than the live cache does has it copied
back instead of evaluated again.

A saved prefix holds exactly what evaluating its canonical pieces afresh gives (the backend cuts
every prompt alike, see ``LlamaCppBackend.prompt_cuts``), so answers do not change; the copies are
kept least recently used first, within a byte budget (``backends.<name>.kv_states_mb``).
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# A prefix shorter than this is evaluated again rather than saved or restored (a copy costs about
# as much as evaluating a few tokens; this keeps the store to the prefixes worth it).
MIN_TOKENS = 64


def matched(old_cuts: list[int], old_tokens: Any, cuts: list[int], tokens: list[int]) -> int:
    """How many leading tokens of ``tokens`` (cut at ``cuts``) an evaluation cut at ``old_cuts``
    of ``old_tokens`` holds: the end of the last piece the two share, piece for piece."""
    keep = 0
    for old, new in zip(old_cuts, cuts, strict=False):
        piece = old_tokens[keep:new]
        if old != new or (piece.tolist() if hasattr(piece, "tolist") else piece) != tokens[keep:new]:
            break
        keep = new
    return keep


@dataclass
class Saved:
    cuts: list[int]  # the canonical pieces it holds, ending at len(tokens)
    tokens: list[int]
    data: Any  # ctypes byte array from llama_state_seq_get_data
    size: int


class KVStates:
    """Saved prefixes of one context, least recently used first, at most ``budget_bytes``."""

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.saved: OrderedDict[tuple[int, ...], Saved] = OrderedDict()
        self.bytes = 0
        self.restores = 0

    def best(self, cuts: list[int], tokens: list[int]) -> tuple[Saved | None, int]:
        """The saved prefix that holds the most of ``tokens``, and how much of it."""
        best, best_keep = None, 0
        for s in self.saved.values():
            m = matched(s.cuts, s.tokens, cuts, tokens)
            if m > best_keep:
                best, best_keep = s, m
        return best, best_keep

    def save(self, llm: Any, cuts: list[int]) -> None:
        """Copy the live cache's canonical prefix (``cuts``, which end where it ends): the tail
        after it (an answer's tokens) is dropped from the context first."""
        import llama_cpp

        end = cuts[-1] if cuts else 0
        if end < MIN_TOKENS or self.budget <= 0:
            return
        tokens = llm.input_ids[:end].tolist()
        key = tuple(tokens)
        if key in self.saved:
            self.saved.move_to_end(key)
            return
        llm._ctx.kv_cache_seq_rm(0, end, -1)
        ctx = llm._ctx.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        if size <= 0 or size > self.budget:
            return
        data = (ctypes.c_uint8 * size)()
        if int(llama_cpp.llama_state_seq_get_data(ctx, data, size, 0)) != size:
            return
        while self.saved and self.bytes + size > self.budget:
            _, old = self.saved.popitem(last=False)
            self.bytes -= old.size
        self.saved[key] = Saved(list(cuts), tokens, data, size)
        self.bytes += size

    def restore(self, llm: Any, s: Saved, keep: int) -> bool:
        """Make the context hold the first ``keep`` tokens of ``s`` (a piece boundary of it);
        False (and an empty cache) if llama.cpp refused the copy."""
        import llama_cpp

        llm._ctx.kv_cache_clear()
        if int(llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, s.data, s.size, 0)) == 0:
            llm._ctx.kv_cache_clear()
            return False
        llm.input_ids[: len(s.tokens)] = s.tokens
        if not llm._ctx.kv_cache_seq_rm(0, keep, -1):
            llm._ctx.kv_cache_clear()
            return False
        self.saved.move_to_end(tuple(s.tokens))
        self.restores += 1
        return True

    def clear(self) -> None:
        self.saved.clear()
        self.bytes = 0
