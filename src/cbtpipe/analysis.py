"""Score tables and the statistical analysis of the judged sessions."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .stattests import agreement, friedman, icc, p_adjust, paired_comparison, rm_anova

LONG_FIELDS = ["session_id", "patient_id", "model", "arm", "quantization", "judge_sample", "valid", "item", "score"]


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
                        "judge_sample": s["sample"],
                        "valid": int(s["valid"]),
                        "item": it["id"],
                        "score": "" if v is None else v,
                    }
                )
    return rows


def total_rows(judged: list[dict[str, Any]], rubric: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for j in judged:
        r = {
            "session_id": j["session_id"],
            "patient_id": j["patient_id"],
            "model": j["model"],
            "arm": j["arm"],
            "quantization": j["quantization"],
            "samples": len(j["samples"]),
            "valid_samples": j["valid_samples"],
            "total": "" if j["total"] is None else round(j["total"], 4),
        }
        for it in rubric["items"]:
            v = j["item_scores"].get(it["id"])
            r[it["id"]] = "" if v is None else round(v, 4)
        rows.append(r)
    return rows


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    import io

    from .io import atomic_write_text

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


def paired_arrays(pm, model: str, a: str = "cbt", b: str = "instruct") -> tuple[list[str], np.ndarray, np.ndarray]:
    pa, pb = pm.get((model, a), {}), pm.get((model, b), {})
    pats = sorted(set(pa) & set(pb))
    return pats, np.array([pa[p] for p in pats]), np.array([pb[p] for p in pats])


def missing_answers(long: list[dict[str, str]], totals: list[dict[str, str]]) -> dict[str, Any]:
    """How many judge samples were valid (a sample that failed the schema is missing, never 0)."""
    n_samples = len({(r["session_id"], r["judge_sample"]) for r in long})
    n_valid = len({(r["session_id"], r["judge_sample"]) for r in long if r["valid"] == "1"})
    return {
        "samples": n_samples,
        "valid_samples": n_valid,
        "invalid_samples": n_samples - n_valid,
        "valid_share": n_valid / n_samples if n_samples else None,
        "sessions": len(totals),
        "sessions_without_total": sum(1 for r in totals if r["total"] == ""),
    }


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


def tuned_vs_instruct(totals: list[dict[str, str]], models: list[str], alpha: float, n_boot: int, seed: int) -> tuple[dict, dict]:
    """CBT-tuned against instruct on the same patients: per model, and pooled over models
    (stratified by patient)."""
    pm = patient_means(totals, "total")
    per_model = {}
    diffs_by_patient: dict[str, list[float]] = defaultdict(list)
    for m in models:
        pats, a, b = paired_arrays(pm, m)
        per_model[m] = paired_comparison(a, b, alpha=alpha, n_boot=n_boot, seed=seed) | {"patients": pats}
        for p, x, y in zip(pats, a, b, strict=True):
            if np.isfinite(x) and np.isfinite(y):
                diffs_by_patient[p].append(x - y)
    pooled_d = np.array([np.mean(v) for v in diffs_by_patient.values()])
    pooled = paired_comparison(pooled_d, np.zeros_like(pooled_d), alpha=alpha, n_boot=n_boot, seed=seed) | {
        "method": "stratified by patient: each patient's CBT-minus-instruct difference is averaged over models, "
        "then tested with a paired t-test and a Wilcoxon signed-rank test across patients",
        "models": models,
    }
    return per_model, pooled


def between_models(totals: list[dict[str, str]], models: list[str], arms: list[str], alpha: float, n_boot: int, seed: int) -> dict:
    """The CBT-tuned arms of the models on the patients they share: repeated-measures ANOVA,
    Friedman, and Holm-corrected pairwise comparisons."""
    if len(models) < 2 or "cbt" not in arms:
        return {"note": "needs at least two models with a CBT-tuned arm"}
    pm = patient_means(totals, "total")
    cb = {m: pm.get((m, "cbt"), {}) for m in models}
    pats = sorted(set.intersection(*[set(v) for v in cb.values()]))
    y = np.array([[cb[m][p] for m in models] for p in pats]) if pats else np.zeros((0, len(models)))
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
            _, a, b = paired_arrays(patient_means(totals, it), m)
            comps.append(paired_comparison(a, b, alpha=alpha, n_boot=n_boot, seed=seed) | {"item": it})
        for key in ("p_t", "p_wilcoxon"):
            for c, q in zip(comps, p_adjust([c[key] for c in comps], method), strict=True):
                c[f"{key}_adj"] = q
        out[m] = {"correction": method, "items": comps}
    return out


def reliability(long: list[dict[str, str]], items: list[str]) -> dict[str, Any]:
    """Agreement of the judge with itself across its k samples of a session (ICC), per item and
    for the total."""
    rel = {}
    by_session: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for r in long:
        by_session[r["session_id"]].setdefault(int(r["judge_sample"]), {})[r["item"]] = _num(r["score"])
    ks = sorted({int(r["judge_sample"]) for r in long})
    for it in [*items, "total"]:
        mat = []
        for _sid, samples in sorted(by_session.items()):
            row = []
            for k in ks:
                sc = samples.get(k, {})
                if it == "total":
                    vals = [sc.get(i, float("nan")) for i in items]
                    row.append(float(np.sum(vals)) if all(np.isfinite(vals)) else float("nan"))
                else:
                    row.append(sc.get(it, float("nan")))
            mat.append(row)
        rel[it] = (
            icc(np.array(mat))
            if mat and len(ks) >= 2
            else {"icc2_1": None, "icc2_k": None, "n": len(mat), "k": len(ks), "notes": ["needs k >= 2 judge samples"]}
        )
    return rel


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
    return {"items": ag, "unknown_sessions": sorted({h["session_id"] for h in human} - set(agg))}


def analyse(
    long: list[dict[str, str]],
    totals: list[dict[str, str]],
    rubric: dict[str, Any],
    rcfg: dict[str, Any],
    seed: int,
    human: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every analysis of the report, each a function above."""
    alpha, nb = rcfg["alpha"], rcfg["bootstrap"]
    items = [i["id"] for i in rubric["items"]]
    models = sorted({r["model"] for r in totals})
    arms = sorted({r["arm"] for r in totals})
    threshold = rcfg.get("competence_threshold") or rubric.get("competence_threshold")
    res: dict[str, Any] = {"models": models, "arms": arms, "items": items, "threshold": threshold, "notes": []}
    res["missing"] = missing_answers(long, totals)
    res["descriptives"] = descriptives(totals, models, arms, items, threshold)
    res["tuned_vs_instruct"], res["pooled"] = tuned_vs_instruct(totals, models, alpha, nb, seed)
    res["between_models"] = between_models(totals, models, arms, alpha, nb, seed)
    res["per_item"] = per_item(totals, models, items, rcfg["item_correction"], alpha, nb, seed)
    res["reliability"] = reliability(long, items)
    if human:
        res["human_agreement"] = human_agreement(totals, items, human)
    return res
