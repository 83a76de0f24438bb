"""The Markdown report: the template laid out over the report's views."""

from __future__ import annotations

import re
from typing import Any

from ..workflow import read_json
from .numbers import fmt, fmt_p
from .page import link_rows
from .views import report_view
from .views_primary import PUBLISHED
from .views_run import plan_view
from .views_safety import safety_view
from .views_simulator import simulator_view


def build_markdown(ctx: dict[str, Any]) -> str:
    """The Markdown report: templates/report.md.j2 laid out over report_view(ctx)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cbtpipe", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML; markdown-it-py escapes raw HTML when it renders the page
    )
    env.filters["fmt"] = fmt
    env.filters["fmt_p"] = fmt_p
    ctx = {"safety": {}} | ctx
    text = env.get_template("report.md.j2").render(
        **ctx,
        view=report_view(ctx),
        sview=safety_view(ctx["safety"]),
        simview=simulator_view(ctx["safety"]),
        plan_rows=plan_view(ctx),
        published=PUBLISHED,
    )
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return link_rows(text, list(ctx.get("config", {}).get("models", {})))


def load_many(paths: list[str]) -> list[dict[str, Any]]:
    return [read_json(p) for p in paths]
