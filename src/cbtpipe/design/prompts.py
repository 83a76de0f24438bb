"""Prompt templates: parsed at start-up, rendered in Jinja's sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined

from ..workflow import PipelineError


def render_template(path: str | Path, **kw: Any) -> str:
    """Render a user's prompt template in Jinja's sandbox: a template can format the values it is
    given but cannot reach Python (attributes such as ``__class__``, ``__globals__``, unsafe
    methods are refused). Every failure names the file and, where Jinja knows it, the line."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"prompt template {p} does not exist")
    env = ImmutableSandboxedEnvironment(loader=FileSystemLoader(str(p.parent)), undefined=StrictUndefined, keep_trailing_newline=True)
    try:
        return env.get_template(p.name).render(**kw).strip()
    except SecurityError as e:
        raise PipelineError(f"prompt template {p}: refused by the template sandbox ({e})") from None
    except jinja2.TemplateSyntaxError as e:
        raise PipelineError(f"prompt template {e.filename or p}, line {e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise PipelineError(f"prompt template {p}: {e} (values it may use: {', '.join(sorted(kw))})") from None


def check_template(path: str | Path, key: str) -> None:
    """Parse a prompt template at start-up so that a syntax error stops the run before any job,
    naming the config key, the file and the line."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    p = Path(path)
    try:
        ImmutableSandboxedEnvironment().parse(p.read_text(encoding="utf-8"), filename=str(p))
    except UnicodeDecodeError:
        raise PipelineError(f"config key {key}: template {p} is not valid UTF-8") from None
    except jinja2.TemplateSyntaxError as e:
        raise PipelineError(f"config key {key}: template {p}, line {e.lineno}: {e.message}") from None
