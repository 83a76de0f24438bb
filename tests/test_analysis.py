"""The analyses of the report, one by one, on small tables whose answers are known."""

import numpy as np
import pytest

from cbtpipe.analysis import between_models, descriptives, human_agreement, missing_answers, per_item, reliability, tuned_vs_instruct

ITEMS = ["agenda", "feedback"]


def _totals():
    """Two models, two arms, four patients; the CBT arm scores 1 more on every item."""
    rows = []
    for m in ("m1", "m2"):
        for arm, bump in (("instruct", 0.0), ("cbt", 1.0)):
            for i, p in enumerate(["p1", "p2", "p3", "p4"]):
                a, f = 2.0 + i * 0.5 + bump, 3.0 + bump + (0.1 if m == "m2" else 0.0)
                rows.append(
                    {
                        "session_id": f"{m}-{arm}-{p}",
                        "patient_id": p,
                        "model": m,
                        "arm": arm,
                        "agenda": str(a),
                        "feedback": str(f),
                        "total": str(a + f),
                    }
                )
    return rows


def _long(k=2, noisy=False):
    rows = []
    for r in _totals():
        for s in range(k):
            for it in ITEMS:
                v = float(r[it]) + (0.5 * s if noisy else 0.0)
                rows.append({"session_id": r["session_id"], "judge_sample": str(s), "item": it, "score": str(v), "valid": "1"})
    return rows


def test_missing_answers_counts_invalid_samples():
    long = _long()
    long[0] = dict(long[0], valid="0", score="")  # both items of the first session's sample 0
    long[1] = dict(long[1], valid="0", score="")
    totals = _totals()
    totals[0] = dict(totals[0], total="")
    m = missing_answers(long, totals)
    assert (m["samples"], m["valid_samples"], m["invalid_samples"]) == (32, 31, 1)
    assert m["sessions_without_total"] == 1 and m["valid_share"] == pytest.approx(31 / 32)


def test_descriptives():
    d = {(x["model"], x["arm"]): x for x in descriptives(_totals(), ["m1", "m2"], ["cbt", "instruct"], ITEMS, threshold=7.0)}
    x = d[("m1", "cbt")]
    assert x["mean"] == pytest.approx(np.mean([7.0, 7.5, 8.0, 8.5])) and x["n_total"] == 4
    assert x["items"]["feedback"] == {"mean": pytest.approx(4.0), "sd": pytest.approx(0.0), "n": 4}
    assert x["competent_share"] == 1.0 and d[("m1", "instruct")]["competent_share"] == 0.0


def test_tuned_vs_instruct_sees_the_constant_gain():
    per_model, pooled = tuned_vs_instruct(_totals(), ["m1", "m2"], alpha=0.05, n_boot=100, seed=1)
    assert per_model["m1"]["mean_diff"] == pytest.approx(2.0) and per_model["m1"]["patients"] == ["p1", "p2", "p3", "p4"]
    assert pooled["mean_diff"] == pytest.approx(2.0) and pooled["models"] == ["m1", "m2"]


def test_between_models_needs_two_models():
    assert "note" in between_models(_totals(), ["m1"], ["cbt", "instruct"], 0.05, 100, 1)
    b = between_models(_totals(), ["m1", "m2"], ["cbt", "instruct"], 0.05, 100, 1)
    assert b["patients"] == ["p1", "p2", "p3", "p4"] and b["pairwise"][0]["mean_diff"] == pytest.approx(-0.1)
    assert "p_holm" in b["pairwise"][0] and b["rm_anova"]["k"] == 2


def test_per_item_corrects_across_items():
    out = per_item(_totals(), ["m1"], ITEMS, "holm", 0.05, 100, 1)
    comps = out["m1"]["items"]
    assert [c["item"] for c in comps] == ITEMS and out["m1"]["correction"] == "holm"
    assert all(c["mean_diff"] == pytest.approx(1.0) for c in comps)
    assert all("p_t_adj" in c and "p_wilcoxon_adj" in c for c in comps)


def test_reliability_of_identical_samples_is_perfect():
    rel = reliability(_long(k=2), ITEMS)
    assert rel["agenda"]["icc2_1"] == pytest.approx(1.0) and rel["total"]["k"] == 2
    assert reliability(_long(k=1), ITEMS)["agenda"]["icc2_1"] is None  # one sample: nothing to agree with
    assert reliability(_long(k=2, noisy=True), ITEMS)["agenda"]["icc2_1"] < 1.0


def test_human_agreement_on_rated_sessions_only():
    totals = _totals()
    human = [{"session_id": r["session_id"], "item": "agenda", "score": float(r["agenda"]), "rater": "h"} for r in totals[:5]]
    human.append({"session_id": "nobody", "item": "agenda", "score": 3.0, "rater": "h"})
    ag = human_agreement(totals, ITEMS, human)
    assert ag["unknown_sessions"] == ["nobody"]
    assert ag["items"]["agenda"]["n"] == 5 and ag["items"]["feedback"]["n"] == 0
