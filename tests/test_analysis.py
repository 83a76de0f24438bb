"""The analyses of the report, one by one, on small tables whose answers are known."""

import numpy as np
import pytest

from cbtpipe.stats import analyse
from cbtpipe.stats.ctrs import between_models, descriptives, per_item, primary_endpoint, tuned_vs_instruct
from cbtpipe.stats.judges import human_agreement, inter_judge, reliability
from cbtpipe.stats.missing import missing_answers, missing_bounds, missing_by_group

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
    rel = reliability(_long(k=2), ITEMS)["judge"]
    assert rel["agenda"]["icc2_1"] == pytest.approx(1.0) and rel["total"]["k"] == 2
    assert reliability(_long(k=1), ITEMS)["judge"]["agenda"]["icc2_1"] is None  # one sample: nothing to agree with
    assert reliability(_long(k=2, noisy=True), ITEMS)["judge"]["agenda"]["icc2_1"] < 1.0


def test_agreement_between_judges_of_a_panel():
    """Two judges: "warm" scores like the data, "strict" one point lower on every item. Within
    each judge the samples agree perfectly; between the judges, the ICC (absolute agreement) is
    below 1 because of the offset, and Krippendorff's alpha too."""
    warm = [dict(r, judge="warm") for r in _long(k=2)]
    strict = [dict(r, judge="strict", score=str(float(r["score"]) - 1)) for r in _long(k=1)]
    long = warm + strict
    rel = reliability(long, ITEMS)
    assert set(rel) == {"warm", "strict"} and rel["warm"]["agenda"]["icc2_1"] == pytest.approx(1.0)
    assert rel["strict"]["agenda"]["icc2_1"] is None  # one sample each
    ij = inter_judge(long, ITEMS)
    assert ij["total"]["judges"] == ["warm", "strict"] and ij["total"]["n"] == 16
    assert 0 < ij["agenda"]["icc2_1"] < 1 and ij["agenda"]["kripp_alpha"] < 1
    # the same scores from both judges: perfect agreement
    same = warm + [dict(r, judge="twin") for r in _long(k=1)]
    assert inter_judge(same, ITEMS)["agenda"]["icc2_1"] == pytest.approx(1.0)
    assert inter_judge(warm, ITEMS) == {}  # one judge: nothing between judges


def test_human_agreement_on_rated_sessions_only():
    totals = _totals()
    human = [{"session_id": r["session_id"], "item": "agenda", "score": float(r["agenda"]), "rater": "h"} for r in totals[:5]]
    human.append({"session_id": "nobody", "item": "agenda", "score": 3.0, "rater": "h"})
    ag = human_agreement(totals, ITEMS, human)
    assert ag["unknown_sessions"] == ["nobody"]
    assert ag["items"]["agenda"]["n"] == 5 and ag["items"]["feedback"]["n"] == 0


def _course_totals():
    """One model, two arms, five patients, two positions. The CBT arm scores 2 more at equal length;
    every extra turn adds 1.5 points; the CBT arm's sessions are longer by a patient-specific amount."""
    rows = []
    for i, p in enumerate(["p1", "p2", "p3", "p4", "p5"]):
        for pos in (1, 2):
            for arm in ("instruct", "cbt"):
                turns = 6 + (i % 3 if arm == "cbt" else 0) + pos
                total = 20.0 + i + 1.5 * turns + (2.0 if arm == "cbt" else 0.0) - pos
                rows.append(
                    {
                        "session_id": f"{arm}-{p}-{pos}",
                        "patient_id": p,
                        "model": "m1",
                        "arm": arm,
                        "position": str(pos),
                        "total": str(total),
                        "cactus6": str(total / 2),
                        "turns": str(turns),
                        "therapist_turns": str(turns // 2),
                        "therapist_words": str(20 * turns + i),
                        "words_per_therapist_turn": str(40.0),
                        "therapist_tokens": str(30 * turns),
                        "turns_cut_at_max_tokens": "1" if arm == "cbt" and i == 0 else "0",
                        "context_truncations": "0",
                        "context_tokens_max": str(500 * turns + 100 * i),
                        "stop_reason": "closing_turn" if turns >= 8 else "end_marker_patient",
                        "closing_prompted": "1" if turns >= 8 else "0",
                    }
                )
    return rows


def test_by_position_lengths_and_length_adjusted_difference():
    from cbtpipe.stats.ctrs import by_position, length_adjusted, lengths

    rows = _course_totals()
    pos = by_position(rows, ["m1"], 0.05, 200, 1)
    assert [(r["position"], r["n"], r["sessions"]) for r in pos] == [(1, 5, 10), (2, 5, 10)]
    # per patient and position the CBT arm is 2 + 1.5 x (i mod 3) turns ahead: mean 2 + 1.5 * 4/5
    for r in pos:
        assert r["mean_diff"] == pytest.approx(2 + 1.5 * (0 + 1 + 2 + 0 + 1) / 5)
    ln = {r["arm"]: r for r in lengths(rows, ["m1"], ["cbt", "instruct"])}
    assert ln["instruct"]["turns_mean"] == pytest.approx(7.5) and ln["cbt"]["turns_cut_at_max_tokens"] == 2
    assert ln["cbt"]["stop_reasons"] == {"closing_turn": 8, "end_marker_patient": 2}
    assert ln["cbt"]["context_tokens_max"] == 500 * 10 + 200
    adj = length_adjusted(rows, ["m1"], 0.05)
    # the differences are exactly 2 + 1.5 x (turn difference): at equal length the gain is 2
    assert adj["turns"]["m1"]["adjusted_diff"] == pytest.approx(2.0) and adj["turns"]["m1"]["slope"] == pytest.approx(1.5)
    # the same fit by numpy's least squares on the per-patient differences
    d = np.array([2 + 1.5 * (i % 3) for i in range(5)])
    c = np.array([20 * (i % 3) for i in range(5)], float)
    coef = np.linalg.lstsq(np.c_[np.ones(5), c], d, rcond=None)[0]
    assert adj["therapist_words"]["m1"]["adjusted_diff"] == pytest.approx(coef[0])


def test_context_score_correlation_and_subtotals():
    from scipy.stats import spearmanr

    from cbtpipe.stats.ctrs import context_vs_score, subtotal_comparisons

    rows = _course_totals()
    cs = context_vs_score(rows, ["m1"], ["cbt", "instruct"], limit=4000)
    x = [float(r["context_tokens_max"]) for r in rows]
    y = [float(r["total"]) for r in rows]
    # the test takes the patient as the unit (each patient's mean context and mean total); the
    # session-level rho is given beside it, with a cluster-bootstrap interval
    pats = sorted({r["patient_id"] for r in rows})
    mx = [np.mean([a for a, r in zip(x, rows, strict=True) if r["patient_id"] == p]) for p in pats]
    my = [np.mean([b for b, r in zip(y, rows, strict=True) if r["patient_id"] == p]) for p in pats]
    assert cs["pooled"]["n"] == 5 and cs["pooled"]["rho"] == pytest.approx(spearmanr(mx, my).statistic)
    assert cs["pooled"]["p"] == pytest.approx(spearmanr(mx, my).pvalue)
    assert cs["pooled"]["rho_sessions"] == pytest.approx(spearmanr(x, y).statistic) and cs["pooled"]["n_sessions"] == 20
    lo, hi = cs["pooled"]["ci_sessions"]
    assert lo <= cs["pooled"]["rho_sessions"] <= hi
    assert cs["pooled"]["n_below"] + cs["pooled"]["n_at_or_above"] == 20
    assert cs["pooled"]["n_at_or_above"] == sum(v >= 4000 for v in x)
    rubric = {"subtotals": {"cactus6": {"name": "Cactus 6", "max": 36, "note": "n", "items": []}}}
    sub = subtotal_comparisons(rows, rubric, ["m1"], 0.05, 200, 1)
    assert sub["cactus6"]["models"]["m1"]["mean_diff"] == pytest.approx((2 + 1.5 * 4 / 5) / 2)


def test_pooled_row_shows_the_arms_means():
    per_model, pooled = tuned_vs_instruct(_totals(), ["m1", "m2"], 0.05, 200, 1)
    assert pooled["mean_diff"] == pytest.approx(2.0)
    assert pooled["mean_b"] == pytest.approx(np.mean([per_model[m]["mean_b"] for m in ("m1", "m2")]))
    assert pooled["mean_a"] - pooled["mean_b"] == pytest.approx(2.0)


def test_turn_scores_against_context_bins_and_correlation():
    from scipy.stats import spearmanr

    from cbtpipe.stats import turn_scores_vs_context

    rows = [
        {
            "model": "m1",
            "arm": arm,
            "patient_id": f"p{i % 3}",
            "context_tokens": c,
            "total_pct": None if c == 4500 and arm == "cbt" else 80 - c / 100,
        }
        for arm in ("cbt", "instruct")
        for i, c in enumerate((500, 1500, 2500, 3500, 4500, 9000))
    ]
    res = turn_scores_vs_context(rows)
    assert res["excerpts"] == 12 and res["missing"] == 1
    pooled = next(g for g in res["groups"] if g["model"] == "pooled")
    valid = [r for r in rows if r["total_pct"] is not None]
    assert pooled["n_sessions"] == 11 and pooled["rho_sessions"] == pytest.approx(
        spearmanr([r["context_tokens"] for r in valid], [r["total_pct"] for r in valid]).statistic
    )
    # excerpts of one patient are not independent: the test is over the 3 patients' means
    assert pooled["n"] == 3 and pooled["unit"] == "patient"
    bins = {(b["arm"], b["context"]): (b["n"], b["mean_pct"]) for b in res["bins"]}
    assert ("cbt", "4000-8000") not in bins  # its only excerpt has no valid score: no bin, not a 0
    assert bins[("instruct", "4000-8000")] == (1, pytest.approx(35.0))
    assert bins[("both", "2000-4000")] == (4, pytest.approx(50.0)) and bins[("both", ">= 8000")] == (2, pytest.approx(-10.0))


def test_missingness_per_arm_and_its_bounds():
    """A CBT session without a total: counted in its own arm, and the bounds put it at the scale's
    minimum (least favourable to CBT) and maximum (most favourable)."""
    totals = _totals()
    totals[4] = dict(totals[4], total="")  # m1, cbt, p1 (7.0 when scored)
    long = [r for r in _long() if r["session_id"] != totals[4]["session_id"] or r["judge_sample"] == "1"]
    g = {(x["model"], x["arm"]): x for x in missing_by_group(long, totals, ["m1", "m2"], ["cbt", "instruct"])}
    assert g[("m1", "cbt")]["sessions_without_total"] == 1 and g[("m1", "cbt")]["missing_share"] == 0.25
    assert g[("m1", "cbt")]["samples"] == 7 and g[("m1", "instruct")]["sessions_without_total"] == 0
    b = missing_bounds(totals, ["m1", "m2"], lo=0.0, hi=20.0)
    assert b["sessions_without_total"] == 1
    assert b["complete_case"]["m1"] == pytest.approx(2.0) and b["complete_case"]["m2"] == pytest.approx(2.0)
    # p1 of m1: CBT at 0 or 20 against instruct's 5.0, the other three pairs differ by 2
    assert b["worst_for_cbt"]["m1"] == pytest.approx((0 - 5.0 + 3 * 2) / 4)
    assert b["best_for_cbt"]["m1"] == pytest.approx((20 - 5.0 + 3 * 2) / 4)
    assert b["worst_for_cbt"]["pooled"] == pytest.approx(np.mean([(-5.0 + 2) / 2, 2, 2, 2]))


def test_the_primary_endpoint_is_the_declared_contrast_with_its_detectable_effect():
    from cbtpipe.stats import minimum_detectable_dz

    rc = {"alpha": 0.05, "power": 0.8, "primary": {"outcome": "agenda", "contrast": "m2", "test": "wilcoxon"}}
    res = primary_endpoint(_totals(), ["m1", "m2"], rc, n_boot=200, seed=1)
    assert res["result"]["n"] == 4 and res["result"]["mean_diff"] == pytest.approx(1.0)
    assert res["p"] == res["result"]["p_wilcoxon"] and res["mde_dz"] == pytest.approx(minimum_detectable_dz(4))
    rc["primary"] = {"outcome": "total", "contrast": "pooled", "test": "paired_t"}
    res = primary_endpoint(_totals(), ["m1", "m2"], rc, n_boot=200, seed=1)
    assert res["result"]["mean_diff"] == pytest.approx(2.0) and res["p"] == res["result"]["p_t"]


def test_analyse_with_two_models_runs_the_mixed_model_and_the_primary_endpoint():
    rubric = {"items": [{"id": i} for i in ITEMS], "min_total": 0, "max_total": 12}
    rc = {
        "alpha": 0.05,
        "bootstrap": 200,
        "item_correction": "holm",
        "power": 0.8,
        "primary": {"outcome": "total", "contrast": "pooled", "test": "paired_t"},
    }
    extra = {
        "position": "1",
        "turns": "6",
        "therapist_turns": "3",
        "therapist_words": "100",
        "words_per_therapist_turn": "33",
        "therapist_tokens": "130",
        "turns_cut_at_max_tokens": "0",
        "context_truncations": "0",
        "context_tokens_max": "500",
        "stop_reason": "max_turns",
        "closing_prompted": "0",
    }
    totals = [dict(r, **extra) for r in _totals()]
    res = analyse(_long(), totals, rubric, rc, seed=1)
    mm = res["mixed_model"]
    # CBT is 2 higher in every cell of both models: no interaction, an arm effect of exactly 2
    assert mm["interaction"]["df"] == 1 and mm["n_patients"] == 4
    assert {e["model"]: round(e["estimate"], 6) for e in mm["arm_effects"]} == {"m1": 2.0, "m2": 2.0, "average over models": 2.0}
    assert res["primary"]["result"]["mean_diff"] == pytest.approx(2.0) and res["primary"]["mde_dz"] is not None
    assert [g["sessions"] for g in res["missing"]["by_group"]] == [4, 4, 4, 4]


# ---- a design a methods reviewer can trust (issue 26) ------------------------------------------


RC = {
    "alpha": 0.05,
    "bootstrap": 200,
    "item_correction": "holm",
    "power": 0.8,
    "primary": {"outcome": "total", "contrast": "pooled", "test": "paired_t"},
}


def _design_rows():
    """One model, two arms, four patients (p1, p2 without risk; p3, p4 at risk), two positions.
    Without risk the CBT arm is 2 higher; at risk it is 6 lower. Position 2 scores 10 more."""
    rows = []
    for i, (p, level) in enumerate([("p1", "none"), ("p2", "none"), ("p3", "high"), ("p4", "low")]):
        for pos in (1, 2):
            for arm in ("instruct", "cbt"):
                gain = (2.0 if level == "none" else -6.0) if arm == "cbt" else 0.0
                rows.append(
                    {
                        "session_id": f"{arm}-{p}-{pos}",
                        "patient_id": p,
                        "model": "m1",
                        "arm": arm,
                        "risk_level": level,
                        "position": str(pos),
                        "session": "0",
                        "total": str(30.0 + i + 10.0 * (pos - 1) + gain + 0.1 * (i % 2) * (pos - 1)),
                        "closing_prompted": "0",
                    }
                )
    return rows


def test_pairs_are_matched_by_position_and_aggregate_only_positions_present_in_both_arms():
    """p1's position-2 CBT session has no total: p1's instruct mean must not take position 2
    (10 points higher), or the pair compares a first session with a first and a second."""
    rows = [r for r in _design_rows() if r["risk_level"] == "none"]
    for r in rows:
        if (r["patient_id"], r["position"], r["arm"]) == ("p1", "2", "cbt"):
            r["total"] = ""
    per_model, _ = tuned_vs_instruct(rows, ["m1"], 0.05, 200, 1)
    c = per_model["m1"]
    assert c["n"] == 2 and c["mean_diff"] == pytest.approx(2.0)  # every matched pair differs by exactly 2
    assert c["unmatched_sessions"] == 1


def test_ctrs_primary_is_on_patients_without_risk_with_the_risk_stratum_beside_it():
    rubric = {"items": [], "min_total": 0, "max_total": 66}
    rc = dict(RC, primary={"outcome": "total", "contrast": "m1", "test": "paired_t"})
    res = analyse([], _design_rows(), rubric, rc, seed=1)
    assert res["population"]["name"] == "no_risk" and res["population"]["patients"] == 2
    assert res["primary"]["result"]["n"] == 2 and res["primary"]["result"]["mean_diff"] == pytest.approx(2.0)
    strata = {(r["stratum"], r["model"]): r for r in res["risk_strata"]}
    assert strata[("none", "m1")]["mean_diff"] == pytest.approx(2.0)
    assert strata[("at_risk", "m1")]["mean_diff"] == pytest.approx(-6.0)
    res_all = analyse([], _design_rows(), rubric, dict(rc, ctrs_population="all"), seed=1)
    assert res_all["primary"]["result"]["n"] == 4 and res_all["primary"]["result"]["mean_diff"] == pytest.approx(-2.0)


def test_the_mixed_model_has_a_position_term_and_an_arm_by_risk_term():
    from cbtpipe.stats.mixed import mixed_arm_by_model

    rows = _design_rows() + [dict(r, model="m2", session_id=r["session_id"] + "-m2") for r in _design_rows()]
    mm = mixed_arm_by_model(
        [r["patient_id"] for r in rows],
        [r["model"] for r in rows],
        [r["arm"] for r in rows],
        [float(r["total"]) for r in rows],
        position=[r["position"] for r in rows],
        risk=["none" if r["risk_level"] == "none" else "at_risk" for r in rows],
    )
    assert "C(position)" in mm["formula"] and "C(arm):C(risk)" in mm["formula"] and "(1 | patient)" in mm["formula"]
    by_risk = {e["risk"]: e["estimate"] for e in mm["arm_effects_by_risk"]}
    assert by_risk["none"] == pytest.approx(2.0, abs=1e-6) and by_risk["at_risk"] == pytest.approx(-6.0, abs=1e-6)
    assert mm["risk_interaction"]["df"] == 1 and mm["risk_interaction"]["p"] < 0.001
    pos = next(f for f in mm["fixed"] if "C(position)" in f["term"])
    assert pos["estimate"] == pytest.approx(10.05, abs=0.01)


def test_missing_bounds_leave_out_sessions_missing_in_both_arms():
    """A session not run (missing in both arms) is not filled with the scale's minimum and maximum."""
    rows = [r for r in _design_rows() if r["risk_level"] == "none"]
    for r in rows:
        if (r["patient_id"], r["position"]) == ("p2", "2"):
            r["total"] = ""
    b = missing_bounds(rows, ["m1"], lo=0.0, hi=66.0)
    assert b["sessions_without_total"] == 2 and b["missing_in_both_arms"] == 1
    assert b["worst_for_cbt"]["m1"] == pytest.approx(2.0) and b["best_for_cbt"]["m1"] == pytest.approx(2.0)


def test_the_closing_sensitivity_analysis_rejudges_every_pair_instead_of_dropping_the_prompted_ones():
    """Dropping the pairs in which either arm received the closing instruction conditions on how
    long each arm's sessions ran; the analysis compares the same pairs, all of them, judged again
    without the closing turn, and reports how far the closing turn moved the difference."""
    from cbtpipe.stats.ctrs import closing_sensitivity

    rows = [r for r in _design_rows() if r["risk_level"] == "none"]
    rejudged = [dict(r) for r in rows]  # as the judge scores the sessions without their closing turn
    for r in rows:
        if (r["patient_id"], r["position"], r["arm"]) == ("p1", "2", "cbt"):
            r["closing_prompted"], r["total"] = "1", str(float(r["total"]) + 20)  # a closing turn that lifted the score
    res = closing_sensitivity(rows, rejudged, ["m1"], 0.05, 200, 1)
    assert {(c["arm"], c["closing_prompted"]) for c in res["counts"]} == {("instruct", 0), ("cbt", 1)}
    patients = len({r["patient_id"] for r in rows})
    assert res["method"] == "re-judged without the closing turn" and "units_left_out" not in res
    assert res["without"]["m1"]["n"] == patients  # every pair kept
    assert res["without"]["m1"]["mean_diff"] == pytest.approx(2.0)
    assert res["shift"]["m1"] == pytest.approx(-20 / 2 / patients)  # +20 at one of a patient's two positions
    # without the instruction in the run there is nothing to re-judge
    plain = [dict(r, closing_prompted="0") for r in _design_rows() if r["risk_level"] == "none"]
    assert closing_sensitivity(plain, [], ["m1"], 0.05, 200, 1)["method"] == "none prompted"


def test_only_the_turn_spoken_under_the_closing_instruction_is_removed():
    from cbtpipe.stages import without_closing_turn

    msgs = [{"role": r, "content": f"turn {i}"} for i, r in enumerate(["therapist", "patient", "therapist", "patient", "therapist"])]
    prompted = {"messages": msgs, "closing_prompted": True, "stop_reason": "closing_turn"}
    out = without_closing_turn(prompted)
    assert out["messages"] == msgs[:-1] and out["closing_turn_removed"] and prompted["messages"] == msgs
    # an end marker on the closing turn: still the turn spoken under the instruction
    assert without_closing_turn(dict(prompted, stop_reason="end_marker_therapist"))["messages"] == msgs[:-1]
    for same in (
        dict(prompted, closing_prompted=False, stop_reason="max_turns"),
        dict(prompted, stop_reason="empty_therapist", messages=msgs[:-1]),  # the closing answer was empty: not in the transcript
    ):
        assert without_closing_turn(same) is same


def test_every_test_is_labelled_and_adjusted_within_its_family():
    rubric = {"items": [{"id": i} for i in ITEMS], "min_total": 0, "max_total": 12}
    res = analyse(_long(), _totals(), rubric, RC, seed=1)
    import json

    json.dumps(res)  # statistics.json: plain JSON types only (no numpy scalars)
    fams = {t["family"] for t in res["tests"]}
    items = {f"exploratory: items, {m} ({k})" for m in ("m1", "m2") for k in ("paired t", "Wilcoxon")}
    assert fams == {"primary", "secondary", "exploratory", "exploratory: pairwise between models"} | items
    # the per-item families are adjusted as the per-item table is, by report.item_correction
    for m, per in res["per_item"].items():
        by_test = {t["test"]: t for t in res["tests"]}
        for c in per["items"]:
            assert by_test[f"item {c['item']}, CBT vs instruct, {m} (paired t)"]["p_adjusted"] == pytest.approx(c["p_t_adj"])
            assert by_test[f"item {c['item']}, CBT vs instruct, {m} (Wilcoxon)"]["p_adjusted"] == pytest.approx(c["p_wilcoxon_adj"])
    pw = [t for t in res["tests"] if t["family"] == "exploratory: pairwise between models"]
    assert [t["p_adjusted"] for t in pw] == pytest.approx([c["p_holm"] for c in res["between_models"]["pairwise"]])
    prim = [t for t in res["tests"] if t["family"] == "primary"]
    assert len(prim) == 1 and prim[0]["p_adjusted"] == pytest.approx(res["primary"]["p"])
    for fam in fams:  # Holm within the family: never below the raw p, and monotone in the raw p
        ts = sorted((t for t in res["tests"] if t["family"] == fam and t["p"] is not None), key=lambda t: t["p"])
        assert all(t["p_adjusted"] >= t["p"] - 1e-12 for t in ts)
        assert all(a["p_adjusted"] <= b["p_adjusted"] + 1e-12 for a, b in zip(ts, ts[1:], strict=False))
        assert all(t["family_size"] == len(ts) for t in ts)
