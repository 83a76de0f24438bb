"""Missing judgements: counted per model and arm, and the CBT-minus-instruct difference under
complete case beside bounds that fill a missing total with the scale's minimum or maximum."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .pairs import design_unit, paired_arrays


def missing_answers(long: list[dict[str, str]], totals: list[dict[str, str]]) -> dict[str, Any]:
    """How many judge samples were valid (a sample that failed the schema is missing, never 0)."""
    n_samples = len({(r["session_id"], r.get("judge"), r["judge_sample"]) for r in long})
    n_valid = len({(r["session_id"], r.get("judge"), r["judge_sample"]) for r in long if r["valid"] == "1"})
    return {
        "samples": n_samples,
        "valid_samples": n_valid,
        "invalid_samples": n_samples - n_valid,
        "valid_share": n_valid / n_samples if n_samples else None,
        "sessions": len(totals),
        "sessions_without_total": sum(1 for r in totals if r["total"] == ""),
    }


def missing_by_group(long: list[dict[str, str]], totals: list[dict[str, str]], models: list[str], arms: list[str]) -> list[dict[str, Any]]:
    """Missing judge samples and sessions without a total, per model and arm: missingness that
    differs between arms can bias a complete-case comparison."""
    out = []
    for m in models:
        for a in arms:
            rows = [r for r in totals if r["model"] == m and r["arm"] == a]
            sids = {r["session_id"] for r in rows}
            samples = {(r["session_id"], r.get("judge"), r["judge_sample"]) for r in long if r["session_id"] in sids}
            valid = {(r["session_id"], r.get("judge"), r["judge_sample"]) for r in long if r["session_id"] in sids and r["valid"] == "1"}
            n_missing = sum(1 for r in rows if r["total"] == "")
            out.append(
                {
                    "model": m,
                    "arm": a,
                    "sessions": len(rows),
                    "sessions_without_total": n_missing,
                    "missing_share": n_missing / len(rows) if rows else None,
                    "samples": len(samples),
                    "invalid_samples": len(samples) - len(valid),
                }
            )
    return out


def missing_bounds(totals: list[dict[str, str]], models: list[str], lo: float, hi: float) -> dict[str, Any]:
    """Sensitivity of the CBT-minus-instruct difference in totals to sessions without a total:
    complete case against the bounds that fill a missing total with the scale's minimum or
    maximum, least favourable to CBT (its missing at ``lo``, instruct's at ``hi``) and most. Only a
    session missing in one arm is filled: one missing in both (not run, or unjudged in both) has
    nothing to compare and is left out."""
    arms = ("cbt", "instruct")
    by = {(r["model"], design_unit(r), r["arm"]): r for r in totals if r["arm"] in arms}

    def partner_has_total(r: dict[str, str]) -> bool:
        other = by.get((r["model"], design_unit(r), arms[1 - arms.index(r["arm"])]))
        return other is not None and other["total"] != ""

    def filled(cbt_fill: float, instruct_fill: float) -> list[dict[str, str]]:
        return [
            r if r["total"] != "" else dict(r, total=str(cbt_fill if r["arm"] == "cbt" else instruct_fill))
            for r in totals
            if r["arm"] in arms and (r["total"] != "" or partner_has_total(r))
        ]

    def diffs(rows: list[dict[str, str]]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        per_patient: dict[str, list[float]] = defaultdict(list)
        for m in models:
            pats, a, b = paired_arrays(rows, m)
            d = a - b
            out[m] = float(d.mean()) if d.size else None
            for p, x in zip(pats, d, strict=True):
                per_patient[p].append(float(x))
        pooled = [np.mean(v) for v in per_patient.values()]
        out["pooled"] = float(np.mean(pooled)) if pooled else None
        return out

    missing = [r for r in totals if r["total"] == "" and r["arm"] in arms]
    return {
        "sessions_without_total": len(missing),
        "missing_in_both_arms": sum(not partner_has_total(r) for r in missing if r["arm"] == "cbt"),
        "complete_case": diffs(totals),
        "worst_for_cbt": diffs(filled(lo, hi)),
        "best_for_cbt": diffs(filled(hi, lo)),
    }
