"""How far the judges can be trusted: within-judge consistency across samples, inter-judge agreement
of a panel, and judge-human agreement."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .pairs import as_float
from .reliability import agreement, inter_rater


def _judge_scores(long: list[dict[str, str]], items: list[str]) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """judge -> session -> sample -> item -> score (NaN where missing)."""
    out: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for r in long:
        out.setdefault(r.get("judge") or "judge", {}).setdefault(r["session_id"], {}).setdefault(int(r["judge_sample"]), {})[r["item"]] = (
            as_float(r["score"])
        )
    return out


def _value(sc: dict[str, float], it: str, items: list[str]) -> float:
    if it != "total":
        return sc.get(it, float("nan"))
    vals = [sc.get(i, float("nan")) for i in items]
    return float(np.sum(vals)) if all(np.isfinite(vals)) else float("nan")


def reliability(long: list[dict[str, str]], items: list[str]) -> dict[str, dict[str, Any]]:
    """Within-judge consistency: each judge agreeing with itself across its k samples of a session
    (ICC and Krippendorff's alpha), per item and for the total; judge -> item -> result."""
    rel: dict[str, dict[str, Any]] = {}
    for judge, by_session in _judge_scores(long, items).items():
        ks = sorted({k for samples in by_session.values() for k in samples})
        rel[judge] = {}
        for it in [*items, "total"]:
            mat = [[_value(samples.get(k, {}), it, items) for k in ks] for _sid, samples in sorted(by_session.items())]
            rel[judge][it] = (
                inter_rater(np.array(mat), n_boot=500, seed=0)
                if mat and len(ks) >= 2
                else {"icc2_1": None, "icc2_k": None, "n": len(mat), "k": len(ks), "notes": ["needs k >= 2 judge samples"]}
            )
    return rel


def inter_judge(long: list[dict[str, str]], items: list[str]) -> dict[str, Any]:
    """Agreement between the judges of a panel on the same sessions: each judge's score of a
    session is the mean of its valid samples; ICC(2,1) and Krippendorff's alpha (interval) with
    their intervals, per item and for the total. Empty with a single judge."""
    scores = _judge_scores(long, items)
    judges = list(scores)
    if len(judges) < 2:
        return {}
    sessions = sorted(set.intersection(*[set(v) for v in scores.values()]))
    out = {}
    for it in [*items, "total"]:
        mat = []
        for sid in sessions:
            row = []
            for j in judges:
                v = [_value(sc, it, items) for sc in scores[j][sid].values()]
                v = [x for x in v if np.isfinite(x)]
                row.append(float(np.mean(v)) if v else float("nan"))
            mat.append(row)
        out[it] = inter_rater(np.array(mat), n_boot=1000, seed=0) | {"judges": judges}
    return out


def human_agreement(totals: list[dict[str, str]], items: list[str], human: list[dict[str, Any]]) -> dict[str, Any]:
    """The judge's item scores against the mean human rating of the same session."""
    agg = {r["session_id"]: r for r in totals}
    hum: dict[tuple[str, str], list[float]] = defaultdict(list)
    for h in human:
        hum[(h["session_id"], h["item"])].append(h["score"])
    ag = {}
    for it in items:
        sids = sorted({s for (s, i) in hum if i == it and s in agg})
        ag[it] = agreement([as_float(agg[s][it]) for s in sids], [float(np.mean(hum[(s, it)])) for s in sids])
    # the total: each rater's sum over the items, where that rater rated every item of the session
    by_rater: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for h in human:
        by_rater[(h["session_id"], h.get("rater", "human"))][h["item"]] = h["score"]
    tot: dict[str, list[float]] = defaultdict(list)
    for (sid, _), sc in by_rater.items():
        if all(i in sc for i in items):
            tot[sid].append(sum(sc[i] for i in items))
    sids = sorted(s for s in tot if s in agg)
    ag["total"] = agreement([as_float(agg[s]["total"]) for s in sids], [float(np.mean(tot[s])) for s in sids])
    return {"items": ag, "unknown_sessions": sorted({h["session_id"] for h in human} - set(agg))}
