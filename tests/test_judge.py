"""The judge with the real tiny model in llama.cpp: schema enforced, invalid answers missing."""

from cbtpipe.design import load_rubric
from cbtpipe.llm import Completion
from cbtpipe.stages.judge import judge_session, judged_text_sha, render_transcript, run_judging

SESSION = {
    "session_id": "abc123",
    "patient_id": "eval-000",
    "model": "SECRETMODELNAME",
    "arm": "cbt",
    "quantization": "Q4_K_M",
    "messages": [
        {"role": "therapist", "content": "Welcome back. How has your mood been this week?"},
        {"role": "patient", "content": "Low. I stayed in bed most days."},
        {"role": "therapist", "content": "Shall we put getting up in the morning on today's agenda?"},
    ],
}
JCFG = {
    "samples": 2,
    "seed": 5,
    "max_attempts": 2,
    "aggregate": "mean",
    "totals": "complete",
    "justification_chars": 30,
    "sampling": {"temperature": 0.7, "max_tokens": 500},
}


def test_schema_enforced_with_tiny_model(root, tiny_backend, tmp_path):
    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    j = judge_session(SESSION, tiny_backend, rubric, JCFG, root / "resources/prompts/judge.j2")
    assert len(j["samples"]) == 2
    for s in j["samples"]:
        if s["valid"]:
            assert set(s["scores"]) == {i["id"] for i in rubric["items"]}
            assert all(0 <= v <= 6 for v in s["scores"].values())
            assert s["total"] == sum(s["scores"].values())
    assert j["valid_samples"] >= 1
    assert len({s["seed"] for s in j["samples"]}) == 2


def test_judge_never_sees_model_or_arm(root):
    text = render_transcript(SESSION)
    assert "SECRETMODELNAME" not in text and "cbt" not in text.lower().split()


def test_invalid_answers_are_missing_not_zero(root, tmp_path):
    from cbtpipe.llm import Backend

    class Broken(Backend):
        def identity(self):
            return {"type": "broken"}

        def _complete(self, messages, *, sampling, seed, schema, stop):
            return Completion(text='{"agenda": {"score": 0}}' if seed % 2 else "The session was fine.", completion_tokens=5)

    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    b = Broken("broken", {}, cache_dir=None)
    judged, stats = run_judging([SESSION], b, rubric, JCFG, root / "resources/prompts/judge.j2", tmp_path)
    j = judged[0]
    assert stats["valid_samples"] == 0 and stats["valid_share"] == 0
    for s in j["samples"]:
        assert not s["valid"] and s["attempts"] == 2
        assert all(v is None for v in s["scores"].values())
        assert s["total"] is None and s["raw_invalid"]
    assert j["total"] is None and all(v is None for v in j["item_scores"].values())


class _Scripted:
    """A judge backend that answers every sample with valid scores and counts its calls."""

    @staticmethod
    def make(rubric):
        import json

        from cbtpipe.llm import Backend

        class Scripted(Backend):
            calls = 0

            def identity(self):
                return {"type": "scripted"}

            def _complete(self, messages, *, sampling, seed, schema, stop):
                type(self).calls += 1
                ans = {i["id"]: {"score": 3, "justification": "ok"} for i in rubric["items"]}
                return Completion(text=json.dumps(ans), completion_tokens=5)

        return Scripted("scripted", {}, cache_dir=None)


def test_a_changed_transcript_is_judged_again(root, tmp_path):
    """Judgements are keyed by the transcript they score: the same session id with other turns (a
    retrained model's session) is judged again, an unchanged one is reused, and every judged
    record carries the hash of the transcript it scored."""

    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    other = dict(SESSION, session_id="def456", patient_id="eval-001")
    b = _Scripted.make(rubric)
    tpl = root / "resources/prompts/judge.j2"
    first, st1 = run_judging([SESSION, other], b, rubric, JCFG, tpl, tmp_path)
    assert st1["sessions_reused"] == 0 and type(b).calls == 4
    changed = dict(
        SESSION, messages=[*SESSION["messages"][:2], {"role": "therapist", "content": "Let us look at the evidence for that thought."}]
    )
    second, st2 = run_judging([changed, other], b, rubric, JCFG, tpl, tmp_path)
    assert st2["sessions_reused"] == 1 and type(b).calls == 6
    for sess, j in zip([changed, other], second, strict=True):
        assert j["transcript_sha256"] == judged_text_sha(sess)
    assert second[0]["transcript_sha256"] != first[0]["transcript_sha256"]
    assert second[1] == first[1]


def test_a_session_without_turns_is_missing_not_judged(root, tmp_path):
    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    b = _Scripted.make(rubric)
    empty = dict(SESSION, messages=[])
    judged, stats = run_judging([empty], b, rubric, JCFG, root / "resources/prompts/judge.j2", tmp_path)
    assert type(b).calls == 0 and stats["sessions_without_turns"] == 1
    j = judged[0]
    assert j["total"] is None and j["valid_samples"] == 0 and j["missing_reason"] == "the session has no turns"
    assert all(v is None for v in j["item_scores"].values())


def test_turn_windows_end_at_every_nth_therapist_turn_and_the_last():
    from cbtpipe.stages.judge import turn_windows

    roles = ["therapist", "patient"] * 4 + ["therapist"]
    msgs = [{"role": r, "content": f"{r} {i}", "prompt_tokens": 100 * i, "completion_tokens": 10} for i, r in enumerate(roles)]
    w = turn_windows({"messages": msgs}, window=3, every=2)
    # therapist turns are 1, 3, 5, 7, 9 (1-based): every second one (3, 7) and the last (9)
    assert [x["turn"] for x in w] == [3, 7, 9]
    assert [(x["excerpt"]["first"], x["excerpt"]["last"]) for x in w] == [(1, 3), (5, 7), (7, 9)]
    assert [len(x["messages"]) for x in w] == [3, 3, 3] and w[0]["messages"][-1]["content"] == "therapist 2"
    assert [x["context_tokens"] for x in w] == [210, 610, 810]
    assert [x["turn"] for x in turn_windows({"messages": msgs}, window=2, every=1)] == [1, 3, 5, 7, 9]
