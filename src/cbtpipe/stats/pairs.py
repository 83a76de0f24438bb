"""Sessions paired across the arms: by patient at matched course positions, a patient's mean in each
arm over the positions present with a total in both."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def as_float(x: str | None) -> float:
    return float(x) if x not in (None, "") else float("nan")


def design_unit(r: dict[str, str]) -> tuple[str, str, str]:
    """A session's place in the design, the same in every arm and model: (patient, position, repeat)."""
    return (r["patient_id"], str(r.get("position") or "1"), str(r.get("session") or "0"))


def matched_units(
    rows: list[dict[str, str]], key: str, a: tuple[str, str], b: tuple[str, str]
) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """Pairs of ``key`` values of the (model, arm) cells ``a`` and ``b`` at matched positions:
    patient -> [(value in a, value in b)] over the (position, session) units where both have a
    finite value; with the number of units present in either cell that have no partner."""
    va = {design_unit(r): as_float(r.get(key)) for r in rows if (r["model"], r["arm"]) == a}
    vb = {design_unit(r): as_float(r.get(key)) for r in rows if (r["model"], r["arm"]) == b}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    matched = 0
    for u in sorted(set(va) & set(vb)):
        if np.isfinite(va[u]) and np.isfinite(vb[u]):
            out[u[0]].append((va[u], vb[u]))
            matched += 1
    either = sum(bool(np.isfinite(v)) for v in va.values()) + sum(bool(np.isfinite(v)) for v in vb.values())
    return dict(out), either - 2 * matched


def paired_arrays(
    rows: list[dict[str, str]], model: str, key: str = "total", a: str = "cbt", b: str = "instruct", model_b: str | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each patient's mean of ``key`` in (model, a) and in (model_b or model, b), both over the
    same units (positions present in both): the paired samples of a tuned-vs-instruct test."""
    m, _ = matched_units(rows, key, (model, a), (model_b or model, b))
    pats = sorted(m)
    return pats, np.array([np.mean([x for x, _ in m[p]]) for p in pats]), np.array([np.mean([y for _, y in m[p]]) for p in pats])


def patient_means(rows: list[dict[str, str]], key: str) -> dict[tuple[str, str], dict[str, float]]:
    """(model, arm) -> patient -> mean of ``key`` over that patient's sessions (NaN if none valid)."""
    acc: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[(r["model"], r["arm"])][r["patient_id"]].append(as_float(r[key]))
    out: dict[tuple[str, str], dict[str, float]] = {}
    for k, pats in acc.items():
        out[k] = {}
        for p, vals in pats.items():
            good = [v for v in vals if np.isfinite(v)]
            out[k][p] = float(np.mean(good)) if good else float("nan")
    return out


def rows_where(totals, **match):
    return [r for r in totals if all(r.get(k) == v for k, v in match.items())]


def finite_mean(vals) -> float | None:
    v = np.array([as_float(x) for x in vals], float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def risk_stratum(r: dict[str, str]) -> str:
    """A session's risk stratum: "none", or "at_risk" for any risk level."""
    return "none" if (r.get("risk_level") or "none") == "none" else "at_risk"


POPULATIONS = {"no_risk": "patients without risk", "all": "all patients"}


def ctrs_population(totals: list[dict[str, str]], population: str) -> list[dict[str, str]]:
    """The sessions of the CTRS comparisons (config key report.ctrs_population): the patients
    without risk (the study's population had none at risk), or all."""
    if population not in POPULATIONS:
        raise ValueError(f"report.ctrs_population: {population!r} is not one of {', '.join(POPULATIONS)}")
    return list(totals) if population == "all" else [r for r in totals if risk_stratum(r) == "none"]


def persona_set(r: dict[str, str]) -> str:
    """A session's evaluation set (profiles.eval_set): "held_out" or "in_distribution"."""
    return r.get("persona_set") or "in_distribution"


def primary_persona_set(totals: list[dict[str, str]]) -> str:
    """The evaluation set the CTRS comparisons are made on: the held-out patients when the run has
    any (they differ from every training course), else the in-distribution ones."""
    return "held_out" if any(persona_set(r) == "held_out" for r in totals) else "in_distribution"
