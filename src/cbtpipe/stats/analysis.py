"""Score tables and the statistical analysis of the judged sessions."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..design import SESSION_COLUMNS
from .stattests import (
    adjust_within_families,
    agreement,
    clustered_spearman,
    friedman,
    inter_rater,
    mixed_arm_by_model,
    p_adjust,
    paired_comparison,
    paired_with_covariate,
    rm_anova,
)

LONG_FIELDS = ["session_id", "patient_id", "model", "arm", "quantization", "judge", "judge_sample", "valid", "item", "score"]


def long_rows(judged: list[dict[str, Any]], rubric: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for j in judged:
        for s in j["samples"]:
            for it in rubric["items"]:
                v = s["scores"].get(it["id"])
                rows.append(
                    {
                        "session_id": j["session_id"],
                        "patient_id": j["patient_id"],
                        "model": j["model"],
                        "arm": j["arm"],
                        "quantization": j["quantization"],
                        "judge": s.get("judge", "judge"),
                        "judge_sample": s["sample"],
                        "valid": int(s["valid"]),
                        "item": it["id"],
                        "score": "" if v is None else v,
                    }
                )
    return rows


def session_lengths(session: dict[str, Any]) -> dict[str, Any]:
    """The length columns of one rollout session (``rubric.SESSION_COLUMNS``)."""
    th = sum(m["role"] == "therapist" for m in session["messages"])
    words = session.get("therapist_words", 0)
    return {
        "position": session.get("position", 1),
        "session": session.get("session", 0),
        "turns": session["turns"],
        "therapist_turns": th,
        "therapist_words": words,
        "words_per_therapist_turn": round(words / th, 2) if th else "",
        "therapist_tokens": session.get("therapist_tokens", ""),
        "turns_cut_at_max_tokens": session.get("turns_cut_at_max_tokens", ""),
        "context_truncations": session.get("context_truncations", 0),
        "context_tokens_max": session.get("context_tokens_max", ""),
        "stop_reason": session["stop_reason"],
        "closing_prompted": int(bool(session.get("closing_prompted"))),
    }


def risk_level(profile: dict[str, Any] | None) -> str:
    """A persona's risk level ("none" without a risk block)."""
    return ((profile or {}).get("risk") or {}).get("level", "none")


def total_rows(
    judged: list[dict[str, Any]],
    rubric: dict[str, Any],
    sessions: dict[str, dict[str, Any]] | None = None,
    profiles: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per judged session: the total (also as percent of the scale's maximum), the
    rubric's subtotals, each item, the persona's risk level, and the session's position and
    length from its rollout."""
    rows = []
    for j in judged:
        r = {
            "session_id": j["session_id"],
            "patient_id": j["patient_id"],
            "model": j["model"],
            "arm": j["arm"],
            "quantization": j["quantization"],
            "risk_level": risk_level((profiles or {}).get(j["patient_id"])),
            "samples": len(j["samples"]),
            "valid_samples": j["valid_samples"],
            "total": "" if j["total"] is None else round(j["total"], 4),
            "total_pct": "" if j["total"] is None else round(100 * j["total"] / rubric["max_total"], 4),
        }
        for sid, sub in rubric.get("subtotals", {}).items():
            vals = [j["item_scores"].get(i) for i in sub["items"]]
            r[sid] = round(sum(vals), 4) if all(v is not None for v in vals) else ""
        for it in rubric["items"]:
            v = j["item_scores"].get(it["id"])
            r[it["id"]] = "" if v is None else round(v, 4)
        if sessions is not None:
            r |= session_lengths(sessions[j["session_id"]])
        rows.append(r)
    return rows


def total_fields(rubric: dict[str, Any]) -> list[str]:
    head = ["session_id", "patient_id", "model", "arm", "quantization", "risk_level", "samples", "valid_samples", "total", "total_pct"]
    return head + list(rubric.get("subtotals", {})) + [i["id"] for i in rubric["items"]] + list(SESSION_COLUMNS)


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    import io

    from ..workflow import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _num(x: str | None) -> float:
    return float(x) if x not in (None, "") else float("nan")


def _unit(r: dict[str, str]) -> tuple[str, str, str]:
    """A session's place in the design, the same in every arm and model: (patient, position, repeat)."""
    return (r["patient_id"], str(r.get("position") or "1"), str(r.get("session") or "0"))


def matched_units(
    rows: list[dict[str, str]], key: str, a: tuple[str, str], b: tuple[str, str]
) -> tuple[dict[str, list[tuple[float, float]]], int]:
    """Pairs of ``key`` values of the (model, arm) cells ``a`` and ``b`` at matched positions:
    patient -> [(value in a, value in b)] over the (position, session) units where both have a
    finite value; with the number of units present in either cell that have no partner."""
    va = {_unit(r): _num(r.get(key)) for r in rows if (r["model"], r["arm"]) == a}
    vb = {_unit(r): _num(r.get(key)) for r in rows if (r["model"], r["arm"]) == b}
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
        acc[(r["model"], r["arm"])][r["patient_id"]].append(_num(r[key]))
    out: dict[tuple[str, str], dict[str, float]] = {}
    for k, pats in acc.items():
        out[k] = {}
        for p, vals in pats.items():
            good = [v for v in vals if np.isfinite(v)]
            out[k][p] = float(np.mean(good)) if good else float("nan")
    return out


def missing_answers(long: list[dict[str, str]], totals: list[dict[str, str]]) -> dict[str, Any]:
    """How many judge samples were valid (a sample that failed the schema is missing, never 0)."""
    n_samples = len({(r["session_id"], r.get("judge"), r["judge_sample"]) for r in long})
    n_valid = len({(r["session_id"], r.get("judge"), r["judge_sample"]) for r in long if r["valid"] == "1"})
    return {
        "samples": n_samples,
        "valid_samples": n_valid,
        "invalid_samples": n_samples - n_valid,
        "valid_share": n_valid / n_samples if n_samples else None,
        "sessions": len(totals),
        "sessions_without_total": sum(1 for r in totals if r["total"] == ""),
    }


def missing_by_group(long: list[dict[str, str]], totals: list[dict[str, str]], models: list[str], arms: list[str]) -> list[dict[str, Any]]:
    """Missing judge samples and sessions without a total, per model and arm: missingness that
    differs between arms can bias a complete-case comparison."""
    out = []
    for m in models:
        for a in arms:
            rows = [r for r in totals if r["model"] == m and r["arm"] == a]
            sids = {r["session_id"] for r in rows}
            samples = {(r["session_id"], r.get("judge"), r["judge_sample"]) for r in long if r["session_id"] in sids}
            valid = {(r["session_id"], r.get("judge"), r["judge_sample"]) for r in long if r["session_id"] in sids and r["valid"] == "1"}
            n_missing = sum(1 for r in rows if r["total"] == "")
            out.append(
                {
                    "model": m,
                    "arm": a,
                    "sessions": len(rows),
                    "sessions_without_total": n_missing,
                    "missing_share": n_missing / len(rows) if rows else None,
                    "samples": len(samples),
                    "invalid_samples": len(samples) - len(valid),
                }
            )
    return out


def missing_bounds(totals: list[dict[str, str]], models: list[str], lo: float, hi: float) -> dict[str, Any]:
    """Sensitivity of the CBT-minus-instruct difference in totals to sessions without a total:
    complete case against the bounds that fill a missing total with the scale's minimum or
    maximum, least favourable to CBT (its missing at ``lo``, instruct's at ``hi``) and most. Only a
    session missing in one arm is filled: one missing in both (not run, or unjudged in both) has
    nothing to compare and is left out."""
    arms = ("cbt", "instruct")
    by = {(r["model"], _unit(r), r["arm"]): r for r in totals if r["arm"] in arms}

    def partner_has_total(r: dict[str, str]) -> bool:
        other = by.get((r["model"], _unit(r), arms[1 - arms.index(r["arm"])]))
        return other is not None and other["total"] != ""

    def filled(cbt_fill: float, instruct_fill: float) -> list[dict[str, str]]:
        return [
            r if r["total"] != "" else dict(r, total=str(cbt_fill if r["arm"] == "cbt" else instruct_fill))
            for r in totals
            if r["arm"] in arms and (r["total"] != "" or partner_has_total(r))
        ]

    def diffs(rows: list[dict[str, str]]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        per_patient: dict[str, list[float]] = defaultdict(list)
        for m in models:
            pats, a, b = paired_arrays(rows, m)
            d = a - b
            out[m] = float(d.mean()) if d.size else None
            for p, x in zip(pats, d, strict=True):
                per_patient[p].append(float(x))
        pooled = [np.mean(v) for v in per_patient.values()]
        out["pooled"] = float(np.mean(pooled)) if pooled else None
        return out

    missing = [r for r in totals if r["total"] == "" and r["arm"] in arms]
    return {
        "sessions_without_total": len(missing),
        "missing_in_both_arms": sum(not partner_has_total(r) for r in missing if r["arm"] == "cbt"),
        "complete_case": diffs(totals),
        "worst_for_cbt": diffs(filled(lo, hi)),
        "best_for_cbt": diffs(filled(hi, lo)),
    }


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
            tot = np.array([_num(r["total"]) for r in rows])
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
                v = np.array([_num(r[it]) for r in rows])
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
    val = {(m, _unit(r)): _num(r["total"]) for m in models for r in totals if r["model"] == m and r["arm"] == "cbt"}
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


def _judge_scores(long: list[dict[str, str]], items: list[str]) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """judge -> session -> sample -> item -> score (NaN where missing)."""
    out: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for r in long:
        out.setdefault(r.get("judge") or "judge", {}).setdefault(r["session_id"], {}).setdefault(int(r["judge_sample"]), {})[r["item"]] = (
            _num(r["score"])
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
        ag[it] = agreement([_num(agg[s][it]) for s in sids], [float(np.mean(hum[(s, it)])) for s in sids])
    # the total: each rater's sum over the items, where that rater rated every item of the session
    by_rater: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for h in human:
        by_rater[(h["session_id"], h.get("rater", "human"))][h["item"]] = h["score"]
    tot: dict[str, list[float]] = defaultdict(list)
    for (sid, _), sc in by_rater.items():
        if all(i in sc for i in items):
            tot[sid].append(sum(sc[i] for i in items))
    sids = sorted(s for s in tot if s in agg)
    ag["total"] = agreement([_num(agg[s]["total"]) for s in sids], [float(np.mean(tot[s])) for s in sids])
    return {"items": ag, "unknown_sessions": sorted({h["session_id"] for h in human} - set(agg))}


def _rows(totals, **match):
    return [r for r in totals if all(r.get(k) == v for k, v in match.items())]


def _mean(vals) -> float | None:
    v = np.array([_num(x) for x in vals], float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


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
                    "sessions": len(_rows(sub, model=m)),
                    "mean_cbt": _mean(r["total"] for r in _rows(sub, model=m, arm="cbt")),
                    "mean_instruct": _mean(r["total"] for r in _rows(sub, model=m, arm="instruct")),
                    **{k: c[k] for k in ("n", "mean_diff", "ci_t", "p_t", "notes")},
                }
            )
    return out


def lengths(totals: list[dict[str, str]], models: list[str], arms: list[str]) -> list[dict[str, Any]]:
    """How long the sessions of each model and arm were, and how they ended."""
    out = []
    for m in models:
        for a in arms:
            rows = _rows(totals, model=m, arm=a)
            if not rows or "turns" not in rows[0]:
                continue
            stops: dict[str, int] = defaultdict(int)
            for r in rows:
                stops[r["stop_reason"]] += 1
            ctx = [_num(r["context_tokens_max"]) for r in rows]
            out.append(
                {
                    "model": m,
                    "arm": a,
                    "sessions": len(rows),
                    "turns_mean": _mean(r["turns"] for r in rows),
                    "words_per_therapist_turn": _mean(r["words_per_therapist_turn"] for r in rows),
                    "therapist_tokens_mean": _mean(r["therapist_tokens"] for r in rows),
                    "turns_cut_at_max_tokens": int(np.nansum([_num(r["turns_cut_at_max_tokens"]) for r in rows])),
                    "sessions_with_context_truncation": sum(_num(r["context_truncations"]) > 0 for r in rows),
                    "context_tokens_max": int(np.nanmax(ctx)) if np.isfinite(ctx).any() else None,
                    "context_tokens_mean": _mean(r["context_tokens_max"] for r in rows),
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
            keep = {_unit(r) for r in totals if r["model"] == m and r["arm"] == "cbt" and np.isfinite(_num(r["total"]))}
            keep &= {_unit(r) for r in totals if r["model"] == m and r["arm"] == "instruct" and np.isfinite(_num(r["total"]))}
            sub = [r for r in totals if r["model"] == m and _unit(r) in keep]
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
        x = [_num(r["context_tokens_max"]) for r in rows]
        y = [_num(r["total"]) for r in rows]
        below = [t for c, t in zip(x, y, strict=True) if c < limit]
        above = [t for c, t in zip(x, y, strict=True) if c >= limit]
        return clustered_spearman(x, y, [r["patient_id"] for r in rows], n_boot=n_boot, seed=seed) | {
            "mean_below": _mean(below),
            "n_below": len(below),
            "mean_at_or_above": _mean(above),
            "n_at_or_above": len(above),
        }

    groups = [
        {"model": m, "arm": a, **summary(_rows(totals, model=m, arm=a))} for m in models for a in arms if _rows(totals, model=m, arm=a)
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
                    "context_tokens_mean_variant": _mean(r.get("context_tokens_max") for r in _rows(variant, model=m, arm=a)),
                    "context_tokens_mean_main": _mean(r.get("context_tokens_max") for r in _rows(main, model=m, arm=a)),
                }
            )
    return out


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


def risk_strata(totals: list[dict[str, str]], models: list[str], alpha: float, n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Tuned against instruct within each risk stratum (no risk, at risk), per model and pooled."""
    out = []
    for stratum in ("none", "at_risk"):
        sub = [r for r in totals if risk_stratum(r) == stratum]
        per_model, pooled = tuned_vs_instruct(sub, models, alpha, n_boot, seed)
        for m, c in [*per_model.items(), ("pooled", pooled)]:
            out.append({"stratum": stratum, "model": m, "patients": len({r["patient_id"] for r in sub}), **c})
    return out


def closing_sensitivity(totals: list[dict[str, str]], models: list[str], alpha: float, n_boot: int, seed: int) -> dict[str, Any]:
    """Sessions whose therapist was asked to close at max_turns (rollout.at_max_turns: closing),
    per model and arm, and the tuned-vs-instruct comparison without them: a unit is left out in
    both arms when either arm's session received the instruction."""
    if not totals or "closing_prompted" not in totals[0]:
        return {}
    counts = [
        {"model": m, "arm": a, "sessions": len(rs), "closing_prompted": sum(r["closing_prompted"] == "1" for r in rs)}
        for m in models
        for a in ("instruct", "cbt")
        if (rs := _rows(totals, model=m, arm=a))
    ]
    prompted = {(r["model"], _unit(r)) for r in totals if r["closing_prompted"] == "1"}
    without = [r for r in totals if (r["model"], _unit(r)) not in prompted]
    per_model, pooled = tuned_vs_instruct(without, models, alpha, n_boot, seed)
    return {"counts": counts, "units_left_out": len(prompted), "without": per_model, "pooled_without": pooled}


def declaration(primary: dict[str, Any], population: str) -> dict[str, Any]:
    """The record of the primary endpoint (rule declare_primary): what it is, its hash, and when
    it was recorded (UTC)."""
    import datetime
    import time

    from ..workflow import hash_obj

    what = {"primary": primary, "ctrs_population": population}
    now = time.time()
    return what | {
        "sha256": hash_obj(what, 64),
        "recorded_at": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds"),
        "recorded_at_unix": round(now, 3),
    }


def judge_provenance(judged: list[dict[str, Any]]) -> dict[str, Any]:
    """When the CTRS judge was called (first and last call) and which models it said it served,
    per model and arm (from each sample's record of its last call)."""
    times = []
    served: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for j in judged:
        for smp in j.get("samples", []):
            sv = smp.get("served") or {}
            if sv.get("created"):
                times.append(float(sv["created"]))
            if sv.get("served_model"):
                served[j["model"]][j["arm"]].add(f"{smp.get('judge', 'judge')}: {sv['served_model']}")
    return {
        "first_call": min(times, default=None),
        "last_call": max(times, default=None),
        "served_by_arm": {m: {a: sorted(v) for a, v in arms.items()} for m, arms in served.items()},
    }


def declared_before(
    record: dict[str, Any] | None, primary: dict[str, Any], population: str, first_judgement: float | None
) -> dict[str, Any]:
    """Whether the primary endpoint of this report was on record before the first judge call: the
    record must be of this endpoint (its hash) and older than every judgement."""
    from ..workflow import hash_obj

    out: dict[str, Any] = {"declared_before_run": False, "recorded_at": None, "first_judgement": first_judgement, "reason": ""}
    if not record:
        out["reason"] = "no record of its declaration"
        return out
    out["recorded_at"] = record.get("recorded_at")
    if record.get("sha256") != hash_obj({"primary": primary, "ctrs_population": population}, 64):
        out["reason"] = "the record is of another endpoint"
    elif first_judgement is None:
        out["reason"] = "no judge call carries its time (judgements made before calls were timed)"
    elif record["recorded_at_unix"] >= first_judgement:
        out["reason"] = "recorded after the first judge call"
    else:
        out["declared_before_run"] = True
    return out


def test_register(res: dict[str, Any], rcfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every test of the CTRS analysis, labelled primary, secondary or exploratory, with its p
    adjusted (Holm) within its family. Primary: the declared endpoint. Secondary: tuned against
    instruct on the total per model and pooled, the between-model tests, and the mixed model's
    interactions. Exploratory: items, subtotals, positions, strata, length, context and the
    closing-instruction sensitivity analysis."""
    prim = res["primary"]
    tests: list[dict[str, Any]] = []
    key = "p_t" if prim.get("test") == "paired_t" else "p_wilcoxon"
    tests.append({"family": "primary", "test": f"{prim['outcome']}, CBT vs instruct, {prim['contrast']}", "p": prim.get("p")})
    for m, c in [*res["tuned_vs_instruct"].items(), ("pooled", res["pooled"])]:
        if not (prim["outcome"] == "total" and prim["contrast"] == m):
            tests.append({"family": "secondary", "test": f"total, CBT vs instruct, {m}", "p": c[key]})
    bm = res["between_models"]
    if "rm_anova" in bm:
        tests.append(
            {"family": "secondary", "test": "total, between models (CBT arms), repeated-measures ANOVA", "p": bm["rm_anova"].get("p")}
        )
    mm = res["mixed_model"]
    if mm.get("interaction"):
        tests.append({"family": "secondary", "test": "mixed model: arm x model interaction", "p": mm["interaction"]["p"]})
    if mm.get("risk_interaction"):
        tests.append({"family": "secondary", "test": "mixed model: arm x risk interaction", "p": mm["risk_interaction"]["p"]})
    for m, per in res["per_item"].items():
        tests += [{"family": "exploratory", "test": f"item {c['item']}, CBT vs instruct, {m}", "p": c["p_t"]} for c in per["items"]]
    for sid, sub in res["subtotals"].items():
        tests += [
            {"family": "exploratory", "test": f"subtotal {sid}, CBT vs instruct, {m}", "p": c["p_t"]} for m, c in sub["models"].items()
        ]
    tests += [
        {"family": "exploratory", "test": f"total, CBT vs instruct, {r['model']}, position {r['position']}", "p": r["p_t"]}
        for r in res["by_position"]
    ]
    tests += [
        {"family": "exploratory", "test": f"total, CBT vs instruct, {r['model']}, risk stratum {r['stratum']}", "p": r["p_t"]}
        for r in res["risk_strata"]
    ]
    for cov, per in res["length_adjusted"].items():
        tests += [{"family": "exploratory", "test": f"total adjusted for {cov}, {m}", "p": c["p"]} for m, c in per.items()]
    cs = res["context_vs_score"]
    if cs:
        tests += [
            {"family": "exploratory", "test": f"Spearman total ~ context, {g['model']}/{g['arm']} (patients)", "p": g["p"]}
            for g in [*cs["groups"], dict(cs["pooled"], model="pooled", arm="both")]
        ]
    cl = res["closing"]
    if cl:
        tests += [
            {"family": "exploratory", "test": f"total, CBT vs instruct, {m}, without closing-instruction sessions", "p": c["p_t"]}
            for m, c in cl["without"].items()
        ]
    return adjust_within_families(tests)


def analyse(
    long: list[dict[str, str]],
    totals: list[dict[str, str]],
    rubric: dict[str, Any],
    rcfg: dict[str, Any],
    seed: int,
    human: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every analysis of the report, each a function above. The CTRS comparisons are made on the
    population of report.ctrs_population (patients without risk by default); the risk strata and
    the mixed model (with an arm x risk term) use every session."""
    alpha, nb = rcfg["alpha"], rcfg["bootstrap"]
    items = [i["id"] for i in rubric["items"]]
    models = sorted({r["model"] for r in totals})
    arms = sorted({r["arm"] for r in totals})
    threshold = rcfg.get("competence_threshold") or rubric.get("competence_threshold")
    population = rcfg.get("ctrs_population", "no_risk")
    pop = ctrs_population(totals, population)
    res: dict[str, Any] = {"models": models, "arms": arms, "items": items, "threshold": threshold, "notes": []}
    res["population"] = {
        "name": population,
        "description": POPULATIONS[population],
        "patients": len({r["patient_id"] for r in pop}),
        "sessions": len(pop),
        "patients_all": len({r["patient_id"] for r in totals}),
        "sessions_all": len(totals),
    }
    if not pop and totals:
        res["notes"].append(f"no sessions in the CTRS population ({POPULATIONS[population]}): every CTRS comparison is empty")
    res["missing"] = missing_answers(long, totals)
    res["missing"]["by_group"] = missing_by_group(long, totals, models, arms)
    res["missing"]["bounds"] = missing_bounds(pop, models, rubric["min_total"], rubric["max_total"])
    res["primary"] = primary_endpoint(pop, models, rcfg, nb, seed)
    res["descriptives"] = descriptives(pop, models, arms, items, threshold)
    res["tuned_vs_instruct"], res["pooled"] = tuned_vs_instruct(pop, models, alpha, nb, seed)
    res["between_models"] = between_models(pop, models, arms, alpha, nb, seed)
    res["risk_strata"] = risk_strata(totals, models, alpha, nb, seed)
    scored = [r for r in totals if r["arm"] in ("cbt", "instruct")]
    res["mixed_model"] = mixed_arm_by_model(
        [r["patient_id"] for r in scored],
        [r["model"] for r in scored],
        [r["arm"] for r in scored],
        [_num(r["total"]) for r in scored],
        alpha=alpha,
        position=[str(r.get("position") or "1") for r in scored],
        risk=[risk_stratum(r) for r in scored],
    )
    res["per_item"] = per_item(pop, models, items, rcfg["item_correction"], alpha, nb, seed)
    res["reliability"] = reliability(long, items)
    res["inter_judge"] = inter_judge(long, items)
    res["max_total"] = rubric["max_total"]
    res["by_position"] = by_position(pop, models, alpha, nb, seed) if pop else []
    res["lengths"] = lengths(totals, models, arms)
    res["length_adjusted"] = length_adjusted(pop, models, alpha)
    res["context_vs_score"] = context_vs_score(pop, models, arms, n_boot=nb, seed=seed)
    res["subtotals"] = subtotal_comparisons(pop, rubric, models, alpha, nb, seed)
    res["closing"] = closing_sensitivity(pop, models, alpha, nb, seed)
    res["tests"] = test_register(res, rcfg)
    if human:
        res["human_agreement"] = human_agreement(totals, items, human)
    return res
