"""The CTRS sections of the report: tuned against instruct per model and pooled with the published
means beside ours, descriptives, per item, between models, subtotals; the risk strata and the mixed
model; missing judgements; and the sensitivity analyses (positions, lengths, context, ablations,
per-turn scores)."""

from __future__ import annotations

from typing import Any

from .numbers import _ci, _notes, _paired_cells, fmt, fmt_p
from .views_primary import PUBLISHED


def _bracket(c) -> str:
    return f"[{fmt(c[0])}, {fmt(c[1])}]"


def _paired_rows(st: dict[str, Any]) -> list[list[Any]]:
    """Tuned against instruct on the total, per model and pooled, each row labelled primary or secondary."""
    paired = [
        [
            m,
            c["n"],
            fmt(c["mean_b"]),
            fmt(c["mean_a"]),
            fmt(c["mean_diff"]),
            f"[{fmt(c['ci_t'][0])}, {fmt(c['ci_t'][1])}]",
            f"[{fmt(c['ci_boot'][0])}, {fmt(c['ci_boot'][1])}]",
            fmt(c["t"]),
            fmt_p(c["p_t"]),
            fmt(c["wilcoxon_V"], 1),
            fmt_p(c["p_wilcoxon"]),
            fmt(c["cohens_dz"]),
            fmt(c["rank_biserial"]),
            _notes(c),
        ]
        for m, c in [*st["tuned_vs_instruct"].items(), ("pooled", st["pooled"])]
    ]
    prim = st.get("primary")
    if prim and prim["outcome"] == "total":  # the paired table is of totals: label its rows
        names = [*st["tuned_vs_instruct"], "pooled"]
        for row, name in zip(paired, names, strict=True):
            row[0] = f"{name} (primary)" if name == prim["contrast"] else f"{name} (secondary)"
    return paired


def _per_item_rows(st: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """Per model, each item's paired comparison with its adjusted p-values."""
    return {
        m: [
            [
                c["item"],
                c["n"],
                fmt(c["mean_b"]),
                fmt(c["mean_a"]),
                fmt(c["mean_diff"]),
                fmt_p(c["p_t"]),
                fmt_p(c["p_t_adj"]),
                fmt_p(c["p_wilcoxon"]),
                fmt_p(c["p_wilcoxon_adj"]),
                fmt(c["cohens_dz"]),
            ]
            for c in pi["items"]
        ]
        for m, pi in st["per_item"].items()
    }


def ctrs_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """The CTRS comparison: tuned vs instruct per model and pooled, the published means beside ours, descriptives, per item, between models, subtotals."""
    st = ctx["stats"]
    items = st["items"]
    paired = _paired_rows(st)
    ours = {d["model"]: d for d in st["descriptives"] if d["arm"] == "cbt"}
    bm = st["between_models"]
    mx = st.get("max_total")

    def pct(v):
        return fmt(100 * v / mx, 1) + "%" if (v is not None and mx) else "—"

    return {
        "paired": paired,
        "published": [[k, v] for k, v in PUBLISHED["cbt_means"].items()],
        "ours": [[m, f"{fmt(d['mean'])} ± {fmt(d['sd'])}", pct(d["mean"]), d["n_total"]] for m, d in ours.items()],
        "descriptives": [
            [
                d["model"],
                d["arm"],
                d["sessions"],
                f"{fmt(d['mean'])} ± {fmt(d['sd'])}",
                pct(d["mean"]),
                fmt(100 * d["competent_share"], 0) + "%" if d["competent_share"] is not None else "—",
            ]
            + [f"{fmt(d['items'][i]['mean'], 1)} ± {fmt(d['items'][i]['sd'], 1)}" for i in items]
            for d in st["descriptives"]
        ],
        "per_item": _per_item_rows(st),
        "pairwise": [
            [p["a"], p["b"], p["n"], fmt(p["mean_diff"]), fmt_p(p["p_t"]), fmt_p(p["p_holm"]), fmt(p["cohens_dz"])]
            for p in bm.get("pairwise", [])
        ],
        "subtotals": [
            [
                sub["name"],
                f"0-{sub['max']}",
                m,
                c["n"],
                fmt(c["mean_b"]),
                fmt(c["mean_a"]),
                fmt(c["mean_diff"]),
                _bracket(c["ci_t"]),
                fmt_p(c["p_t"]),
                fmt(c["cohens_dz"]),
            ]
            for sub in st.get("subtotals", {}).values()
            for m, c in sub["models"].items()
        ],
        "subtotal_notes": [f"{sub['name']}: {sub['note'].strip()}" for sub in st.get("subtotals", {}).values()],
    }


def risk_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """The risk strata beside the primary, the mixed model (arm by model, arm by risk) and the closing-instruction sensitivity analysis (re-judged without the closing turn)."""
    st = ctx["stats"]

    mm = st.get("mixed_model") or {}
    cl = st.get("closing") or {}
    return {
        "risk_strata": [
            ["no risk" if r["stratum"] == "none" else "at risk", r["model"], *_paired_cells(r), _notes(r)]
            for r in st.get("risk_strata", [])
        ],
        "persona_sets": [
            [r["set"].replace("_", "-"), r["model"], r["patients"], *_paired_cells(r), _notes(r)] for r in st.get("persona_sets", [])
        ],
        "mixed_risk": [
            ["no risk" if e["risk"] == "none" else "at risk", fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"]), fmt_p(e["p"])]
            for e in mm.get("arm_effects_by_risk", [])
        ],
        "mixed_emm": [[e["model"], e["arm"], fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"])] for e in mm.get("emm", [])],
        "mixed_effects": [[e["model"], fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"]), fmt_p(e["p"])] for e in mm.get("arm_effects", [])],
        "closing": [
            [m, *_paired_cells(c), fmt((cl.get("shift") or {}).get(m)), _notes(c)]
            for m, c in [*cl.get("without", {}).items(), *([("pooled", cl["pooled_without"])] if cl.get("without") else [])]
        ],
    }


def missing_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """Missing judgements per group and the bounds of the paired difference."""
    st = ctx["stats"]
    miss = st["missing"]
    bounds = miss.get("bounds") or {}
    missing_rows = [
        [
            g["model"],
            g["arm"],
            g["sessions"],
            g["sessions_without_total"],
            fmt(100 * g["missing_share"], 1) + "%" if g["missing_share"] is not None else "—",
            g["samples"],
            g["invalid_samples"],
        ]
        for g in miss.get("by_group", [])
    ]
    bound_rows = [
        [k, fmt(bounds["complete_case"][k]), fmt(bounds["worst_for_cbt"][k]), fmt(bounds["best_for_cbt"][k])]
        for k in [*st["models"], "pooled"]
        if k in bounds.get("complete_case", {})
    ]
    return {
        "missing_by_group": missing_rows,
        "missing_bounds": bound_rows,
    }


def sensitivity_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """Positions in the course, session lengths, the length-adjusted difference, context against score, ablations, per-turn scores."""
    st = ctx["stats"]

    return {
        "positions": [
            [
                r["position"],
                r["model"],
                r["sessions"],
                fmt(r["mean_instruct"]),
                fmt(r["mean_cbt"]),
                r["n"],
                fmt(r["mean_diff"]),
                _bracket(r["ci_t"]),
                fmt_p(r["p_t"]),
                "; ".join(r["notes"]),
            ]
            for r in st.get("by_position", [])
        ],
        "lengths": [
            [
                r["model"],
                r["arm"],
                r["sessions"],
                fmt(r["turns_mean"], 1),
                fmt(r["words_per_therapist_turn"], 1),
                fmt(r["therapist_tokens_mean"], 0),
                r["turns_cut_at_max_tokens"],
                r["sessions_with_context_truncation"],
                f"{fmt(r['context_tokens_mean'], 0)} / {r['context_tokens_max'] if r['context_tokens_max'] is not None else '—'}",
                r["closing_prompted"],
                ", ".join(f"{k}: {v}" for k, v in r["stop_reasons"].items()),
            ]
            for r in st.get("lengths", [])
        ],
        "length_adjusted": [
            [cov, m, c["n"], fmt(c["adjusted_diff"]), _bracket(c["ci"]), fmt_p(c["p"]), fmt(c["slope"], 3), fmt_p(c["p_slope"]), _notes(c)]
            for cov, per in st.get("length_adjusted", {}).items()
            for m, c in per.items()
        ],
        "context": [
            [
                g["model"],
                g["arm"],
                g["n"],
                fmt(g["rho"]),
                fmt_p(g["p"]),
                f"{fmt(g.get('rho_sessions'))} {_ci(g.get('ci_sessions') or [None, None])} (n={g.get('n_sessions', '—')})",
                f"{fmt(g['mean_below'])} (n={g['n_below']})",
                f"{fmt(g['mean_at_or_above'])} (n={g['n_at_or_above']})",
                _notes(g),
            ]
            for g in [
                *st.get("context_vs_score", {}).get("groups", []),
                *([dict(st["context_vs_score"]["pooled"], model="pooled", arm="both")] if st.get("context_vs_score") else []),
            ]
        ],
        "ablations": [
            [
                name,
                ", ".join(f"{k}: {v}" for k, v in ab["settings"].items()),
                r["model"],
                r["arm"],
                *_paired_cells(r),
                f"{fmt(r['context_tokens_mean_main'], 0)} → {fmt(r['context_tokens_mean_variant'], 0)}",
            ]
            for name, ab in (ctx.get("ablations") or {}).get("variants", {}).items()
            for r in ab["comparison"]
        ],
        "turn_groups": [
            [g["model"], g["arm"], g["n"], fmt(g["rho"]), fmt_p(g["p"]), _notes(g)] for g in ctx.get("turn_windows", {}).get("groups", [])
        ],
        "turn_bins": [
            [b["model"], b["arm"], b["context"], b["n"], fmt(b["mean_pct"], 1)] for b in ctx.get("turn_windows", {}).get("bins", [])
        ],
    }


def seeds_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """Replication over training seeds: each seed's CBT-versus-instruct comparison, and per model
    the spread of the per-seed differences beside the pooled estimate."""
    sd = ctx["stats"].get("seeds") or {}
    if not sd:
        return {"seeds": None}
    tvi = ctx["stats"].get("tuned_vs_instruct") or {}
    return {
        "seeds": {
            "method": sd["method"],
            "per_seed": [[r["model"], r["seed"], r["entry"], *_paired_cells(r), _notes(r)] for r in sd["per_seed"]],
            "spread": [
                [
                    m,
                    x["seeds"],
                    fmt(x["mean"]),
                    fmt(x["sd"]),
                    f"{fmt(x['min'])} to {fmt(x['max'])}",
                    fmt((tvi.get(m) or {}).get("mean_diff")),
                ]
                for m, x in sd["spread"].items()
            ],
        }
    }
