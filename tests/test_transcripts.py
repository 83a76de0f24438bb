"""Transcript validation, import, phase plan and generation with the real tiny model."""

import json

import pytest

from cbtpipe.design import load_attributes, phase_plan, train_val_profiles
from cbtpipe.stages import load_import, run_generation, split_by_patient, to_chat
from cbtpipe.stages.transcripts import check_session
from cbtpipe.workflow import PipelineError

DCFG = {
    "turn_chars_min": 2,
    "turn_chars_max": 300,
    "exchanges_min": 2,
    "exchanges_max": 3,
    "summary_chars_max": 200,
    "sessions_per_patient": 2,
    "max_attempts": 2,
    "sampling": {"temperature": 0.8, "max_tokens": 500},
    "phases": [
        {"name": "assessment", "share": 0.5, "focus": "assessment"},
        {"name": "relapse_prevention", "share": 0.5, "focus": "ending"},
    ],
}


def T(role, text):
    return {"role": role, "content": text}


def test_check_session():
    ok = [T("therapist", "How was your week?"), T("patient", "Hard, honestly."), T("therapist", "Let us set an agenda.")]
    assert check_session(ok, DCFG) is None
    assert "two therapist turns" in check_session([ok[0], ok[0]], DCFG)
    assert "empty" in check_session([ok[0], T("patient", " ")], DCFG)
    assert "leaked role marker" in check_session([ok[0], T("patient", "Fine.\nTherapist: good")], DCFG)
    assert "leaked role marker" in check_session([ok[0], T("patient", "<|im_start|>user")], DCFG)
    assert "neither therapist nor patient" in check_session([ok[0], T("doctor", "hi")], DCFG)
    assert "longer than" in check_session([ok[0], T("patient", "x" * 301)], DCFG)


def test_phase_plan_follows_order_and_shares():
    phases = [{"name": n, "share": s, "focus": ""} for n, s in (("a", 0.15), ("b", 0.2), ("c", 0.3), ("d", 0.2), ("e", 0.15))]
    plan = [p["name"] for p in phase_plan(phases, 20)]
    assert plan == sorted(plan) and plan[0] == "a" and plan[-1] == "e"
    assert plan.count("c") == 6


def _write(tmp_path, lines, raw=False):
    f = tmp_path / "t.jsonl"
    f.write_bytes(b"\n".join(line if raw else json.dumps(line).encode() for line in lines))
    return f


GOOD = {"patient_id": "p1", "session_index": 1, "messages": [T("therapist", "Hello there."), T("patient", "Hi.")]}


def test_import_good_and_bad(tmp_path):
    assert load_import(_write(tmp_path, [GOOD, dict(GOOD, session_index=2)]), DCFG)[1]["session_index"] == 2
    cases = [
        ([json.dumps(GOOD).encode(), b"{bad json"], "line 2: invalid JSON"),
        (
            [
                json.dumps(GOOD).encode(),
                b'{"patient_id": "p", "session_index": 1, "messages": [{"role": "nurse", "content": "x"}, {"role": "patient", "content": "y"}]}',
            ],
            r"line 2: messages\[0\].role: 'nurse' is not one of",
        ),
        ([json.dumps(dict(GOOD, messages=[T("therapist", "Hello"), T("patient", "")])).encode()], "line 1: turn 2: empty"),
        ([b"\xff\xfe bad bytes"], "line 1: not valid UTF-8"),
        ([json.dumps(dict(GOOD, messages=[T("therapist", "x" * 100000), T("patient", "ok")])).encode()], "line 1: turn 1: longer than"),
        ([json.dumps(GOOD).encode(), json.dumps(GOOD).encode()], "line 2: duplicate session"),
        ([json.dumps({"patient_id": "p"}).encode()], "line 1: 'session_index' is a required property"),
        ([b""], "no sessions found"),
        ([json.dumps(dict(GOOD, patient_id="../../etc/passwd")).encode()], "line 1: patient_id: '../../etc/passwd' does not match"),
        ([json.dumps(dict(GOOD, patient_id=".hidden")).encode()], "line 1: patient_id: '.hidden' does not match"),
    ]
    for lines, msg in cases:
        with pytest.raises(PipelineError, match=msg):
            load_import(_write(tmp_path, lines, raw=True), DCFG)


def test_chat_format_and_split():
    s = dict(GOOD, messages=[*GOOD["messages"], T("therapist", "Bye."), T("patient", "Bye!")])
    row = to_chat(s, "SYS", "(arrives)")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["messages"][1]["content"] == "(arrives)"
    sessions = [dict(GOOD, patient_id=f"p{i}") for i in range(5)]
    train, val = split_by_patient(sessions, None, 2, seed=1)
    assert not {s["patient_id"] for s in train} & {s["patient_id"] for s in val}
    assert len({s["patient_id"] for s in val}) == 2


def test_generation_with_tiny_model_resumes(root, tiny_backend, tmp_path):
    attrs = load_attributes(root / "resources/patient_attributes.yaml")
    train, _ = train_val_profiles(attrs, 2, 1, seed=5)
    tpl = root / "resources/prompts/generate_session.j2"
    sessions, stats = run_generation(train[:1], tiny_backend, DCFG, tpl, tmp_path / "units")
    assert stats["sessions_kept"] + stats["sessions_failed"] == 2
    for s in sessions:
        assert check_session(s["messages"], DCFG) is None
        assert s["messages"][0]["role"] == "therapist" and s["messages"][-1]["role"] == "therapist"
    # A second run over both patients reuses the first patient and computes only the second.
    sessions2, stats2 = run_generation(train, tiny_backend, DCFG, tpl, tmp_path / "units")
    assert stats2["patients_reused"] == 1
    assert sessions2[: len(sessions)] == [dict(s) for s in sessions]
    from cbtpipe.workflow import UnitStore

    counts = UnitStore(stats2["unit_dir"]).computed_counts()
    assert sorted(counts.values()) == [1, 1]


def test_import_reads_spreadsheet_style_files(tmp_path):
    """A byte-order mark and CRLF line ends (as editors and spreadsheets on Windows write them)."""
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n" + json.dumps(dict(GOOD, session_index=2)).encode() + b"\r\n")
    rows = load_import(p, DCFG)
    assert [r["session_index"] for r in rows] == [1, 2] and rows[0]["patient_id"] == GOOD["patient_id"]


def test_human_ratings_with_bom_and_crlf(root, tmp_path):
    from cbtpipe.design import load_human_ratings, load_rubric

    p = tmp_path / "ratings.csv"
    p.write_bytes(b"\xef\xbb\xbfsession_id,item,score\r\ns1,agenda,4\r\n")
    rows = load_human_ratings(p, load_rubric(root / "resources/rubrics/ctrs_modified.yaml"))
    assert rows == [{"session_id": "s1", "item": "agenda", "score": 4.0, "rater": "human"}]


def test_templates_render_in_a_sandbox(tmp_path):
    """A user's prompt template formats the values it is given and cannot reach Python."""
    import pytest

    from cbtpipe.design import render_template
    from cbtpipe.workflow import PipelineError

    ok = tmp_path / "ok.j2"
    ok.write_text("Hello {{ patient | upper }}\n")
    assert render_template(ok, patient="ann") == "Hello ANN"
    evil = tmp_path / "evil.j2"
    evil.write_text("{{ patient.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(PipelineError, match="evil.j2: refused by the template sandbox"):
        render_template(evil, patient="ann")
    evil.write_text("{{ cycler.__init__.__globals__.os.popen('id').read() }}")
    with pytest.raises(PipelineError, match="evil.j2"):
        render_template(evil, patient="ann")
    bad = tmp_path / "bad.j2"
    bad.write_text("line one\n{% if %}\n")
    with pytest.raises(PipelineError, match="bad.j2, line 2"):
        render_template(bad, patient="ann")
    missing = tmp_path / "missing.j2"
    missing.write_text("{{ nobody }}")
    with pytest.raises(PipelineError, match="missing.j2: 'nobody' is undefined .*values it may use: patient"):
        render_template(missing, patient="ann")
