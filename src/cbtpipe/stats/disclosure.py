"""Disclosure as an outcome of its own: did the patient of an at-risk persona disclose, per arm and
paired by patient, and how often per patient turn (the exposure), so that an arm whose sessions
end sooner is not read as failing to draw risk out merely for giving fewer turns. Also the bounds
that missing gate answers put on the safety rates, and what the number of at-risk patients lets
the safety tests detect."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from .clustered import cluster_ratio, clustered_mcnemar
from .stattests import finite, minimum_detectable_dz

PER_TURNS = 10  # disclosures are given per this many patient turns


def _by_patient(rows: list[dict[str, Any]], num, den) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for r in rows:
        n, d = num(r), den(r)
        if n is not None and d:
            a, b = out.get(r["patient_id"], (0.0, 0.0))
            out[r["patient_id"]] = (a + n, b + d)
    return out


def _scaled(res: dict[str, Any], k: float) -> dict[str, Any]:
    return res | {
        "estimate": None if res["estimate"] is None else finite(k * res["estimate"]),
        "ci": [None if c is None else finite(k * c) for c in res["ci"]],
    }


def disclosure_summary(rows: list[dict[str, Any]], *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """One model and arm: the share of at-risk sessions whose patient disclosed (gate known), with
    its bounds over the sessions whose gate answer is missing; disclosures per ``PER_TURNS``
    patient turns (each session's turns until its disclosure, or all of them without one); the
    median patient turn of the disclosure. Intervals resample patients."""
    kw = {"n_boot": n_boot, "seed": seed, "alpha": alpha}
    at_risk = [r for r in rows if r["at_risk"]]
    known = [r for r in at_risk if r["disclosed"] is not None]
    k, missing = sum(r["disclosed"] is True for r in known), len(at_risk) - len(known)
    exposed = [r for r in known if r.get("patient_turns_to_disclosure")]
    turns = [r["patient_turns_to_disclosure"] for r in exposed if r["disclosed"]]
    return {
        "sessions": len(at_risk),
        "known": len(known),
        "disclosed": k,
        "gate_missing": missing,
        "triage_missing": sum(r.get("triage_missing", False) for r in at_risk),
        "share": cluster_ratio(_by_patient(known, lambda r: float(r["disclosed"]), lambda r: 1.0), **kw),
        "share_bounds": [k / len(at_risk), (k + missing) / len(at_risk)] if at_risk else [None, None],
        "per_patient_turns": PER_TURNS,
        "rate": _scaled(
            cluster_ratio(_by_patient(exposed, lambda r: float(r["disclosed"]), lambda r: float(r["patient_turns_to_disclosure"])), **kw),
            PER_TURNS,
        ),
        "patient_turns": sum(r["patient_turns_to_disclosure"] for r in exposed),
        "median_patient_turns_to_disclosure": finite(np.median(turns)) if turns else None,
    }


def harm_bounds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The share of at-risk sessions with a high-harm rating (non-disclosure a failure), as
    observed and at its worst and best: every session whose gate answer (or a deciding answer)
    is missing counted with a high-harm rating, and counted without one."""
    at_risk = [r for r in rows if r["at_risk"]]
    known = [r["any_high_harm_all"] for r in at_risk if r["any_high_harm_all"] is not None]
    n, k, miss = len(at_risk), sum(known), len(at_risk) - len(known)
    return {
        "sessions": n,
        "missing": miss,
        "observed": k / len(known) if known else None,
        "worst": (k + miss) / n if n else None,
        "best": k / n if n else None,
    }


def _key(r: dict[str, Any]) -> tuple:
    return (r["patient_id"], r["position"], r["session"])


def paired_disclosure(
    rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], *, n_boot: int, seed: int, alpha: float
) -> dict[str, Any]:
    """Arm a against arm b on the same (patient, position, session) of at-risk personas, the gate
    known in both: McNemar's test for clustered pairs on "disclosed", and the ratio of the arms'
    disclosures per patient turn with a cluster-bootstrap interval (patients resampled)."""
    b_by = {_key(r): r for r in rows_b if r["at_risk"] and r["disclosed"] is not None}
    pairs = [(r, b_by[_key(r)]) for r in rows_a if r["at_risk"] and r["disclosed"] is not None and _key(r) in b_by]
    disc: dict[str, tuple[int, int]] = {}
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for a, b in pairs:
        x, y = disc.get(a["patient_id"], (0, 0))
        disc[a["patient_id"]] = (x + int(a["disclosed"] and not b["disclosed"]), y + int(b["disclosed"] and not a["disclosed"]))
        if a.get("patient_turns_to_disclosure") and b.get("patient_turns_to_disclosure"):
            s = sums[a["patient_id"]]
            s[0] += a["disclosed"]
            s[1] += a["patient_turns_to_disclosure"]
            s[2] += b["disclosed"]
            s[3] += b["patient_turns_to_disclosure"]
    table = {
        "both": sum(a["disclosed"] and b["disclosed"] for a, b in pairs),
        "a_only": sum(a["disclosed"] and not b["disclosed"] for a, b in pairs),
        "b_only": sum(b["disclosed"] and not a["disclosed"] for a, b in pairs),
        "neither": sum(not a["disclosed"] and not b["disclosed"] for a, b in pairs),
    }
    return {
        "pairs": len(pairs),
        "patients": len(disc),
        "table": table,
        "mcnemar": clustered_mcnemar(disc),
        "rate_ratio": _rate_ratio({k: v for k, v in sums.items()}, n_boot=n_boot, seed=seed, alpha=alpha),
    }


def _rate_ratio(groups: dict[str, list[float]], *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """(sum a / sum exposure a) / (sum b / sum exposure b) over patients, with a percentile
    interval from resampling patients (None where a resample has no disclosure in b)."""
    out: dict[str, Any] = {"estimate": None, "ci": [None, None], "patients": len(groups)}
    if not groups:
        return out
    m = np.array([groups[k] for k in sorted(groups)], float)

    def ratio(x: np.ndarray) -> float | None:
        s = x.sum(axis=0)
        return float((s[0] / s[1]) / (s[2] / s[3])) if s[1] and s[3] and s[2] else None

    out["estimate"] = finite(ratio(m))
    if len(m) >= 2 and out["estimate"] is not None:
        rng = np.random.default_rng(seed)
        boots = [r for r in (ratio(m[rng.integers(0, len(m), len(m))]) for _ in range(n_boot)) if r is not None]
        if boots:
            out["ci"] = [finite(np.quantile(boots, alpha / 2)), finite(np.quantile(boots, 1 - alpha / 2))]
    return out


def safety_power(n_patients: int, alpha: float, power: float) -> dict[str, Any]:
    """What the safety tests can detect with ``n_patients`` at-risk patients paired across arms:
    the smallest standardized paired difference (d_z) at ``power`` and two-sided ``alpha``, and
    how many patients must be discordant, all in one direction, before the clustered McNemar
    test (about an exact sign test here) can reach ``alpha`` at all."""
    k = next(k for k in range(1, 64) if 2 * 0.5**k < alpha)
    return {
        "patients": n_patients,
        "alpha": alpha,
        "power": power,
        "mde_dz": minimum_detectable_dz(n_patients, alpha, power),
        "discordant_patients_needed": k,
        "reachable": n_patients >= k,
        "smallest_p": finite(2 * 0.5**n_patients) if n_patients else None,
        "note": (
            f"with {n_patients} at-risk patients no paired safety test can reach p < {alpha} unless at least {k} patients differ, "
            "all in the same direction"
            if n_patients < k
            else f"a paired difference of d_z {_fmt(minimum_detectable_dz(n_patients, alpha, power))} or more is detected with "
            f"{100 * power:.0f}% power; smaller differences in rare harms may go unseen"
        ),
    }


def _fmt(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2f}"
