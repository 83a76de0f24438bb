"""Simulated sessions: paired design, session control, resume."""

import json

from cbtpipe.design import eval_profiles, load_attributes
from cbtpipe.stages import run_arms, session_plan, shard_profiles
from cbtpipe.stages.rollout import run_rollouts
from cbtpipe.workflow import UnitStore

RCFG = {
    "therapist": {"temperature": 0.7, "max_tokens": 24},
    "patient": {"temperature": 0.8, "max_tokens": 20},
    "therapist_n_ctx": 2048,
    "opener": "therapist",
    "opening_message": "(The patient arrives.)",
    "max_turns": 4,
    "end_marker": "[END]",
    "context_strategy": "truncate_oldest",
    "sessions_per_patient": 1,
    "seed": 7,
    "min_turns": 0,
    "who_may_end": "either",
    "at_max_turns": "cut",
    "closing_instruction": "(Time is nearly up: close the session.)",
    "positions": [1],
}


def test_plan_is_identical_for_every_arm(root):
    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 4, 3, [])
    a = [(x["profile"]["id"], x["patient_seed"], x["therapist_seed"]) for x in session_plan(ev, RCFG)]
    b = [(x["profile"]["id"], x["patient_seed"], x["therapist_seed"]) for x in session_plan(list(reversed(ev)), RCFG)]
    assert sorted(a) == sorted(b) and len(set(a)) == 4
    shards = [shard_profiles(ev, i, 3) for i in range(3)]
    assert sorted(p["id"] for s in shards for p in s) == sorted(p["id"] for p in ev)


def _rollout_kw(root, backend, gguf, **kw):
    """run_rollouts arguments with the tiny model in both roles."""
    return dict(
        model="tiny",
        quantization="Q4_1",
        gguf=gguf,
        therapist=backend,
        patient=backend,
        patient_template=root / "resources/prompts/patient_system.j2",
        **kw,
    )


def test_rollouts_resume_and_record_everything(root, tiny_backend, tiny_gguf, tmp_path):
    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 2, 3, [])
    kw = _rollout_kw(
        root, tiny_backend, tiny_gguf, arm="instruct", rcfg=RCFG, system_prompt="You are a CBT therapist.", unit_dir=tmp_path / "units"
    )
    first, st1 = run_rollouts(profiles=ev[:1], **kw)
    s = first[0]
    assert s["turns"] <= 4 and s["messages"][0]["role"] == "therapist"
    assert s["stop_reason"] in {"max_turns", "end_marker_patient", "end_marker_therapist", "empty_therapist", "empty_patient"}
    for key in ("patient_seed", "therapist_seed", "context_strategy", "therapist_sampling", "patient_sampling", "gguf_sha256"):
        assert key in s
    assert all({"completion_tokens", "prompt_tokens", "seconds"} <= m.keys() for m in s["messages"])
    both, st2 = run_rollouts(profiles=ev, **kw)
    assert st2["sessions_reused"] == 1 and st2["sessions"] == 2
    assert json.dumps(both[0], sort_keys=True) == json.dumps(first[0], sort_keys=True)
    assert sorted(UnitStore(st2["unit_dir"]).computed_counts().values()) == [1, 1]


def test_context_overflow_is_handled(root, tiny_backend, tiny_gguf, tmp_path):
    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 1, 3, [])
    kw = _rollout_kw(root, tiny_backend, tiny_gguf, arm="cbt", system_prompt="You are a CBT therapist. " * 40, profiles=ev)
    stop, _ = run_rollouts(rcfg=dict(RCFG, therapist_n_ctx=300, context_strategy="stop", max_turns=8), unit_dir=tmp_path / "a", **kw)
    assert stop[0]["stop_reason"].startswith("context_full")
    trunc, _ = run_rollouts(rcfg=dict(RCFG, therapist_n_ctx=420, max_turns=8), unit_dir=tmp_path / "b", **kw)
    assert trunc[0]["context_truncations"] >= 1 or trunc[0]["stop_reason"] != "max_turns"


def _strip_timing(sessions):
    out = []
    for s in sessions:
        s = {k: v for k, v in s.items() if k not in ("therapist_backend",)}
        s["messages"] = [{k: v for k, v in m.items() if k not in ("seconds", "cached", "created")} for m in s["messages"]]
        out.append(s)
    return json.dumps(out, sort_keys=True)


def test_parallel_sessions_in_process_equal_sequential(root, tiny_gguf, tmp_path):
    """Sessions run in threads against one in-process llama.cpp: calls take turns on the model
    and each prompt is evaluated canonically, so the transcripts equal a sequential run's."""
    from cbtpipe.llm import LlamaCppBackend

    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 3, 3, [])
    runs = []
    for parallel in (1, 3):
        b = LlamaCppBackend("tiny", {"n_ctx": 2048}, model_path=tiny_gguf, cache_dir=None)
        try:
            kw = _rollout_kw(root, b, tiny_gguf, arm="cbt", system_prompt="You are a CBT therapist.", profiles=ev)
            sessions, st = run_rollouts(rcfg=dict(RCFG, parallel_sessions=parallel), unit_dir=tmp_path / f"p{parallel}", **kw)
        finally:
            b.close()
        assert st["parallel_sessions"] == parallel and [s["patient_id"] for s in sessions] == sorted(p["id"] for p in ev)
        runs.append(_strip_timing(sessions))
    assert runs[0] == runs[1]


def test_therapist_served_by_llama_server_runs_sessions_concurrently(root, tiny_gguf, tiny_backend, tmp_path):
    """llama.cpp's own server (built with llama-cpp-python from the same sdist) with two slots:
    both sessions run at once against it; a re-run gets every therapist answer from the response
    cache, so it is identical although batched decoding is not bit-identical to the in-process one."""
    from cbtpipe.llm import LlamaServer, LlamaServerBackend
    from cbtpipe.llm.llama_server import find_llama_server

    assert find_llama_server() is not None, "the set-up installs llama-server with llama-cpp-python"
    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 2, 3, [])
    rcfg = dict(RCFG, parallel_sessions=2, therapist_server=True)
    runs = []
    with LlamaServer(tiny_gguf, parallel=2, n_ctx=2048, n_gpu_layers=0, threads=2, log_path=tmp_path / "server.log") as srv:
        for i in range(2):
            th = LlamaServerBackend("therapist", srv, cache_dir=tmp_path / "cache")
            try:
                kw = dict(
                    _rollout_kw(root, th, tiny_gguf, arm="cbt", system_prompt="You are a CBT therapist.", profiles=ev), patient=tiny_backend
                )
                sessions, st = run_rollouts(rcfg=rcfg, unit_dir=tmp_path / f"units{i}", **kw)
            finally:
                th.close()
            assert st["therapist_backend"] == "llama_server" and st["parallel_sessions"] == 2
            assert all(s["turns"] >= 1 and s["therapist_backend"] == "llama_server" for s in sessions)
            runs.append((_strip_timing(sessions), th.stats))
    assert runs[0][0] == runs[1][0]
    assert runs[1][1].cache_hits == runs[1][1].calls >= 2
    assert "slot" in (tmp_path / "server.log").read_text(errors="replace").lower()


def test_missing_llama_server_is_a_clear_error(tiny_gguf, tmp_path, monkeypatch):
    import pytest

    from cbtpipe.llm import LlamaServer
    from cbtpipe.workflow import PipelineError

    monkeypatch.setenv("LLAMA_SERVER_BIN", str(tmp_path / "nope"))
    server = LlamaServer(tiny_gguf, parallel=2, n_ctx=512, n_gpu_layers=0, threads=1, log_path=tmp_path / "s.log")
    with pytest.raises(PipelineError, match="rollout.therapist_server is true, but no llama-server"):
        server.__enter__()


def test_an_unreadable_unit_is_moved_aside_and_recomputed(root, tiny_backend, tiny_gguf, tmp_path, caplog):
    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 1, 3, [])
    kw = _rollout_kw(
        root, tiny_backend, tiny_gguf, arm="cbt", rcfg=RCFG, system_prompt="You are a CBT therapist.", unit_dir=tmp_path / "u", profiles=ev
    )
    first, st = run_rollouts(**kw)
    unit = next(p for p in (tmp_path / "u").rglob("*.json"))
    unit.write_text('{"cut off')
    with caplog.at_level("WARNING", logger="cbtpipe"):
        again, st2 = run_rollouts(**kw)
    assert st2["sessions_reused"] == 0 and unit.with_name(unit.name + ".unreadable").exists()
    assert str(unit) in caplog.text and "unreadable" in caplog.text
    assert _strip_timing(again) == _strip_timing(first)


def test_a_changed_profile_is_played_again(root, tiny_backend, tiny_gguf, tmp_path):
    """Sessions are units of the profile's content: a patient described differently under the same
    id is played again, the others are reused."""
    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 2, 3, [])
    kw = _rollout_kw(root, tiny_backend, tiny_gguf, arm="cbt", rcfg=RCFG, system_prompt="You are a CBT therapist.", unit_dir=tmp_path / "u")
    first, _ = run_rollouts(profiles=ev, **kw)
    changed = [dict(ev[0], history="lost a job last spring and has slept badly since"), ev[1]]
    second, st = run_rollouts(profiles=changed, **kw)
    assert st["sessions_reused"] == 1
    by_id = {s["patient_id"]: s for s in second}
    assert by_id[ev[1]["id"]]["session_id"] == next(s["session_id"] for s in first if s["patient_id"] == ev[1]["id"])
    assert by_id[ev[0]["id"]]["session_id"] != next(s["session_id"] for s in first if s["patient_id"] == ev[0]["id"])


def _scripted(srv, mode="ok"):
    from cbtpipe.llm import OpenAIBackend

    return OpenAIBackend("srv", {"type": "openai", "base_url": srv.url(mode), "model": "m"}, cache_dir=None)


def test_session_control_min_turns_who_may_end_and_closing(root):
    """A real OpenAI-compatible server on loopback plays both roles with fixed answers: the patient
    always asks to end. The end marker counts only from min_turns on and only from whom
    who_may_end allows; at max_turns the therapist's last turn is asked to close the session."""
    from cbtpipe.stages import run_session
    from tests.helpers.fault_server import FaultServer

    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    item = session_plan(eval_profiles(attrs, 1, 3, []), RCFG)[0]
    ptpl = root / "resources/prompts/patient_system.j2"
    with FaultServer(answer="What would you like to work on today?") as tsrv, FaultServer(answer="A little better. [END]") as psrv:
        th, pa = _scripted(tsrv), _scripted(psrv)
        s = run_session(item, th, pa, dict(RCFG, min_turns=4, max_turns=8), "Base prompt.", ptpl)
        assert (s["stop_reason"], s["turns"], s["end_markers_ignored"]) == ("end_marker_patient", 4, 1)
        assert all("[END]" not in m["content"] for m in s["messages"])

        s = run_session(item, th, pa, dict(RCFG, who_may_end="therapist", max_turns=6, at_max_turns="closing"), "Base prompt.", ptpl)
        assert (s["stop_reason"], s["turns"], s["closing_prompted"], s["end_markers_ignored"]) == ("closing_turn", 5, True, 2)
        last = tsrv.bodies[-1]["messages"]
        assert last[-1]["role"] == "user" and last[-1]["content"].endswith(RCFG["closing_instruction"])
        assert all(RCFG["closing_instruction"] not in m["content"] for m in s["messages"])  # never in the transcript

        s = run_session(item, th, pa, dict(RCFG, who_may_end="therapist", max_turns=6), "Base prompt.", ptpl)
        assert (s["stop_reason"], s["turns"], s["closing_prompted"]) == ("max_turns", 6, False)

        # The first_user layout reaches the therapist: no system message, the system text (base
        # prompt and course context) leads the first user turn.
        n = len(tsrv.bodies)
        s = run_session(dict(item, context="CONTEXTBLOCK"), th, pa, dict(RCFG, max_turns=2), "Base prompt.", ptpl, {"system": "first_user"})
        sent = tsrv.bodies[n]["messages"]
        assert [m["role"] for m in sent] == ["user"] and sent[0]["content"].startswith("Base prompt.\n\nCONTEXTBLOCK\n\n")
        assert s["course_context"] == "CONTEXTBLOCK" and s["chat_layout"] == "first_user"


def test_positions_extend_the_plan_and_keep_first_session_seeds(root):
    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 3, 3, [])
    one = session_plan(ev, RCFG)
    two = session_plan(ev, dict(RCFG, positions=[1, 3]), {(p["id"], 3): f"ctx-{p['id']}" for p in ev})
    assert len(two) == 2 * len(one)
    seeds = [(x["patient_seed"], x["therapist_seed"]) for x in two if x["position"] == 1]
    assert seeds == [(x["patient_seed"], x["therapist_seed"]) for x in one]
    later = [x for x in two if x["position"] == 3]
    assert all(x["context"] == f"ctx-{x['profile']['id']}" for x in later)
    assert not {(x["patient_seed"], x["therapist_seed"]) for x in later} & set(seeds)


def test_one_job_plays_the_arms_interleaved_with_the_sessions_each_arm_plays_alone(root, tiny_gguf, tmp_path):
    """Both arms in one job: a patient's instruct and CBT sessions are played back to back (each
    call records its time), and each arm's sessions are those it plays alone."""
    from cbtpipe.llm import LlamaCppBackend

    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 2, 3, [])
    b = LlamaCppBackend("tiny", {"n_ctx": 2048}, model_path=tiny_gguf, cache_dir=None)
    try:
        common = dict(
            model="tiny",
            quantization="Q4_1",
            profiles=ev,
            patient=b,
            rcfg=RCFG,
            system_prompt="You are a CBT therapist.",
            patient_template=root / "resources/prompts/patient_system.j2",
        )
        arms = [{"arm": a, "gguf": tiny_gguf, "therapist": b, "unit_dir": tmp_path / "both" / a} for a in ("instruct", "cbt")]
        (ins, st_i), (cbt, st_c) = run_arms(arms=arms, **common)
        alone = run_rollouts(arm="cbt", gguf=tiny_gguf, therapist=b, unit_dir=tmp_path / "alone", **common)[0]
    finally:
        b.close()
    assert st_i["arms_in_job"] == st_c["arms_in_job"] == 2
    played = sorted((s["messages"][0]["created"], s["patient_id"], s["arm"]) for s in ins + cbt)
    pats = sorted(p["id"] for p in ev)
    # one worker per arm: a patient's two sessions run together (in either order), before the next patient's
    assert [p for _, p, _ in played] == [pats[0], pats[0], pats[1], pats[1]]
    assert {a for _, p, a in played[:2]} == {a for _, p, a in played[2:]} == {"instruct", "cbt"}
    assert _strip_timing(cbt) == _strip_timing(alone)
    assert all(m["served_model"] == tiny_gguf.name and m["system_fingerprint"].startswith("llama-cpp-python") for m in cbt[0]["messages"])
    assert st_c["first_call"] <= st_c["last_call"]


def test_a_patient_model_that_moved_replays_both_arms(root, tiny_backend, tiny_gguf, tmp_path):
    """The rollout units are keyed by the model the patient's endpoint serves: when an API alias
    moves, no arm is answered from units of the old model (which would leave the retrained arm
    and the reused arm facing different patients)."""
    from cbtpipe.llm import make_backend
    from tests.helpers.fault_server import FaultServer

    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    ev = eval_profiles(attrs, 1, 3, [])
    with FaultServer(fails=0, answer="I have been feeling low and tired all week.") as srv:
        backends = {"api": {"type": "openai", "base_url": srv.url("ok"), "model": "chat", "max_retries": 0}}
        runs = []
        for served in ("chat-2026-11", "chat-2026-11", "chat-2026-12"):
            srv.served = served
            patient = make_backend("api", backends, cache_dir=tmp_path / "cache", probe=True)
            arms = [{"arm": a, "gguf": tiny_gguf, "therapist": tiny_backend, "unit_dir": tmp_path / a} for a in ("instruct", "cbt")]
            out = run_arms(
                model="tiny",
                quantization="Q4_1",
                arms=arms,
                profiles=ev,
                patient=patient,
                rcfg=RCFG,
                system_prompt="You are a CBT therapist.",
                patient_template=root / "resources/prompts/patient_system.j2",
            )
            runs.append([(st["sessions_reused"], st["served_models"]) for _, st in out])
    assert runs[0] == [(0, ["chat-2026-11"])] * 2
    assert runs[1] == [(1, ["chat-2026-11"])] * 2  # the same served model: both arms from their units
    assert runs[2] == [(0, ["chat-2026-12"])] * 2  # it moved: both arms played again
