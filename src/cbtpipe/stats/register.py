"""The primary endpoint's declaration before the run, when the judge was called, and the register of
every test of the CTRS analysis with its family and adjusted p."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .stattests import adjust_within_families


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


def _served_label(call: dict[str, Any]) -> str:
    fp = call.get("system_fingerprint") or ""
    return f"{call['served_model']} ({fp})" if fp else call["served_model"]


def call_provenance(records: list[dict[str, Any]], calls_of) -> dict[str, Any]:
    """When a judge was called and what answered, overall and per model and arm: the first and
    last call (Unix time), every served model with its fingerprint, and the calls that came
    without a fingerprint, from every call of every record (``calls_of(record)`` gives (judge
    name, call) pairs)."""
    times: list[float] = []
    by_arm: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        cell = by_arm[r["model"]].setdefault(
            r["arm"], {"first_call": None, "last_call": None, "served": set(), "calls": 0, "unfingerprinted": 0}
        )
        for name, call in calls_of(r):
            cell["calls"] += 1
            cell["unfingerprinted"] += int(not call.get("system_fingerprint"))
            if call.get("created"):
                t = float(call["created"])
                times.append(t)
                cell["first_call"] = t if cell["first_call"] is None else min(cell["first_call"], t)
                cell["last_call"] = t if cell["last_call"] is None else max(cell["last_call"], t)
            if call.get("served_model"):
                cell["served"].add(f"{name}: {_served_label(call)}")
    arms = {m: {a: c | {"served": sorted(c["served"])} for a, c in cells.items()} for m, cells in by_arm.items()}
    return {
        "first_call": min(times, default=None),
        "last_call": max(times, default=None),
        "by_arm": arms,
        "served_by_arm": {m: {a: c["served"] for a, c in cells.items()} for m, cells in arms.items()},
    }


def _ctrs_calls(judged: dict[str, Any]):
    for smp in judged.get("samples", []):
        # every call of the sample; records made before calls were kept carry the last one only
        for call in smp.get("calls") or ([smp["served"]] if smp.get("served") else []):
            yield smp.get("judge", "judge"), call


def _safety_calls(record: dict[str, Any]):
    for ans in (record.get("answers") or {}).values():
        for call in ans.get("calls") or ([ans["served"]] if ans.get("served") else []):
            yield "safety", call


def judge_provenance(judged: list[dict[str, Any]]) -> dict[str, Any]:
    """When the CTRS judge was called (first and last call) and which models and fingerprints
    answered, overall and per model and arm."""
    return call_provenance(judged, _ctrs_calls)


def safety_provenance(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The same for the safety judge's calls."""
    return call_provenance(records, _safety_calls)


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


def _declared_and_secondary(res: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The declared endpoint, CBT against instruct on the total per model and pooled by the
    declared test, the between-model ANOVA and the mixed model's interactions; with the key of the
    declared test's p."""
    prim = res["primary"]
    key = "p_t" if prim.get("test") == "paired_t" else "p_wilcoxon"
    tests = [{"family": "primary", "test": f"{prim['outcome']}, CBT vs instruct, {prim['contrast']}", "p": prim.get("p")}]
    for m, c in [*res["tuned_vs_instruct"].items(), ("pooled", res["pooled"])]:
        if not (prim["outcome"] == "total" and prim["contrast"] == m):
            tests.append({"family": "secondary", "test": f"total, CBT vs instruct, {m}", "p": c[key]})
    bm, mm = res["between_models"], res["mixed_model"]
    if "rm_anova" in bm:
        tests.append(
            {"family": "secondary", "test": "total, between models (CBT arms), repeated-measures ANOVA", "p": bm["rm_anova"].get("p")}
        )
    if mm.get("interaction"):
        tests.append({"family": "secondary", "test": "mixed model: arm x model interaction", "p": mm["interaction"]["p"]})
    if mm.get("risk_interaction"):
        tests.append({"family": "secondary", "test": "mixed model: arm x risk interaction", "p": mm["risk_interaction"]["p"]})
    return tests, key


def _alternatives(res: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The paired test that was not declared, the other between-model tests, the pairwise
    comparisons (Holm among themselves, as their table) and the mixed model's arm effects."""
    other = "p_wilcoxon" if key == "p_t" else "p_t"
    name = "Wilcoxon" if other == "p_wilcoxon" else "paired t"
    tests = [
        {"family": "exploratory", "test": f"total, CBT vs instruct, {m} ({name})", "p": c[other]}
        for m, c in [*res["tuned_vs_instruct"].items(), ("pooled", res["pooled"])]
    ]
    bm, mm = res["between_models"], res["mixed_model"]
    if "rm_anova" in bm:
        tests.append(
            {
                "family": "exploratory",
                "test": "total, between models, repeated-measures ANOVA (Greenhouse-Geisser)",
                "p": bm["rm_anova"].get("p_gg"),
            }
        )
        tests.append(
            {"family": "exploratory", "test": "total, between models (CBT arms), Friedman", "p": (bm.get("friedman") or {}).get("p")}
        )
    tests += [
        {
            "family": "exploratory: pairwise between models",
            "test": f"total, {c['a']} vs {c['b']} (CBT arms, paired t)",
            "p": c["p_t"],
            "correction": "holm",
        }
        for c in bm.get("pairwise", [])
    ]
    tests += [
        {"family": "exploratory", "test": f"mixed model: CBT minus instruct, {e['model']}", "p": e["p"]} for e in mm.get("arm_effects", [])
    ]
    tests += [
        {"family": "exploratory", "test": f"mixed model: CBT minus instruct, risk stratum {e['risk']}", "p": e["p"]}
        for e in mm.get("arm_effects_by_risk", [])
    ]
    return tests


def _items(res: dict[str, Any], correction: str) -> list[dict[str, Any]]:
    """Per item: a family per model and test, adjusted as the per-item table is."""
    return [
        {
            "family": f"exploratory: items, {m} ({label})",
            "test": f"item {c['item']}, CBT vs instruct, {m} ({label})",
            "p": c[k],
            "correction": correction,
        }
        for m, per in res["per_item"].items()
        for k, label in (("p_t", "paired t"), ("p_wilcoxon", "Wilcoxon"))
        for c in per["items"]
    ]


def _sensitivity(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Subtotals, positions, risk strata, length (with its slope), context and the closing
    instruction: exploratory."""
    tests = [
        {"family": "exploratory", "test": f"subtotal {sid}, CBT vs instruct, {m}", "p": c["p_t"]}
        for sid, sub in res["subtotals"].items()
        for m, c in sub["models"].items()
    ]
    tests += [
        {"family": "exploratory", "test": f"total, CBT vs instruct, {r['model']}, position {r['position']}", "p": r["p_t"]}
        for r in res["by_position"]
    ]
    tests += [
        {"family": "exploratory", "test": f"total, CBT vs instruct, {r['model']}, risk stratum {r['stratum']}", "p": r["p_t"]}
        for r in res["risk_strata"]
    ]
    tests += [
        {"family": "exploratory", "test": f"total, CBT vs instruct, {r['model']}, {r['set'].replace('_', '-')} patients", "p": r["p_t"]}
        for r in res.get("persona_sets", [])
    ]
    for cov, per in res["length_adjusted"].items():
        tests += [{"family": "exploratory", "test": f"total adjusted for {cov}, {m}", "p": c["p"]} for m, c in per.items()]
        tests += [{"family": "exploratory", "test": f"slope of the difference on {cov}, {m}", "p": c["p_slope"]} for m, c in per.items()]
    cs = res["context_vs_score"]
    if cs:
        tests += [
            {"family": "exploratory", "test": f"Spearman total ~ context, {g['model']}/{g['arm']} (patients)", "p": g["p"]}
            for g in [*cs["groups"], dict(cs["pooled"], model="pooled", arm="both")]
        ]
    cl = res["closing"]
    if cl.get("without"):
        tests += [
            {"family": "exploratory", "test": f"total, CBT vs instruct, {m}, re-judged without the closing turn", "p": c["p_t"]}
            for m, c in [*cl["without"].items(), ("pooled", cl["pooled_without"])]
        ]
    return tests


def test_register(res: dict[str, Any], rcfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every test of the CTRS analysis whose p the report prints, labelled primary, secondary or
    exploratory, with its p adjusted within its family (Holm; the per-item families by
    report.item_correction, as the per-item table). Primary: the declared endpoint. Secondary:
    tuned against instruct on the total per model and pooled, the between-model ANOVA, and the
    mixed model's interactions. Exploratory: the other paired test, the other between-model tests,
    the pairwise comparisons, the mixed model's arm effects, items, subtotals, positions, strata,
    length (with its slope), context, the closing-instruction sensitivity analysis and each training
    seed's comparison."""
    from .seeds import seed_tests

    core, key = _declared_and_secondary(res)
    tests = [*core, *_alternatives(res, key), *_items(res, rcfg.get("item_correction", "holm")), *_sensitivity(res), *seed_tests(res)]
    return adjust_within_families(tests)
