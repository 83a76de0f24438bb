"""The CTRS comparisons: the primary endpoint, tuned against instruct per model and pooled, between
models, per item, by position, by risk stratum, by length and context, subtotals, ablations and
the closing-instruction sensitivity analysis."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from .anova import friedman, rm_anova
from .pairs import as_float, design_unit, finite_mean, matched_units, paired_arrays, persona_set, risk_stratum, rows_where
from .stattests import adjust_within_families, clustered_spearman, p_adjust, paired_comparison, paired_with_covariate


def primary_endpoint(totals: list[dict[str, str]], models: list[str], rcfg: dict[str, Any], n_boot: int, seed: int) -> dict[str, Any]:
    """The comparison declared primary in the config (report.primary), with the smallest effect
    the design could detect at the configured power."""
    from .stattests import minimum_detectable_dz

    prim, alpha = rcfg["primary"], rcfg["alpha"]
    per_model, pooled = tuned_vs_instruct(totals, models, alpha, n_boot, seed, key=prim["outcome"])
    c = pooled if prim["contrast"] == "pooled" else per_model.get(prim["contrast"])
    res = {**prim, "power": rcfg["power"], "alpha": alpha, "result": c, "p": None, "mde_dz": None, "notes": []}
    if c is None:
        res["notes"].append(f"model {prim['contrast']} has no sessions")
        return res
    res["p"] = c["p_t"] if prim["test"] == "paired_t" else c["p_wilcoxon"]
    res["mde_dz"] = minimum_detectable_dz(c["n"], alpha, rcfg["power"])
    if res["mde_dz"] is None:
        res["notes"].append("Fewer than 3 patient pairs: no detectable effect can be stated")
    return res


def _mean_sd(v: np.ndarray) -> tuple[float | None, float | None]:
    return (float(v.mean()) if v.size else None, float(v.std(ddof=1)) if v.size > 1 else None)


def descriptives(totals: list[dict[str, str]], models: list[str], arms: list[str], items: list[str], threshold: float | None) -> list:
    """Mean and SD of the total and of each item per model and arm (the study's table)."""
    desc = []
    for m in models:
        for a in arms:
            rows = [r for r in totals if r["model"] == m and r["arm"] == a]
            tot = np.array([as_float(r["total"]) for r in rows])
            tot = tot[np.isfinite(tot)]
            mean, sd = _mean_sd(tot)
            d = {
                "model": m,
                "arm": a,
                "sessions": len(rows),
                "n_total": int(tot.size),
                "mean": mean,
                "sd": sd,
                "competent_share": float((tot >= threshold).mean()) if (tot.size and threshold is not None) else None,
                "items": {},
            }
            for it in items:
                v = np.array([as_float(r[it]) for r in rows])
                v = v[np.isfinite(v)]
                mean, sd = _mean_sd(v)
                d["items"][it] = {"mean": mean, "sd": sd, "n": int(v.size)}
            desc.append(d)
    return desc


def tuned_vs_instruct(
    totals: list[dict[str, str]], models: list[str], alpha: float, n_boot: int, seed: int, key: str = "total"
) -> tuple[dict, dict]:
    """CBT-tuned against instruct on the same patients at matched positions (a patient's mean in
    each arm over the positions present in both): per model, and pooled over models (stratified
    by patient), for the total or one item (``key``)."""
    per_model = {}
    diffs_by_patient: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for m in models:
        pats, a, b = paired_arrays(totals, m, key)
        _, unmatched = matched_units(totals, key, (m, "cbt"), (m, "instruct"))
        per_model[m] = paired_comparison(a, b, alpha=alpha, n_boot=n_boot, seed=seed) | {"patients": pats, "unmatched_sessions": unmatched}
        for p, x, y in zip(pats, a, b, strict=True):
            diffs_by_patient[p].append((x, y))
    # each patient's arms averaged over models: the difference of these is the pooled difference
    pooled_a = np.array([np.mean([x for x, _ in v]) for v in diffs_by_patient.values()])
    pooled_b = np.array([np.mean([y for _, y in v]) for v in diffs_by_patient.values()])
    pooled = paired_comparison(pooled_a, pooled_b, alpha=alpha, n_boot=n_boot, seed=seed) | {
        "method": "stratified by patient: each patient's CBT-minus-instruct difference is averaged over models, "
        "then tested with a paired t-test and a Wilcoxon signed-rank test across patients",
        "models": models,
    }
    return per_model, pooled


def between_models(totals: list[dict[str, str]], models: list[str], arms: list[str], alpha: float, n_boot: int, seed: int) -> dict:
    """The CBT-tuned arms of the models on the patients they share, each patient's mean over the
    positions every model has: repeated-measures ANOVA, Friedman, and Holm-corrected pairwise
    comparisons."""
    if len(models) < 2 or "cbt" not in arms:
        return {"note": "needs at least two models with a CBT-tuned arm"}
    val = {(m, design_unit(r)): as_float(r["total"]) for m in models for r in totals if r["model"] == m and r["arm"] == "cbt"}
    units = sorted({u for (_, u) in val if all(np.isfinite(val.get((m, u), float("nan"))) for m in models)})
    pats = sorted({u[0] for u in units})
    y = (
        np.array([[np.mean([val[(m, u)] for u in units if u[0] == p]) for m in models] for p in pats])
        if pats
        else np.zeros((0, len(models)))
    )
    pairs = []
    for i in range(len(models)):
        for j in range(i + 1, len(models)):
            c = paired_comparison(y[:, i], y[:, j], alpha=alpha, n_boot=n_boot, seed=seed) if len(pats) else paired_comparison([], [])
            pairs.append({"a": models[i], "b": models[j], **c})
    for p, q in zip(pairs, p_adjust([p["p_t"] for p in pairs], "holm"), strict=True):
        p["p_holm"] = q
    return {"patients": pats, "rm_anova": rm_anova(y), "friedman": friedman(y), "pairwise": pairs}


def per_item(
    totals: list[dict[str, str]], models: list[str], items: list[str], method: str, alpha: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """Tuned against instruct on each rubric item, p-values corrected across items."""
    out = {}
    for m in models:
        comps = []
        for it in items:
            _, a, b = paired_arrays(totals, m, it)
            comps.append(paired_comparison(a, b, alpha=alpha, n_boot=n_boot, seed=seed) | {"item": it})
        for key in ("p_t", "p_wilcoxon"):
            for c, q in zip(comps, p_adjust([c[key] for c in comps], method), strict=True):
                c[f"{key}_adj"] = q
        out[m] = {"correction": method, "items": comps}
    return out


def by_position(totals: list[dict[str, str]], models: list[str], alpha: float, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Tuned against instruct at each course position (paired by patient at that position)."""
    out = []
    for pos in sorted({str(r.get("position") or "1") for r in totals}, key=int):
        sub = [r for r in totals if str(r.get("position") or "1") == pos]
        for m in models:
            _, a, b = paired_arrays(sub, m)
            c = paired_comparison(a, b, alpha=alpha, n_boot=n_boot, seed=seed)
            out.append(
                {
                    "position": int(pos),
                    "model": m,
                    "sessions": len(rows_where(sub, model=m)),
                    "mean_cbt": finite_mean(r["total"] for r in rows_where(sub, model=m, arm="cbt")),
                    "mean_instruct": finite_mean(r["total"] for r in rows_where(sub, model=m, arm="instruct")),
                    **{k: c[k] for k in ("n", "mean_diff", "ci_t", "p_t", "notes")},
                }
            )
    return out


def lengths(totals: list[dict[str, str]], models: list[str], arms: list[str]) -> list[dict[str, Any]]:
    """How long the sessions of each model and arm were, and how they ended."""
    out = []
    for m in models:
        for a in arms:
            rows = rows_where(totals, model=m, arm=a)
            if not rows or "turns" not in rows[0]:
                continue
            stops: dict[str, int] = defaultdict(int)
            for r in rows:
                stops[r["stop_reason"]] += 1
            ctx = [as_float(r["context_tokens_max"]) for r in rows]
            out.append(
                {
                    "model": m,
                    "arm": a,
                    "sessions": len(rows),
                    "turns_mean": finite_mean(r["turns"] for r in rows),
                    "words_per_therapist_turn": finite_mean(r["words_per_therapist_turn"] for r in rows),
                    "therapist_tokens_mean": finite_mean(r["therapist_tokens"] for r in rows),
                    "turns_cut_at_max_tokens": int(np.nansum([as_float(r["turns_cut_at_max_tokens"]) for r in rows])),
                    "sessions_with_context_truncation": sum(as_float(r["context_truncations"]) > 0 for r in rows),
                    "context_tokens_max": int(np.nanmax(ctx)) if np.isfinite(ctx).any() else None,
                    "context_tokens_mean": finite_mean(r["context_tokens_max"] for r in rows),
                    "closing_prompted": sum(r["closing_prompted"] == "1" for r in rows),
                    "stop_reasons": dict(sorted(stops.items())),
                }
            )
    return out


def length_adjusted(totals: list[dict[str, str]], models: list[str], alpha: float) -> dict[str, Any]:
    """The paired tuned-vs-instruct comparison repeated with session length as a covariate (turns,
    and therapist words): does the gain hold at equal length? Over the matched units only."""
    out: dict[str, Any] = {}
    if not totals or "turns" not in totals[0]:
        return out
    for cov in ("turns", "therapist_words"):
        out[cov] = {}
        for m in models:
            y, _ = matched_units(totals, "total", (m, "cbt"), (m, "instruct"))
            # the covariate over the same units as the totals (units with a total in both arms)
            keep = {design_unit(r) for r in totals if r["model"] == m and r["arm"] == "cbt" and np.isfinite(as_float(r["total"]))}
            keep &= {design_unit(r) for r in totals if r["model"] == m and r["arm"] == "instruct" and np.isfinite(as_float(r["total"]))}
            sub = [r for r in totals if r["model"] == m and design_unit(r) in keep]
            c, _ = matched_units(sub, cov, (m, "cbt"), (m, "instruct"))
            pats = sorted(set(y) & set(c))
            if not pats:
                out[cov][m] = paired_with_covariate([], [], alpha=alpha)
                continue
            d = np.array([np.mean([a - b for a, b in y[p]]) for p in pats])
            dc = np.array([np.mean([a - b for a, b in c[p]]) for p in pats])
            out[cov][m] = paired_with_covariate(d, dc, alpha=alpha)
    return out


def context_vs_score(
    totals: list[dict[str, str]], models: list[str], arms: list[str], limit: int = 4000, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Session totals against the largest context the therapist reached (the study saw quality fall
    near 4,000 tokens): Spearman correlation per model and arm and pooled, with the patient as the
    unit (see ``clustered_spearman``), and the mean total of sessions below and at or above
    ``limit`` tokens."""
    if not totals or "context_tokens_max" not in totals[0]:
        return {}

    def summary(rows):
        x = [as_float(r["context_tokens_max"]) for r in rows]
        y = [as_float(r["total"]) for r in rows]
        below = [t for c, t in zip(x, y, strict=True) if c < limit]
        above = [t for c, t in zip(x, y, strict=True) if c >= limit]
        return clustered_spearman(x, y, [r["patient_id"] for r in rows], n_boot=n_boot, seed=seed) | {
            "mean_below": finite_mean(below),
            "n_below": len(below),
            "mean_at_or_above": finite_mean(above),
            "n_at_or_above": len(above),
        }

    groups = [
        {"model": m, "arm": a, **summary(rows_where(totals, model=m, arm=a))}
        for m in models
        for a in arms
        if rows_where(totals, model=m, arm=a)
    ]
    return {"limit_tokens": limit, "groups": groups, "pooled": summary(totals)}


def subtotal_comparisons(
    totals: list[dict[str, str]], rubric: dict[str, Any], models: list[str], alpha: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """Tuned against instruct on each rubric subtotal (a sensitivity analysis beside the total)."""
    out = {}
    for sid, sub in rubric.get("subtotals", {}).items():
        out[sid] = {
            "name": sub["name"],
            "max": sub["max"],
            "note": sub["note"],
            "models": {m: paired_comparison(*paired_arrays(totals, m, sid)[1:], alpha=alpha, n_boot=n_boot, seed=seed) for m in models},
        }
    return out


def ablation_comparison(
    main: list[dict[str, Any]], variant: list[dict[str, Any]], models: list[str], arms: list[str], alpha: float, n_boot: int, seed: int
) -> list[dict[str, Any]]:
    """Each model and arm under an ablation's rollout settings against the main run, paired by
    patient at matched positions (the same patients, positions and seeds), with the context each
    reached."""
    out = []
    rows = [dict(r, arm=f"variant:{r['arm']}") for r in variant] + list(main)
    for m in models:
        for a in arms:
            _, x, y = paired_arrays(rows, m, "total", a=f"variant:{a}", b=a)
            c = paired_comparison(x, y, alpha=alpha, n_boot=n_boot, seed=seed)
            out.append(
                {
                    "model": m,
                    "arm": a,
                    **{k: c[k] for k in ("n", "mean_a", "mean_b", "mean_diff", "ci_t", "p_t", "notes")},
                    "context_tokens_mean_variant": finite_mean(r.get("context_tokens_max") for r in rows_where(variant, model=m, arm=a)),
                    "context_tokens_mean_main": finite_mean(r.get("context_tokens_max") for r in rows_where(main, model=m, arm=a)),
                }
            )
    return out


def ablation_tests(ablations: dict[str, Any]) -> list[dict[str, Any]]:
    """The register's entries of the rollout ablations (each variant against the main run, per
    model and arm), one exploratory family adjusted by Holm."""
    tests = [
        {"family": "exploratory: rollout ablations", "test": f"{name}: total against the main run, {r['model']}/{r['arm']}", "p": r["p_t"]}
        for name, ab in ablations.items()
        for r in ab["comparison"]
    ]
    return adjust_within_families(tests)


def turn_tests(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The register's entries of the per-turn pass: Spearman of an excerpt's score against its
    context, per model and arm and pooled, the patient as the unit; one exploratory family."""
    tests = [
        {"family": "exploratory: per-turn scores", "test": f"Spearman per-turn score ~ context, {g['model']}/{g['arm']}", "p": g["p"]}
        for g in res.get("groups", [])
    ]
    return adjust_within_families(tests)


CONTEXT_BINS = (0, 1000, 2000, 4000, 8000)


def turn_scores_vs_context(
    rows: list[dict[str, Any]], bins: tuple[int, ...] = CONTEXT_BINS, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Excerpt scores (percent of the scale's maximum) against the therapist's context at the
    excerpt's last turn: Spearman per model and arm and pooled, with the patient as the unit (the
    excerpts of a patient's sessions are not independent; see ``clustered_spearman``), and mean
    scores per context bin."""

    def label(lo, hi):
        return f"{lo}-{hi}" if hi is not None else f">= {lo}"

    edges = [*bins, None]
    groups = sorted({(r["model"], r["arm"]) for r in rows})
    out: dict[str, Any] = {"excerpts": len(rows), "missing": sum(r["total_pct"] is None for r in rows), "groups": [], "bins": []}
    for key in [*groups, ("pooled", "both")]:
        sub = rows if key[0] == "pooled" else [r for r in rows if (r["model"], r["arm"]) == key]
        x = [float(r["context_tokens"]) for r in sub]
        y = [float("nan") if r["total_pct"] is None else float(r["total_pct"]) for r in sub]
        clusters = [r.get("patient_id", "") for r in sub]
        out["groups"].append({"model": key[0], "arm": key[1], **clustered_spearman(x, y, clusters, n_boot=n_boot, seed=seed)})
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            vals = [v for c, v in zip(x, y, strict=True) if c >= lo and (hi is None or c < hi) and np.isfinite(v)]
            if vals:
                out["bins"].append(
                    {"model": key[0], "arm": key[1], "context": label(lo, hi), "n": len(vals), "mean_pct": float(np.mean(vals))}
                )
    return out


def risk_strata(totals: list[dict[str, str]], models: list[str], alpha: float, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Tuned against instruct within each risk stratum (no risk, at risk), per model and pooled."""
    out = []
    for stratum in ("none", "at_risk"):
        sub = [r for r in totals if risk_stratum(r) == stratum]
        per_model, pooled = tuned_vs_instruct(sub, models, alpha, n_boot, seed)
        for m, c in [*per_model.items(), ("pooled", pooled)]:
            out.append({"stratum": stratum, "model": m, "patients": len({r["patient_id"] for r in sub}), **c})
    return out


def persona_sets(totals: list[dict[str, str]], models: list[str], alpha: float, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Tuned against instruct within each evaluation set (held out, in distribution) of the CTRS
    population, per model and pooled: the in-distribution set beside the held-out one, where a run
    has both. Empty with one set."""
    sets = sorted({persona_set(r) for r in totals}, key=lambda s: s != "held_out")
    if len(sets) < 2:
        return []
    out = []
    for s in sets:
        sub = [r for r in totals if persona_set(r) == s]
        per_model, pooled = tuned_vs_instruct(sub, models, alpha, n_boot, seed)
        for m, c in [*per_model.items(), ("pooled", pooled)]:
            out.append({"set": s, "model": m, "patients": len({r["patient_id"] for r in sub}), **c})
    return out


def closing_sensitivity(
    totals: list[dict[str, str]], rejudged: list[dict[str, str]] | None, models: list[str], alpha: float, n_boot: int, seed: int
) -> dict[str, Any]:
    """Sessions whose therapist was asked to close at max_turns (rollout.at_max_turns: closing),
    per model and arm, and the tuned-vs-instruct comparison on the same sessions judged again with
    the closing turn removed (``rejudged``; rule judge_closing). Every pair is kept: leaving out
    the pairs in which either arm received the instruction would condition on what happened after
    the arms were assigned (how long each therapist's sessions ran)."""
    if not totals or "closing_prompted" not in totals[0]:
        return {}
    counts = [
        {"model": m, "arm": a, "sessions": len(rs), "closing_prompted": sum(r["closing_prompted"] == "1" for r in rs)}
        for m in models
        for a in ("instruct", "cbt")
        if (rs := rows_where(totals, model=m, arm=a))
    ]
    out: dict[str, Any] = {"counts": counts, "prompted": sum(c["closing_prompted"] for c in counts)}
    if not rejudged:
        out["method"] = "none prompted" if not out["prompted"] else "not re-judged"
        return out
    per_model, pooled = tuned_vs_instruct(rejudged, models, alpha, n_boot, seed)
    main, main_pooled = tuned_vs_instruct(totals, models, alpha, n_boot, seed)
    main["pooled"], per_model_all = main_pooled, {**per_model, "pooled": pooled}

    def shift(m: str) -> float | None:
        a, b = per_model_all[m].get("mean_diff"), (main.get(m) or {}).get("mean_diff")
        return None if a is None or b is None else a - b

    return out | {
        "method": "re-judged without the closing turn",
        "sessions_rejudged": len(rejudged),
        "without": per_model,
        "pooled_without": pooled,
        # how much the closing turn moves the CBT-minus-instruct difference
        "shift": {m: shift(m) for m in per_model_all},
    }
