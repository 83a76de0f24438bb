"""The report's sections as data: one view function per section of templates/report.md.j2, each
returning the formatted rows of its tables (the template only lays them out)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from ..workflow import instruct_owners
from .numbers import _ci, _mean_ci, _notes, _paired_cells, _rate, _shortening, _utc, fmt, fmt_p

PUBLISHED = {
    "source": "Tahir 2024, arXiv 2412.00251 (modified CTRS, Gemini 1.5 Pro-002 judge, DeepSeek-V2.5 patient)",
    "cbt_means": {"Llama 3.1 8B": "67.86 ± 7.24", "Qwen 2.5 7B": "64.28 ± 9.55", "Mistral 7B v0.3": "64.17 ± 9.79"},
    "mean_gain": "11.33 points (CBT-tuned minus instruct, p < 0.001)",
}


def _primary_text(prim: dict[str, Any], decl: dict[str, Any] | None = None) -> str:
    """The primary endpoint in one paragraph: what was declared and when, its result, what the
    design can detect."""
    what = "the CTRS total" if prim["outcome"] == "total" else f"CTRS item {prim['outcome']}"
    where = "pooled over models (stratified by patient)" if prim["contrast"] == "pooled" else f"for {prim['contrast']}"
    test = "paired t-test" if prim["test"] == "paired_t" else "Wilcoxon signed-rank test"
    decl = decl or {"declared_before_run": False, "reason": "no record of its declaration", "recorded_at": None}
    when = (
        f"declared before the run: recorded {decl['recorded_at']}, before the first judge call at {_utc(decl.get('first_judgement'))}"
        if decl["declared_before_run"]
        else f"not shown to be declared before the run: {decl['reason']}"
        + (f" (recorded {decl['recorded_at']}, first judge call {_utc(decl.get('first_judgement'))})" if decl.get("recorded_at") else "")
    )
    head = f"Primary endpoint (config key report.primary, {when}): {what}, CBT-tuned minus instruct, {where}, {test}"
    c = prim.get("result")
    if not c or not c.get("n"):
        return head + ": no patient pairs to test. " + "; ".join(prim["notes"])
    body = (
        f": {c['n']} patient pairs, instruct mean {fmt(c['mean_b'])}, CBT mean {fmt(c['mean_a'])}, difference {fmt(c['mean_diff'])} "
        f"(95% CI {fmt(c['ci_t'][0])} to {fmt(c['ci_t'][1])}), p = {fmt_p(prim['p'])}, d_z = {fmt(c['cohens_dz'])}."
    )
    mde = (
        f" With {c['n']} pairs the design detects d_z of {fmt(prim['mde_dz'])} or more with {100 * prim['power']:.0f}% power (two-sided alpha {prim['alpha']});"
        " a smaller true effect may go unseen."
        if prim["mde_dz"] is not None
        else " " + "; ".join(prim["notes"]) + "."
    )
    return (
        head
        + body
        + mde
        + ' Every other test is labelled secondary or exploratory, with its p adjusted within its family (see "Every test, by family").'
    )


def _bracket(c) -> str:
    return f"[{fmt(c[0])}, {fmt(c[1])}]"


def primary_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """The primary endpoint as declared, the tests by family with their adjusted p-values, and when each arm ran."""
    st = ctx["stats"]
    prim = st.get("primary")
    return {
        "primary": _primary_text(prim, ctx.get("declaration")) if prim else None,
        "tests": [
            [t["family"], t["test"], fmt_p(t["p"]), fmt_p(t.get("p_adjusted")), t.get("family_size", "—")] for t in st.get("tests", [])
        ],
        "arm_timing": arm_timing(ctx),
    }


def ctrs_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """The CTRS comparison: tuned vs instruct per model and pooled, the published means beside ours, descriptives, per item, between models, subtotals."""
    st = ctx["stats"]
    items = st["items"]
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
        "per_item": {
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
        },
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
    """The risk strata beside the primary, the mixed model (arm by model, arm by risk) and the sensitivity analysis without the closing instruction."""
    st = ctx["stats"]

    mm = st.get("mixed_model") or {}
    cl = st.get("closing") or {}
    return {
        "risk_strata": [
            ["no risk" if r["stratum"] == "none" else "at risk", r["model"], *_paired_cells(r), _notes(r)]
            for r in st.get("risk_strata", [])
        ],
        "mixed_risk": [
            ["no risk" if e["risk"] == "none" else "at risk", fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"]), fmt_p(e["p"])]
            for e in mm.get("arm_effects_by_risk", [])
        ],
        "mixed_emm": [[e["model"], e["arm"], fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"])] for e in mm.get("emm", [])],
        "mixed_effects": [[e["model"], fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"]), fmt_p(e["p"])] for e in mm.get("arm_effects", [])],
        "closing": [
            [m, *_paired_cells(c), _notes(c)]
            for m, c in [*cl.get("without", {}).items(), *([("pooled", cl["pooled_without"])] if cl else [])]
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
            for name, ab in ctx.get("ablations", {}).items()
            for r in ab["comparison"]
        ],
        "turn_groups": [
            [g["model"], g["arm"], g["n"], fmt(g["rho"]), fmt_p(g["p"]), _notes(g)] for g in ctx.get("turn_windows", {}).get("groups", [])
        ],
        "turn_bins": [
            [b["model"], b["arm"], b["context"], b["n"], fmt(b["mean_pct"], 1)] for b in ctx.get("turn_windows", {}).get("bins", [])
        ],
    }


def agreement_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """Within-judge consistency, inter-judge agreement and judge-human agreement, kept apart."""
    st = ctx["stats"]
    items = st["items"]
    ha = st.get("human_agreement")
    return {
        "reliability": [
            [
                judge,
                k,
                rel[k]["n"],
                rel[k]["k"],
                fmt(rel[k]["icc2_1"]),
                _ci(rel[k].get("ci2_1")),
                fmt(rel[k]["icc2_k"]),
                _ci(rel[k].get("ci2_k")),
                fmt(rel[k].get("kripp_alpha")),
                _ci(rel[k].get("kripp_ci")),
                _notes(rel[k]),
            ]
            for judge, rel in st["reliability"].items()
            for k in [*items, "total"]
        ],
        "inter_judge": [
            [k, v["n"], fmt(v["icc2_1"]), _ci(v.get("ci2_1")), fmt(v.get("kripp_alpha")), _ci(v.get("kripp_ci")), _notes(v)]
            for k in [*items, "total"]
            if (v := (st.get("inter_judge") or {}).get(k))
        ],
        "human": [
            [k, v["n"], fmt(v["icc2_1"]), _ci(v.get("ci2_1")), fmt(v.get("kripp_alpha")), fmt(v["spearman"]), fmt(v["mad"]), _notes(v)]
            for k in [*items, "total"]
            if (v := ha["items"].get(k))
        ]
        if ha
        else [],
    }


def run_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """What the run cost and was made of: judge tokens, training, parity, rollouts, benchmarks, packages, models, files and the config."""
    js = ctx["judge_stats"]
    owners = instruct_owners(ctx["config"])

    def users(p):  # every entry whose arm this record checks (entries with one base share the instruct arm)
        if p["arm"] != "instruct":
            return p["model"]
        return ", ".join(m for m, o in owners.items() if o == p["model"]) or p["model"]

    parity = [
        [users(p), p["arm"], lab, f"{100 * r['top1_agreement']:.1f}%", r["positions"], fmt(r["max_abs_logit_diff"], 3)]
        for p in ctx["parity"]
        for lab, r in p["results"].items()
    ]
    # the import's own check: the written Hugging Face model against llama.cpp on its source GGUF
    parity += [
        [
            users({**p, "arm": "instruct"}),
            "import",
            "source GGUF",
            f"{100 * r['top1_agreement']:.1f}%",
            r["positions"],
            fmt(r["max_abs_logit_diff"], 3),
        ]
        for p in ctx["provenance_models"]
        if (r := p.get("parity_vs_source_gguf"))
    ]
    rs = ctx["rollout_stats"]
    served = sorted({f"{r['model']}/{r['arm']}" for r in rs if r.get("therapist_backend") == "llama_server"})
    bt = ctx["benchmarks"]
    pv = ctx["provenance"]
    import yaml

    return {
        "judge": {
            "completion_tokens": sum(j["completion_tokens"] for j in js),
            "prompt_tokens": sum(j["prompt_tokens"] for j in js),
            "seconds": sum(j["judge_seconds"] for j in js),
            "reused": sum((j.get("llm") or {}).get("prompt_tokens_reused", 0) for j in js),
            "cost": sum(j["cost_usd"] for j in js),
        },
        "training": [
            [
                t["model"],
                t["method"],
                t["steps"],
                fmt(t["train_loss_before"], 3),
                fmt(t["train_loss_after"], 3),
                fmt(t["val_loss_before"], 3),
                fmt(t["val_loss_after"], 3),
                fmt(t["tokens_per_second_mean"], 1),
                t.get("chat_layout", "—"),
                _shortening(t),
                t["resumed_from"] or "—",
            ]
            for t in ctx["training"]
        ],
        "parity": parity,
        "rollouts": [
            [
                r["model"],
                r["arm"],
                r["sessions"],
                r["turns"],
                ", ".join(f"{k}: {v}" for k, v in sorted(r["stop_reasons"].items())),
                fmt(r["therapist"]["tokens_per_second"], 1),
                fmt(r["patient"]["tokens_per_second"], 1),
            ]
            for r in rs
        ],
        "served": served,
        "parallel": max((r.get("parallel_sessions", 1) for r in rs), default=1),
        "benchmarks": [[b["stage"], b["jobs"], fmt(b["seconds"], 1), fmt(b["max_rss_mb"], 0)] for b in bt],
        "benchmark_seconds": sum(b["seconds"] for b in bt),
        "packages": [[k, v or "—"] for k, v in pv["packages"].items()],
        "models": [
            [
                m["model"],
                m["source"],
                f"{m['hub']['repo_id']} @ {m['hub']['commit']} (revision {m['hub']['revision']}, downloaded {m['hub']['downloaded_at']})"
                if m.get("hub")
                else "—",
                m["sha256"] if isinstance(m["sha256"], str) else "; ".join(f"{k}: {v}" for k, v in (m["sha256"] or {}).items()),
            ]
            for m in pv["models"]
        ],
        "files": [[k, v] for k, v in pv["files"].items()],
        "config_yaml": yaml.safe_dump(ctx["config"], sort_keys=True),
    }


# The report's sections, each a view function over the same context; the template reads their union.
SECTIONS = (primary_view, ctrs_view, risk_view, missing_view, sensitivity_view, agreement_view, run_view)


def report_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """The rows of the report's tables and its totals, formatted (the template only lays them
    out): the union of the section views."""
    view: dict[str, Any] = {}
    for section in SECTIONS:
        view |= section(ctx)
    return view


def arm_timing(ctx: dict[str, Any]) -> dict[str, Any]:
    """When each arm's sessions were played and which patient and judge models answered, per model
    and arm; a served model that differs between the arms of a model is a deviation of the run."""
    rows, deviations = [], []
    judge_served = ((ctx["stats"].get("judge_provenance") or {}).get("served_by_arm")) or {}
    by_model: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(lambda: {"first": [], "last": [], "patient": set()}))
    for st in ctx.get("rollout_stats", []):
        cell = by_model[st["model"]][st["arm"]]
        cell["first"] += [st["first_call"]] if st.get("first_call") else []
        cell["last"] += [st["last_call"]] if st.get("last_call") else []
        cell["patient"] |= set(st.get("served_models", []))
    for m, arms in sorted(by_model.items()):
        for a, c in arms.items():
            judges = judge_served.get(m, {}).get(a, [])
            rows.append(
                [
                    m,
                    a,
                    _utc(min(c["first"], default=None)),
                    _utc(max(c["last"], default=None)),
                    ", ".join(sorted(c["patient"])) or "—",
                    ", ".join(judges) or "—",
                ]
            )
        for role, sets in (
            ("patient", {a: c["patient"] for a, c in arms.items()}),
            ("judge", {a: set(judge_served.get(m, {}).get(a, [])) for a in arms}),
        ):
            if len({frozenset(v) for v in sets.values()}) > 1:
                detail = "; ".join(f"{a}: {', '.join(sorted(v)) or 'unknown'}" for a, v in sorted(sets.items()))
                deviations.append(f"{m}: the {role} model served to the arms differed ({detail}); the arms met different models")
    for name, m in sorted(ctx["config"]["models"].items()):
        src = m.get("source") or {}
        rev = str(src.get("revision", "main"))
        if src.get("type") == "hub" and not re.fullmatch(r"[0-9a-f]{40}", rev):
            deviations.append(
                f"models.{name}.source.revision is {rev!r}, a name that can move, not a commit: the downloaded commit is recorded "
                "(model provenance), but another download may get other weights"
            )
    return {"rows": rows, "deviations": deviations}


def safety_view(sf: dict[str, Any]) -> dict[str, Any]:
    """The rows of the report's safety tables (results/report/safety.json)."""
    if not sf:
        return {}
    dims = {d["id"]: d["name"] for d in sf["rubric"]["dimensions"]}
    per_arm = [
        [
            a["model"],
            a["arm"],
            a["at_risk_sessions"],
            a["disclosed"],
            a["not_disclosed"],
            a["gate_missing"],
            _rate(a["all_at_risk"]["any_high_harm"]),
            _mean_ci(a["all_at_risk"]["score"]),
            _rate(a["any_high_harm"]),
            _mean_ci(a["score"]),
            f"{a['over_escalation']['k']}/{a['over_escalation']['n']}"
            + (f" ({a['over_escalation']['missing']} missing)" if a["over_escalation"].get("missing") else ""),
            a["unexpected_disclosures"],
            f"{a['refusals']['safety_judge']} / {a['refusals']['ctrs_judge']}",
            a["refusals"]["patient_turns"],
        ]
        for a in sf["per_arm"]
    ]
    adj = {t["test"]: t for t in sf.get("tests", [])}

    def comp_row(model: str, population: str, c: dict[str, Any], tests: tuple[str, str]) -> list[Any]:
        t, mc, d, s = c["table"], c["mcnemar"], c["harm_rate_difference"], c["score"]
        dci = f" [{fmt(100 * d['ci'][0], 1)}, {fmt(100 * d['ci'][1], 1)}]" if d["ci"][0] is not None else ""
        harm_t, score_t = (adj.get(f"{model}: {x}") or {} for x in tests)
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
            s["n"],
            fmt(s["mean_diff"], 1),
            f"[{fmt(s['ci_boot'][0], 1)}, {fmt(s['ci_boot'][1], 1)}]",
            fmt_p(s["p_t"]),
            fmt_p(score_t.get("p_adjusted")),
            "; ".join(mc["notes"] + s["notes"]),
        ]

    comp = []
    for c in sf["comparisons"]:
        if "all_at_risk" in c:
            comp.append(
                comp_row(
                    c["model"],
                    "all at-risk sessions (primary)",
                    c["all_at_risk"],
                    (
                        "any high-harm rating, all at-risk sessions (clustered McNemar)",
                        "safety score, all at-risk sessions (paired t)",
                    ),
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

    def pc(x, ci=None):
        if x is None:
            return "—"
        lo, hi = ci or (None, None)
        return f"{100 * x:.0f}%" + (f" [{100 * lo:.0f}%, {100 * hi:.0f}%]" if lo is not None else "")

    def dci(v, k):
        return (v.get("ci") or {}).get(k)

    dim_rows = [
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
    breakdown = [
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
    timing = [
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
    abl = [
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
    return {"per_arm": per_arm, "comparisons": comp, "dimensions": dim_rows, "breakdown": breakdown, "timing": timing, "ablations": abl}


def plan_view(ctx: dict[str, Any]) -> list[list[Any]]:
    """The plan's estimates beside what this run's jobs used (calls made now: units reused from
    an earlier run and answers from the response cache cost nothing)."""
    plan = ctx.get("plan") or {}
    if not plan:
        return []

    def llm_sum(stats):
        acc = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cache_hits": 0}
        for s in stats:
            for k in acc:
                acc[k] += ((s or {}).get("llm") or {}).get(k, 0) or 0
        return acc

    rs = ctx.get("rollout_stats", [])
    actual = {
        "generation": llm_sum([ctx.get("gen_stats")]),
        "eval_history": llm_sum([ctx.get("eval_history")]),
        "judge": llm_sum(ctx.get("judge_stats", [])),
        **{
            f"judge ({name})": llm_sum([s["judges"][name] for s in ctx.get("judge_stats", []) if name in (s.get("judges") or {})])
            for name in {n for s in ctx.get("judge_stats", []) for n in (s.get("judges") or {})}
        },
        "safety": llm_sum(ctx.get("safety_stats", [])),
        "rollout": {
            "calls": sum(s.get("turns", 0) for s in rs) / 2,
            "prompt_tokens": sum((s.get("patient") or {}).get("prompt_tokens", 0) for s in rs),
            "completion_tokens": sum((s.get("patient") or {}).get("completion_tokens", 0) for s in rs),
            "cache_hits": None,
        },
    }
    rows = []
    for x in plan["stages"]:
        a = actual.get(x["stage"], {})
        calls = a.get("calls")
        rows.append(
            [
                x["stage"],
                x["backend"],
                f"{x['calls']:,}",
                "—" if calls is None else (f"≈{calls:,.0f}" if x["stage"] == "rollout" else f"{calls:,}"),
                "—" if a.get("cache_hits") is None else a["cache_hits"],
                f"{x['prompt_tokens']:,}",
                f"{a.get('prompt_tokens', 0):,}",
                f"{x['completion_tokens']:,}",
                f"{a.get('completion_tokens', 0):,}",
                fmt(x["cost_usd"]),
                x["rates"],
            ]
        )
    return rows
