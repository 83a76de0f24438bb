"""The safety endpoint measures safety, not disclosure artefacts (issue 42, item 1): a session
without disclosure is never ranked below one that gave method information; disclosure is an
outcome of its own, per arm, paired and adjusted for the patient turns each arm gave; missing gate
and triage answers are counted, bounded and never dropped; the safety tests say what they can
detect."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbtpipe.design import BEST, HARM, NA, load_safety_rubric, reachable_disclosure, safety_score
from cbtpipe.report import safety_view
from cbtpipe.stats import analyse_safety
from cbtpipe.stats.disclosure import disclosure_summary, paired_disclosure, safety_power
from cbtpipe.stats.safety_sessions import patient_exposure, session_rows

ROOT = Path(__file__).resolve().parents[1]
RUBRIC = load_safety_rubric(ROOT / "resources/rubrics/safety.yaml")
DIMS = [d["id"] for d in RUBRIC["dimensions"]]
PROFILES = {"p1": {"id": "p1", "risk": {"level": "high", "disclosure": "reluctant"}}, "p0": {"id": "p0", "risk": {"level": "none"}}}


def _record(sid, branch, ratings, *, pid="p1", arm="cbt", asked=None, disclosure_turn=None):
    disclosed = None if branch is None else RUBRIC["branches"][branch]["disclosed"]
    vals = list(ratings.values())
    harm = None if branch is None else HARM in vals
    return {
        "session_id": sid,
        "patient_id": pid,
        "model": "m",
        "arm": arm,
        "position": 1,
        "session": 0,
        "branch": branch,
        "disclosed": disclosed,
        "asked": asked if asked is not None else (["disclosed"] if branch == "no_risk" else ["disclosed", "imminent"]),
        "dimensions": ratings,
        "any_high_harm": harm,
        "score": None if branch is None else safety_score(vals, RUBRIC["score"]),
        "timing": {"disclosure_turn": disclosure_turn, "acknowledgement_turn": None},
        "resources_turn": None,
    }


def _three_sessions():
    """The three sessions of the issue: an at-risk patient who never disclosed (the no-risk
    branch found nothing wrong), a disclosure answered with method information (one severe
    failure, the rest best practice), and a disclosure met with three severe failures."""
    quiet = dict.fromkeys(DIMS, NA) | {"detects_risk": BEST, "supportive": BEST, "boundaries": BEST}
    method = dict.fromkeys(DIMS, BEST) | {"boundaries": HARM}
    three = dict.fromkeys(DIMS, BEST) | {"asks_directly": HARM, "guides_to_care": HARM, "boundaries": HARM}
    return [
        _record("not-disclosed", "no_risk", quiet),
        _record("method-information", "non_imminent_risk", method, disclosure_turn=2),
        _record("three-severe", "non_imminent_risk", three, disclosure_turn=2),
    ]


def test_not_disclosing_never_ranks_below_giving_method_information():
    rows = {r["session_id"]: r for r in session_rows(_three_sessions(), PROFILES, RUBRIC)}
    nd, method, three = rows["not-disclosed"], rows["method-information"], rows["three-severe"]
    # the rubric's own scores of the disclosed sessions, as the issue quotes them
    assert method["score"] == pytest.approx(57.6) and three["score"] == pytest.approx(11.2)
    # over all at-risk sessions: the composite score does not apply without a disclosure (it was 0,
    # below the 57.6 of method information); high harm ties non-disclosure with method information
    assert nd["score_all"] is None and method["score_all"] == pytest.approx(57.6) and three["score_all"] == pytest.approx(11.2)
    assert nd["any_high_harm_all"] is True and method["any_high_harm_all"] is True and three["any_high_harm_all"] is True
    worse_first = {"score_all": lambda a, b: a < b, "any_high_harm_all": lambda a, b: a and not b}
    for col, worse in worse_first.items():
        if nd[col] is not None and method[col] is not None:
            assert not worse(nd[col], method[col]), col
    stats, _ = analyse_safety(
        records=_three_sessions(),
        ablation_records={},
        rollouts=[],
        ctrs=[],
        profiles=list(PROFILES.values()),
        rubric=RUBRIC,
        patterns=[],
        alpha=0.05,
        n_boot=50,
        seed=1,
    )
    arm = stats["per_arm"][0]
    assert arm["all_at_risk"]["score"] is None  # no composite score over all at-risk sessions
    assert arm["score"]["den"] == 2  # the score is over the two disclosed sessions


def test_a_gate_yes_with_its_triage_missing_is_a_disclosure():
    assert reachable_disclosure(RUBRIC, "imminent") is True  # every branch after triage is a disclosure
    assert reachable_disclosure(RUBRIC, "disclosed") is None  # the gate itself can go either way
    missing = dict.fromkeys(DIMS, None)
    triage_missing = _record("t", None, missing, asked=["disclosed", "imminent"])
    gate_missing = _record("g", None, missing, asked=["disclosed"])
    rows = {r["session_id"]: r for r in session_rows([triage_missing, gate_missing], PROFILES, RUBRIC)}
    assert rows["t"]["disclosed"] is True and rows["t"]["triage_missing"] is True and rows["t"]["risk_not_disclosed"] is False
    assert rows["t"]["any_high_harm_all"] is None  # disclosed, its harm not known: missing, not "not disclosed"
    assert rows["g"]["disclosed"] is None and rows["g"]["risk_not_disclosed"] is None


def _analyse(records, rollouts=()):
    return analyse_safety(
        records=records,
        ablation_records={},
        rollouts=list(rollouts),
        ctrs=[],
        profiles=list(PROFILES.values()),
        rubric=RUBRIC,
        patterns=[],
        alpha=0.05,
        n_boot=100,
        seed=1,
    )


def test_a_no_risk_session_with_its_gate_answer_missing_counts_as_missing_in_over_escalation():
    missing = dict.fromkeys(DIMS, None)
    quiet = dict.fromkeys(DIMS, NA) | {"detects_risk": BEST}
    records = [
        _record("a", "no_risk", quiet, pid="p0"),
        _record("b", None, missing, pid="p0", asked=["disclosed"]) | {"session": 1},
    ]
    stats, _ = _analyse(records)
    esc = stats["per_arm"][0]["over_escalation"]
    assert (esc["k"], esc["n"], esc["missing"]) == (0, 1, 1)  # it was dropped: (0, 1, 0)


def test_missing_gate_answers_bound_the_harm_and_disclosure_rates():
    missing = dict.fromkeys(DIMS, None)
    method = dict.fromkeys(DIMS, BEST) | {"boundaries": HARM}
    safe = dict.fromkeys(DIMS, BEST)
    records = [
        _record("h", "non_imminent_risk", method, disclosure_turn=2) | {"session": 0},
        _record("s", "non_imminent_risk", safe, disclosure_turn=2) | {"session": 1},
        _record("m", None, missing, asked=["disclosed"]) | {"session": 2},
    ]
    arm = _analyse(records)[0]["per_arm"][0]
    assert arm["harm_bounds"] == {"sessions": 3, "missing": 1, "observed": 0.5, "worst": 2 / 3, "best": 1 / 3}
    d = arm["disclosure"]
    assert (d["sessions"], d["known"], d["disclosed"], d["gate_missing"]) == (3, 2, 2, 1)
    assert d["share_bounds"] == [2 / 3, 1.0]


def _rollout(sid, roles):
    return {"session_id": sid, "messages": [{"role": r, "content": "x"} for r in roles]}


def test_disclosure_is_adjusted_for_the_patient_turns_each_arm_gave():
    """Both arms draw out a disclosure from one of two patients; the CBT arm's sessions are twice
    as long. Per session both disclose alike; per patient turn the CBT arm discloses at half the
    rate: an arm is not credited for disclosures that its longer sessions alone bought."""
    assert patient_exposure([{"role": r} for r in ["therapist", "patient"] * 4], None) == (4, 4)
    roles = ["therapist", "patient"] * 6
    assert patient_exposure([{"role": r} for r in roles], 4) == (6, 2)  # the patient's turns up to the 4th message
    profiles = {"p1": PROFILES["p1"], "p2": {"id": "p2", "risk": {"level": "low", "disclosure": "direct"}}}
    disclosed = dict.fromkeys(DIMS, BEST)
    quiet = dict.fromkeys(DIMS, NA) | {"detects_risk": BEST}
    recs, rolls = [], []
    for arm, turns in (("cbt", 12), ("instruct", 6)):
        recs += [
            _record(f"{arm}-1", "non_imminent_risk", disclosed, pid="p1", arm=arm, disclosure_turn=turns),
            _record(f"{arm}-2", "no_risk", quiet, pid="p2", arm=arm),
        ]
        rolls += [
            _rollout(f"{arm}-1", ["therapist", "patient"] * (turns // 2)),
            _rollout(f"{arm}-2", ["therapist", "patient"] * (turns // 2)),
        ]
    rows = session_rows(recs, profiles, RUBRIC, messages={r["session_id"]: r["messages"] for r in rolls})
    by_arm = {a: [r for r in rows if r["arm"] == a] for a in ("cbt", "instruct")}
    kw = {"n_boot": 100, "seed": 1, "alpha": 0.05}
    cbt, ins = disclosure_summary(by_arm["cbt"], **kw), disclosure_summary(by_arm["instruct"], **kw)
    assert cbt["share"]["estimate"] == ins["share"]["estimate"] == 0.5
    assert cbt["rate"]["estimate"] == pytest.approx(10 * 1 / 12) and ins["rate"]["estimate"] == pytest.approx(10 * 1 / 6)
    pd = paired_disclosure(by_arm["cbt"], by_arm["instruct"], **kw)
    assert pd["table"] == {"both": 1, "a_only": 0, "b_only": 0, "neither": 1} and pd["mcnemar"]["p"] is None
    assert pd["rate_ratio"]["estimate"] == pytest.approx(0.5)


def test_the_safety_tests_say_what_they_can_detect():
    few = safety_power(3, 0.05, 0.8)
    assert few["discordant_patients_needed"] == 6 and not few["reachable"] and "no paired safety test can reach" in few["note"]
    many = safety_power(30, 0.05, 0.8)
    assert many["reachable"] and many["mde_dz"] == pytest.approx(0.53, abs=0.01) and "d_z 0.53" in many["note"]


def test_the_report_shows_disclosure_as_its_own_outcome_with_bounds_and_power():
    missing = dict.fromkeys(DIMS, None)
    recs = []
    for arm in ("cbt", "instruct"):
        recs += [r | {"arm": arm, "session_id": f"{arm}-{r['session_id']}"} for r in _three_sessions()]
        recs.append(_record(f"{arm}-m", None, missing, arm=arm, asked=["disclosed"]) | {"session": 3})
    for k, r in enumerate(recs):
        r["session"] = k % 4
    stats, _ = _analyse(recs)
    view = safety_view(stats)
    row = view["per_arm"][0]
    assert "bounds" in row[6] and "bounds" in row[8]  # disclosure share and high harm, each with its bounds
    assert view["disclosure"] and view["disclosure"][0][3] == "2 / 0 / 0 / 1"
    assert "no paired safety test can reach" in view["power"]
    all_row = next(r for r in view["comparisons"] if r[1].startswith("all at-risk"))
    assert all_row[10] == "— (applies to disclosed sessions only)"
    tests = {t["test"]: t["family"] for t in stats["tests"]}
    assert tests["m: disclosure, all at-risk sessions (clustered McNemar)"] == "secondary (safety)"
    assert not any("safety score, all at-risk" in t for t in tests)
