"""Rubrics (the CTRS, the modified CTRS, any scale a user brings): loading and validation.

A light module: scores, statistics, the report and the config check read rubrics without
importing the LLM client code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..workflow import PipelineError, check_yaml, hash_obj, read_csv_rows, yaml_line, yamlfile

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
        "persona_set",
    }
    | set(SESSION_COLUMNS)
)


ITEM_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def load_rubric(path: str | Path) -> dict[str, Any]:
    """Load a rubric file, checked against its schema (schemas/rubric.schema.yaml) and for what a
    schema cannot say; errors name the file and line."""
    p, text, root, data = check_yaml(path, "judge.rubric", "rubric")
    nodes = {k.value: v for k, v in root.value}
    scale = data["scale"]
    if scale["min"] >= scale["max"]:
        raise PipelineError(f"{p}, line {_line(nodes['scale'])}: scale range {scale['min']}..{scale['max']} is inverted")
    scale.setdefault("labels", {})
    items = data["items"]
    seen: dict[str, int] = {}
    for item, node in zip(items, nodes["items"].value, strict=True):
        line = _line(node)
        iid = item["id"]
        if iid in RESERVED_COLUMNS:
            raise PipelineError(
                f"{p}, line {line}: item id '{iid}' is a column name of the pipeline's own score tables "
                f"({', '.join(sorted(RESERVED_COLUMNS))}); rename the item"
            )
        if iid in seen:
            raise PipelineError(f"{p}, line {line}: duplicate item id '{iid}' (first at line {seen[iid]})")
        seen[iid] = line
        item.setdefault("name", iid)
        item.setdefault("description", "")
        item.setdefault("modification", None)
        lo, hi = item.get("min", scale["min"]), item.get("max", scale["max"])
        if lo >= hi:
            raise PipelineError(f"{p}, line {line}: item '{iid}' has an inverted range {lo}..{hi}")
        item["min"], item["max"] = lo, hi
        for k in item["anchors"]:
            if not isinstance(k, int) or not lo <= k <= hi:
                raise PipelineError(f"{p}, line {line}: item '{iid}' has an anchor {k!r} outside {lo}..{hi}")
    data["max_total"] = sum(i["max"] for i in items)
    data["min_total"] = sum(i["min"] for i in items)
    data["subtotals"] = _subtotals(p, data, root, seen)
    data.setdefault("competence_threshold", None)
    data.setdefault("description", "")
    data["sha256"] = hash_obj(text, 64)
    return data


def _subtotals(p: Path, data: dict[str, Any], root, seen: dict[str, int]) -> dict[str, Any]:
    """Optional ``subtotals``: named item subsets reported beside the total (sensitivity analyses)."""
    subs = data.get("subtotals") or {}
    maxima = {i["id"]: i["max"] for i in data["items"]}
    out = {}
    for sid, sub in subs.items():
        line = yaml_line(root, ["subtotals", str(sid)])
        if not ITEM_ID.fullmatch(str(sid)) or str(sid) in seen or str(sid) in RESERVED_COLUMNS:
            raise PipelineError(f"{p}, line {line}: subtotal id {sid!r} must be a new column name (letters, digits, _ or -)")
        unknown = [i for i in sub["items"] if i not in maxima]
        if unknown:
            raise PipelineError(
                f"{p}, line {yaml_line(root, ['subtotals', str(sid), 'items'])}: subtotal '{sid}' names unknown item(s) {', '.join(map(str, unknown))}"
            )
        its = sub["items"]
        out[str(sid)] = {"name": sub.get("name", sid), "items": its, "note": sub.get("note", ""), "max": sum(maxima[i] for i in its)}
    return out


def _item_score(ids: dict[str, Any], item: str, score: float, where: str) -> float:
    """A rated item's score, checked against the rubric: a known item, a score inside its range."""
    if item not in ids:
        raise PipelineError(f"{where}: unknown rubric item {item!r}")
    it = ids[item]
    if not it["min"] <= score <= it["max"]:
        raise PipelineError(f"{where}: score {score} outside {it['min']}..{it['max']} for item {item!r}")
    return score


def load_human_ratings(path: str | Path, rubric: dict[str, Any]) -> list[dict[str, Any]]:
    """CSV with columns session_id, item, score (one row per rated item, schemas/human_ratings);
    errors name the line."""
    ids = {i["id"]: i for i in rubric["items"]}
    out = []
    for n, r in read_csv_rows(path, "human_ratings"):
        s = _item_score(ids, r["item"], r["score"], f"{path}, line {n}")
        out.append({"session_id": r["session_id"], "item": r["item"], "score": s, "rater": r.get("rater", "human")})
    return out
