"""Every p-value a rendered report prints must be a test of its register (the table "Every test,
by family"): a raw p one of the register's p-values, an adjusted one one of its adjusted values."""

from __future__ import annotations

import re

REGISTER_HEADER = "p adjusted (within family)"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    out, lines, i = [], md.split("\n"), 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and set(lines[i + 1].strip()) <= set("|-: "):
            header, rows, i = _cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            out.append((header, rows))
        else:
            i += 1
    return out


def _is_p(header: str) -> bool:
    return bool(re.match(r"p\b|p adj", header.strip().lower()))


def _is_adjusted(header: str) -> bool:
    h = header.lower()
    return "adj" in h or "holm" in h


def unregistered_p_values(md: str) -> list[str]:
    """The p-values printed outside the register that are not in it: "table header: value" or
    "text: value"."""
    tables = _tables(md)
    reg = [(h, rows) for h, rows in tables if REGISTER_HEADER in h]
    assert len(reg) == 1, "the report has no register of tests"
    h, rows = reg[0]
    raw = {r[h.index("p")] for r in rows}
    adjusted = {r[h.index(REGISTER_HEADER)] for r in rows}
    bad = []
    for header, rows in tables:
        if REGISTER_HEADER in header:
            continue
        for j, col in enumerate(header):
            if not _is_p(col):
                continue
            known = adjusted if _is_adjusted(col) else raw
            bad += [f"{col}: {r[j]}" for r in rows if j < len(r) and r[j] not in ("—", "") and r[j] not in known]
    text = "\n".join(line for line in md.split("\n") if not line.startswith("|"))
    found = [v.rstrip(".") for v in re.findall(r"\bp = ([<>]?\s?[0-9][0-9.e-]*)", text)]
    bad += [f"text: {v}" for v in found if v not in raw]
    return bad
