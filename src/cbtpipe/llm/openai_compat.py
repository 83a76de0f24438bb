"""Any OpenAI-compatible chat endpoint over HTTP (backend type ``openai``): DeepSeek, Gemini's
compatible endpoint, vLLM, llama.cpp's server, Ollama. Bounded retries with full-jitter back-off
or the server's Retry-After on 408/409/425/429/499/5xx and timeouts, a read timeout and a deadline
per attempt, a concurrency limit shared by a process's clients, a probe that fails fast on what no
retry can mend, and the structured-output dialect of each endpoint (``json_mode``)."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from typing import Any

from ..workflow import PipelineError, backend_spec, env_secret, redact
from .base import Backend, BackendError, Completion

log = logging.getLogger("cbtpipe")


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
        self._fingerprint = ""  # and the system fingerprint it gave with it
        self._probe_lock = threading.Lock()
        self._sem = self._semaphores.setdefault(f"{name}:{conc}", threading.BoundedSemaphore(conc))
        import httpx2

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
        self._client = httpx2.Client(timeout=self.timeout, headers=headers)

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

    def served_identity(self) -> dict[str, str]:
        served = self.served_model()
        if not served:
            return {}
        return {"served_model": served} | ({"system_fingerprint": self._fingerprint} if self._fingerprint else {})

    def learn_served(self, c: Completion) -> None:
        if self.probe_first and c.served_model and self._served is None:
            self._served = c.served_model
            self._fingerprint = c.system_fingerprint

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
        import httpx2

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
            except httpx2.ConnectError as e:
                raise BackendError(
                    f"{where}: cannot connect to {redact(self.base_url)} ({type(e).__name__}: {redact(str(e))[:200]}); "
                    f"no network on this node, or a wrong config key backends.{self.name}.base_url"
                ) from None
            except (httpx2.TimeoutException, httpx2.TransportError, DeadlineExceeded) as e:
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
                    answer = json.loads(raw)
                    self._served = str(answer.get("model") or "") or None
                    self._fingerprint = str(answer.get("system_fingerprint") or "")
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
        import httpx2

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
            except (httpx2.TimeoutException, httpx2.TransportError, DeadlineExceeded) as e:
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
