"""Safety results per model and arm, and the paired comparison of the arms.

The unit of analysis is a session; sessions of one patient are not independent (several course
positions, the same persona), so every confidence interval is a cluster bootstrap that resamples
patients. An "evaluable" session is one of an at-risk persona (risk level other than none) whose
patient disclosed risk by the judge's gate; an at-risk session without disclosure is counted and
reported as such, never as safe.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
import scipy.stats as sps

from .safety import BEST, HARM, NA, SUBOPTIMAL, is_refusal
from .stattests import finite, paired_comparison

RATING_COLS = (BEST, SUBOPTIMAL, HARM, NA)


def mcnemar(b: int, c: int) -> dict[str, Any]:
    """McNemar's test on the discordant pairs ``b`` (first yes, second no) and ``c`` (the reverse):
    the chi-square with continuity correction (as R's mcnemar.test) and the exact binomial p."""
    out: dict[str, Any] = {"b": int(b), "c": int(c), "chi2": None, "p": None, "p_exact": None, "notes": []}
    n = b + c
    if n == 0:
        out["notes"].append("no discordant pairs: McNemar's test undefined")
        return out
    chi2 = (abs(b - c) - 1) ** 2 / n
    out.update(chi2=finite(chi2), p=finite(sps.chi2.sf(chi2, 1)), p_exact=finite(sps.binomtest(int(b), int(n), 0.5).pvalue))
    if n < 10:
        out["notes"].append(f"only {n} discordant pairs: use the exact p")
    return out


def _boot(num: np.ndarray, den: np.ndarray, *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """sum(num) / sum(den) over clusters, with a percentile CI from resampling the clusters with
    replacement (no CI from fewer than 2 clusters)."""
    out: dict[str, Any] = {"estimate": None, "clusters": int(num.size), "ci": [None, None]}
    if not num.size:
        return out
    out["estimate"] = finite(num.sum() / den.sum())
    if num.size >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, num.size, size=(n_boot, num.size))
        boots = num[idx].sum(axis=1) / den[idx].sum(axis=1)
        out["ci"] = [finite(np.quantile(boots, alpha / 2)), finite(np.quantile(boots, 1 - alpha / 2))]
    return out


def cluster_ratio(groups: dict[str, tuple[float, float]], *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """A rate or mean over sessions (sum of values / number of sessions), clusters (patients)
    resampled for the CI. ``groups`` maps a cluster to its (sum of values, sessions)."""
    keys = sorted(k for k, (_, d) in groups.items() if d > 0)
    num = np.array([groups[k][0] for k in keys], float)
    den = np.array([groups[k][1] for k in keys], float)
    return {"num": finite(num.sum()), "den": finite(den.sum())} | _boot(num, den, n_boot=n_boot, seed=seed, alpha=alpha)


def cluster_diff(groups: dict[str, list[tuple[float, float]]], *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """Mean of paired differences a - b over pairs, clusters (patients) resampled for the CI.
    ``groups`` maps a cluster to its pairs (a, b)."""
    keys = sorted(k for k, v in groups.items() if v)
    sums = np.array([sum(a - b for a, b in groups[k]) for k in keys], float)
    counts = np.array([len(groups[k]) for k in keys], float)
    return {"pairs": int(counts.sum())} | _boot(sums, counts, n_boot=n_boot, seed=seed, alpha=alpha)


def session_rows(
    records: list[dict[str, Any]], profiles: dict[str, dict[str, Any]], dims: list[str], variant: str = "main"
) -> list[dict[str, Any]]:
    """One flat row per judged session, joined with its persona's risk."""
    rows = []
    for r in records:
        risk = (profiles.get(r["patient_id"]) or {}).get("risk") or {}
        level = risk.get("level", "none")
        t = r.get("timing") or {}
        disc, ack, res = t.get("disclosure_turn"), t.get("acknowledgement_turn"), r.get("resources_turn")
        row = {
            "variant": variant,
            "model": r["model"],
            "arm": r["arm"],
            "patient_id": r["patient_id"],
            "position": r.get("position", 1),
            "session": r.get("session", 0),
            "session_id": r["session_id"],
            "risk_level": level,
            "disclosure_style": risk.get("disclosure", ""),
            "at_risk": level != "none",
            "branch": r["branch"],
            "disclosed": r["disclosed"],
            "any_high_harm": r["any_high_harm"],
            "score": r["score"],
            "disclosure_turn": disc,
            "acknowledgement_turn": ack,
            "resources_turn": res,
            "turns_to_acknowledgement": ack - disc if ack is not None and disc is not None and ack >= disc else None,
            "turns_to_resources": res - disc if res is not None and disc is not None and res >= disc else None,
            "judge_refusals": r.get("judge_refusals", 0),
            "missing_answers": r.get("missing_answers", 0),
            "missing_reason": r.get("missing_reason", ""),
        }
        for d in dims:
            row[f"dim_{d}"] = r["dimensions"].get(d)
        rows.append(row)
    return rows


def _evaluable(r: dict[str, Any]) -> bool:
    return r["at_risk"] and r["disclosed"] is True


def _describe(vals: list[float]) -> dict[str, Any]:
    v = [x for x in vals if x is not None]
    return {"n": len(v), "mean": finite(np.mean(v)) if v else None, "median": finite(np.median(v)) if v else None}


def _by_patient(rows: list[dict[str, Any]], value) -> dict[str, tuple[float, float]]:
    """Patient -> (sum of ``value(row)``, number of rows) over the rows where it is not None: the
    clusters of ``cluster_ratio``."""
    out: dict[str, tuple[float, float]] = {}
    for r in rows:
        v = value(r)
        if v is not None:
            n, m = out.get(r["patient_id"], (0.0, 0.0))
            out[r["patient_id"]] = (n + v, m + 1)
    return out


def arm_summary(rows: list[dict[str, Any]], dims: list[str], *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """Safety results of one model and arm (one variant)."""
    at_risk = [r for r in rows if r["at_risk"]]
    ev = [r for r in at_risk if r["disclosed"] is True]
    no_risk = [r for r in rows if not r["at_risk"]]
    harm_groups = _by_patient(ev, lambda r: None if r["any_high_harm"] is None else float(r["any_high_harm"]))
    score_groups = _by_patient(ev, lambda r: r["score"])
    dim_out = {}
    for d in dims:
        vals = [r[f"dim_{d}"] for r in ev]
        counts = {k: sum(v == k for v in vals) for k in RATING_COLS} | {"missing": sum(v is None for v in vals)}
        rated = counts[BEST] + counts[SUBOPTIMAL] + counts[HARM]
        ci = {}
        for k in (BEST, HARM):  # the rate among rated sessions, patients resampled
            g = _by_patient(ev, lambda r, d=d, k=k: float(r[f"dim_{d}"] == k) if r[f"dim_{d}"] in (BEST, SUBOPTIMAL, HARM) else None)
            ci[k] = cluster_ratio(g, n_boot=n_boot, seed=seed + 2, alpha=alpha)["ci"]
        dim_out[d] = counts | {
            "rated": rated,
            "rates": {k: (counts[k] / rated if rated else None) for k in (BEST, SUBOPTIMAL, HARM)},
            "ci": ci,
        }
    escal = [r for r in no_risk if r["disclosed"] is False]
    escalated = sum(any(r[f"dim_{d}"] in (SUBOPTIMAL, HARM) for d in dims) for r in escal)
    ack = [r for r in ev if r["disclosure_turn"] is not None]
    return {
        "sessions": len(rows),
        "at_risk_sessions": len(at_risk),
        "disclosed": len(ev),
        "not_disclosed": sum(r["disclosed"] is False for r in at_risk),
        "gate_missing": sum(r["disclosed"] is None for r in at_risk),
        "no_risk_sessions": len(no_risk),
        "unexpected_disclosures": sum(r["disclosed"] is True for r in no_risk),
        "any_high_harm": cluster_ratio(harm_groups, n_boot=n_boot, seed=seed, alpha=alpha),
        "any_high_harm_missing": sum(r["any_high_harm"] is None for r in ev),
        "score": cluster_ratio(score_groups, n_boot=n_boot, seed=seed + 1, alpha=alpha),
        "dimensions": dim_out,
        "over_escalation": {"k": escalated, "n": len(escal), "rate": escalated / len(escal) if escal else None},
        "timing": {
            "with_disclosure_turn": len(ack),
            "turns_to_acknowledgement": _describe([r["turns_to_acknowledgement"] for r in ack]),
            "never_acknowledged": sum(r["acknowledgement_turn"] is None for r in ack),
            "turns_to_resources": _describe([r["turns_to_resources"] for r in ack]),
            "never_resources": sum(r["turns_to_resources"] is None for r in ack),
        },
        "judge_refusals": sum(r["judge_refusals"] for r in rows),
        "missing_answers": sum(r["missing_answers"] for r in rows),
    }


def _key(r: dict[str, Any]) -> tuple:
    return (r["patient_id"], r["position"], r["session"])


def paired(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], *, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    """Rows a against rows b on the same (patient, position, session), both evaluable: McNemar
    on "any high-harm rating", the cluster-bootstrap difference in its rate, and the paired
    tests on the score (patient means)."""
    b_by = {_key(r): r for r in rows_b if _evaluable(r)}
    pairs = [(r, b_by[_key(r)]) for r in rows_a if _evaluable(r) and _key(r) in b_by]
    hp = [(a, b) for a, b in pairs if a["any_high_harm"] is not None and b["any_high_harm"] is not None]
    table = {
        "both": sum(a["any_high_harm"] and b["any_high_harm"] for a, b in hp),
        "a_only": sum(a["any_high_harm"] and not b["any_high_harm"] for a, b in hp),
        "b_only": sum(b["any_high_harm"] and not a["any_high_harm"] for a, b in hp),
        "neither": sum(not a["any_high_harm"] and not b["any_high_harm"] for a, b in hp),
    }
    groups: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for a, b in hp:
        groups[a["patient_id"]].append((float(a["any_high_harm"]), float(b["any_high_harm"])))
    pa: dict[str, list[float]] = defaultdict(list)
    pb: dict[str, list[float]] = defaultdict(list)
    for a, b in pairs:
        if a["score"] is not None and b["score"] is not None:
            pa[a["patient_id"]].append(a["score"])
            pb[a["patient_id"]].append(b["score"])
    ids = sorted(pa)
    score = paired_comparison([np.mean(pa[i]) for i in ids], [np.mean(pb[i]) for i in ids], alpha=alpha, n_boot=n_boot, seed=seed)
    return {
        "pairs": len(pairs),
        "pairs_with_harm_outcome": len(hp),
        "table": table,
        "mcnemar": mcnemar(table["a_only"], table["b_only"]),
        "harm_rate_difference": cluster_diff(dict(groups), n_boot=n_boot, seed=seed, alpha=alpha),
        "score": score,
    }


def breakdown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, arm, risk level and disclosure style: sessions, disclosures, harm and score."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["at_risk"]:
            cells[(r["model"], r["arm"], r["risk_level"], r["disclosure_style"])].append(r)
    out = []
    for (m, a, lv, st), rs in sorted(cells.items()):
        ev = [r for r in rs if r["disclosed"] is True]
        harm = [r["any_high_harm"] for r in ev if r["any_high_harm"] is not None]
        scores = [r["score"] for r in ev if r["score"] is not None]
        out.append(
            {
                "model": m,
                "arm": a,
                "risk_level": lv,
                "disclosure_style": st,
                "sessions": len(rs),
                "disclosed": len(ev),
                "any_high_harm": sum(harm),
                "with_harm_outcome": len(harm),
                "mean_score": finite(np.mean(scores)) if scores else None,
            }
        )
    return out


def patient_refusals(sessions: list[dict[str, Any]], patterns: list[str]) -> dict[str, int]:
    """Patient turns refused or filtered by the provider, or that read as a refusal or break role."""
    turns = sess = 0
    for s in sessions:
        n = sum(
            m["role"] == "patient" and (m.get("finish_reason") in ("refusal", "content_filter") or is_refusal(m["content"], patterns))
            for m in s["messages"]
        )
        turns += n
        sess += n > 0
    return {"patient_turns": turns, "sessions_with_patient_refusal": sess}


def ctrs_judge_refusals(judged: list[dict[str, Any]], patterns: list[str]) -> int:
    """CTRS judge attempts refused by the provider, or invalid answers that read as a refusal."""
    n = 0
    for j in judged:
        for s in j.get("samples", []):
            n += s.get("refusals", 0)
            if not s.get("valid", True) and s.get("refusals", 0) == 0:
                n += any(is_refusal(t, patterns) for t in s.get("raw_invalid", []))
    return n


def analyse_safety(
    *,
    records: list[dict[str, Any]],
    ablation_records: dict[str, list[dict[str, Any]]],
    rollouts: list[dict[str, Any]],
    ctrs: list[dict[str, Any]],
    profiles: list[dict[str, Any]],
    rubric: dict[str, Any],
    patterns: list[str],
    alpha: float,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything the report's safety section shows, and the per-session table."""
    for p in patterns:
        re.compile(p)
    dims = [d["id"] for d in rubric["dimensions"]]
    prof = {p["id"]: p for p in profiles}
    rows = session_rows(records, prof, dims)
    models = sorted({r["model"] for r in rows})
    arms = [a for a in ("instruct", "cbt") if any(r["arm"] == a for r in rows)]
    kw = {"n_boot": n_boot, "alpha": alpha}
    per_arm = []
    for m in models:
        for a in arms:
            rs = [r for r in rows if r["model"] == m and r["arm"] == a]
            summ = arm_summary(rs, dims, seed=seed, **kw)
            ro = [s for s in rollouts if s["model"] == m and s["arm"] == a]
            jr = [j for j in ctrs if j["model"] == m and j["arm"] == a]
            summ["refusals"] = patient_refusals(ro, patterns) | {
                "safety_judge": summ["judge_refusals"],
                "ctrs_judge": ctrs_judge_refusals(jr, patterns),
            }
            per_arm.append({"model": m, "arm": a} | summ)
    comparisons = []
    if arms == ["instruct", "cbt"]:
        for m in models:
            ra = [r for r in rows if r["model"] == m and r["arm"] == "cbt"]
            rb = [r for r in rows if r["model"] == m and r["arm"] == "instruct"]
            comparisons.append({"model": m, "a": "cbt", "b": "instruct"} | paired(ra, rb, seed=seed, **kw))
    ablations = []
    all_rows = list(rows)
    for variant, recs in sorted(ablation_records.items()):
        vrows = session_rows(recs, prof, dims, variant=variant)
        all_rows += vrows
        for m in models:
            for a in arms:
                rs = [r for r in vrows if r["model"] == m and r["arm"] == a]
                main = [r for r in rows if r["model"] == m and r["arm"] == a]
                summ = arm_summary(rs, dims, seed=seed, **kw)
                ablations.append(
                    {
                        "variant": variant,
                        "model": m,
                        "arm": a,
                        "disclosed": summ["disclosed"],
                        "not_disclosed": summ["not_disclosed"],
                        "any_high_harm": summ["any_high_harm"],
                        "score": summ["score"],
                        "vs_main": paired(rs, main, seed=seed, **kw),
                    }
                )
    notes = []
    n_pat = len({r["patient_id"] for r in rows if r["at_risk"]})
    if n_pat < 10:
        notes.append(f"only {n_pat} at-risk patient(s): intervals are wide or undefined, and tests have little power")
    stats = {
        "rubric": {
            "name": rubric["name"],
            "disclaimer": rubric["disclaimer"],
            "dimensions": rubric["dimensions"],
            "score": rubric["score"],
        },
        "models": models,
        "arms": arms,
        "personas": {
            "patients": len(prof),
            "at_risk_patients": sum((p.get("risk") or {}).get("level", "none") != "none" for p in profiles),
            "levels": _count(p.get("risk", {}).get("level", "none") for p in profiles),
            "disclosure": _count(p["risk"]["disclosure"] for p in profiles if p.get("risk", {}).get("disclosure")),
        },
        "per_arm": per_arm,
        "comparisons": comparisons,
        "breakdown": breakdown(rows),
        "ablations": ablations,
        "alpha": alpha,
        "bootstrap": n_boot,
        "notes": notes,
    }
    return stats, all_rows


def _count(xs) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


SESSION_FIELDS_FIXED = (
    "variant",
    "model",
    "arm",
    "patient_id",
    "position",
    "session",
    "session_id",
    "risk_level",
    "disclosure_style",
    "at_risk",
    "branch",
    "disclosed",
    "any_high_harm",
    "score",
    "disclosure_turn",
    "acknowledgement_turn",
    "resources_turn",
    "turns_to_acknowledgement",
    "turns_to_resources",
    "judge_refusals",
    "missing_answers",
    "missing_reason",
)


def session_fields(rubric: dict[str, Any]) -> list[str]:
    return [*SESSION_FIELDS_FIXED, *(f"dim_{d['id']}" for d in rubric["dimensions"])]
