"""Downloading a hub model against a real HTTP server on loopback that answers as the Hugging Face
hub does for a gated or an unseen repository: the error names HF_TOKEN and the config key, and
never shows the token."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cbtpipe.stages import download_hub
from cbtpipe.workflow import PipelineError


class Hub:
    """GET /api/models/<repo>/revision/<rev>: 401 with the hub's error code for the repo's kind."""

    def __init__(self, code: str):
        outer = self
        self.tokens: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.tokens.append(self.headers.get("Authorization", ""))
                body = json.dumps({"error": "Access to this model is restricted."}).encode()
                self.send_response(401 if code == "RepoNotFound" else 403)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", "Access restricted")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no token file either


@pytest.mark.parametrize("code", ["GatedRepo", "RepoNotFound"])
@pytest.mark.parametrize("token", [None, "hf_secret_token_123"])
def test_a_refused_download_names_hf_token_and_the_config_key(no_token, monkeypatch, tmp_path, code, token):
    from huggingface_hub import HfApi

    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    hub = Hub(code)
    try:
        with pytest.raises(PipelineError) as e:
            download_hub("meta-llama/Llama-3.1-8B-Instruct", "main", tmp_path / "out", api=HfApi(endpoint=hub.url), name="llama31-8b")
    finally:
        hub.close()
    msg = str(e.value)
    assert msg.startswith("config key models.llama31-8b.source.repo_id: ")
    if code == "GatedRepo":
        assert "is a gated model: accept its terms" in msg
        assert ("set the environment variable HF_TOKEN" in msg) == (token is None)
    else:
        assert "no model meta-llama/Llama-3.1-8B-Instruct" in msg
        assert ("HF_TOKEN is not set" in msg) == (token is None)
    assert "hf_secret_token_123" not in msg
    assert hub.tokens[-1] == (f"Bearer {token}" if token else "")
    assert not (tmp_path / "out").exists()
