"""The rows of the report's safety tables (results/report/safety.json)."""

from __future__ import annotations

from typing import Any

from .numbers import _mean_ci, _rate, fmt, fmt_p


def _bounds(lo: float | None, hi: float | None) -> str:
    return "—" if lo is None else f"{100 * lo:.0f}% to {100 * hi:.0f}%"


def _per_arm_rows(sf: dict[str, Any]) -> list[list[Any]]:
    """Per model and arm: disclosure (share, per patient turn), high harm over all at-risk
    sessions with its bounds, harm and score given disclosure, over-escalation, refusals."""
    rows = []
    for a in sf["per_arm"]:
        d = a.get("disclosure") or {}
        hb = a.get("harm_bounds") or {}
        rows.append(
            [
                a["model"],
                a["arm"],
                a["at_risk_sessions"],
                a["disclosed"],
                a["not_disclosed"],
                a["gate_missing"],
                _rate(d.get("share")) + (f" (bounds {_bounds(*d['share_bounds'])})" if d.get("gate_missing") else ""),
                _per_turns(d),
                _rate(a["all_at_risk"]["any_high_harm"]) + (f" (bounds {_bounds(hb['best'], hb['worst'])})" if hb.get("missing") else ""),
                _rate(a["any_high_harm"]),
                _mean_ci(a["score"]),
                f"{a['over_escalation']['k']}/{a['over_escalation']['n']}"
                + (f" ({a['over_escalation']['missing']} missing)" if a["over_escalation"].get("missing") else ""),
                a["unexpected_disclosures"],
                f"{a['refusals']['safety_judge']} / {a['refusals']['ctrs_judge']}",
                a["refusals"]["patient_turns"],
            ]
        )
    return rows


def _per_turns(d: dict[str, Any]) -> str:
    r = d.get("rate") or {}
    if r.get("estimate") is None:
        return "—"
    lo, hi = r["ci"]
    ci = f" [{fmt(lo, 2)}, {fmt(hi, 2)}]" if lo is not None else ""
    return f"{fmt(r['estimate'], 2)}{ci} ({fmt(d['patient_turns'], 0)} patient turns)"


def _disclosure_rows(sf: dict[str, Any]) -> list[list[Any]]:
    """CBT against instruct per model on disclosure: clustered McNemar on disclosed or not, and
    the ratio of disclosures per patient turn."""
    adj = {t["test"]: t for t in sf.get("tests", [])}
    rows = []
    for c in sf["comparisons"]:
        d = c.get("disclosure")
        if not d:
            continue
        t, mc, rr = d["table"], d["mcnemar"], d["rate_ratio"]
        test = adj.get(f"{c['model']}: disclosure, all at-risk sessions (clustered McNemar)") or {}
        ci = f" [{fmt(rr['ci'][0])}, {fmt(rr['ci'][1])}]" if rr["ci"][0] is not None else ""
        rows.append(
            [
                c["model"],
                d["pairs"],
                d["patients"],
                f"{t['both']} / {t['a_only']} / {t['b_only']} / {t['neither']}",
                fmt(mc["chi2"]),
                fmt_p(mc["p"]),
                fmt_p(test.get("p_adjusted")),
                (fmt(rr["estimate"]) + ci) if rr["estimate"] is not None else "—",
                "; ".join(mc["notes"]),
            ]
        )
    return rows


def _comparison_rows(sf: dict[str, Any]) -> list[list[Any]]:
    """CBT against instruct per model: over all at-risk sessions (primary) and over sessions
    disclosed in both arms."""
    adj = {t["test"]: t for t in sf.get("tests", [])}

    def comp_row(model: str, population: str, c: dict[str, Any], tests: tuple[str, str | None]) -> list[Any]:
        t, mc, d, s = c["table"], c["mcnemar"], c["harm_rate_difference"], c["score"]
        dci = f" [{fmt(100 * d['ci'][0], 1)}, {fmt(100 * d['ci'][1], 1)}]" if d["ci"][0] is not None else ""
        harm_t, score_t = (adj.get(f"{model}: {x}") or {} if x else {} for x in tests)
        if s is None:  # no composite score without a disclosure
            score_cells = ["—", "— (applies to disclosed sessions only)", "—", "—", "—"]
        else:
            ci = f"[{fmt(s['ci_boot'][0], 1)}, {fmt(s['ci_boot'][1], 1)}]"
            score_cells = [s["n"], fmt(s["mean_diff"], 1), ci, fmt_p(s["p_t"]), fmt_p(score_t.get("p_adjusted"))]
        return [
            model,
            population,
            c["pairs"],
            c.get("patients", "—"),
            f"{t['both']} / {t['a_only']} / {t['b_only']} / {t['neither']}",
            fmt(mc["chi2"]),
            fmt_p(mc["p"]),
            fmt_p(harm_t.get("p_adjusted")),
            (fmt(100 * d["estimate"], 1) + " pts" + dci) if d["estimate"] is not None else "—",
            *score_cells,
            "; ".join(mc["notes"] + (s["notes"] if s else [])),
        ]

    comp = []
    for c in sf["comparisons"]:
        if "all_at_risk" in c:
            comp.append(
                comp_row(
                    c["model"],
                    "all at-risk sessions (primary)",
                    c["all_at_risk"],
                    ("any high-harm rating, all at-risk sessions (clustered McNemar)", None),
                )
            )
        comp.append(
            comp_row(
                c["model"],
                "disclosed in both arms",
                c,
                ("any high-harm rating, disclosed sessions (clustered McNemar)", "safety score, disclosed sessions (paired t)"),
            )
        )
    return comp


def _dimension_rows(sf: dict[str, Any], dims: dict[str, str]) -> list[list[Any]]:
    """Each dimension's ratings per model and arm, with the rates' intervals."""

    def pc(x, ci=None):
        if x is None:
            return "—"
        lo, hi = ci or (None, None)
        return f"{100 * x:.0f}%" + (f" [{100 * lo:.0f}%, {100 * hi:.0f}%]" if lo is not None else "")

    def dci(v, k):
        return (v.get("ci") or {}).get(k)

    return [
        [
            a["model"],
            a["arm"],
            dims.get(d, d),
            v["rated"],
            pc(v["rates"]["best_practice"], dci(v, "best_practice")),
            pc(v["rates"]["suboptimal"]),
            pc(v["rates"]["high_harm"], dci(v, "high_harm")),
            v["not_applicable"],
            v["missing"],
        ]
        for a in sf["per_arm"]
        for d in dims
        if (v := a["dimensions"].get(d))
    ]


def _breakdown_rows(sf: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            b["model"],
            b["arm"],
            b["risk_level"],
            b["disclosure_style"] or "—",
            b["sessions"],
            b["disclosed"],
            b.get("not_disclosed", "—"),
            f"{b['any_high_harm_all']}/{b['with_harm_outcome_all']}" if "any_high_harm_all" in b else "—",
            f"{b['any_high_harm']}/{b['with_harm_outcome']}",
            fmt(b["mean_score"], 1),
        ]
        for b in sf["breakdown"]
    ]


def _timing_rows(sf: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            a["model"],
            a["arm"],
            a["timing"]["with_disclosure_turn"],
            fmt(a["timing"]["turns_to_acknowledgement"]["median"], 1),
            a["timing"]["never_acknowledged"],
            fmt(a["timing"]["turns_to_resources"]["median"], 1),
            a["timing"].get("resources_only_before_disclosure", "—"),
            a["timing"]["never_resources"],
        ]
        for a in sf["per_arm"]
    ]


def _ablation_rows(sf: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            x["variant"],
            x["model"],
            x["arm"],
            x["disclosed"],
            _rate(x.get("any_high_harm_all")),
            _rate(x["any_high_harm"]),
            _mean_ci(x["score"]),
            x["vs_main"]["pairs"],
            f"{x['vs_main']['table']['a_only']} / {x['vs_main']['table']['b_only']}",
            fmt_p(x["vs_main"]["mcnemar"]["p"]),
            fmt(x["vs_main"]["score"]["mean_diff"], 1),
        ]
        for x in sf["ablations"]
    ]


def safety_view(sf: dict[str, Any]) -> dict[str, Any]:
    """The rows of the report's safety tables (results/report/safety.json)."""
    if not sf:
        return {}
    dims = {d["id"]: d["name"] for d in sf["rubric"]["dimensions"]}
    return {
        "per_arm": _per_arm_rows(sf),
        "comparisons": _comparison_rows(sf),
        "disclosure": _disclosure_rows(sf),
        "power": (sf.get("power") or {}).get("note"),
        "dimensions": _dimension_rows(sf, dims),
        "breakdown": _breakdown_rows(sf),
        "timing": _timing_rows(sf),
        "ablations": _ablation_rows(sf),
    }
