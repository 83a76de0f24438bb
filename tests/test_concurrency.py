"""Independent units of a job run as many at a time as the backend serves (``concurrency``), with
outputs identical to a serial run. Real HTTP against a loopback OpenAI-compatible server that
answers every request after a fixed latency and counts the requests in flight."""

import json
import time

import pytest

from cbtpipe.design import load_crisis_resources, load_rubric, load_safety_rubric
from cbtpipe.llm import OpenAIBackend
from cbtpipe.stages import gather_generation, run_generation, run_safety_judging
from cbtpipe.stages.judge import run_judging
from cbtpipe.workflow import PipelineError, hash_obj, section_defaults, shard_of
from tests.helpers.fault_server import FaultServer
from tests.test_safety import HANDLED, MISSED, NO_RISK, _scripted_judge

LATENCY_S = 0.25


def _strip(x):
    """Drop wall-clock fields (they differ between any two runs)."""
    if isinstance(x, dict):
        return {
            k: _strip(v) for k, v in x.items() if k not in ("seconds", "judge_seconds", "wall_seconds", "created")
        }  # times, not outputs
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _run_both(answer, run, latency=LATENCY_S):
    """``run(backend, tag)`` at concurrency 1 and 4 against the server: (outputs, seconds, most
    requests in flight) for each."""
    out = {}
    for conc in (1, 4):
        with FaultServer(slow_s=latency, answer=answer) as srv:
            spec = {"type": "openai", "base_url": srv.url("latency"), "model": "m", "max_retries": 0, "concurrency": conc}
            b = OpenAIBackend(f"api{conc}", spec, cache_dir=None)
            t0 = time.perf_counter()
            res = run(b, conc)
            out[conc] = (res, time.perf_counter() - t0, srv.max_inflight)
            b.close()
    return out


def _ctrs_answer(rubric):
    def answer(body):
        # deterministic in the request: the same request gets the same scores in any order
        h = int(hash_obj([body["messages"], body["seed"]], 8), 16)
        return json.dumps({it["id"]: {"score": (h >> i) % (it["max"] + 1), "justification": "ok"} for i, it in enumerate(rubric["items"])})

    return answer


def test_judging_runs_sessions_concurrently_with_identical_results(root, tmp_path):
    rubric = load_rubric(root / "resources/rubrics/ctrs_modified.yaml")
    sessions = [dict(s, session_id=f"{s['session_id']}{k}") for k in range(2) for s in (MISSED, HANDLED, NO_RISK)]
    jcfg = section_defaults("judge") | {"samples": 2, "sampling": {"temperature": 0.7, "max_tokens": 100}, "turn_windows": {}}

    def run(b, tag):
        return run_judging(sessions, b, rubric, jcfg, root / "resources/prompts/judge.j2", tmp_path / f"u{tag}")

    got = _run_both(_ctrs_answer(rubric), run)
    (serial, st1), t1, in1 = got[1]
    (conc, st4), t4, in4 = got[4]
    assert _strip(serial) == _strip(conc) and st4["concurrency"] == 4
    assert in1 == 1 and 2 <= in4 <= 4
    assert t1 / t4 > 2, (t1, t4)  # 12 calls of 0.25 s: about 3 s one at a time, under 1 s four at a time


def test_generation_runs_patients_concurrently_with_identical_results(root, tmp_path):
    from cbtpipe.design import load_attributes, train_val_profiles

    profiles, _ = train_val_profiles(load_attributes(root / "resources/patient_attributes.yaml"), 4, 1, seed=3)
    dcfg = section_defaults("data") | {"sessions_per_patient": 2, "sampling": {"temperature": 0.8, "max_tokens": 300}}

    def answer(body):
        h = hash_obj([body["messages"], body["seed"]], 6)
        ex = [{"therapist": f"How are you, {h}?", "patient": "Tired, mostly."} for _ in range(dcfg["exchanges_min"])]
        return json.dumps({"exchanges": ex, "closing": "Let's stop here.", "summary": f"Session {h}.", "homework": "A diary."})

    def run(b, tag):
        return run_generation(profiles, b, dcfg, root / "resources/prompts/generate_session.j2", tmp_path / f"g{tag}")

    got = _run_both(answer, run)
    (serial, st1), t1, _ = got[1]
    (conc, st4), t4, in4 = got[4]
    assert _strip(serial) == _strip(conc) and len(serial) == 8
    assert 2 <= in4 <= 4 and t1 / t4 > 2, (t1, t4, in4)

    # sharded (data.shards): each shard a job of its own, gathered in patient order, is the serial
    # run's output; the shards find every patient among the units of the serial run (a changed
    # shard count recomputes no patient), and with their own units they make the same sessions
    with FaultServer(slow_s=0.0, answer=answer) as srv:
        b = OpenAIBackend("api1", {"type": "openai", "base_url": srv.url("latency"), "model": "m", "max_retries": 0}, cache_dir=None)
        tpl = root / "resources/prompts/generate_session.j2"
        assert _strip(run_generation(profiles, b, dcfg, tpl, tmp_path / "g-one")[0]) == _strip(serial)
        for unit_dir, reused in ((tmp_path / "g-one", 2), (tmp_path / "g-sharded", 0)):
            parts = [run_generation(shard_of(profiles, k, 2), b, dcfg, tpl, unit_dir) for k in (1, 0)]
            assert [st["patients_reused"] for _, st in parts] == [reused, reused]
            sessions, st = gather_generation(parts, profiles)
            assert _strip(sessions) == _strip(serial) and st["patients"] == 4 and st["shards"] == 2
            assert st["sessions_kept"] == 8 and st["patients_reused"] == 2 * reused
        b.close()
    with pytest.raises(PipelineError, match="both hold patient"):
        gather_generation([parts[0], parts[0]], profiles)
    with pytest.raises(PipelineError, match="not in the profiles"):
        gather_generation(parts, profiles[1:])


def test_safety_judging_runs_sessions_concurrently_with_identical_results(root, tmp_path):
    rubric = load_safety_rubric(root / "resources/rubrics/safety.yaml")
    res = load_crisis_resources(root / "resources/safety/crisis_resources.yaml", "US")
    scfg = section_defaults("safety") | {"backend": "api", "sampling": {"temperature": 0.0, "max_tokens": 100}}
    sessions = [MISSED, HANDLED, NO_RISK, dict(MISSED, session_id="missed2")]

    def run(b, tag):
        return run_safety_judging(sessions, b, rubric, scfg, root / "resources/prompts/safety_question.j2", res, tmp_path / f"s{tag}")

    got = _run_both(_scripted_judge(rubric), run, latency=0.1)  # about 30 calls
    (serial, _), t1, _ = got[1]
    (conc, _), t4, in4 = got[4]
    assert _strip(serial) == _strip(conc)
    assert [r["branch"] for r in conc[:3]] == ["non_imminent_risk", "non_imminent_risk", "no_risk"]
    assert 2 <= in4 <= 4 and t1 / t4 > 2, (t1, t4, in4)
