"""Judges cannot drift between arms (issue 42, item 2): one job judges both arms of a (model,
shard) interleaved patient by patient, judge and safety units are keyed by the served model and
its fingerprint, every call is recorded, and the report lists a judge that met the arms as
different models or at separate times as a deviation."""

from __future__ import annotations

import json

from cbtpipe.design import load_crisis_resources, load_rubric, load_safety_rubric
from cbtpipe.llm import make_backend
from cbtpipe.report import arm_timing
from cbtpipe.stages import judge_arms, run_panel, run_safety_judging
from cbtpipe.stats import judge_provenance, safety_provenance
from cbtpipe.workflow import hash_obj, judge_members, section_defaults
from tests.helpers.fault_server import FaultServer
from tests.test_safety import _session


def _pair(patient, turns):
    return [_session(f"{patient}-{arm}", turns, arm=arm, patient=patient) for arm in ("instruct", "cbt")]


TURNS = ["Hello, what shall we work on?", "My sleep, and the worry at night.", "Let's look at a recent night together."]
PATIENTS = ["eval-000", "eval-001", "eval-002"]
BY_ARM = {
    "instruct": [_pair(p, TURNS)[0] for p in PATIENTS],
    # the CBT arm's file lists the patients in another order: each arm still gets its own order back
    "cbt": [_pair(p, [*TURNS, "And what went through your mind?"])[1] for p in reversed(PATIENTS)],
}


def test_both_arms_are_judged_in_one_run_patient_by_patient_and_each_gets_its_order_back():
    seen = []

    def judge(sessions):
        seen.extend((s["patient_id"], s["arm"]) for s in sessions)
        return [{"session_id": s["session_id"], "arm": s["arm"]} for s in sessions], {"sessions": len(sessions)}

    out, stats = judge_arms(BY_ARM, judge)
    assert seen == [(p, a) for p in PATIENTS for a in ("instruct", "cbt")]  # one patient's two arms back to back
    for arm, sessions in BY_ARM.items():
        assert [r["session_id"] for r in out[arm]] == [s["session_id"] for s in sessions]
    assert stats["arms"] == {"instruct": 3, "cbt": 3} and stats["interleaved"] is True


def _answer(body):
    props = body["response_format"]["json_schema"]["schema"]["properties"]
    if "answer" in props:
        return json.dumps({"reasoning": "turn 2", "answer": "no"})
    h = int(hash_obj([body["messages"], body["seed"]], 8), 16)
    return json.dumps({k: {"justification": "ok", "score": (h >> i) % 7} for i, k in enumerate(props)})


def _judge(root, units, srv, sessions):
    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    jcfg = section_defaults("judge") | {"backend": "api", "samples": 2, "sampling": {"temperature": 0.7, "max_tokens": 200}}
    backends = {
        "api": make_backend(
            "api", {"api": {"type": "openai", "base_url": srv.url("ok"), "model": "judge"}}, cache_dir=units / "cache", probe=True
        )
    }
    try:
        return judge_arms(
            sessions,
            lambda ss: run_panel(ss, backends, rubric, judge_members(jcfg), [root / "resources/prompts/judge.j2"], units / "judge"),
        )
    finally:
        backends["api"].close()


def _safety(root, units, srv, sessions):
    scfg = section_defaults("safety") | {"backend": "api", "sampling": {"temperature": 0.0, "max_tokens": 100}}
    rubric = load_safety_rubric(root / "resources/rubrics/safety.yaml")
    res = load_crisis_resources(root / "resources/safety/crisis_resources.yaml", "US")
    b = make_backend("api", {"api": {"type": "openai", "base_url": srv.url("ok"), "model": "judge"}}, cache_dir=units / "cache", probe=True)
    try:
        return judge_arms(
            sessions,
            lambda ss: run_safety_judging(ss, b, rubric, scfg, root / "resources/prompts/safety_question.j2", res, units / "safety"),
        )
    finally:
        b.close()


def test_a_changed_fingerprint_judges_again_and_every_call_is_recorded(root, tmp_path):
    """The same served model with a new system fingerprint (a new deployment under one name) is
    judged again, by the CTRS judge and by the safety judge, and not answered from the response
    cache; an unchanged one is read back from the units. Each sample records every call."""
    with FaultServer(fails=0, answer=_answer) as srv:
        srv.served = "judge-2026-12"
        out, _ = _judge(root, tmp_path, srv, BY_ARM)
        sout, _ = _safety(root, tmp_path, srv, BY_ARM)
        n = sum(srv.counts.values())
        again, st = _judge(root, tmp_path, srv, BY_ARM)
        sagain, sst = _safety(root, tmp_path, srv, BY_ARM)
        assert st["sessions_reused"] == 6 and sst["sessions_reused"] == 6
        assert sum(srv.counts.values()) == n + 2  # the two probes, nothing judged again
        # the provider redeploys: the same model name, another fingerprint
        fp_old, srv.fingerprint = "fp_judge-2026-12", "fp_judge-2026-12-r2"
        moved, st2 = _judge(root, tmp_path, srv, BY_ARM)
        smoved, sst2 = _safety(root, tmp_path, srv, BY_ARM)
    assert st2["sessions_reused"] == 0 and sst2["sessions_reused"] == 0
    for arm in BY_ARM:
        for rec in out[arm]:
            for smp in rec["samples"]:
                assert len(smp["calls"]) == smp["attempts"] >= 1
                assert all(c["served_model"] == "judge-2026-12" and c["system_fingerprint"] == fp_old for c in smp["calls"])
        for rec in smoved[arm]:
            assert all(c["system_fingerprint"] == "fp_judge-2026-12-r2" for a in rec["answers"].values() for c in a["calls"])
    prov = judge_provenance([r for arm in BY_ARM for r in moved[arm]])
    for arm in BY_ARM:
        cell = prov["by_arm"]["m"][arm]
        assert cell["served"] == ["judge: judge-2026-12 (fp_judge-2026-12-r2)"] and cell["first_call"] <= cell["last_call"]
    sprov = safety_provenance([r for arm in BY_ARM for r in smoved[arm]])
    assert sprov["by_arm"]["m"]["cbt"]["served"] == ["safety: judge-2026-12 (fp_judge-2026-12-r2)"]


def _ctx(judge_cells, safety_cells=None):
    return {
        "stats": {"judge_provenance": {"by_arm": {"m": judge_cells}}},
        "safety": {"judge_provenance": {"by_arm": {"m": safety_cells or judge_cells}}},
        "rollout_stats": [{"model": "m", "arm": a, "first_call": 1.0e9, "last_call": 1.0e9 + 60} for a in ("instruct", "cbt")],
        "config": {"models": {}},
    }


def test_the_report_gives_each_arms_judge_window_and_lists_drift_between_arms_as_a_deviation():
    same = {"first_call": 1.0e9 + 100, "last_call": 1.0e9 + 200, "served": ["judge: j (fp_1)"], "calls": 4}
    view = arm_timing(_ctx({"instruct": same, "cbt": same}))
    assert view["deviations"] == []
    assert len(view["rows"]) == 2 and "j (fp_1)" in view["rows"][0][6] and " to " in view["rows"][0][5]
    # another fingerprint for one arm, and one arm judged only after the other was done
    drift = {"instruct": same, "cbt": same | {"served": ["judge: j (fp_2)"]}}
    later = {"instruct": same, "cbt": same | {"first_call": 1.0e9 + 300, "last_call": 1.0e9 + 400, "unfingerprinted": 3}}
    # one arm later, but every call fingerprinted as the same judge (a shared instruct arm read back)
    shown = {
        "instruct": same | {"unfingerprinted": 0},
        "cbt": same | {"first_call": 1.0e9 + 300, "last_call": 1.0e9 + 400, "unfingerprinted": 0},
    }
    assert arm_timing(_ctx(shown))["deviations"] == []
    d1 = arm_timing(_ctx(drift, {"instruct": same, "cbt": same}))["deviations"]
    assert len(d1) == 1 and "CTRS judge that answered differed" in d1[0] and "fp_2" in d1[0]
    d2 = arm_timing(_ctx({"instruct": same, "cbt": same}, later))["deviations"]
    assert len(d2) == 1 and "safety judge judged the arms at times that do not overlap" in d2[0]
