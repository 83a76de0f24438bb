"""Schema-filled JSON answers from a model in process: the answer's fixed text is written, the
model chooses only the values.

A judge's answer ``{"agenda": 3, "feedback": 2, ...}`` is mostly text that its schema fixes: the
braces, the keys in their order, the separators. With a grammar, llama.cpp still decodes that text
token by token, one forward pass each (about 60 of a flat CTRS answer's 70 tokens). Here a schema
of the shape the pipeline asks for (an object of required properties, in order, whose values are
enums, integers or booleans, bounded strings or such objects) is compiled into parts:

- fixed text, appended to the context as a batch (one forward pass for all of it, together with
  any token the schema forces, such as the space before a score's digit);
- an enum: the model picks among the tokens that continue one of the options (a trie over the
  vocabulary), ending when an option is complete and a token that begins the text after it is
  chosen;
- a string of at most ``maxLength`` characters: tokens with no quote, backslash or control
  character, that keep it within the length, or a token that begins the text after it (``"``,
  ``",``, ``"}`` ...), which closes it.

Each choice masks the logits to the allowed tokens first, then applies the call's sampling as
llama.cpp's chain does (repetition penalty over the last 64 tokens, top-k, top-p and min-p on the
masked distribution, temperature, a draw seeded by the call's seed; greedy at temperature 0).
The answer always passes its schema and a call repeats exactly for the same request.

What differs from the grammar path: the fixed text is tokenized as the tokenizer writes it, not
as the model would have spelled it, and the layout is fixed (``{"key": value, ...}``), so
answers (greedy ones included) are not those of the grammar path. The backend's identity names
this decoder, so no answer of the other path is replayed for it. ``json_fill: false`` in a
``llama_cpp`` backend keeps the grammar path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

# Part of the backend's identity when the filler answers structured calls.
FILL_ID = "json-fill-v2"  # v2: a forced token (one candidate) is not evaluated on its own
PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Enum:
    options: tuple[str, ...]  # each as written in the answer, with its leading space


@dataclass(frozen=True)
class Str:
    max_chars: int


def _value(schema: Any, out: list) -> bool:
    """Append the parts of one value after ``"key":``; False if this shape is not supported."""
    if not isinstance(schema, dict):
        return False
    t = schema.get("type")
    if "enum" in schema:
        vals = schema["enum"]
        if not vals or len(set(map(json.dumps, vals))) != len(vals):
            return False
        if all(isinstance(v, bool) for v in vals) and t in (None, "boolean"):
            out.append(Enum(tuple(" " + json.dumps(v) for v in vals)))
            return True
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vals) and t in (None, "integer"):
            out.append(Enum(tuple(" " + str(v) for v in vals)))
            return True
        if all(isinstance(v, str) for v in vals) and t in (None, "string"):
            if any(json.dumps(v) != f'"{v}"' or not v for v in vals):
                return False  # an option that needs escapes
            out.append(Lit(' "'))
            out.append(Enum(tuple(vals)))
            out.append(Lit('"'))
            return True
        return False
    if t == "boolean":
        out.append(Enum((" true", " false")))
        return True
    if t == "string":
        if set(schema) - {"type", "maxLength", "description", "title"} or "maxLength" not in schema:
            return False  # patterns, formats, unbounded strings: the grammar path
        out.append(Lit(' "'))
        out.append(Str(int(schema["maxLength"])))
        out.append(Lit('"'))
        return True
    if t == "object":
        out.append(Lit(" "))
        return _object(schema, out)
    return False


def _object(schema: dict[str, Any], out: list) -> bool:
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return False
    if schema.get("additionalProperties") is not False or sorted(schema.get("required") or []) != sorted(props):
        return False  # optional or extra keys: the model would choose the layout
    for i, (k, sub) in enumerate(props.items()):
        out.append(Lit(("{" if i == 0 else ", ") + json.dumps(k) + ":"))
        if not _value(sub, out):
            return False
    out.append(Lit("}"))
    return True


def compile_schema(schema: dict[str, Any] | None) -> list | None:
    """The parts of an answer to ``schema``, or None when the filler cannot write it (the
    grammar path then answers)."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return None
    parts: list = []
    if not _object(schema, parts):
        return None
    merged: list = []
    for p in parts:  # adjacent fixed texts are one
        if isinstance(p, Lit) and merged and isinstance(merged[-1], Lit):
            merged[-1] = Lit(merged[-1].text + p.text)
        else:
            merged.append(p)
    # the fixed text after an option (",", "}") is what the model chooses to end it with
    for i, p in enumerate(merged):
        if isinstance(p, Enum) and not (i + 1 < len(merged) and isinstance(merged[i + 1], Lit)):
            return None
    return merged


class Filler:
    """Writes answers for one ``llama_cpp.Llama`` (its vocabulary is read once)."""

    def __init__(self, llm: Any, eog: frozenset[int]):
        self.llm = llm
        n = llm.n_vocab()
        self.n_vocab = n
        self.tok_bytes: list[bytes] = []
        self.by_bytes: dict[bytes, list[int]] = {}
        plain = np.zeros(n, dtype=bool)
        chars = np.zeros(n, dtype=np.int32)
        for t in range(n):
            b = b"" if t in eog else llm.detokenize([t])
            self.tok_bytes.append(b)
            if not b:
                continue
            self.by_bytes.setdefault(b, []).append(t)
            try:
                s = b.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a piece of a character: a string could end inside it
            if '"' in s or "\\" in s or any(ord(c) < 0x20 for c in s):
                continue
            plain[t], chars[t] = True, len(s)
        self.plain_ids = np.flatnonzero(plain)
        self.plain_chars = chars[self.plain_ids]

    def usable(self, parts: list | None) -> bool:
        if parts is None:
            return False
        return all(self._starts_of(parts[i + 1].text) for i, p in enumerate(parts) if not isinstance(p, Lit))

    def _starts_of(self, text: str) -> set[int]:
        """Tokens that spell a beginning of ``text``."""
        b = text.encode("utf-8")
        out: set[int] = set()
        for j in range(1, len(b) + 1):
            out.update(self.by_bytes.get(b[:j], ()))
        return out

    # -- sampling ------------------------------------------------------------------------------
    def _logits(self) -> np.ndarray:
        ptr = self.llm._ctx.get_logits()
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)

    @staticmethod
    def choose(logits: np.ndarray, cand: np.ndarray, sampling: dict[str, Any], rng: np.random.Generator, recent: np.ndarray) -> int:
        """One token of ``cand`` (token ids), as llama.cpp's chain would pick it with the other
        tokens masked out."""
        lg = logits[cand]
        rp = float(sampling.get("repeat_penalty", 1.1))
        if rp != 1.0 and recent.size:
            hit = np.isin(cand, recent)
            lg = np.where(hit, np.where(lg > 0, lg / rp, lg * rp), lg)
        temp = float(sampling.get("temperature", 0.7))
        if temp <= 0 or cand.size == 1:
            return int(cand[int(np.argmax(lg))])
        k = int(sampling.get("top_k", 40))
        if 0 < k < cand.size:
            top = np.argpartition(-lg, k - 1)[:k]
            cand, lg = cand[top], lg[top]
        order = np.argsort(-lg, kind="stable")
        cand, lg = cand[order], lg[order]
        p = np.exp(lg - lg[0])
        p /= p.sum()
        top_p = float(sampling.get("top_p", 0.95))
        if top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1
            cand, lg, p = cand[:keep], lg[:keep], p[:keep]
        min_p = float(sampling.get("min_p", 0.05))
        if min_p > 0:
            keep = max(1, int(np.count_nonzero(p >= min_p * p[0])))
            cand, lg = cand[:keep], lg[:keep]
        q = np.exp((lg - lg[0]) / temp)
        cum = np.cumsum(q)
        i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        return int(cand[min(i, cand.size - 1)])

    # -- writing -------------------------------------------------------------------------------
    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def write(
        self, parts: list, prompt: list[int], sampling: dict[str, Any], seed: int, max_tokens: int, n_ctx: int
    ) -> tuple[str, int, str]:
        """The answer to ``prompt`` (the KV cache holds ``prompt[:-1]``): its text, its tokens
        and the finish reason ("stop", or "length" when max_tokens or the context ran out)."""
        if len(prompt) >= n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {n_ctx}")
        w = _Writing(self, prompt, sampling, seed, min(int(max_tokens), n_ctx - len(prompt)))
        for i, part in enumerate(parts):
            if isinstance(part, Lit):
                done = w.literal(part.text)
            else:
                # A value ends when the model picks a token that begins the fixed text after it
                # (a quote, '",', ',' or '}'): its mass is spread over every such spelling.
                ends = self._starts_of(parts[i + 1].text)
                done = w.enum(part, ends) if isinstance(part, Enum) else w.string(part, ends)
            if not done:
                return "".join(w.text), w.made, "length"
        return "".join(w.text), w.made, "stop"


class _Writing:
    """One answer being written: the tokens not yet evaluated, the recent tokens the repeat
    penalty sees, the text so far, and the token budget."""

    def __init__(self, filler: Filler, prompt: list[int], sampling: dict[str, Any], seed: int, budget: int):
        self.f, self.sampling = filler, sampling
        self.rng = np.random.default_rng(int(seed) & 0xFFFFFFFF)
        self.pending = [prompt[-1]]
        self.history = list(prompt[-PENALTY_LAST_N:])
        self.text: list[str] = []
        self.made, self.budget = 0, budget
        self.consumed = 0  # bytes of the next fixed text already in (the token that ended a value)

    def push(self, t: int) -> bool:
        if self.made >= self.budget:
            return False
        self.pending.append(t)
        self.history.append(t)
        self.made += 1
        return True

    def pick(self, cand: np.ndarray) -> int:
        if cand.size == 1:
            # a forced token (the space before a score's digit): nothing to choose, so no
            # forward pass; it goes in with the tokens after it
            return int(cand[0])
        self.f.llm.eval(self.pending)
        self.pending.clear()
        recent = np.asarray(self.history[-PENALTY_LAST_N:], dtype=np.int64)
        return self.f.choose(self.f._logits(), cand, self.sampling, self.rng, recent)

    def literal(self, text: str) -> bool:
        """The fixed text, less what the token that ended the value before it already wrote."""
        rest = text.encode("utf-8")[self.consumed :]
        self.consumed = 0
        ids = self.f.llm.tokenize(rest, add_bos=False, special=False) if rest else []
        for t in ids:
            if not self.push(t):
                return False
        self.text.append(text)
        return True

    def enum(self, part: Enum, ends: set[int]) -> bool:
        """One of the options, token by token among those that continue an option."""
        f, done = self.f, ""
        while True:
            conts: set[int] = set()
            for o in part.options:
                if o.startswith(done) and len(o) > len(done):
                    rest_o = o[len(done) :]
                    for j in range(1, len(rest_o) + 1):
                        conts.update(f.by_bytes.get(rest_o[:j].encode("utf-8"), ()))
            if not conts:
                break  # a whole option, and no longer one begins with it
            end_ids = (ends - conts) if done in part.options else set()
            t = self.pick(np.array(sorted(conts | end_ids), dtype=np.int64))
            if not self.push(t):
                self.text.append(done)
                return False
            if t in end_ids:
                self.consumed = len(f.tok_bytes[t])
                break
            done += f.tok_bytes[t].decode("utf-8")
        self.text.append(done)
        return True

    def string(self, part: Str, ends: set[int]) -> bool:
        """Plain tokens within the length, or one that begins the text after it."""
        f, s = self.f, ""
        end_arr = np.array(sorted(ends), dtype=np.int64)
        while True:
            room = part.max_chars - len(s)
            ok = f.plain_ids[f.plain_chars <= room] if room > 0 else f.plain_ids[:0]
            t = self.pick(np.concatenate([ok, end_arr]))
            if not self.push(t):
                self.text.append(s)
                return False
            if t in ends:
                self.consumed = len(f.tok_bytes[t])
                break
            s += f.tok_bytes[t].decode("utf-8")
        self.text.append(s)
        return True
