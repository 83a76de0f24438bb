"""LLM backends: llama.cpp in process, and the HTTP backend against real servers on loopback."""

import json
import socket
import subprocess
import sys
import time

import httpx2
import pytest

from cbtpipe.llm import BackendError, LlamaCppBackend, OpenAIBackend, make_backend, validate_json_text
from cbtpipe.workflow import PipelineError, job_threads
from tests.helpers.fault_server import FaultServer

SCHEMA = {
    "type": "object",
    # The enum lets llama.cpp's grammar enforce the range (its converter ignores minimum/maximum).
    "properties": {"agenda": {"type": "integer", "minimum": 0, "maximum": 6, "enum": list(range(7))}},
    "required": ["agenda"],
    "additionalProperties": False,
}
MSG = [{"role": "user", "content": "Rate the agenda of a therapy session from 0 to 6 as JSON."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tiny_gguf, tmp_path_factory):
    """llama-cpp-python's own OpenAI-compatible server on the tiny GGUF, on a free port."""
    port = _free_port()
    errlog = open(tmp_path_factory.mktemp("server") / "stderr.log", "w+b")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(tiny_gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            str(job_threads()),
            "--n_threads_batch",
            str(job_threads()),
            "--model_alias",
            "tiny",
        ],
        stdout=subprocess.DEVNULL,
        stderr=errlog,  # a pipe nobody reads would fill and block the server
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            errlog.seek(0)
            raise RuntimeError(f"llama_cpp.server exited: {errlog.read().decode()[-2000:]}")
        try:
            if httpx2.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx2.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("llama_cpp.server did not come up in 120 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    errlog.close()


def test_llama_cpp_structured_output_is_enforced(tiny_backend):
    res = tiny_backend.chat_json(MSG, SCHEMA, sampling={"temperature": 0.8, "max_tokens": 20}, seed=5)
    assert res.data is not None and 0 <= res.data["agenda"] <= 6
    assert res.attempts == 1


def test_llama_cpp_is_deterministic_per_seed(tmp_path, tiny_gguf):
    from cbtpipe.llm import LlamaCppBackend

    b = LlamaCppBackend("t", {"gguf": {"path": str(tiny_gguf)}, "n_ctx": 1024}, cache_dir=None)
    try:
        s = {"temperature": 0.9, "max_tokens": 24}
        a1 = b.chat(MSG, sampling=s, seed=11).text
        assert b.chat(MSG, sampling=s, seed=11).text == a1  # right after itself (prefix fully cached)
        b.chat([{"role": "user", "content": "Something else entirely."}], sampling=s, seed=3)
        assert b.chat(MSG, sampling=s, seed=11).text == a1  # after another request
    finally:
        b.close()


def test_llama_cpp_prefix_reuse_changes_no_answer(tiny_gguf):
    """A growing conversation and repeated samples reuse the shared turns' KV cache, and every
    answer equals the one a fresh backend gives to the same request."""
    from cbtpipe.llm import LlamaCppBackend

    spec = {"gguf": {"path": str(tiny_gguf)}, "n_ctx": 2048}
    s = {"temperature": 0.9, "max_tokens": 20}
    conv = [{"role": "system", "content": "You are a patient with low mood, talking to a therapist."}]
    requests = []
    warm = LlamaCppBackend("warm", spec, cache_dir=None)
    try:
        for turn in range(3):
            conv.append({"role": "user", "content": f"Therapist: what happened this week, part {turn}?"})
            requests += [(list(conv), turn), (list(conv), turn + 50)]  # two samples of the same prompt
            answers = [warm.chat(m, sampling=s, seed=seed) for m, seed in requests[-2:]]
            conv.append({"role": "assistant", "content": answers[0].text})
            assert answers[1].prompt_tokens_reused == answers[1].prompt_tokens - 1
            if turn:
                assert 0 < answers[0].prompt_tokens_reused < answers[0].prompt_tokens - 1
        warm_texts = [warm.chat(m, sampling=s, seed=seed).text for m, seed in requests]
        assert warm.stats.prompt_tokens_reused > 0
    finally:
        warm.close()
    fresh_texts = []
    for m, seed in requests:
        b = LlamaCppBackend("fresh", spec, cache_dir=None)
        try:
            c = b.chat(m, sampling=s, seed=seed)
            assert c.prompt_tokens_reused == 0
            fresh_texts.append(c.text)
        finally:
            b.close()
    assert warm_texts == fresh_texts


def test_llama_cpp_conversations_taking_turns_continue_their_own_cache(tiny_gguf):
    """Two conversations taking turns on one context (two sessions, or two arms' patients) each
    continue from their own saved key/value cache instead of evaluating their turns again, and
    every answer equals the one a fresh backend gives to the same request; with kv_states_mb 0
    nothing is saved and each turn is evaluated again after the shared system prompt."""
    from cbtpipe.llm import LlamaCppBackend

    spec = {"gguf": {"path": str(tiny_gguf)}, "n_ctx": 2048}
    s = {"temperature": 0.9, "max_tokens": 16}
    system = "You are a patient with low mood, talking to a therapist in a first session. " * 4
    convs = {name: [{"role": "system", "content": system + f"Your name is {name}."}] for name in ("Ana", "Ben")}
    requests, texts = [], []
    b = LlamaCppBackend("turns", spec, cache_dir=None)
    try:
        prev: dict[str, int] = {}
        for turn in range(3):
            for name, conv in convs.items():
                msgs = conv + [{"role": "user", "content": f"Therapist ({name}, turn {turn}): how was your week, really?"}]
                c = b.chat(msgs, sampling=s, seed=turn)
                requests.append((msgs, turn))
                texts.append(c.text)
                conv[:] = msgs + [{"role": "assistant", "content": c.text}]
                if turn:  # the other conversation ran in between: this one's own turns come back,
                    # up to the end of its last prompt's last message (the cut before its answer)
                    assert c.prompt_tokens_reused >= prev[name] - 8, (name, turn, c.prompt_tokens_reused, prev[name])
                prev[name] = c.prompt_tokens
        with_states = (b.stats.prompt_tokens_reused, b._kv.restores)
    finally:
        b.close()
    b = LlamaCppBackend("turns", {**spec, "kv_states_mb": 0}, cache_dir=None)
    try:
        assert [b.chat(m, sampling=s, seed=seed).text for m, seed in requests] == texts
        without = (b.stats.prompt_tokens_reused, b._kv.restores)
    finally:
        b.close()
    assert with_states[1] == 4 and without[1] == 0 and with_states[0] > without[0], (with_states, without)
    fresh = []
    for m, seed in requests:
        b = LlamaCppBackend("fresh", spec, cache_dir=None)
        try:
            fresh.append(b.chat(m, sampling=s, seed=seed).text)
        finally:
            b.close()
    assert texts == fresh


def test_llama_cpp_cpu_calls_from_many_threads_run_on_one(tiny_gguf):
    """Calls to in-process CPU contexts made from several threads at once (a rollout's arms and its
    patient) all compute on one thread, so that one OpenMP team, not one per calling thread, spins
    on the job's cores; each caller still gets its own answer, the one it gets alone."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from cbtpipe.llm import LlamaCppBackend

    spec = {"gguf": {"path": str(tiny_gguf)}, "n_ctx": 1024}
    s = {"temperature": 0.9, "max_tokens": 12}
    backends = [LlamaCppBackend(f"b{i}", spec, cache_dir=None) for i in range(2)]
    ran_on: list[str] = []
    try:
        for b in backends:
            real = b.llm.create_chat_completion

            def recording(*a, _real=real, **kw):
                ran_on.append(threading.current_thread().name)
                return _real(*a, **kw)

            b.llm.create_chat_completion = recording
        alone = [b.chat(MSG, sampling=s, seed=i).text for i, b in enumerate(backends)]
        jobs = [(b, i) for i, b in enumerate(backends)] * 3
        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="caller") as pool:
            together = list(pool.map(lambda j: j[0].chat(MSG, sampling=s, seed=j[1]).text, jobs))
    finally:
        for b in backends:
            b.close()
    assert together == [alone[i] for _, i in jobs]
    assert len(ran_on) == 2 + len(jobs)
    assert len(set(ran_on)) == 1 and ran_on[0].startswith("llama-cpu"), ran_on


def test_http_backend_against_llama_cpp_server(llama_server, tmp_path):
    spec = {
        "type": "openai",
        "base_url": llama_server,
        "model": "tiny",
        "json_mode": "json_object_schema",
        "timeout_s": 60,
        "max_retries": 1,
        "concurrency": 2,
    }
    b = OpenAIBackend("srv", spec, cache_dir=tmp_path / "cache")
    res = b.chat_json(MSG, SCHEMA, sampling={"temperature": 0.5, "max_tokens": 20}, seed=1, max_attempts=3)
    assert res.data is not None and 0 <= res.data["agenda"] <= 6
    assert b.stats.cache_hits == 0
    calls = b.stats.calls
    again = b.chat_json(MSG, SCHEMA, sampling={"temperature": 0.5, "max_tokens": 20}, seed=1, max_attempts=3)
    assert again.data == res.data
    assert b.stats.cache_hits == calls  # every call of the second run came from the cache
    b.close()


def test_json_schema_dialect_is_refused_by_llama_cpp_python_server(llama_server, tmp_path):
    # llama-cpp-python's server answers json_schema with HTTP 500 (not retriable forever): the
    # dialect setting exists for this reason.
    spec = {"type": "openai", "base_url": llama_server, "model": "tiny", "json_mode": "json_schema", "max_retries": 0, "backoff_s": 0}
    b = OpenAIBackend("srv", spec, cache_dir=None)
    with pytest.raises(BackendError):
        b.chat(MSG, sampling={"max_tokens": 5}, schema=SCHEMA)


@pytest.mark.parametrize("mode", ["429", "500", "499", "529", "malformed", "slow"])
def test_retries_recover(mode, tmp_path):
    with FaultServer(fails=2, slow_s=1.5) as srv:
        spec = {"type": "openai", "base_url": srv.url(mode), "model": "m", "max_retries": 3, "backoff_s": 0.05, "timeout_s": 0.5}
        b = OpenAIBackend("f", spec, cache_dir=None)
        res = b.chat_json(MSG, SCHEMA, seed=1)
        assert res.data == {"agenda": 3}
        assert srv.counts[mode] == 3
        assert b.stats.retries == 2


def test_gives_up_after_bounded_retries(tmp_path):
    with FaultServer(fails=100) as srv:
        b = OpenAIBackend(
            "f", {"type": "openai", "base_url": srv.url("500"), "model": "m", "max_retries": 2, "backoff_s": 0.01}, cache_dir=None
        )
        with pytest.raises(BackendError, match="giving up after 3 attempts"):
            b.chat(MSG)
        assert srv.counts["500"] == 3
        b2 = OpenAIBackend(
            "f", {"type": "openai", "base_url": srv.url("400"), "model": "m", "max_retries": 5, "backoff_s": 0.01}, cache_dir=None
        )
        with pytest.raises(BackendError, match="HTTP 400"):
            b2.chat(MSG)
        assert srv.counts["400"] == 1


@pytest.mark.parametrize("mode", ["garbage", "blank"])
def test_unparseable_answers_become_missing(mode):
    with FaultServer() as srv:
        b = OpenAIBackend("f", {"type": "openai", "base_url": srv.url(mode), "model": "m", "json_mode": "json_object"}, cache_dir=None)
        res = b.chat_json(MSG, SCHEMA, max_attempts=3)
        assert res.data is None and res.attempts == 3 and len(res.raw) == 3
        # JSON mode without a schema: the prompt carries the schema and the word "json".
        assert "JSON schema" in srv.bodies[-1]["messages"][-1]["content"]
        assert srv.bodies[-1]["response_format"] == {"type": "json_object"}


def test_api_key_from_environment_only(monkeypatch):
    monkeypatch.delenv("CBT_TEST_KEY", raising=False)
    spec = {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "CBT_TEST_KEY"}
    with pytest.raises(PipelineError, match="CBT_TEST_KEY is not set .*backends.judge.api_key_env"):
        make_backend("judge", {"judge": spec})
    monkeypatch.setenv("CBT_TEST_KEY", "sk-test-123")
    with FaultServer() as srv:
        b = make_backend("judge", {"judge": dict(spec, base_url=srv.url("ok"))}, cache_dir=None)
        b.chat(MSG)
        assert srv.auth_headers[-1] == "Bearer sk-test-123"
        assert "sk-test-123" not in repr(b.identity())


def test_unknown_backend_and_bad_model_file(tmp_path):
    with pytest.raises(PipelineError, match="unknown backend 'nope'"):
        make_backend("nope", {"tiny": {}}, where="judge.backend")
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOTGGUF" + b"\0" * 4000)
    with pytest.raises(PipelineError, match="not a GGUF file"):
        make_backend("b", {"b": {"type": "llama_cpp", "gguf": {"path": str(bad)}}})
    trunc = tmp_path / "t.gguf"
    trunc.write_bytes(b"GGUF\x03\0\0\0")
    with pytest.raises(PipelineError, match="truncated"):
        make_backend("b", {"b": {"type": "llama_cpp", "gguf": {"path": str(trunc)}}})


def test_validate_json_text():
    assert validate_json_text('```json\n{"agenda": 2}\n```', SCHEMA) == ({"agenda": 2}, None)
    assert validate_json_text('{"agenda": 9}', SCHEMA)[1].startswith("schema violation at agenda")
    assert validate_json_text("", SCHEMA)[1] == "blank answer"
    assert "not JSON" in validate_json_text("{", SCHEMA)[1]


def test_concurrency_limit_is_shared(monkeypatch):
    with FaultServer() as srv:
        spec = {"type": "openai", "base_url": srv.url("ok"), "model": "m", "concurrency": 3}
        a = OpenAIBackend("same", spec, cache_dir=None)
        b = OpenAIBackend("same", spec, cache_dir=None)
        assert a._sem is b._sem


def test_blank_answers_are_not_cached(tmp_path):
    from cbtpipe.llm import Backend, Completion

    class Flaky(Backend):
        n = 0

        def identity(self):
            return {"type": "flaky"}

        def _complete(self, messages, *, sampling, seed, schema, stop):
            type(self).n += 1
            return Completion(text="" if type(self).n == 1 else "a real answer", completion_tokens=3)

    b = Flaky("flaky", {}, cache_dir=tmp_path)
    msg = [{"role": "user", "content": "hello"}]
    assert b.chat(msg, seed=1).text == ""
    assert b.chat(msg, seed=1).text == "a real answer" and not b.stats.cache_hits  # asked again
    again = b.chat(msg, seed=1)
    assert again.cached and again.text == "a real answer" and Flaky.n == 2


def test_retry_after_is_honoured_and_capped():
    with FaultServer(fails=1) as srv:
        spec = {"type": "openai", "base_url": srv.url("retryafter"), "model": "m", "max_retries": 2, "backoff_s": 0.01}
        b = OpenAIBackend("f", spec, cache_dir=None)
        t0 = time.perf_counter()
        assert b.chat_json(MSG, SCHEMA, seed=1).data == {"agenda": 3}
        assert time.perf_counter() - t0 >= 1.0  # waited the server's second, not the 0.01 s back-off
        assert srv.counts["retryafter"] == 2
    assert OpenAIBackend._retry_after("3600") == OpenAIBackend.MAX_RETRY_AFTER_S
    assert OpenAIBackend._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert OpenAIBackend._retry_after("soon") is None


def test_a_trickling_server_is_bounded_by_the_deadline():
    """A server that keeps the connection alive by sending a byte every 0.2 s never trips the
    per-read timeout; the per-attempt deadline ends each attempt, and the call gives up."""
    with FaultServer() as srv:
        spec = {
            "type": "openai",
            "base_url": srv.url("trickle"),
            "model": "m",
            "timeout_s": 5,
            "deadline_s": 1.0,
            "max_retries": 1,
            "backoff_s": 0,
        }
        b = OpenAIBackend("t", spec, cache_dir=None)
        t0 = time.perf_counter()
        with pytest.raises(BackendError, match=r"giving up after 2 attempts \(no complete answer within deadline_s=1\)"):
            b.chat(MSG)
        assert time.perf_counter() - t0 < 6
        assert srv.counts["trickle"] == 2


def test_a_redirect_is_reported_not_followed():
    with FaultServer() as srv:
        b = OpenAIBackend("r", {"type": "openai", "base_url": srv.url("redirect"), "model": "m", "max_retries": 3}, cache_dir=None)
        with pytest.raises(BackendError, match=r"redirect \(HTTP 308\) to /ok/v1/chat/completions.*backends\.r\.base_url"):
            b.chat(MSG)
        assert srv.counts == {"redirect": 1}


def test_content_as_a_list_of_parts_and_refusals(tmp_path):
    with FaultServer(answer='{"agenda": 5}') as srv:
        b = OpenAIBackend("p", {"type": "openai", "base_url": srv.url("parts"), "model": "m"}, cache_dir=tmp_path / "c")
        assert b.chat_json(MSG, SCHEMA).data == {"agenda": 5}
        r = OpenAIBackend("q", {"type": "openai", "base_url": srv.url("refusal"), "model": "m"}, cache_dir=tmp_path / "c")
        c = r.chat(MSG)
        assert c.text == "" and c.finish_reason == "refusal"
        r.chat(MSG)
        assert srv.counts["refusal"] == 2 and not r.stats.cache_hits  # a refusal is never replayed


def test_which_answers_the_cache_keeps():
    from cbtpipe.llm import Completion
    from cbtpipe.llm.base import keepable

    assert keepable(Completion("ok", completion_tokens=2), {"max_tokens": 10})
    assert not keepable(Completion("  "), {})
    assert not keepable(Completion("no", finish_reason="refusal"), {})
    assert not keepable(Completion("cut", finish_reason="content_filter"), {})
    # cut at the request's own max_tokens (part of the key): kept; cut by a full context: not
    assert keepable(Completion("cut", completion_tokens=10, finish_reason="length"), {"max_tokens": 10})
    assert not keepable(Completion("cut", completion_tokens=7, finish_reason="length"), {"max_tokens": 10})
    assert not keepable(Completion("cut", completion_tokens=7, finish_reason="length"), {})


def test_secrets_never_reach_errors_or_logs(monkeypatch, caplog):
    from cbtpipe.workflow import redact
    from cbtpipe.workflow.secrets import RedactingFilter, config_secrets

    monkeypatch.setenv("CBT_TEST_KEY", "s3cr3t-value-42")
    with FaultServer() as srv:
        b = OpenAIBackend(
            "e", {"type": "openai", "base_url": srv.url("echo401"), "model": "m", "api_key_env": "CBT_TEST_KEY"}, cache_dir=None
        )
        with pytest.raises(BackendError) as err:
            b.chat(MSG)
        assert "HTTP 401" in str(err.value) and "s3cr3t-value-42" not in str(err.value) and "***" in str(err.value)
    assert redact("https://bob:hunter2@api.example.org/v1") == "https://***@api.example.org/v1"
    assert redact("https://api.example.org/v1?foo=1&api_key=abc123") == "https://api.example.org/v1?foo=1&api_key=***"
    assert redact("key sk-proj-ABCDEFGHIJKLMNOPQRSTUV used") == "key *** used"
    assert redact("Authorization: Bearer abcdefghijkl") == "Authorization: Bearer ***"
    cfg = {
        "backends": {
            "a": {"base_url": "https://u:p@host/v1", "api_key_env": "GOOD_NAME"},
            "b": {"base_url": "https://host/v1?token=xyz"},
            "c": {"api_key_env": "sk-abcdefghijklmnopqrstu"},
            "d": {"base_url": "https://host/v1", "model": "mistralai/Mistral-7B-Instruct-v0.3"},
        }
    }
    found = config_secrets(cfg)
    assert [f.split(" ")[2] for f in found] == ["backends.a.base_url", "backends.b.base_url", "backends.c.api_key_env"]
    assert not any(s in " ".join(found) for s in ("u:p", "xyz", "sk-abc"))
    import logging

    lg = logging.getLogger("cbt-test-redact")
    lg.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="cbt-test-redact"):
        lg.info("calling %s", "https://u:hunter2@h/v1")
    assert "hunter2" not in caplog.text and "https://***@h/v1" in caplog.text


@pytest.mark.parametrize(
    "mode,expect",
    [
        ("echo401", ["HTTP 401", "the API key was refused", "CBT_PROBE_KEY", "Bearer ***"]),
        ("404", ["HTTP 404", "model 'm' or the endpoint was not found", "backends.api.model"]),
        ("400", ["HTTP 400", "refused a structured-output request in json_mode 'json_schema'", "backends.api.json_mode"]),
        ("redirect", ["answered with a redirect (HTTP 308)", "backends.api.base_url"]),
    ],
)
def test_the_probe_fails_fast_on_what_no_retry_mends(mode, expect, monkeypatch):
    monkeypatch.setenv("CBT_PROBE_KEY", "sk-probe-0123456789abcdef0123456789")
    with FaultServer(fails=100) as srv:
        backends = {
            "api": {
                "type": "openai",
                "base_url": srv.url(mode),
                "model": "m",
                "max_retries": 5,
                "backoff_s": 1,
                "api_key_env": "CBT_PROBE_KEY",
            }
        }
        b = make_backend("api", backends, cache_dir=None, probe=True)
        t0 = time.perf_counter()
        with pytest.raises(BackendError) as e:
            b.chat_json(MSG, SCHEMA, seed=1)
        assert time.perf_counter() - t0 < 5  # no retries, no back-off
        for part in expect:
            assert part in str(e.value), str(e.value)
        assert "checked before any work" in str(e.value) and "sk-probe" not in str(e.value)
        assert sum(srv.counts.values()) == 1  # the probe alone


def test_the_probe_names_a_missing_network():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = make_backend(
        "api",
        {"api": {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "max_retries": 5}},
        cache_dir=None,
        probe=True,
    )
    t0 = time.perf_counter()
    with pytest.raises(
        BackendError,
        match=r"cannot connect to http://127.0.0.1:\d+/v1 .*no network on this node, or a wrong config key backends.api.base_url",
    ):
        b.chat(MSG)
    assert time.perf_counter() - t0 < 5


def test_the_probe_leaves_transient_failures_to_the_retries_and_skips_cached_answers(tmp_path):
    with FaultServer(fails=1) as srv:
        backends = {"api": {"type": "openai", "base_url": srv.url("500"), "model": "m", "max_retries": 2, "backoff_s": 0.01}}
        b = make_backend("api", backends, cache_dir=tmp_path, probe=True)
        assert b.chat_json(MSG, SCHEMA, seed=1).data == {"agenda": 3}  # the probe met the 500; the call succeeded
        assert srv.counts["500"] == 2
        again = make_backend("api", backends, cache_dir=tmp_path, probe=True)
        assert again.chat_json(MSG, SCHEMA, seed=1).data == {"agenda": 3}
        # from the cache: the probe alone (a cached answer must be of the model served now), no call
        assert srv.counts["500"] == 3
        assert again.stats.cache_hits == 1


def test_integer_enums_can_be_left_out_of_the_request_and_answers_are_still_checked():
    schema = {
        "type": "object",
        "properties": {"agenda": {"type": "integer", "minimum": 0, "maximum": 6, "enum": [0, 2, 4, 6]}},
        "required": ["agenda"],
    }
    with FaultServer(answer='{"agenda": 3}') as srv:
        spec = {"type": "openai", "base_url": srv.url("ok"), "model": "m", "integer_enums": False, "max_retries": 0}
        b = OpenAIBackend("g", spec, cache_dir=None)
        res = b.chat_json(MSG, schema, seed=1, max_attempts=2)
        sent = srv.bodies[0]["response_format"]["json_schema"]["schema"]["properties"]["agenda"]
        assert "enum" not in sent and (sent["minimum"], sent["maximum"]) == (0, 6)
        assert res.data is None and "is not one of" in res.errors[0]  # 3 is outside the enum: refused here
        assert b.identity()["integer_enums"] is False
        assert "integer_enums" not in OpenAIBackend("d", {**spec, "integer_enums": True}, cache_dir=None).identity()


def test_every_call_records_what_was_served_and_a_new_served_model_is_not_answered_from_the_cache(tmp_path):
    """An API alias (deepseek-chat) can serve another model tomorrow: each answer records the
    served model, its fingerprint and the time, and the cache key holds the served model, so an
    answer of the old model is never replayed for the new one (the probe learns it first)."""
    with FaultServer(fails=0) as srv:
        srv.served = "chat-v3-2026-11"
        backends = {"api": {"type": "openai", "base_url": srv.url("ok"), "model": "chat", "max_retries": 0}}
        t0 = time.time()
        b = make_backend("api", backends, cache_dir=tmp_path, probe=True)
        r = b.chat_json(MSG, SCHEMA, seed=1)
        assert r.served["served_model"] == "chat-v3-2026-11" and r.served["system_fingerprint"] == "fp_chat-v3-2026-11"
        assert t0 <= r.served["created"] <= time.time()
        again = make_backend("api", backends, cache_dir=tmp_path, probe=True)
        assert again.chat_json(MSG, SCHEMA, seed=1).served == r.served and again.stats.cache_hits == 1  # the same model: replayed
        srv.served = "chat-v4-2026-12"  # the provider moves the alias
        moved = make_backend("api", backends, cache_dir=tmp_path, probe=True)
        r2 = moved.chat_json(MSG, SCHEMA, seed=1)
        assert moved.stats.cache_hits == 0 and r2.served["served_model"] == "chat-v4-2026-12"


def test_extra_body_headers_omitted_parameters_and_the_length_field_reach_the_endpoint(monkeypatch):
    """What a provider takes beyond the OpenAI API: provider pinning, reasoning effort or vLLM's
    chat_template_kwargs in the body, headers (a secret one from the environment, never in the
    identity or an error), parameters the model refuses left out, max_completion_tokens."""
    monkeypatch.setenv("CBT_TEST_ORG", "org-secret-123")
    extra = {"provider": {"order": ["deepinfra"], "allow_fallbacks": False}, "chat_template_kwargs": {"enable_thinking": False}}
    with FaultServer(fails=0) as srv:
        spec = {
            "type": "openai",
            "base_url": srv.url("ok"),
            "model": "m",
            "max_retries": 0,
            "extra_body": extra,
            "extra_headers": {"X-Title": "cbt-pipeline", "OpenAI-Organization": {"env": "CBT_TEST_ORG"}},
            "omit": ["temperature", "top_p"],
            "max_tokens_field": "max_completion_tokens",
        }
        b = OpenAIBackend("api", spec, cache_dir=None)
        assert b.chat_json(MSG, SCHEMA, sampling={"temperature": 0.3, "max_tokens": 50}, seed=1).data == {"agenda": 3}
        body = srv.bodies[-1]
        assert body["provider"] == extra["provider"] and body["chat_template_kwargs"] == {"enable_thinking": False}
        assert "temperature" not in body and "top_p" not in body and body["seed"] == 1
        assert body["max_completion_tokens"] == 50 and "max_tokens" not in body
        assert srv.headers[-1]["X-Title"] == "cbt-pipeline" and srv.headers[-1]["OpenAI-Organization"] == "org-secret-123"
        ident = b.identity()
        assert ident["extra_body"] == extra and ident["omit"] == ["temperature", "top_p"]
        assert "org-secret-123" not in json.dumps(ident) and ident["extra_headers"]["OpenAI-Organization"] == {"env": "CBT_TEST_ORG"}
        plain = OpenAIBackend("api", {"type": "openai", "base_url": srv.url("ok"), "model": "m"}, cache_dir=None).identity()
        assert plain != ident and not {"extra_body", "extra_headers", "omit", "max_tokens_field"} & set(plain)
    with FaultServer(fails=0) as srv:  # an error that quotes the request headers shows no secret
        b = OpenAIBackend("api", {**spec, "base_url": srv.url("echo401")}, cache_dir=None)
        with pytest.raises(BackendError) as e:
            b.chat_json(MSG, SCHEMA, seed=1)
        assert "org-secret-123" not in str(e.value)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"extra_body": {"model": "other"}}, r"backends\.api\.extra_body"),
        ({"extra_body": {"temperature": 0}}, r"backends\.api\.extra_body"),
        ({"extra_headers": {"Authorization": "Bearer x"}}, r"backends\.api\.extra_headers\.Authorization: the pipeline sets"),
        (
            {"extra_headers": {"X-Org": {"env": "CBT_TEST_UNSET_VAR"}}},
            r"CBT_TEST_UNSET_VAR is not set \(named by config key backends\.api\.extra_headers\.X-Org\)",
        ),
        ({"extra_headers": {"X-Org": 5}}, r"backends\.api\.extra_headers\.X-Org"),
        ({"omit": ["messages"]}, r"backends\.api\.omit"),
        ({"max_tokens_field": "max_new_tokens"}, r"backends\.api\.max_tokens_field"),
    ],
)
def test_bad_extra_request_settings_name_their_key(change, match, monkeypatch):
    monkeypatch.delenv("CBT_TEST_UNSET_VAR", raising=False)
    with pytest.raises(PipelineError, match=match):
        OpenAIBackend("api", {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", **change}, cache_dir=None)


def test_llama_cpp_call_interrupted_in_its_caller_stops_before_the_context_is_closed(tiny_gguf, tmp_path):
    """A SIGTERM raised in the caller while its call runs on the CPU thread (what a job's entry
    turns SIGTERM into) stops the call at its next batch, and the caller goes on only then: closing
    the context while the call still decoded was a segmentation fault. In a child process, so that
    a crash is a failure here rather than the end of the test run."""
    script = tmp_path / "interrupt.py"
    script.write_text(
        f"""
import signal, sys
from cbtpipe.llm import llamacpp
from cbtpipe.llm.cpu_thread import CallAbandoned

stopped = []
check = llamacpp.check_abandoned

def recording_check():
    try:
        check()
    except CallAbandoned:
        stopped.append(True)
        raise

llamacpp.check_abandoned = recording_check

class Stop(Exception):
    pass

def on_alarm(*_):
    raise Stop()

b = llamacpp.LlamaCppBackend("t", {{"gguf": {{"path": {str(tiny_gguf)!r}}}, "n_ctx": 4096}}, cache_dir=None)
# a long prompt (evaluated in pieces of 128 tokens) and a long answer: the alarm lands inside the call
text = " ".join(f"Line {{i}}: the patient describes another week of low mood and poor sleep." for i in range(120))
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.3)
try:
    b.chat([{{"role": "user", "content": text}}], sampling={{"temperature": 0.9, "max_tokens": 1000}}, seed=1)
    print("the call ended before the interruption")
    sys.exit(3)
except Stop:
    b.close()  # what the job's clean-up does next
print("stopped" if stopped else "not stopped")
"""
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert r.stdout.split()[-1] == "stopped", r.stdout


def test_an_open_n_threads_takes_the_jobs_threads_not_the_machines(tiny_gguf, monkeypatch):
    """n_threads: null means the Snakemake job's threads (OMP_NUM_THREADS, which cbtpipe.workflow.rule.entry
    sets to them), else the CPUs this process may run on; never os.cpu_count() of the whole machine."""
    from cbtpipe.workflow import hardware

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    b = LlamaCppBackend("t", {"gguf": {"path": str(tiny_gguf)}, "n_ctx": 512}, cache_dir=None)
    try:
        assert (b.llm.context_params.n_threads, b.llm.context_params.n_threads_batch) == (1, 1)
    finally:
        b.close()
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert hardware.job_threads() == 1
