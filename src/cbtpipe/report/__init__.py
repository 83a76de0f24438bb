"""The report: figures, the Markdown report and one self-contained HTML page.

A package of one module per concern: ``views`` (one function per section of the report, each
the formatted rows of its tables), ``figures``, ``provenance`` (packages, models, files,
benchmarks), ``page`` (links into the results browser, HTML) and ``fmt`` (number formats).
"""

from __future__ import annotations

import re
from typing import Any

from ..io import read_json
from .figures import figures, loss_curves, safety_forest
from .fmt import fmt, fmt_p
from .page import link_rows, md_to_html, write_report
from .provenance import benchmark_table, provenance
from .views import PUBLISHED, _primary_text, arm_timing, plan_view, report_view, safety_view

__all__ = [
    "PUBLISHED",
    "_primary_text",
    "arm_timing",
    "benchmark_table",
    "build_markdown",
    "figures",
    "fmt",
    "fmt_p",
    "link_rows",
    "load_many",
    "loss_curves",
    "md_to_html",
    "plan_view",
    "provenance",
    "report_view",
    "safety_forest",
    "safety_view",
    "write_report",
]


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
        **ctx, view=report_view(ctx), sview=safety_view(ctx["safety"]), plan_rows=plan_view(ctx), published=PUBLISHED
    )
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return link_rows(text, list(ctx.get("config", {}).get("models", {})))


def load_many(paths: list[str]) -> list[dict[str, Any]]:
    return [read_json(p) for p in paths]
