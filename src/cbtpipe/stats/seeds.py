"""Replication over training seeds (training.seeds). Each seed is its own model entry (its own
adapter, export and rollouts; the instruct arm is shared). The CTRS comparisons pool the seeds:
each design unit's CBT-tuned score is the mean over the seeds of the unit's scores, so that the
unit of inference stays the patient and a model's estimate is the mean of its per-seed estimates
(on the units every seed has); the per-seed estimates and their spread are given beside."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import numpy as np

from .ctrs import tuned_vs_instruct
from .pairs import as_float, design_unit

METHOD = (
    "per-seed estimates pooled: each session's CBT-tuned scores averaged over the training seeds (the instruct arm is "
    "the same model in every seed), then the paired comparison over patients as with one seed; the difference is the "
    "mean of the per-seed differences, its interval over patients (conditional on these seeds); the per-seed estimates "
    "and their spread are reported beside it"
)


def replicated(replicates: dict[str, dict[str, Any]] | None) -> bool:
    return bool(replicates) and any(r["model"] != e for e, r in replicates.items())


def pool_seeds(
    totals: list[dict[str, str]], long: list[dict[str, str]], replicates: dict[str, dict[str, Any]], score_keys: list[str]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The totals and long rows with every entry relabelled as its model: one instruct row per
    design unit (the first seed's), and one CBT-tuned row whose ``score_keys`` are the means over
    the seeds with a value (``seeds`` says how many); the long rows of the shared instruct arm once."""
    group = {e: r["model"] for e, r in replicates.items()}
    first = {r["model"]: e for e, r in sorted(replicates.items(), key=lambda kv: (kv[1]["model"], kv[0] != kv[1]["model"]))}
    cells: dict[tuple[str, str, tuple], list[dict[str, str]]] = defaultdict(list)
    for r in totals:
        g = group.get(r["model"], r["model"])
        if r["arm"] != "cbt" and first.get(g, r["model"]) != r["model"]:
            continue  # the shared instruct arm, once
        cells[(g, r["arm"], design_unit(r))].append(r)
    pooled = []
    for (g, arm, _), rs in cells.items():
        row = dict(rs[0], model=g)
        if arm == "cbt":
            for k in score_keys:
                vals = [as_float(r.get(k)) for r in rs]
                good = [v for v in vals if np.isfinite(v)]
                row[k] = "" if not good else round(float(np.mean(good)), 4)
            row["seeds"] = str(len(rs))
        pooled.append(row)
    firsts = set(first.values())
    out_long = [
        dict(r, model=group.get(r["model"], r["model"]))
        for r in long
        if r["arm"] == "cbt" or r["model"] in firsts or r["model"] not in group
    ]
    return pooled, out_long


def per_seed(totals: list[dict[str, str]], replicates: dict[str, dict[str, Any]], alpha: float, n_boot: int, seed: int) -> dict[str, Any]:
    """Each entry's CBT-versus-instruct comparison (its own sessions against the instruct arm), and
    per model the spread of the per-seed differences."""
    entries = sorted({r["model"] for r in totals})
    per_model, _ = tuned_vs_instruct(totals, entries, alpha, n_boot, seed)
    rows = [
        {"model": replicates.get(e, {"model": e})["model"], "seed": replicates.get(e, {}).get("seed"), "entry": e, **per_model[e]}
        for e in entries
    ]
    spread = {}
    for m in sorted({r["model"] for r in rows}):
        d = [r["mean_diff"] for r in rows if r["model"] == m and r["mean_diff"] is not None]
        spread[m] = {
            "seeds": sum(r["model"] == m for r in rows),
            "mean": statistics.fmean(d) if d else None,
            "sd": statistics.stdev(d) if len(d) > 1 else None,
            "min": min(d, default=None),
            "max": max(d, default=None),
        }
    return {"method": METHOD, "per_seed": rows, "spread": spread}


def seed_tests(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-seed comparisons of the register: one family per model (exploratory)."""
    return [
        {
            "family": f"exploratory: training seeds, {r['model']}",
            "test": f"total, CBT vs instruct, {r['model']}, seed {r['seed']}",
            "p": r["p_t"],
        }
        for r in (res.get("seeds") or {}).get("per_seed", [])
    ]
