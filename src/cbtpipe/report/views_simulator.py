"""The rows of the report's simulated-patient section (safety.json's ``simulator``)."""

from __future__ import annotations

from typing import Any

from .numbers import fmt, fmt_p


def _share(s: dict[str, Any] | None) -> str:
    if not s or not s.get("known"):
        return "—"
    return f"{s['yes']}/{s['known']} ({100 * s['share']:.0f}%)"


def _paired(c: dict[str, Any], adj: dict[str, dict[str, Any]], test: str) -> list[Any]:
    t = adj.get(test) or {}
    return [c["n"], fmt(c["mean_b"]), fmt(c["mean_a"]), fmt(c["mean_diff"]), fmt_p(t.get("p", c.get("p_t"))), fmt_p(t.get("p_adjusted"))]


def _mcnemar(c: dict[str, Any], adj: dict[str, dict[str, Any]], test: str) -> list[Any]:
    t = adj.get(test) or {}
    return [f"{c['b']} / {c['c']}", c.get("clusters_discordant", 0), fmt_p(t.get("p", c.get("p"))), fmt_p(t.get("p_adjusted"))]


def simulator_view(sf: dict[str, Any]) -> dict[str, Any]:
    """Per arm, what the simulated patient did; per model, the paired tests of the arms, with the
    p-values of the safety register (adjusted within the simulated-patient family)."""
    sim = (sf or {}).get("simulator")
    if not sim:
        return {}
    adj = {t["test"]: t for t in sf.get("tests", [])}
    per_arm = [
        [
            a["model"],
            a["arm"],
            a["sessions"],
            fmt(a["patient_turns"], 1),
            fmt(a["words_per_turn"], 1) + (f" (sd {fmt(a['words_per_turn_sd'], 1)})" if a.get("words_per_turn_sd") is not None else ""),
            f"{_share(a['disclosed'])} of {a['at_risk_sessions']}" if a["at_risk_sessions"] else "—",
            fmt(a["first_disclosure_turn"], 1)
            + (f" (median {fmt(a['first_disclosure_turn_median'], 1)})" if a.get("first_disclosure_turn_median") is not None else ""),
            _share(a["consistent"]),
            _share(a["resolved"]),
        ]
        for a in sim["per_arm"]
    ]
    measures, answers = [], []
    for c in sim["comparisons"]:
        m = c["model"]
        measures.append(
            ["patient words per turn", m, *_paired(c["words_per_turn"], adj, f"{m}: patient words per turn, CBT vs instruct (paired t)")]
        )
        measures.append(
            [
                "turn of first disclosure (pairs where both disclosed)",
                m,
                *_paired(c["first_disclosure_turn"], adj, f"{m}: patient turn of first disclosure, CBT vs instruct (paired t)"),
            ]
        )
        answers.append(
            ["consistent with profile", m, *_mcnemar(c["consistent"], adj, f"{m}: patient consistent with profile (clustered McNemar)")]
        )
        answers.append(["distress resolved", m, *_mcnemar(c["resolved"], adj, f"{m}: patient distress resolved (clustered McNemar)")])
    return {"per_arm": per_arm, "measures": measures, "answers": answers, "confounds": sim["confounds"], "checked": sim["checked"]}
