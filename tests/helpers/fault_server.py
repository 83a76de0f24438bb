"""A small OpenAI-compatible HTTP server on loopback that misbehaves on purpose.

The first path segment picks the behaviour; ``fails`` requests misbehave, later ones answer well:
  /ok/v1/chat/completions          always a good answer
  /429/v1/...  /500/v1/...         HTTP 429 / 500 for the first ``fails`` requests
  /slow/v1/...                     sleeps ``slow_s`` seconds before the first ``fails`` answers
  /latency/v1/...                  sleeps ``slow_s`` seconds before every answer (a provider's latency)
  /malformed/v1/...                a body that is not JSON for the first ``fails`` requests
  /garbage/v1/...                  a well-formed response whose content is not JSON (always)
  /blank/v1/...                    content made only of spaces (always), as DeepSeek's JSON mode can
  /400/v1/...                      HTTP 400 (always; not retried)
  /404/v1/...                      HTTP 404, as for an unknown model (always)
  /499/v1/... /529/v1/...          those provider codes for the first ``fails`` requests
  /retryafter/v1/...               HTTP 503 with ``Retry-After: 1`` for the first ``fails`` requests
  /trickle/v1/...                  headers at once, then the body one byte every 0.2 s (always)
  /redirect/v1/...                 HTTP 308 to /ok/v1/... (always)
  /parts/v1/...                    content as a list of parts (always)
  /refusal/v1/...                  a refusal: no content, a ``refusal`` field (always)
  /echo401/v1/...                  HTTP 401 whose body quotes the Authorization header and every other (always)
``answer`` is the content of a good answer, or a function of the request body that returns it.
``served`` (settable at any time) is the model a good answer says it served, with a system
fingerprint of its own (``fingerprint`` when set); None answers with the requested name and no
fingerprint.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    def __init__(self, fails: int = 2, slow_s: float = 2.0, answer: str = '{"agenda": 3}'):
        self.fails = fails
        self.slow_s = slow_s
        self.answer = answer
        self.served: str | None = None
        self.fingerprint: str | None = None  # the system fingerprint, if not fp_<served> (a redeployment under one name)
        self.counts: dict[str, int] = {}
        self.auth_headers: list[str] = []
        self.headers: list[dict[str, str]] = []  # every request's headers
        self.bodies: list[dict] = []
        self.inflight = 0
        self.max_inflight = 0  # the most requests it was answering at one time
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                with outer._lock:
                    outer.inflight += 1
                    outer.max_inflight = max(outer.max_inflight, outer.inflight)
                self._post()

            def _post(self):
                mode = self.path.strip("/").split("/")[0]
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                with outer._lock:
                    outer.counts[mode] = outer.counts.get(mode, 0) + 1
                    k = outer.counts[mode]
                    outer.auth_headers.append(self.headers.get("Authorization", ""))
                    outer.headers.append(dict(self.headers.items()))
                    outer.bodies.append(body)
                bad = k <= outer.fails
                if mode in ("429", "500", "499", "529") and bad:
                    return self._send(int(mode), b'{"error": "try later"}')
                if mode == "retryafter" and bad:
                    return self._send(503, b'{"error": "overloaded"}', {"Retry-After": "1"})
                if mode == "400":
                    return self._send(400, b'{"error": "bad request"}')
                if mode == "404":
                    return self._send(404, b'{"error": "model not found"}')
                if mode == "echo401":
                    msg = {
                        "error": f"Incorrect API key provided: {self.headers.get('Authorization', '')}",
                        "headers": dict(self.headers.items()),
                    }
                    return self._send(401, json.dumps(msg).encode())
                if mode == "redirect":
                    return self._send(308, b"", {"Location": self.path.replace("/redirect/", "/ok/", 1)})
                if mode == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    try:
                        for _ in range(600):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(0.2)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    with outer._lock:
                        outer.inflight -= 1
                    return None
                if (mode == "slow" and bad) or mode == "latency":
                    time.sleep(outer.slow_s)
                if mode == "malformed" and bad:
                    return self._send(200, b"<html>not json")
                answer = outer.answer(body) if callable(outer.answer) else outer.answer
                content = {"garbage": "I think the score is high!", "blank": "   "}.get(mode, answer)
                message = {"role": "assistant", "content": content}
                if mode == "parts":
                    half = len(content) // 2
                    message["content"] = [{"type": "text", "text": content[:half]}, {"type": "text", "text": content[half:]}]
                if mode == "refusal":
                    message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
                out = {
                    "id": "x",
                    "object": "chat.completion",
                    "model": outer.served or body.get("model"),
                    **({"system_fingerprint": outer.fingerprint or f"fp_{outer.served}"} if outer.served else {}),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                self._send(200, json.dumps(out).encode())

            def _send(self, code, data, headers=None):
                # out of flight before the answer goes out: the client may send its next request
                # as soon as it has this one
                with outer._lock:
                    outer.inflight -= 1
                try:
                    self.send_response(code)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
