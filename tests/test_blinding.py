"""The judges are blind: what a CTRS or safety judge reads is a function of the transcript (and
its course context) alone. The same transcript labelled with another model, arm, quantization,
session or patient sends byte-identical requests, and no label appears in any of them. Real HTTP
to a loopback OpenAI-compatible server that records every request."""

import json

from cbtpipe.design import load_crisis_resources, load_rubric, load_safety_rubric
from cbtpipe.llm import OpenAIBackend
from cbtpipe.stages import run_safety_judging
from cbtpipe.stages.judge import run_judging
from cbtpipe.workflow import section_defaults
from tests.helpers.fault_server import FaultServer
from tests.test_concurrency import _ctrs_answer
from tests.test_safety import HANDLED, MISSED, NO_RISK, _scripted_judge

LABELS = [
    {"model": "qwen2.5-7b", "arm": "cbt", "quantization": "Q8_0", "session_id": "qwen-cbt-s1", "patient_id": "eval-017"},
    {"model": "llama3.1-8b", "arm": "instruct", "quantization": "Q4_K_M", "session_id": "llama-instruct-s9", "patient_id": "eval-003"},
]


def _requests(answer, run):
    """The chat messages of every request ``run(backend)`` sends, in order."""
    seen = []

    def recording(body):
        seen.append(json.dumps(body["messages"], sort_keys=True))
        return answer(body)

    with FaultServer(slow_s=0.0, answer=recording) as srv:
        b = OpenAIBackend("judge", {"type": "openai", "base_url": srv.url("latency"), "model": "m", "max_retries": 0}, cache_dir=None)
        run(b)
        b.close()
    return seen


def _relabelled(sessions, labels):
    return [dict(s, **(labels | {"session_id": f"{labels['session_id']}-{k}"})) for k, s in enumerate(sessions)]


def _assert_blind(per_label):
    a, b = per_label
    assert a and a == b  # the same transcripts under other labels: the same requests, byte for byte
    for labels in LABELS:
        for text in a:
            for key in ("model", "session_id", "patient_id", "quantization"):
                assert labels[key] not in text, f"{key} {labels[key]!r} reached the judge"


def test_the_ctrs_judge_reads_nothing_that_names_model_or_arm(root, tmp_path):
    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    jcfg = section_defaults("judge") | {"samples": 2, "sampling": {"temperature": 0.7, "max_tokens": 100}, "turn_windows": {}}
    sessions = [dict(s, course_context="Session 2 of 8 (phase: early). Earlier: sleep diary.") for s in (MISSED, HANDLED)] + [NO_RISK]
    per_label = [
        _requests(
            _ctrs_answer(rubric),
            lambda b, lab=lab, k=k: run_judging(
                _relabelled(sessions, lab), b, rubric, jcfg, root / "resources/prompts/judge.j2", tmp_path / f"u{k}"
            ),
        )
        for k, lab in enumerate(LABELS)
    ]
    _assert_blind(per_label)
    assert len(per_label[0]) == 3 * 2


def test_the_safety_judge_reads_nothing_that_names_model_or_arm(root, tmp_path):
    srub = load_safety_rubric(root / "resources/rubrics/safety.yaml")
    crisis = load_crisis_resources(root / "resources/safety/crisis_resources.yaml", "US")
    scfg = section_defaults("safety") | {"backend": "judge", "sampling": {"temperature": 0.0, "max_tokens": 100}}
    sessions = [MISSED, HANDLED, NO_RISK]
    per_label = [
        _requests(
            _scripted_judge(srub),
            lambda b, lab=lab, k=k: run_safety_judging(
                _relabelled(sessions, lab), b, srub, scfg, root / "resources/prompts/safety_question.j2", crisis, tmp_path / f"s{k}"
            ),
        )
        for k, lab in enumerate(LABELS)
    ]
    _assert_blind(per_label)
