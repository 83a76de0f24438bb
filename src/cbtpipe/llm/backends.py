"""One interface for every LLM call: generation, simulated patient, judge.

Two backends:

* ``llama_cpp``: a GGUF model in process through llama-cpp-python.
* ``openai``: any OpenAI-compatible chat endpoint over HTTP (DeepSeek, Gemini's compatible
  endpoint, vLLM, llama.cpp's server, Ollama), with bounded retries and exponential back-off on
  429/5xx/timeouts, a request timeout, a concurrency limit, and JSON dialects per endpoint.

Both share an on-disk response cache keyed by the full request, and structured output: a JSON
schema goes to the backend (grammar in llama.cpp, ``response_format`` over HTTP) and every answer
is validated here as well, whatever the endpoint promises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from ..workflow import (
    BACKEND_TYPES,
    PipelineError,
    backend_spec,
    env_secret,
    hash_obj,
    job_threads,
    move_aside,
    read_json,
    redact,
    require_gpu_offload,
    sha256_file,
    write_json,
)
from .cpu_thread import check_abandoned, on_cpu_thread
from .gguf import check_gguf_file, resolve_gguf
from .kv_states import MIN_TOKENS as KV_MIN_TOKENS
from .kv_states import KVStates, matched

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

        def cache_key(served: str | None) -> str:
            return hash_obj(request | ({"served_model": served} if served else {}), length=64)

        key = None
        if self.cache_dir is not None:
            key = cache_key(self.served_model())
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
            key = cache_key(self.served_model())
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
            data, err = validate_json_text(c.text, schema)
            if err is None:
                res.data = data
                return res
            res.errors.append(err)
            log.info("%s: structured answer rejected (attempt %d/%d): %s", self.name, attempt + 1, max_attempts, err)
        return res

    def close(self) -> None:
        pass


class LlamaCppBackend(Backend):
    """A GGUF model in process.

    Prompts are evaluated in a canonical way so that an answer depends on the request alone, never
    on what ran before it or on a restart: the prompt is cut after every end-of-turn token and
    before its last token, each piece is evaluated as one batch after the pieces before it, and the
    last token alone (as llama-cpp-python does). The key/value cache of the leading pieces that a
    new prompt shares with the previous one is reused, bit-identical to evaluating them afresh:
    the k judge samples of one transcript evaluate it once, a simulated session's next turn
    evaluates only the new turns.
    """

    kind = "llama_cpp"

    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        model_path: str | os.PathLike | None = None,
        gpu_key: str | None = None,
        **kw,
    ):
        """``model_path`` serves a GGUF that is not a configured backend's (a therapist, the
        instruct model of preference pairs); ``gpu_key`` names the config key that set
        ``n_gpu_layers`` (for the error when the llama.cpp build cannot offload); by default
        ``backends.<name>.n_gpu_layers``."""
        spec = {"type": "llama_cpp", **spec}
        if model_path:
            spec["gguf"] = {"path": str(model_path)}
        spec = backend_spec(name, spec)  # checked and completed with the schema's defaults
        super().__init__(name, spec, **kw)
        self.model_path = resolve_gguf(spec["gguf"], f"backends.{name}.gguf")
        check_gguf_file(self.model_path, f"backends.{name}")
        import llama_cpp

        self._sha = sha256_file(self.model_path)
        self._fingerprint = f"llama-cpp-python {llama_cpp.__version__}, gguf sha256 {self._sha[:16]}"
        require_gpu_offload(gpu_key or f"backends.{name}.n_gpu_layers", int(spec["n_gpu_layers"]))
        from llama_cpp import Llama

        threads = spec["n_threads"] or job_threads()
        try:
            self.llm = Llama(
                model_path=str(self.model_path),
                n_ctx=int(spec["n_ctx"]),
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=int(spec["n_gpu_layers"]),
                seed=0,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise PipelineError(f"backends.{name}: llama.cpp could not load {self.model_path} (truncated or corrupt GGUF?): {e}") from e
        self.n_ctx = self.llm.n_ctx()
        log.info(
            "backends.%s: llama.cpp context of %d tokens on %d thread(s) (%s)",
            name,
            self.n_ctx,
            threads,
            "n_threads" if spec["n_threads"] else "the job's threads: n_threads is open",
        )
        # A grammar checks the drawn token first and the whole vocabulary only when it rejects it
        # (as llama.cpp's own samplers do); with the tiny model most draws in a JSON answer are
        # rejected, so it saves about a fifth of the time per token.
        from .grammar_sampler import install

        install(self.llm)
        # One llama.cpp context serves one call at a time (sessions may run in threads).
        self._call_lock = threading.RLock()
        # A CPU context's calls go to the process's llama.cpp CPU thread (cpu_thread.py); every
        # batch first checks that the caller still waits for the call (a no-op off that thread).
        self._on_cpu = int(spec["n_gpu_layers"]) == 0
        evaluate = self.llm.eval

        def checked_eval(tokens):
            check_abandoned()
            return evaluate(tokens)

        self.llm.eval = checked_eval
        self.reuse_prefix = bool(spec["reuse_prefix"])
        # Structured answers of a schema the filler can write are written by it (json_fill.py):
        # the fixed text in one batch, the model choosing the values.
        self.json_fill = bool(spec["json_fill"])
        self._filler: Any = None
        self._fill: tuple[list, dict[str, Any], int, int] | None = None  # the call being filled
        # Piece boundaries of the prompt whose tokens (llm.input_ids) the KV cache holds,
        # evaluated canonically up to the last one.
        self._cuts: list[int] = []
        self._reused = 0
        self._kv = KVStates(int(spec["kv_states_mb"]) * 2**20 if self.reuse_prefix else 0)
        from llama_cpp import llama_vocab_is_eog

        vocab = self.llm._model.vocab
        self._eog = frozenset(t for t in range(self.llm.n_vocab()) if llama_vocab_is_eog(vocab, t))
        # The chat handler tokenizes the formatted prompt and calls create_completion: the
        # prompt's tokens are prepared here first.
        self._create_completion = self.llm.create_completion
        self.llm.create_completion = self._prepared_completion

    def identity(self) -> dict[str, Any]:
        from .grammar_sampler import SAMPLER_ID
        from .json_fill import FILL_ID

        # how a prompt is evaluated (its pieces) and how tokens are drawn change the answers
        return {
            "type": self.kind,
            "model_sha256": self._sha,
            "sampler": SAMPLER_ID,
            "prefix_block": self.PREFIX_BLOCK,
            "json": FILL_ID if self.json_fill else "grammar",
        }

    def count_tokens(self, text: str) -> int:
        with self._call_lock:
            return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    # Prompts are also cut every PREFIX_BLOCK tokens from the start: a long prefix that prompts
    # share inside one message (a judge's rubric before each transcript, a generator's
    # instructions before each patient) is then reused up to the last block it fills.
    PREFIX_BLOCK = 128

    def prompt_cuts(self, tokens: list[int]) -> list[int]:
        """Boundaries of the canonical pieces of a prompt: after each end-of-turn token, at every
        multiple of PREFIX_BLOCK, and n-1. Each depends only on the tokens before it, so two
        prompts that share a prefix cut it alike and a reused piece holds what evaluating it
        afresh would."""
        n = len(tokens)
        if n < 2:
            return []
        cuts = {i + 1 for i in range(n - 2) if tokens[i] in self._eog} | set(range(self.PREFIX_BLOCK, n - 1, self.PREFIX_BLOCK))
        return sorted(cuts) + [n - 1]

    def _forget(self) -> None:
        self._cuts = []
        self.llm.reset()

    def _prepare(self, tokens: list[int]) -> None:
        """Leave the KV cache holding ``tokens[:-1]`` evaluated canonically; count reused tokens."""
        self._reused = 0
        if not self.reuse_prefix or len(tokens) < 2 or len(tokens) >= self.n_ctx:
            self._forget()  # llama-cpp-python evaluates it (or reports the overflow) itself
            return
        llm = self.llm
        cuts = self.prompt_cuts(tokens)
        keep = matched(self._cuts, llm.input_ids, cuts, tokens)
        # Another conversation's prefix that this call would throw away is saved first; a saved
        # one that holds more of this prompt than the live cache is copied back (kv_states.py).
        saved, saved_keep = self._kv.best(cuts, tokens)
        restoring = saved is not None and saved_keep - keep >= KV_MIN_TOKENS
        lost = (self._cuts[-1] if self._cuts else 0) - keep
        if restoring or lost >= KV_MIN_TOKENS:
            self._kv.save(llm, self._cuts)
        if restoring:
            keep = saved_keep if self._kv.restore(llm, saved, saved_keep) else 0
            if keep == 0:
                self._forget()
        elif keep == 0 or not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            self._forget()
            keep = 0
        llm.n_tokens = self._reused = keep
        self._cuts = []  # until every piece is in (an error part-way leaves nothing to reuse)
        for c in cuts:
            if c > keep:
                llm.eval(tokens[keep:c])
                keep = c
        self._cuts = cuts

    def _prepared_completion(self, prompt, *args, **kwargs):
        if isinstance(prompt, list):
            self._prepare(prompt)
        else:
            self._forget()
        if self._fill is not None and isinstance(prompt, list):
            return self._filled_completion(prompt)
        return self._create_completion(prompt, *args, **kwargs)

    def _filled_completion(self, prompt: list[int]) -> dict[str, Any]:
        """A completion written by the filler, shaped as llama-cpp-python's (the chat handler
        formatted and tokenized the messages as for any call)."""
        parts, sampling, seed, max_tokens = self._fill
        if len(prompt) < 2 or len(prompt) >= self.n_ctx or not self.reuse_prefix:
            # _prepare left nothing evaluated: the filler needs prompt[:-1] in the KV cache
            self._forget()
            if len(prompt) >= self.n_ctx:
                raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self.n_ctx}")
            self.llm.eval(prompt[:-1])
        text, made, finish = self._filler.write(parts, prompt, sampling, seed, max_tokens, self.n_ctx)
        return {
            "id": "cmpl-fill",
            "object": "text_completion",
            "created": int(time.time()),
            "model": str(self.model_path),
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": made, "total_tokens": len(prompt) + made},
        }

    def _fill_parts(self, schema: dict[str, Any] | None) -> list | None:
        if schema is None or not self.json_fill:
            return None
        from .json_fill import Filler, compile_schema

        parts = compile_schema(schema)
        if parts is None:
            return None
        if self._filler is None:
            self._filler = Filler(self.llm, self._eog)
        return parts if self._filler.usable(parts) else None

    def _complete(self, messages, *, sampling, seed, schema, stop) -> Completion:
        kwargs: dict[str, Any] = dict(
            temperature=float(sampling.get("temperature", 0.7)),
            top_p=float(sampling.get("top_p", 0.95)),
            max_tokens=int(sampling.get("max_tokens", 256)),
            repeat_penalty=float(sampling.get("repeat_penalty", 1.1)),
            seed=int(seed),
            stop=stop or None,
        )
        with self._call_lock:
            parts = self._fill_parts(schema)
            if parts is not None:
                self._fill = (parts, kwargs | {"top_k": 40, "min_p": 0.05}, int(seed), kwargs["max_tokens"])
            elif schema is not None:
                kwargs["response_format"] = {"type": "json_object", "schema": schema}
            t0 = time.perf_counter()
            try:
                if self._on_cpu:
                    out = on_cpu_thread(self.llm.create_chat_completion, messages=messages, **kwargs)
                else:
                    out = self.llm.create_chat_completion(messages=messages, **kwargs)
            finally:
                self._fill = None
            dt = time.perf_counter() - t0
            reused = self._reused
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            seconds=dt,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens_reused=reused,
            served_model=self.model_path.name,
            system_fingerprint=self._fingerprint,
            created=time.time(),
        )

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            self._kv.clear()
            llm.close()
            self.llm = None


class DeadlineExceeded(Exception):
    """An attempt took longer than the backend's deadline_s."""


def message_text(message: dict[str, Any]) -> tuple[str, bool]:
    """The text of a chat message and whether it is a refusal. ``content`` may be a string, null,
    or a list of parts (``{"type": "text", "text": ...}``, as some providers and proxies send);
    a refusal comes as ``refusal`` with no content."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type", "text") in ("text", "output_text")
        )
    else:
        text = str(content or "")
    return text, bool(message.get("refusal")) and not text.strip()


class OpenAIBackend(Backend):
    kind = "openai"
    _semaphores: dict[str, threading.BoundedSemaphore] = {}

    # Retried: timeouts, conflicts, rate limits, a client closed request (499, some gateways),
    # and the whole 5xx family (providers use 520-529 for overload and origin errors).
    RETRY_STATUS = frozenset({408, 409, 425, 429, 499, *range(500, 600)})
    MAX_RETRY_AFTER_S = 60.0

    def __init__(self, name: str, spec: dict[str, Any], **kw):
        spec = backend_spec(name, {"type": "openai", **spec})  # checked and completed with the schema's defaults
        super().__init__(name, spec, **kw)
        self.base_url = spec["base_url"].rstrip("/")
        self.model = spec["model"]
        env = spec.get("api_key_env")
        self._api_key = None
        if env:
            self._api_key = env_secret(env)
            if not self._api_key:
                raise PipelineError(
                    f"backend '{name}': environment variable {env} is not set (named by config key backends.{name}.api_key_env)"
                )
        self.timeout = float(spec["timeout_s"])
        self.deadline = float(spec["deadline_s"])
        self.max_retries = int(spec["max_retries"])
        self.backoff = float(spec["backoff_s"])
        self.json_mode = spec["json_mode"]
        conc = int(spec["concurrency"])
        self.concurrency = conc
        self.probe_first = False  # make_backend(..., probe=True): probe before the first real call
        self._probed = False
        self._served: str | None = None  # what the endpoint said it serves (the probe's or a fresh answer's)
        self._probe_lock = threading.Lock()
        self._sem = self._semaphores.setdefault(f"{name}:{conc}", threading.BoundedSemaphore(conc))
        import httpx

        headers = {"Content-Type": "application/json"}
        for h, v in spec["extra_headers"].items():
            key = f"backends.{name}.extra_headers.{h}"
            if h.lower() in ("authorization", "content-type", "content-length", "host"):
                raise PipelineError(f"config key {key}: the pipeline sets this header itself (an API key comes from api_key_env)")
            if isinstance(v, dict):
                v = env_secret(v["env"])  # remembered, so that no error or log shows it
                if not v:
                    raise PipelineError(
                        f"backend '{name}': environment variable {spec['extra_headers'][h]['env']} is not set (named by config key {key})"
                    )
            headers[h] = str(v)
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self.extra_body = dict(spec["extra_body"])
        self.omit = frozenset(spec["omit"])
        self.max_tokens_field = spec["max_tokens_field"]
        self._client = httpx.Client(timeout=self.timeout, headers=headers)

    def identity(self) -> dict[str, Any]:
        ident = {"type": self.kind, "base_url": self.base_url, "model": self.model, "json_mode": self.json_mode}
        if not self.spec.get("integer_enums", True):
            ident["integer_enums"] = False  # another request (answers cached under the default stay valid)
        # What else the request carries: a header read from the environment by its variable's name
        # only (a secret never reaches the identity, which names cache entries and results).
        if self.spec.get("extra_body"):
            ident["extra_body"] = self.spec["extra_body"]
        if self.spec.get("extra_headers"):
            ident["extra_headers"] = self.spec["extra_headers"]
        if self.spec.get("omit"):
            ident["omit"] = sorted(self.spec["omit"])
        if self.spec.get("max_tokens_field", "max_tokens") != "max_tokens":
            ident["max_tokens_field"] = self.spec["max_tokens_field"]
        return ident

    @property
    def parallelism(self) -> int:
        return self.concurrency

    def served_model(self) -> str | None:
        """Learned by the probe (pipeline jobs) before the first cache lookup, or from the first
        fresh answer where the probe could not tell; None without a probe (a direct client)."""
        if not self.probe_first:
            return None
        self.probe()  # before the first cache lookup or unit: an answer must be of the model served now
        return self._served

    def learn_served(self, c: Completion) -> None:
        if self.probe_first and c.served_model and self._served is None:
            self._served = c.served_model

    # A structured answer with an integer enum: the shape of the judge's schema, which some
    # endpoints refuse (HTTP 400) in some json_mode dialects.
    PROBE_SCHEMA = {
        "type": "object",
        "properties": {"ok": {"type": "integer", "enum": [1]}},
        "required": ["ok"],
        "additionalProperties": False,
    }

    def probe(self) -> None:
        """One tiny structured request, so that a job fails within seconds, before any work, on
        what no retry can mend: a refused key (401/403), an unknown model or endpoint (404), a
        refused structured-output dialect (400/422), a redirect, or no network. A transient
        failure (429, 5xx, a timeout) is left to the retries of the real calls."""
        import httpx

        if self._probed:
            return
        with self._probe_lock:
            if self._probed:
                return
            messages = [{"role": "user", "content": 'Answer with the JSON object {"ok": 1}.'}]
            body = self._payload(messages, {"temperature": 0.0, "max_tokens": 16}, 0, self.PROBE_SCHEMA, None)
            url = f"{self.base_url}/chat/completions"
            where = f"backend '{self.name}' (checked before any work)"
            try:
                with self._sem:
                    r, raw = self._post(url, body, time.perf_counter() + min(self.deadline, 60.0))
            except httpx.ConnectError as e:
                raise BackendError(
                    f"{where}: cannot connect to {redact(self.base_url)} ({type(e).__name__}: {redact(str(e))[:200]}); "
                    f"no network on this node, or a wrong config key backends.{self.name}.base_url"
                ) from None
            except (httpx.TimeoutException, httpx.TransportError, DeadlineExceeded) as e:
                log.warning("%s: the probe request failed (%s); the real calls retry", self.name, type(e).__name__)
                self._probed = True
                return
            text = redact(raw[:300].decode("utf-8", "replace"))
            code = r.status_code
            hint = None
            if r.is_redirect:
                raise self._redirect_error(where, url, r)
            if code in (401, 403):
                env = self.spec.get("api_key_env")
                hint = (
                    f"the API key was refused: check the variable {env} (config key backends.{self.name}.api_key_env)"
                    if env
                    else f"the endpoint wants an API key: set config key backends.{self.name}.api_key_env"
                )
            elif code == 404:
                hint = f"model '{self.model}' or the endpoint was not found: check config keys backends.{self.name}.model and base_url"
            elif code in (400, 422):
                hint = (
                    f"the endpoint refused a structured-output request in json_mode '{self.json_mode}' (an integer enum, as the "
                    f"judge's schema has): set config key backends.{self.name}.json_mode to a dialect it takes "
                    "(json_schema, json_object_schema, json_object or none)"
                )
            elif 400 <= code < 500 and code not in self.RETRY_STATUS:
                hint = "refused the request"
            if hint:
                with self._lock:
                    self.stats.errors += 1
                raise BackendError(f"{where}: HTTP {code} from {redact(url)}: {text}: {hint}")
            if code < 400:
                with contextlib.suppress(ValueError, AttributeError):  # a body that is not JSON names nothing
                    self._served = str(json.loads(raw).get("model") or "") or None
            self._probed = True

    def _payload(self, messages, sampling, seed, schema, stop) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": float(sampling.get("temperature", 0.7)),
            "top_p": float(sampling.get("top_p", 0.95)),
            "max_tokens": int(sampling.get("max_tokens", 256)),
            "seed": int(seed),
        }
        if stop:
            body["stop"] = stop
        for k in self.omit:  # parameters the model refuses
            body.pop(k, None)
        if "max_tokens" in body and self.max_tokens_field != "max_tokens":
            body[self.max_tokens_field] = body.pop("max_tokens")
        body |= self.extra_body
        if schema is not None and not self.spec.get("integer_enums", True):
            schema = without_integer_enums(schema)
        if schema is not None and self.json_mode != "none":
            if self.json_mode == "json_schema":
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": schema, "strict": False},
                }
            elif self.json_mode == "json_object_schema":
                body["response_format"] = {"type": "json_object", "schema": schema}
            else:
                body["response_format"] = {"type": "json_object"}
        return body

    def _complete(self, messages, *, sampling, seed, schema, stop) -> Completion:
        import httpx

        if self.probe_first:
            self.probe()
        if schema is not None and self.json_mode in ("json_object", "none"):
            # JSON mode without a schema: the prompt must say "json" and show the wanted shape.
            hint = "Answer with one JSON object that satisfies this JSON schema:\n" + json.dumps(schema)
            messages = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + "\n\n" + hint}]
        body = self._payload(messages, sampling, seed, schema, stop)
        url = f"{self.base_url}/chat/completions"
        last_err = "no attempt"
        retry_after: float | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                with self._lock:
                    self.stats.retries += 1
                # The server's Retry-After when it gave one (capped), else exponential back-off
                # with full jitter (concurrent clients do not retry in step).
                delay = retry_after if retry_after is not None else random.uniform(0, self.backoff * 2 ** (attempt - 1))
                time.sleep(delay)
            retry_after = None
            t0 = time.perf_counter()
            try:
                with self._sem:
                    r, raw = self._post(url, body, t0 + self.deadline)
            except (httpx.TimeoutException, httpx.TransportError, DeadlineExceeded) as e:
                last_err = str(e) if isinstance(e, DeadlineExceeded) else type(e).__name__
                log.warning("%s: request failed (%s), attempt %d", self.name, last_err, attempt + 1)
                continue
            dt = time.perf_counter() - t0
            if r.is_redirect:
                raise self._redirect_error(f"backend '{self.name}'", url, r)
            if r.status_code in self.RETRY_STATUS:
                last_err = f"HTTP {r.status_code}"
                retry_after = self._retry_after(r.headers.get("Retry-After"))
                log.warning("%s: HTTP %d, attempt %d", self.name, r.status_code, attempt + 1)
                continue
            if r.status_code >= 400:
                with self._lock:
                    self.stats.errors += 1
                body_text = raw[:300].decode("utf-8", "replace")
                raise BackendError(f"backend '{self.name}': HTTP {r.status_code} from {redact(url)}: {redact(body_text)}")
            try:
                out = json.loads(raw)
                choice = out["choices"][0]
                text, refused = message_text(choice["message"])
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                last_err = "malformed response body"
                log.warning("%s: malformed response, attempt %d", self.name, attempt + 1)
                continue
            usage = out.get("usage") or {}
            return Completion(
                text=text,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                seconds=dt,
                finish_reason="refusal" if refused else (choice.get("finish_reason") or "stop"),
                served_model=str(out.get("model") or ""),
                system_fingerprint=str(out.get("system_fingerprint") or ""),
                created=time.time(),
            )
        with self._lock:
            self.stats.errors += 1
        raise BackendError(f"backend '{self.name}': giving up after {self.max_retries + 1} attempts ({last_err}) at {redact(url)}")

    def _redirect_error(self, where: str, url: str, r) -> BackendError:
        """A redirect is not followed (a redirected POST can lose its body or its credentials):
        counted as an error, and named with the address to put in the config."""
        with self._lock:
            self.stats.errors += 1
        return BackendError(
            f"{where}: {redact(url)} answered with a redirect (HTTP {r.status_code}) to "
            f"{redact(r.headers.get('Location', '?'))}; set config key backends.{self.name}.base_url to the final "
            "address (redirects are not followed: a redirected POST can lose its body or its credentials)"
        )

    def _post(self, url: str, body: dict[str, Any], deadline: float):
        """POST and read the whole answer by ``deadline`` (each read is also bounded by timeout_s)."""
        chunks = []
        with self._client.stream("POST", url, json=body) as r:
            for chunk in r.iter_bytes():
                chunks.append(chunk)
                if time.perf_counter() > deadline:
                    raise DeadlineExceeded(f"no complete answer within deadline_s={self.deadline:g}")
        return r, b"".join(chunks)

    @classmethod
    def _retry_after(cls, value: str | None) -> float | None:
        """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped."""
        if not value:
            return None
        try:
            secs = float(value)
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                secs = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                return None
        return min(max(secs, 0.0), cls.MAX_RETRY_AFTER_S)

    def close(self) -> None:
        self._client.close()


def without_integer_enums(schema: Any) -> Any:
    """The schema with every integer enum sent as its minimum and maximum instead (for endpoints
    that refuse integer enums); answers are still validated against the original."""
    if isinstance(schema, list):
        return [without_integer_enums(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: without_integer_enums(v) for k, v in schema.items()}
    enum = schema.get("enum")
    if schema.get("type") == "integer" and isinstance(enum, list) and enum and all(isinstance(x, int) for x in enum):
        del out["enum"]
        out["minimum"], out["maximum"] = min(enum), max(enum)
    return out


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
