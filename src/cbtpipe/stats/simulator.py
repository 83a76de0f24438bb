"""The simulated patient, checked rather than assumed. Published evaluations of LLM patient
simulators find that they write too much, vary too little and resolve their distress too quickly;
and a simulator that behaves differently against the two therapists confounds the comparison of
the arms. Per model and arm: the patient's words per turn, the turn of first disclosure (at-risk
sessions), whether the patient stayed consistent with its profile and whether its distress was
resolved by the end (the patient-check judge's answers); and per model, paired tests of a
difference between the arms, with the patient as the unit."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import numpy as np

from .clustered import clustered_mcnemar
from .stattests import adjust_within_families, paired_comparison

FAMILY = "exploratory (simulated patient)"


def _key(r: dict[str, Any]) -> tuple[str, str, int, int]:
    return (r["model"], r["patient_id"], int(r.get("position", 1)), int(r.get("session", 0)))


def session_measures(
    rollouts: list[dict[str, Any]], checks: list[dict[str, Any]], safety: list[dict[str, Any]], profiles: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per session of the main run: the patient's turns and words per turn, whether the
    patient is at risk and disclosed, the patient turn (1 = its first message) of the first
    disclosure, and the check's answers (None: missing or not checked)."""
    chk = {(c["model"], c["arm"], c["session_id"]): c for c in checks}
    saf = {(r["model"], r["arm"], r["session_id"]): r for r in safety}
    rows = []
    for s in rollouts:
        turns = [m for m in s["messages"] if m["role"] == "patient"]
        c = chk.get((s["model"], s["arm"], s["session_id"])) or {}
        r = saf.get((s["model"], s["arm"], s["session_id"])) or {}
        risk = ((profiles.get(s["patient_id"]) or {}).get("risk") or {}).get("level", "none")
        first = ((r.get("timing") or {}).get("disclosure_turn")) if r.get("disclosed") else None
        rows.append(
            {
                "model": s["model"],
                "arm": s["arm"],
                "session_id": s["session_id"],
                "patient_id": s["patient_id"],
                "position": s.get("position", 1),
                "session": s.get("session", 0),
                "patient_turns": len(turns),
                "words_per_turn": statistics.fmean(len(m["content"].split()) for m in turns) if turns else None,
                "at_risk": risk != "none",
                "disclosed": r.get("disclosed") if risk != "none" else None,
                # the message number the judge named, as the patient's own turn number
                "first_disclosure_turn": sum(m["role"] == "patient" for m in s["messages"][:first]) if first else None,
                "consistent": c.get("consistent"),
                "resolved": c.get("resolved"),
            }
        )
    return rows


def _share(vals: list[Any]) -> dict[str, Any]:
    known = [v for v in vals if v is not None]
    return {"yes": sum(bool(v) for v in known), "known": len(known), "share": (sum(bool(v) for v in known) / len(known)) if known else None}


def _mean(vals: list[Any]) -> float | None:
    known = [v for v in vals if v is not None]
    return statistics.fmean(known) if known else None


def per_arm(rows: list[dict[str, Any]], models: list[str], arms: list[str]) -> list[dict[str, Any]]:
    out = []
    for m in models:
        for a in arms:
            rs = [r for r in rows if r["model"] == m and r["arm"] == a]
            if not rs:
                continue
            words = [r["words_per_turn"] for r in rs if r["words_per_turn"] is not None]
            risk = [r for r in rs if r["at_risk"]]
            first = [r["first_disclosure_turn"] for r in risk if r["first_disclosure_turn"]]
            out.append(
                {
                    "model": m,
                    "arm": a,
                    "sessions": len(rs),
                    "patient_turns": _mean([r["patient_turns"] for r in rs]),
                    "words_per_turn": _mean(words),
                    "words_per_turn_sd": statistics.stdev(words) if len(words) > 1 else None,
                    "at_risk_sessions": len(risk),
                    "disclosed": _share([r["disclosed"] for r in risk]),
                    "first_disclosure_turn": _mean(first),
                    "first_disclosure_turn_median": statistics.median(first) if first else None,
                    "consistent": _share([r["consistent"] for r in rs]),
                    "resolved": _share([r["resolved"] for r in rs]),
                }
            )
    return out


def _paired_by_patient(pairs: list[tuple[dict, dict]], field: str, **kw) -> dict[str, Any]:
    """CBT against instruct on a measure, each patient's mean over its pairs with both values."""
    by: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for c, i in pairs:
        if c[field] is not None and i[field] is not None:
            by[c["patient_id"]].append((float(c[field]), float(i[field])))
    a = [np.mean([x for x, _ in v]) for v in by.values()]
    b = [np.mean([y for _, y in v]) for v in by.values()]
    return paired_comparison(a, b, **kw)


def _mcnemar_by_patient(pairs: list[tuple[dict, dict]], field: str) -> dict[str, Any]:
    """Clustered McNemar on a yes/no answer: b counts pairs with yes for CBT only, c for instruct only."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c, i in pairs:
        if c[field] is None or i[field] is None:
            continue
        counts[c["patient_id"]][0] += int(bool(c[field]) and not i[field])
        counts[c["patient_id"]][1] += int(bool(i[field]) and not c[field])
    return clustered_mcnemar({p: (b, c) for p, (b, c) in counts.items()})


def comparisons(rows: list[dict[str, Any]], models: list[str], *, alpha: float, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per model, the patient against the CBT-tuned therapist against the same patient against the
    instruct one, paired by patient, position and session."""
    out = []
    kw = {"alpha": alpha, "n_boot": n_boot, "seed": seed}
    for m in models:
        by = {(r["arm"], _key(r)): r for r in rows if r["model"] == m}
        pairs = [(r, by[("instruct", k)]) for (arm, k), r in by.items() if arm == "cbt" and ("instruct", k) in by]
        if not pairs:
            continue
        risk_pairs = [(c, i) for c, i in pairs if c["at_risk"]]
        both = [(c, i) for c, i in risk_pairs if c["first_disclosure_turn"] and i["first_disclosure_turn"]]
        out.append(
            {
                "model": m,
                "pairs": len(pairs),
                "words_per_turn": _paired_by_patient(pairs, "words_per_turn", **kw),
                "first_disclosure_turn": _paired_by_patient(both, "first_disclosure_turn", **kw),
                "consistent": _mcnemar_by_patient(pairs, "consistent"),
                "resolved": _mcnemar_by_patient(pairs, "resolved"),
            }
        )
    return out


def simulator_tests(comps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paired tests of the simulated patient, one family (unadjusted here: the safety register
    adjusts within its families)."""
    tests = []
    for c in comps:
        m = c["model"]
        tests += [
            {"family": FAMILY, "test": f"{m}: patient words per turn, CBT vs instruct (paired t)", "p": c["words_per_turn"]["p_t"]},
            {
                "family": FAMILY,
                "test": f"{m}: patient turn of first disclosure, CBT vs instruct (paired t)",
                "p": c["first_disclosure_turn"]["p_t"],
            },
            {"family": FAMILY, "test": f"{m}: patient consistent with profile (clustered McNemar)", "p": c["consistent"]["p"]},
            {"family": FAMILY, "test": f"{m}: patient distress resolved (clustered McNemar)", "p": c["resolved"]["p"]},
        ]
    return tests


def confounds(tests: list[dict[str, Any]], alpha: float) -> list[str]:
    """The tests of the family whose adjusted p is below alpha: a simulator that behaved differently
    against the two therapists."""
    return [
        t["test"] for t in adjust_within_families([dict(t) for t in tests]) if t.get("p_adjusted") is not None and t["p_adjusted"] < alpha
    ]


def analyse_simulator(
    rollouts: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    safety: list[dict[str, Any]],
    profiles: dict[str, dict[str, Any]],
    *,
    alpha: float,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    rows = session_measures(rollouts, checks, safety, profiles)
    models = sorted({r["model"] for r in rows})
    arms = [a for a in ("instruct", "cbt") if any(r["arm"] == a for r in rows)]
    comps = comparisons(rows, models, alpha=alpha, n_boot=n_boot, seed=seed)
    tests = simulator_tests(comps)
    return {
        "checked": bool(checks),
        "per_arm": per_arm(rows, models, arms),
        "comparisons": comps,
        "tests": tests,
        "confounds": confounds(tests, alpha),
        "missing_checks": sum(r["consistent"] is None for r in rows) if checks else None,
    }
