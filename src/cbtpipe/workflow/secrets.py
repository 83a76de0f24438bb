"""Secrets stay out of configs, errors, logs and results.

API keys come from environment variables only (``backends.<name>.api_key_env``). A config value
that carries a credential (a URL with ``user:password@``, a ``?api_key=`` query, a string shaped
like a provider key) is refused at start-up, naming its config key and never its value; whatever
text the pipeline writes to a log or an error passes through :func:`redact`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import PipelineError

MASK = "***"

# Query or form parameters whose value is a credential.
_SECRET_PARAM = r"(?:api[_-]?key|apikey|key|token|access[_-]?token|auth|authorization|secret|client[_-]?secret|password|passwd|pwd|sig|signature|x-api-key)"
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@:]*:[^/\s@]*|[^/\s@:]{12,})@")
_QUERY_SECRET = re.compile(rf"(?P<name>[?&;]{_SECRET_PARAM}=)(?P<value>[^&#\s\"']+)", re.IGNORECASE)
_BEARER = re.compile(r"(?P<name>\b(?:Bearer|Basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE)
# Shapes of provider keys: OpenAI / Anthropic / DeepSeek (sk-...), Hugging Face (hf_...), Google
# (AIza...), AWS access keys, GitHub tokens, Slack tokens.
_KEY_SHAPES = re.compile(
    r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|AIza[0-9A-Za-z_-]{30,}|AKIA[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9-]{10,})"
)

_known: set[str] = set()


def remember(secret: str | None) -> None:
    """Mask this exact value wherever it shows up later (an API key read from the environment)."""
    if secret and len(secret) >= 4:
        _known.add(secret)


def redact(text: Any) -> str:
    """The text with every credential it carries masked."""
    s = str(text)
    for k in sorted(_known, key=len, reverse=True):
        s = s.replace(k, MASK)
    s = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", s)
    s = _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", s)
    s = _BEARER.sub(lambda m: f"{m['name']}{MASK}", s)
    return _KEY_SHAPES.sub(MASK, s)


def _walk(x: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, x


def what_secret(value: str) -> str | None:
    """Why a string looks like it carries a credential, or None."""
    if _URL_USERINFO.search(value):
        return "a user name and password in a URL (user:password@)"
    if _QUERY_SECRET.search(value):
        return "a credential in a URL query (?key=..., ?token=...)"
    if _BEARER.search(value):
        return "an Authorization header value"
    if _KEY_SHAPES.search(value):
        return "a string shaped like an API key or access token"
    return None


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def config_secrets(cfg: dict[str, Any], skip: Iterable[str] = ()) -> list[str]:
    """Problems, one per config value that carries a credential (its key named, its value never)."""
    skip = set(skip)
    out = []
    for key, value in _walk(cfg, ""):
        if key in skip or not isinstance(value, str):
            continue
        if key.endswith(".api_key_env") and not ENV_NAME.match(value):
            out.append(
                f"config key {key} must name an environment variable (letters, digits, _); "
                "its value looks like something else, a key itself perhaps (not shown)"
            )
            continue
        why = what_secret(value)
        if why:
            out.append(f"config key {key} holds {why} (value not shown)")
    return out


def check_config_secrets(cfg: dict[str, Any]) -> None:

    found = config_secrets(cfg)
    if found:
        raise PipelineError(
            "; ".join(found) + ". Secrets never go in a config file (it is copied into results and logs): put the key in an "
            "environment variable and name that variable in backends.<name>.api_key_env"
        )


class RedactingFilter(logging.Filter):
    """A logging filter that masks credentials in every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def env_secret(name: str | None) -> str | None:
    """The value of an API-key variable, remembered for redaction."""
    if not name:
        return None
    v = os.environ.get(name)
    remember(v)
    return v
