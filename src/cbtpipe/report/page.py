"""The report as a page: table rows linked to the results browser, and one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ..workflow import atomic_write_text

# Table columns whose value names a model (or "pooled"), and columns that narrow the selection.
MODEL_COLUMNS = ("model", "contrast", "our model")


FILTER_COLUMNS = {"position": "position", "risk level": "risk", "patient": "patient"}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def link_rows(markdown: str, models: list[str]) -> str:
    """Every table row that names a model (or the pooled models) links its model cell to the
    row's sessions in the results browser, narrowed by the row's position, risk level or
    patient where the table has such a column."""
    from .browser import browser_link

    lines = markdown.split("\n")
    header: list[str] | None = None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = [h.lower() for h in _cells(line)]
            continue
        if set(line) <= set("|-: "):
            continue  # the separator
        cells = _cells(line)
        col = next((header.index(c) for c in MODEL_COLUMNS if c in header), None)
        if col is None or col >= len(cells) or len(cells) != len(header):
            continue
        value = cells[col]
        base = value.split(" (")[0].strip()
        if base not in models and base != "pooled":
            continue
        filters = {}
        for name, key in FILTER_COLUMNS.items():
            if name in header and cells[header.index(name)] not in ("", "—", "all"):
                filters[key] = cells[header.index(name)]
        cells[col] = f"[{value}]({browser_link(base if base in models else None, **filters)})"
        lines[i] = "| " + " | ".join(cells) + " |"
    return "\n".join(lines)


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    ".table-wrap{overflow-x:auto;max-width:100%;margin:1em 0}"
    "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em}"
    "th{background:#f3f3f3}img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em}"
    "blockquote{background:#fff4e5;border-left:4px solid #f0a020;margin:1em 0;padding:.5em 1em}"
    "figure{margin:1em 0}figcaption{color:#555;font-size:.85em}"
)


def md_to_html(text: str, base: Path, title: str) -> str:
    """The Markdown report as one self-contained page: rendered by markdown-it-py (CommonMark and
    tables, raw HTML escaped), figures inlined as data URIs, wide tables scrolling inside their own
    box instead of running off the page."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)

    def figure(m: re.Match) -> str:
        src, alt = html.unescape(m.group(1)), m.group(2)
        img = base / src
        data = base64.b64encode(img.read_bytes()).decode() if img.is_file() else ""
        return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}" /><figcaption>{alt}</figcaption></figure>'

    body = re.sub(r'<p><img src="([^"]+)" alt="([^"]*)" /></p>', figure, body)
    body = body.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n'
        + body
        + "</body></html>\n"
    )


def write_report(md_path: str | Path, html_path: str | Path, markdown: str) -> None:
    atomic_write_text(md_path, markdown)
    atomic_write_text(html_path, md_to_html(markdown, Path(md_path).parent, "CBT fine-tuning report"))
