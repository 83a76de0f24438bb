"""Number formats of the report: None as an em dash, never nan; p-values; intervals; rates."""

from __future__ import annotations

from typing import Any

from ..stats import finite


def fmt(x: Any, nd: int = 2) -> str:
    """Format a number for a report; None shows as an em dash (never 'nan')."""
    v = finite(x)
    if v is None:
        return "—"
    if abs(v) < 10 ** (-nd) and v != 0:
        return f"{v:.1e}"
    return f"{v:.{nd}f}"


def fmt_p(p: Any) -> str:
    v = finite(p)
    if v is None:
        return "—"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _ci(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci and None not in ci else "—"


def _notes(x: dict[str, Any]) -> str:
    return "; ".join(x["notes"]) or ""


def _paired_cells(c: dict[str, Any]) -> list[Any]:
    """A paired comparison's cells: pairs, the two means (b, then a), the difference, its t
    interval and p."""
    return [c["n"], fmt(c["mean_b"]), fmt(c["mean_a"]), fmt(c["mean_diff"]), f"[{fmt(c['ci_t'][0])}, {fmt(c['ci_t'][1])}]", fmt_p(c["p_t"])]


def _shortening(t: dict[str, Any]) -> str:
    sh = t.get("shortening")
    if not sh:
        return "—"
    return f"{sh['sessions_windowed']} of {sh['sessions']} sessions in windows ({sh['examples']} examples), {sh['windows_cut']} cut"


def _utc(t: float | None) -> str:
    import datetime

    return "—" if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def _rate(c: dict[str, Any]) -> str:
    """A cluster-bootstrap rate as "k/n (x%) [lo, hi]"."""
    if not c or c.get("estimate") is None:
        return "—"
    lo, hi = c["ci"]
    ci = f" [{100 * lo:.0f}%, {100 * hi:.0f}%]" if lo is not None else ""
    return f"{fmt(c['num'], 0)}/{fmt(c['den'], 0)} ({100 * c['estimate']:.0f}%){ci}"


def _mean_ci(c: dict[str, Any]) -> str:
    if not c or c.get("estimate") is None:
        return "—"
    lo, hi = c["ci"]
    return f"{fmt(c['estimate'], 1)}" + (f" [{fmt(lo, 1)}, {fmt(hi, 1)}]" if lo is not None else "") + f" (n={fmt(c['den'], 0)})"
