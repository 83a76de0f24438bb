"""The report's sections as data: one view function per section of templates/report.md.j2 (each in the
module of its part of the report), returning the formatted rows of its tables; the template only
lays them out."""

from __future__ import annotations

from typing import Any

from .views_ctrs import ctrs_view, missing_view, risk_view, seeds_view, sensitivity_view
from .views_primary import primary_view
from .views_run import agreement_view, run_view

# The report's sections, each a view function over the same context; the template reads their union.
SECTIONS = (primary_view, ctrs_view, risk_view, seeds_view, missing_view, sensitivity_view, agreement_view, run_view)


def report_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """The rows of the report's tables and its totals, formatted (the template only lays them
    out): the union of the section views."""
    view: dict[str, Any] = {}
    for section in SECTIONS:
        view |= section(ctx)
    return view
