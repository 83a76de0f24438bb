"""The simulated patient is checked, not assumed (issue 42, item 6): per arm its words per turn,
the turn of first disclosure, consistency with its profile and resolution of its distress (a
judge's answers, missing never "no"), and paired tests of a difference between the arms, in the
register, with a difference named as a confound."""

from __future__ import annotations

import json

from cbtpipe.llm import make_backend
from cbtpipe.report import simulator_view
from cbtpipe.stages import run_patient_check
from cbtpipe.stats.simulator import FAMILY, analyse_simulator
from cbtpipe.workflow import section_defaults
from tests.helpers.fault_server import FaultServer
from tests.helpers.pvalues import unregistered_p_values
from tests.test_safety import _session


def _patient_words(n):
    return " ".join(["word"] * n)


def _sessions(n_patients, cbt_words, instruct_words):
    """Every patient against both therapists; the patient discloses at its second turn."""
    out = []
    for i in range(n_patients):
        for arm, words in (("instruct", instruct_words), ("cbt", cbt_words)):
            w = words + (i % 3 if arm == "instruct" else i % 4)  # differences that vary from patient to patient
            turns = ["Hello.", _patient_words(w), "Tell me more.", "I think about ending it. " + _patient_words(w), "Thank you."]
            out.append(_session(f"p{i}-{arm}", turns, arm=arm, patient=f"p{i}"))
    return out


def _safety(sessions):
    return [
        {"model": s["model"], "arm": s["arm"], "session_id": s["session_id"], "disclosed": True, "timing": {"disclosure_turn": 4}}
        for s in sessions
    ]


def _checks(sessions, resolved_arm=None):
    return [
        {
            "model": s["model"],
            "arm": s["arm"],
            "session_id": s["session_id"],
            "consistent": True,
            "resolved": s["arm"] == resolved_arm,
        }
        for s in sessions
    ]


PROFILES = {f"p{i}": {"risk": {"level": "high"}} for i in range(12)}


def test_a_patient_that_behaves_differently_against_the_two_therapists_is_named_as_a_confound():
    sessions = _sessions(12, cbt_words=30, instruct_words=10)
    res = analyse_simulator(sessions, _checks(sessions, resolved_arm="cbt"), _safety(sessions), PROFILES, alpha=0.05, n_boot=200, seed=1)
    arms = {a["arm"]: a for a in res["per_arm"]}
    assert arms["cbt"]["words_per_turn"] > arms["instruct"]["words_per_turn"] + 15
    assert arms["cbt"]["first_disclosure_turn"] == 2  # message 4 is the patient's second turn
    assert arms["cbt"]["resolved"] == {"yes": 12, "known": 12, "share": 1.0} and arms["instruct"]["resolved"]["yes"] == 0
    c = res["comparisons"][0]
    assert c["pairs"] == 12 and c["words_per_turn"]["n"] == 12 and abs(c["words_per_turn"]["mean_diff"] - 20) < 1
    assert c["resolved"]["b"] == 12 and c["resolved"]["p"] < 0.001
    assert {t["family"] for t in res["tests"]} == {FAMILY} and len(res["tests"]) == 4
    assert any("words per turn" in x for x in res["confounds"]) and any("distress resolved" in x for x in res["confounds"])
    # the same patient against both: no confound
    same = _sessions(12, cbt_words=10, instruct_words=10)
    res2 = analyse_simulator(same, _checks(same), _safety(same), PROFILES, alpha=0.05, n_boot=200, seed=1)
    assert res2["confounds"] == [] and abs(res2["comparisons"][0]["words_per_turn"]["mean_diff"]) < 1


def test_the_section_prints_only_registered_p_values(root):
    from cbtpipe.stats.stattests import adjust_within_families

    sessions = _sessions(12, cbt_words=30, instruct_words=10)
    sim = analyse_simulator(sessions, _checks(sessions), _safety(sessions), PROFILES, alpha=0.05, n_boot=200, seed=1)
    sf = {"simulator": sim, "tests": adjust_within_families(sim["tests"])}
    view = simulator_view(sf)
    assert len(view["per_arm"]) == 2 and len(view["measures"]) == 2 and len(view["answers"]) == 2
    header = "| family | test | p | p adjusted (within family) | correction | family size |\n|---|---|---|---|---|---|\n"
    from cbtpipe.report import fmt_p

    register = header + "".join(
        f"| {t['family']} | {t['test']} | {fmt_p(t['p'])} | {fmt_p(t['p_adjusted'])} | holm | 4 |\n" for t in sf["tests"]
    )
    measures = "| measure | model | n | a | b | d | p (paired t) | p adjusted |\n|---|---|---|---|---|---|---|---|\n" + "".join(
        "| " + " | ".join(str(x) for x in r) + " |\n" for r in view["measures"]
    )
    assert unregistered_p_values(register + "\n" + measures) == []


def _answer(body):
    text = json.dumps(body["messages"])
    if "GARBLE" in text:
        return "not json at all"
    return json.dumps({"consistent_reasoning": "turn 2", "consistent": "yes", "resolved_reasoning": "turn 4", "resolved": "no"})


def test_the_check_asks_a_judge_with_the_profile_and_records_a_failed_answer_as_missing(root, tmp_path):
    from cbtpipe.design import eval_profiles, load_attributes

    profile = eval_profiles(load_attributes(root / "resources/patient_attributes.yaml"), 1, 3, [])[0]
    good = _session("good", ["Hello.", "I feel low.", "Tell me more."], patient=profile["id"])
    bad = _session("bad", ["Hello.", "GARBLE", "Tell me more."], patient=profile["id"], position=2)
    ccfg = section_defaults("patient_check") | {"backend": "api", "max_attempts": 1}
    with FaultServer(fails=0, answer=_answer) as srv:
        srv.served = "judge-x"
        b = make_backend("api", {"api": {"type": "openai", "base_url": srv.url("ok"), "model": "j"}}, cache_dir=None, probe=True)
        out, stats = run_patient_check([good, bad], b, {profile["id"]: profile}, ccfg, root / ccfg["prompt"], tmp_path)
        prompt = srv.bodies[-1]["messages"][0]["content"]
        again, stats2 = run_patient_check([good, bad], b, {profile["id"]: profile}, ccfg, root / ccfg["prompt"], tmp_path)
        b.close()
    assert profile["core_belief"]["belief"] in prompt and "I feel low." in json.dumps(srv.bodies)
    assert out[0]["consistent"] is True and out[0]["resolved"] is False and out[0]["calls"][0]["served_model"] == "judge-x"
    assert out[1]["valid"] is False and out[1]["consistent"] is None and out[1]["resolved"] is None  # missing, never "no"
    assert stats["missing"] == 1 and stats2["sessions_reused"] == 2 and again == out
