"""llama.cpp's own server for one GGUF, with parallel slots (continuous batching).

Used for GPU rollouts: one server per (model, arm) job, and the job's sessions run concurrently
against it, so the GPU decodes many sessions in one batch instead of one token stream at a time.
The server comes from the same pinned llama.cpp build as llama-cpp-python
(tools/llama_cpp_build.py builds it beside the package: always for CUDA, on the CPU with `make llama-tools`);
requests go through the OpenAI-compatible
backend, so retries, the response cache and structured output work as for any endpoint.

Batched decoding is not bit-identical to single-stream decoding (the order of floating-point
reductions depends on the batch), so an answer can differ from the in-process backend's for the
same seed; a re-run is still identical because every answer is kept in the response cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..workflow import PipelineError, die_with_parent, llama_build_record, require_gpu_offload, sha256_file
from .openai_compat import OpenAIBackend

log = logging.getLogger("cbtpipe")


def find_llama_server() -> Path | None:
    """The llama-server binary installed with llama-cpp-python by tools/llama_cpp_build.py
    (<prefix>/libexec/llama-cpp, recorded in the build record), or LLAMA_SERVER_BIN, or one on PATH."""
    env = os.environ.get("LLAMA_SERVER_BIN")
    if env:
        return Path(env) if Path(env).is_file() else None
    tools = llama_build_record().get("tools_dir")
    for c in ([Path(tools) / "llama-server"] if tools else []) + [Path(sys.prefix) / "libexec" / "llama-cpp" / "llama-server"]:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which("llama-server")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """Start ``llama-server`` for one GGUF on a free loopback port; stop it on exit."""

    def __init__(
        self,
        gguf: str | Path,
        *,
        parallel: int,
        n_ctx: int,
        n_gpu_layers: int,
        threads: int,
        log_path: str | Path,
        gpu_key: str = "rollout.therapist_n_gpu_layers",
        startup_timeout: float = 600,
    ):
        self.gguf = Path(gguf)
        self.parallel = int(parallel)
        self.n_ctx = int(n_ctx)
        self.n_gpu_layers = int(n_gpu_layers)
        self.threads = int(threads)
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.gpu_key = gpu_key
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "--model",
            str(self.gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--parallel",
            str(self.parallel),
            # each slot gets the therapist's context size
            "--ctx-size",
            str(self.n_ctx * self.parallel),
            "--n-gpu-layers",
            str(self.n_gpu_layers),
            "--threads",
            str(self.threads),
            "--jinja",
            "--no-webui",
        ]

    def __enter__(self) -> LlamaServer:
        require_gpu_offload(self.gpu_key, self.n_gpu_layers)
        binary = find_llama_server()
        if binary is None:
            raise PipelineError(
                "config key rollout.therapist_server is true, but no llama-server binary is installed: the CPU set-up "
                "builds llama.cpp's tools only when asked, `make llama-tools` (tools/llama_cpp_build.py install --tools; "
                "LLAMA_CPP_TOOLS=1 when Snakemake creates the conda environments), and `make setup GPU=1` always does; "
                "or point LLAMA_SERVER_BIN at one built from the same llama.cpp version"
            )
        self.port = _free_port()
        cmd = self.command(binary)
        env = dict(os.environ)
        # the libraries the server loads are beside it (they are not on the loader's path)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(binary.parent), env.get("LD_LIBRARY_PATH", "")]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        log.info("starting %s", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
        try:
            self._wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)  # no server (or log file) outlives a failed start
            raise
        return self

    def _wait_healthy(self) -> None:
        import httpx2

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise PipelineError(f"llama-server exited with code {self.proc.returncode} while loading {self.gguf}:\n{tail}")
            try:
                if httpx2.get(self.base_url + "/health", timeout=2).status_code == 200:
                    log.info("llama-server ready on port %d (%d slots)", self.port, self.parallel)
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.5)
        raise PipelineError(f"llama-server did not become ready within {self.startup_timeout:.0f} s (log: {self.log_path})")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()


class LlamaServerBackend(OpenAIBackend):
    """The OpenAI-compatible client of a :class:`LlamaServer`.

    Its identity (the key of the response cache) is the model file and the server's settings, not
    the port, so a re-run reuses the answers of the run before."""

    kind = "llama_server"

    def __init__(self, name: str, server: LlamaServer, **kw):
        spec: dict[str, Any] = {
            "base_url": server.base_url + "/v1",
            "model": name,
            "json_mode": "json_schema",
            "concurrency": server.parallel,
            "timeout_s": 900,
            "max_retries": 2,
            "type": "openai",
            "backoff_s": 1.0,
        }
        super().__init__(name, spec, **kw)
        self.server = server
        self.n_ctx = server.n_ctx
        self._identity = {"type": self.kind, "model_sha256": sha256_file(server.gguf), "n_ctx": server.n_ctx}
        self._token_counts: dict[str, int] = {}

    def identity(self) -> dict[str, Any]:
        return self._identity

    def served_model(self) -> str | None:
        return None  # the identity names the model file

    def count_tokens(self, text: str) -> int:
        """Exact count from the server's own tokenizer (memoized per text)."""
        n = self._token_counts.get(text)
        if n is None:
            r = self._client.post(self.server.base_url + "/tokenize", json={"content": text})
            r.raise_for_status()
            n = len(r.json()["tokens"])
            self._token_counts[text] = n
        return n
