"""A rehearsal of the study's API traffic on loopback: real llama.cpp servers (the tiny model)
behind a proxy that adds a provider's latency and its faults (429 with Retry-After, 503), and the
pipeline's own generation and judging code run against it at several concurrency levels.

Each llama-server has one slot and llama.cpp's prompt cache off, and all run the same model with
the same settings on the same CPU, so a request gets the same answer from any of them and never
depends on what else was in flight: the proxy sends it to the least busy server, and the outputs
of every concurrency level must be byte-identical. The proxy counts the requests in flight, so the
bound that ``concurrency`` promises is observed, not assumed, and adds up the servers' own compute
time (llama.cpp's ``timings``), which bounds what any concurrency can gain on this machine.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .workflow import process_cpus


class FaultProxy:
    """An OpenAI-compatible front for ``upstreams`` (base URLs of llama-servers): each request
    waits ``latency_s``, then a share ``fault_rate`` is answered 429 (Retry-After: 1) or 503
    without reaching a server; the others go to the upstream chosen by the request's content."""

    def __init__(self, upstreams: list[str], latency_s: float, fault_rate: float = 0.0, seed: int = 0):
        import httpx2

        self.upstreams = upstreams
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.inflight = self.max_inflight = self.requests = self.faults = 0
        self.compute_s = 0.0  # the servers' prompt and generation time, from their timings
        self._busy = [0] * len(upstreams)
        self._client = httpx2.Client(timeout=600)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                with outer._lock:
                    outer.inflight += 1
                    outer.requests += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                    fault = outer._rng.random() < outer.fault_rate
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                    time.sleep(outer.latency_s)
                    if fault:
                        with outer._lock:
                            outer.faults += 1
                        code = 429 if outer.faults % 2 else 503
                        answer = (code, b'{"error": "overloaded"}', {"Retry-After": "1"} if code == 429 else {})
                    else:
                        with outer._lock:  # the least busy server (any gives the same answer)
                            k = min(range(len(outer.upstreams)), key=lambda i: (outer._busy[i], i))
                            outer._busy[k] += 1
                        try:
                            r = outer._client.post(outer.upstreams[k] + "/v1/chat/completions", json=dict(body, cache_prompt=False))
                        finally:
                            with outer._lock:
                                outer._busy[k] -= 1
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            t = r.json()["timings"]
                            with outer._lock:
                                outer.compute_s += (t.get("prompt_ms", 0) + t.get("predicted_ms", 0)) / 1000
                        answer = (r.status_code, r.content, {})
                finally:
                    # out of flight before the answer goes out: the client may send its next
                    # request as soon as it has this one
                    with outer._lock:
                        outer.inflight -= 1
                self._send(*answer)

            def _send(self, code, data, headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def reset(self) -> None:
        with self._lock:
            self.max_inflight = self.requests = self.faults = 0
            self.compute_s = 0.0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._client.close()


def _sessions(n: int) -> list[dict[str, Any]]:
    """``n`` short sessions to judge (varied, so that no two requests are the same)."""
    topics = ["sleep", "work stress", "a friend who cancelled", "low energy", "guilt", "an argument at home", "exams", "loneliness"]
    out = []
    for i in range(n):
        t = topics[i % len(topics)]
        turns = [
            "Hello, what would you like to put on our agenda today?",
            f"I keep thinking about {t}, and it drags me down (week {i + 1}).",
            f"Let's look at a recent moment with {t}: what went through your mind?",
            "That I always mess things up.",
        ]
        out.append(
            {
                "session_id": f"r{i:03d}",
                "patient_id": f"p{i:03d}",
                "model": "m",
                "arm": "cbt",
                "quantization": "q",
                "messages": [{"role": ("therapist", "patient")[k % 2], "content": x} for k, x in enumerate(turns)],
            }
        )
    return out


def _strip(x):
    if isinstance(x, dict):
        return {
            k: _strip(v)
            for k, v in x.items()
            if k not in ("seconds", "wall_seconds", "judge_seconds", "unit_dir", "llm", "concurrency", "created", "first_call", "last_call")
        }
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _workload(root: Path, work: Path, patients: int) -> dict[str, Any]:
    """What each level runs: one-session courses of ``patients`` patients with a short generation
    prompt, and the safety flow's questions with a short template. What is rehearsed is the
    traffic (small completions, a provider's latency), not the tiny model's compute."""
    from .design import load_attributes, load_crisis_resources, load_safety_rubric, train_val_profiles
    from .workflow import section_defaults

    profs, _ = train_val_profiles(load_attributes(root / "resources/patient_attributes.yaml"), patients, 1, seed=5)
    dcfg = section_defaults("data") | {
        "sessions_per_patient": 1,
        "exchanges_min": 1,
        "exchanges_max": 1,
        "turn_chars_min": 1,
        "turn_chars_max": 24,
        "summary_chars_max": 24,
        "max_attempts": 3,
        "sampling": {"temperature": 0.8, "max_tokens": 320},
    }
    tpl = work / "session.j2"
    tpl.write_text(
        "Write session {{ session_index }} of {{ n_sessions }} of CBT for this patient: {{ patient[:120] }}\n"
        '{% if risk or phase or summaries %}{% endif %}Answer in JSON: "exchanges" ({{ exchanges_min }} to {{ exchanges_max }} '
        'items, each a therapist turn and the patient\'s reply), "closing", "summary" and "homework", each one short sentence.\n',
        encoding="utf-8",
    )
    qtpl = work / "question.j2"
    qtpl.write_text("Conversation (turns numbered):\n{{ transcript }}\n\nQuestion: {{ question }}\n{{ answer_format }}\n", encoding="utf-8")
    return {
        "profiles": profs,
        "dcfg": dcfg,
        "tpl": tpl,
        "qtpl": qtpl,
        "srub": load_safety_rubric(root / "resources/rubrics/safety.yaml"),
        "crisis": load_crisis_resources(root / "resources/safety/crisis_resources.yaml", "US"),
        "scfg": section_defaults("safety") | {"backend": "api", "reasoning_chars": 0, "sampling": {"temperature": 0.0, "max_tokens": 16}},
    }


def _run_stage(stage: str, c: int, proxy: FaultProxy, w: dict[str, Any], sessions: int, work: Path) -> tuple[dict[str, Any], Any]:
    """One stage at concurrency ``c`` against the proxy: its figures and its outputs."""
    from .llm import OpenAIBackend
    from .stages import run_generation, run_safety_judging

    proxy.reset()
    spec = {
        "type": "openai",
        "base_url": proxy.url,
        "model": "tiny",
        "json_mode": "json_schema",
        "concurrency": c,
        "max_retries": 6,
        "backoff_s": 0.2,
        "timeout_s": 300,
    }
    b = OpenAIBackend(f"rehearsal{c}{stage}", spec, cache_dir=None)
    t0 = time.perf_counter()
    if stage == "generation":
        got, _ = run_generation(w["profiles"], b, w["dcfg"], w["tpl"], work / f"gen{c}")
    else:  # the safety flow: many short questions per session
        got, _ = run_safety_judging(_sessions(sessions), b, w["srub"], w["scfg"], w["qtpl"], w["crisis"], work / f"judge{c}")
    wall = time.perf_counter() - t0
    row = {
        "wall_seconds": round(wall, 2),
        "calls": b.stats.calls,
        "retries": b.stats.retries,
        "requests_seen": proxy.requests,
        "faults_injected": proxy.faults,
        "max_in_flight": proxy.max_inflight,
        "server_compute_seconds": round(proxy.compute_s, 2),
        "prompt_tokens_per_call": round(b.stats.prompt_tokens / max(1, b.stats.calls), 1),
        "completion_tokens_per_call": round(b.stats.completion_tokens / max(1, b.stats.calls), 1),
    }
    b.close()
    return row, _strip(got)


def rehearse(
    root: str | Path,
    *,
    gguf: str | Path,
    levels: tuple[int, ...] = (1, 8),
    latency_s: float = 2.0,
    fault_rate: float = 0.05,
    servers: int = 4,
    patients: int = 16,
    sessions: int = 16,
    log_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Generation (``patients`` one-session courses) and CTRS judging (``sessions`` transcripts,
    one sample) at each concurrency level against the proxy; wall times, calls, retries, the most
    requests in flight, and whether the outputs of every level are identical."""
    from .llm import LlamaServer

    work = Path(tempfile.mkdtemp(prefix="rehearsal-"))
    w = _workload(Path(root), work, patients)
    logs = Path(log_dir or work)
    results: dict[str, Any] = {
        "levels": {},
        "settings": {"latency_s": latency_s, "fault_rate": fault_rate, "servers": servers, "patients": patients, "sessions": sessions},
    }
    outputs: dict[int, Any] = {}
    with contextlib.ExitStack() as stack:
        ups = [
            stack.enter_context(
                LlamaServer(gguf, parallel=1, n_ctx=2048, n_gpu_layers=0, threads=1, log_path=logs / f"llama-server-{k}.log")
            ).base_url
            for k in range(servers)
        ]
        proxy = stack.enter_context(FaultProxy(ups, latency_s, fault_rate))
        for c in levels:
            results["levels"][c], outputs[c] = {}, {}
            for stage in ("generation", "judging"):
                results["levels"][c][stage], outputs[c][stage] = _run_stage(stage, c, proxy, w, sessions, work)
    base = levels[0]
    # what no concurrency can beat here: the servers' compute spread over the machine's cores
    cores = process_cpus()
    results["settings"]["cpu_cores"] = cores
    first = results["levels"][base]
    results["ceiling"] = {
        stage: round(first[stage]["wall_seconds"] / max(1e-9, first[stage]["server_compute_seconds"] / min(cores, servers)), 2)
        for stage in ("generation", "judging")
    }
    results["identical_outputs"] = all(json.dumps(outputs[c], sort_keys=True) == json.dumps(outputs[base], sort_keys=True) for c in levels)
    results["speedup"] = {
        stage: {c: round(first[stage]["wall_seconds"] / results["levels"][c][stage]["wall_seconds"], 2) for c in levels}
        for stage in ("generation", "judging")
    }
    return results
