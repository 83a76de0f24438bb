"""What every LLM backend shares: the answer of a call, the structured-output retry loop, the
on-disk response cache keyed by the full request, statistics, and ``make_backend``, which builds a
configured backend of any registered type (``workflow.registry``).

A JSON schema goes to the backend (grammar or schema filling in llama.cpp, ``response_format``
over HTTP) and every answer is validated here as well, whatever the endpoint promises.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from ..workflow import BACKEND_TYPES, PipelineError, backend_spec, hash_obj, move_aside, read_json, write_json

log = logging.getLogger("cbtpipe")

DEFAULT_CACHE_DIR = "cache/llm"


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = "stop"
    cached: bool = False
    prompt_tokens_reused: int = 0
    # what answered: the model the endpoint says it served, its system fingerprint (or the
    # provider's equivalent) and when (Unix time); a cached answer keeps those of the call that made it
    served_model: str = ""
    system_fingerprint: str = ""
    created: float = 0.0

    def provenance(self) -> dict[str, Any]:
        return {"served_model": self.served_model, "system_fingerprint": self.system_fingerprint, "created": round(self.created, 3)}


@dataclass
class JsonResult:
    """Outcome of a structured call: ``data`` is None when every attempt failed the schema."""

    data: Any
    attempts: int
    raw: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    refusals: int = 0  # attempts the provider refused or filtered (finish reason refusal or content_filter)
    served: dict[str, Any] = field(default_factory=dict)  # Completion.provenance() of the last attempt
    calls: list[dict[str, Any]] = field(default_factory=list)  # Completion.provenance() of every attempt


@dataclass
class BackendStats:
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    errors: int = 0
    prompt_tokens_reused: int = 0

    def add(self, c: Completion) -> None:
        self.calls += 1
        self.cache_hits += int(c.cached)
        self.prompt_tokens += c.prompt_tokens
        self.prompt_tokens_reused += c.prompt_tokens_reused
        self.completion_tokens += c.completion_tokens
        self.seconds += c.seconds
        if not c.cached:
            self._generated += c.completion_tokens

    def generated_tokens(self) -> int:
        """Completion tokens made by the model in this run (not replayed from the cache)."""
        return self._generated

    def __post_init__(self) -> None:
        self._generated = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        fresh = self.seconds
        d["tokens_per_second"] = round(self.completion_tokens / fresh, 2) if fresh > 0 else None
        return d


def sum_llm_stats(parts: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Backend stats of several jobs as one (counts and seconds added, the rate recomputed)."""
    acc: dict[str, Any] = {}
    for st in parts:
        for k, v in (st or {}).items():
            if k != "tokens_per_second" and isinstance(v, (int, float)) and not isinstance(v, bool):
                acc[k] = acc.get(k, 0) + v
    if "seconds" in acc:
        acc["seconds"] = round(acc["seconds"], 3)
        acc["tokens_per_second"] = round(acc.get("completion_tokens", 0) / acc["seconds"], 2) if acc["seconds"] > 0 else None
    return acc


class BackendError(PipelineError):
    pass


def validate_json_text(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """Parse and validate an answer; returns (data, None) or (None, reason)."""
    if not text or not text.strip():
        return None, "blank answer"
    candidate = text.strip()
    # Tolerate a fenced code block around the JSON (common in JSON-mode answers).
    m = re.search(r"```(?:json)?\s*(.*?)```", candidate, re.S)
    if m:
        candidate = m.group(1).strip()
    try:
        # strict=False accepts raw control characters inside strings (grammar-constrained
        # decoding can emit a literal newline); the schema still decides validity.
        data = json.loads(candidate, strict=False)
    except json.JSONDecodeError as e:
        return None, f"not JSON: {e.msg} at char {e.pos}"
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as e:
        path = "/".join(str(x) for x in e.absolute_path) or "(root)"
        return None, f"schema violation at {path}: {e.message}"
    return data, None


def keepable(c: Completion, sampling: dict[str, Any]) -> bool:
    """Whether an answer may be replayed from the response cache.

    Never a blank, filtered or refused answer (asked again next time). An answer cut at a length
    limit is kept only when the limit was the request's own ``max_tokens``, which is part of the
    cache key: that answer is what this request gives, and replaying it is what makes a resumed
    session on a non-deterministic server (batched llama-server, an API) equal the first run. One
    cut short by anything else (a full context, a server-side cap) is not: a restarted server
    with more room must be asked again."""
    if not c.text.strip() or c.finish_reason in ("content_filter", "refusal"):
        return False
    if c.finish_reason == "length":
        limit = sampling.get("max_tokens")
        return bool(limit) and c.completion_tokens >= int(limit)
    return True


class Backend:
    """Base class: caching, statistics and the structured-output retry loop."""

    kind = "base"

    def __init__(self, name: str, spec: dict[str, Any], cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR):
        self.name = name
        self.spec = spec
        self.cache_dir = Path(cache_dir) if (cache_dir and spec.get("cache", True)) else None
        self.stats = BackendStats()
        self._lock = threading.Lock()

    # -- to implement --------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def served_model(self) -> str | None:
        """The model the endpoint says it serves now, where that can change under one name (an API
        alias): part of the response cache's key, so that an answer of another served model is
        never replayed. None where the identity already names the model (a local GGUF)."""
        return None

    def served_identity(self) -> dict[str, str]:
        """What answers under this backend's name now: the served model and its system fingerprint
        where the endpoint says them (an API). Part of the response cache's key and of the judges'
        unit keys, so that a changed model or fingerprint is answered and judged again; empty
        where the identity already names the model (a local GGUF)."""
        served = self.served_model()
        return {"served_model": served} if served else {}

    def unit_identity(self) -> dict[str, Any]:
        """What a judge's unit key holds of this backend: its identity, and what it serves now
        where that can change under its name (``served``, absent for a local GGUF)."""
        served = self.served_identity()
        return {"backend": self.identity(), **({"served": served} if served else {})}

    def learn_served(self, c: Completion) -> None:
        """Note what a fresh answer says was served (an API backend keeps it)."""

    def _complete(self, messages, *, sampling, seed, schema, stop) -> Completion:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)

    @property
    def parallelism(self) -> int:
        """How many calls this backend serves at once: independent units of a job (patients,
        sessions, judged transcripts) run that many at a time. 1 for llama.cpp in process."""
        return 1

    # -- public --------------------------------------------------------------------------------
    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        sampling: dict[str, Any] | None = None,
        seed: int = 0,
        schema: dict[str, Any] | None = None,
        stop: list[str] | None = None,
    ) -> Completion:
        sampling = dict(sampling or {})
        request = {"backend": self.identity(), "messages": messages, "sampling": sampling, "seed": seed, "schema": schema, "stop": stop}

        def cache_key(served: dict[str, str]) -> str:
            return hash_obj(request | served, length=64)

        key = None
        if self.cache_dir is not None:
            key = cache_key(self.served_identity())
            cpath = self.cache_dir / key[:2] / f"{key}.json"
            if cpath.exists():
                try:
                    c = Completion(**read_json(cpath))
                    c.cached = True
                    with self._lock:
                        self.stats.add(c)
                    return c
                except (ValueError, TypeError) as e:
                    move_aside(cpath, e, "response cache entry")
        c = self._complete(messages, sampling=sampling, seed=seed, schema=schema, stop=stop)
        with self._lock:
            self.stats.add(c)
        self.learn_served(c)
        if key is not None and keepable(c, sampling):
            d = asdict(c)
            d["cached"] = False
            # kept under the model that answered (the probe may not have learned it)
            key = cache_key(self.served_identity())
            write_json(self.cache_dir / key[:2] / f"{key}.json", d)
        return c

    def chat_json(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any],
        *,
        sampling: dict[str, Any] | None = None,
        seed: int = 0,
        max_attempts: int = 3,
    ) -> JsonResult:
        """Structured call: retried with a new seed until the answer passes the schema."""
        res = JsonResult(data=None, attempts=0)
        for attempt in range(max_attempts):
            c = self.chat(messages, sampling=sampling, seed=seed + 1000 * attempt, schema=schema)
            res.attempts += 1
            res.raw.append(c.text)
            res.prompt_tokens += c.prompt_tokens
            res.completion_tokens += c.completion_tokens
            res.seconds += c.seconds
            res.refusals += int(c.finish_reason in ("refusal", "content_filter"))
            res.served = c.provenance()
            res.calls.append(res.served)
            data, err = validate_json_text(c.text, schema)
            if err is None:
                res.data = data
                return res
            res.errors.append(err)
            log.info("%s: structured answer rejected (attempt %d/%d): %s", self.name, attempt + 1, max_attempts, err)
        return res

    def close(self) -> None:
        pass


def make_backend(
    name: str,
    backends: dict[str, Any],
    *,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    where: str = "backend",
    probe: bool = False,
) -> Backend:
    """Build the backend called ``name`` from the config's ``backends`` section. With ``probe``
    (the pipeline's jobs), an API backend sends one tiny request before its first real call (none
    when every answer comes from finished units or the cache) and fails fast on what no retry
    can mend (see ``OpenAIBackend.probe``)."""
    if name not in backends:
        known = ", ".join(sorted(backends)) or "none"
        raise PipelineError(f"config key {where}: unknown backend '{name}' (defined: {known})")
    spec = backends[name]
    kind = BACKEND_TYPES.get(spec.get("type"))
    if kind is None:
        backend_spec(name, spec)  # raises: the schema's message names the key and the known types
    b = kind.load()(name, spec, cache_dir=cache_dir)  # the constructor checks the spec and fills in its defaults
    if probe and kind.api:
        b.probe_first = True
    return b


def cost_usd(spec: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> float:
    price = spec.get("price_per_mtok") or {}
    return (prompt_tokens * float(price.get("input", 0)) + completion_tokens * float(price.get("output", 0))) / 1e6
