"""Rubrics (the CTRS, the modified CTRS, any scale a user brings): loading and validation.

A light module: scores, statistics, the report and the config check read rubrics without
importing the LLM client code."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from ..workflow import PipelineError, hash_obj, yamlfile

_line = yamlfile.line


# Columns of scores_long.csv and session_totals.csv that are the pipeline's own: the totals table
# gives each rubric item a column named by its id, so an item may not take one of these names.
# What the score table carries of each session's rollout (its position in the course and its length).
SESSION_COLUMNS = (
    "position",
    "session",
    "turns",
    "therapist_turns",
    "therapist_words",
    "words_per_therapist_turn",
    "therapist_tokens",
    "turns_cut_at_max_tokens",
    "context_truncations",
    "context_tokens_max",
    "stop_reason",
    "closing_prompted",
)

RESERVED_COLUMNS = frozenset(
    {
        "session_id",
        "patient_id",
        "model",
        "arm",
        "quantization",
        "samples",
        "valid_samples",
        "total",
        "judge",
        "judge_sample",
        "valid",
        "item",
        "score",
        "rater",
        "total_pct",
        "risk_level",
    }
    | set(SESSION_COLUMNS)
)


ITEM_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def load_rubric(path: str | Path) -> dict[str, Any]:
    """Load and validate a rubric file; errors name the file and line."""
    p, text, root, data = yamlfile.load(path, "judge.rubric")
    if not isinstance(data, dict) or root is None:
        raise PipelineError(f"{p}, line 1: a rubric is a mapping with name, scale and items")
    nodes = {k.value: v for k, v in root.value}
    for key in ("name", "scale", "items"):
        if key not in data:
            raise PipelineError(f"{p}, line 1: rubric key '{key}' is missing")
    scale = data["scale"]
    if not isinstance(scale, dict) or not {"min", "max"} <= scale.keys():
        raise PipelineError(f"{p}, line {_line(nodes['scale'])}: scale needs min and max")
    if not (isinstance(scale["min"], int) and isinstance(scale["max"], int)) or scale["min"] >= scale["max"]:
        raise PipelineError(f"{p}, line {_line(nodes['scale'])}: scale range {scale['min']}..{scale['max']} is inverted or not integer")
    scale.setdefault("labels", {})
    items = data["items"]
    if not isinstance(items, list) or not items:
        raise PipelineError(f"{p}, line {_line(nodes['items'])}: items must be a non-empty list")
    seen: dict[str, int] = {}
    for item, node in zip(items, nodes["items"].value, strict=True):
        line = _line(node)
        if not isinstance(item, dict) or "id" not in item:
            raise PipelineError(f"{p}, line {line}: item without an id")
        iid = str(item["id"])
        if iid in RESERVED_COLUMNS:
            raise PipelineError(
                f"{p}, line {line}: item id '{iid}' is a column name of the pipeline's own score tables "
                f"({', '.join(sorted(RESERVED_COLUMNS))}); rename the item"
            )
        if not ITEM_ID.fullmatch(iid):
            raise PipelineError(f"{p}, line {line}: item id '{iid}' must be letters, digits, _ or - (it names a column and a JSON key)")
        if iid in seen:
            raise PipelineError(f"{p}, line {line}: duplicate item id '{iid}' (first at line {seen[iid]})")
        seen[iid] = line
        item["id"] = iid
        item.setdefault("name", iid)
        item.setdefault("description", "")
        item.setdefault("modification", None)
        lo, hi = item.get("min", scale["min"]), item.get("max", scale["max"])
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo >= hi:
            raise PipelineError(f"{p}, line {line}: item '{iid}' has an inverted or non-integer range {lo}..{hi}")
        item["min"], item["max"] = lo, hi
        anchors = item.get("anchors")
        if not isinstance(anchors, dict) or not anchors:
            raise PipelineError(f"{p}, line {line}: item '{iid}' has no anchors")
        for k in anchors:
            if not isinstance(k, int) or not lo <= k <= hi:
                raise PipelineError(f"{p}, line {line}: item '{iid}' has an anchor {k!r} outside {lo}..{hi}")
    data["max_total"] = sum(i["max"] for i in items)
    data["min_total"] = sum(i["min"] for i in items)
    data["subtotals"] = _subtotals(p, data, nodes, seen)
    data.setdefault("competence_threshold", None)
    data.setdefault("description", "")
    data["sha256"] = hash_obj(text, 64)
    return data


def _subtotals(p: Path, data: dict[str, Any], nodes: dict[str, Any], seen: dict[str, int]) -> dict[str, Any]:
    """Optional ``subtotals``: named item subsets reported beside the total (sensitivity analyses)."""
    subs = data.get("subtotals") or {}
    line = _line(nodes["subtotals"]) if "subtotals" in nodes else 1
    if not isinstance(subs, dict):
        raise PipelineError(f"{p}, line {line}: subtotals must map a subtotal id to its name and items")
    maxima = {i["id"]: i["max"] for i in data["items"]}
    out = {}
    for sid, sub in subs.items():
        if not ITEM_ID.fullmatch(str(sid)) or str(sid) in seen or str(sid) in RESERVED_COLUMNS:
            raise PipelineError(f"{p}, line {line}: subtotal id {sid!r} must be a new column name (letters, digits, _ or -)")
        its = sub.get("items") if isinstance(sub, dict) else None
        if not isinstance(its, list) or not its or len(set(its)) != len(its):
            raise PipelineError(f"{p}, line {line}: subtotal '{sid}' needs a list of distinct item ids")
        unknown = [i for i in its if i not in maxima]
        if unknown:
            raise PipelineError(f"{p}, line {line}: subtotal '{sid}' names unknown item(s) {', '.join(map(str, unknown))}")
        out[str(sid)] = {"name": sub.get("name", sid), "items": its, "note": sub.get("note", ""), "max": sum(maxima[i] for i in its)}
    return out


def load_human_ratings(path: str | Path, rubric: dict[str, Any]) -> list[dict[str, Any]]:
    """CSV with columns session_id, item, score (one row per rated item); errors name the line."""
    p = Path(path)
    ids = {i["id"]: i for i in rubric["items"]}
    try:
        text = p.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not part of the header
    except UnicodeDecodeError as e:
        raise PipelineError(f"{p}: not valid UTF-8") from e
    reader = csv.DictReader(text.splitlines())  # splitlines also ends CRLF lines cleanly
    need = {"session_id", "item", "score"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise PipelineError(f"{p}, line 1: header must contain {', '.join(sorted(need))}")
    names = [f.strip() for f in reader.fieldnames]
    dup = sorted({f for f in names if names.count(f) > 1})
    if dup:
        raise PipelineError(f"{p}, line 1: column {', '.join(dup)} appears more than once (which one holds the value?)")
    out = []
    for n, r in enumerate(reader, 2):
        if r["item"] not in ids:
            raise PipelineError(f"{p}, line {n}: unknown rubric item '{r['item']}'")
        try:
            s = float(r["score"])
        except (TypeError, ValueError) as e:
            raise PipelineError(f"{p}, line {n}: score {r['score']!r} is not a number") from e
        it = ids[r["item"]]
        if not it["min"] <= s <= it["max"]:
            raise PipelineError(f"{p}, line {n}: score {s} outside {it['min']}..{it['max']} for item '{r['item']}'")
        out.append({"session_id": r["session_id"], "item": r["item"], "score": s, "rater": r.get("rater", "human")})
    return out
