"""A GGUF model in process through llama-cpp-python (backend type ``llama_cpp``)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ..workflow import PipelineError, backend_spec, job_threads, require_gpu_offload, sha256_file
from .base import Backend, Completion
from .cpu_thread import check_abandoned, on_cpu_thread
from .gguf import check_gguf_file, resolve_gguf
from .kv_states import MIN_TOKENS as KV_MIN_TOKENS
from .kv_states import KVStates, matched

log = logging.getLogger("cbtpipe")


class LlamaCppBackend(Backend):
    """A GGUF model in process.

    Prompts are evaluated in a canonical way so that an answer depends on the request alone, never
    on what ran before it or on a restart: the prompt is cut after every end-of-turn token and
    before its last token, each piece is evaluated as one batch after the pieces before it, and the
    last token alone (as llama-cpp-python does). The key/value cache of the leading pieces that a
    new prompt shares with the previous one is reused, bit-identical to evaluating them afresh:
    the k judge samples of one transcript evaluate it once, a simulated session's next turn
    evaluates only the new turns.
    """

    kind = "llama_cpp"

    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        model_path: str | os.PathLike | None = None,
        gpu_key: str | None = None,
        **kw,
    ):
        """``model_path`` serves a GGUF that is not a configured backend's (a therapist, the
        instruct model of preference pairs); ``gpu_key`` names the config key that set
        ``n_gpu_layers`` (for the error when the llama.cpp build cannot offload); by default
        ``backends.<name>.n_gpu_layers``."""
        spec = {"type": "llama_cpp", **spec}
        if model_path:
            spec["gguf"] = {"path": str(model_path)}
        spec = backend_spec(name, spec)  # checked and completed with the schema's defaults
        super().__init__(name, spec, **kw)
        self.model_path = resolve_gguf(spec["gguf"], f"backends.{name}.gguf")
        check_gguf_file(self.model_path, f"backends.{name}")
        self.llm = self._load(name, spec, gpu_key)
        self.n_ctx = self.llm.n_ctx()
        self._instrument(spec)
        self.reuse_prefix = bool(spec["reuse_prefix"])
        # Structured answers of a schema the filler can write are written by it (json_fill.py):
        # the fixed text in one batch, the model choosing the values.
        self.json_fill = bool(spec["json_fill"])
        self._filler: Any = None
        self._fill: tuple[list, dict[str, Any], int, int] | None = None  # the call being filled
        # Piece boundaries of the prompt whose tokens (llm.input_ids) the KV cache holds,
        # evaluated canonically up to the last one.
        self._cuts: list[int] = []
        self._reused = 0
        self._kv = KVStates(int(spec["kv_states_mb"]) * 2**20 if self.reuse_prefix else 0)
        from llama_cpp import llama_vocab_is_eog

        vocab = self.llm._model.vocab
        self._eog = frozenset(t for t in range(self.llm.n_vocab()) if llama_vocab_is_eog(vocab, t))
        # The chat handler tokenizes the formatted prompt and calls create_completion: the
        # prompt's tokens are prepared here first.
        self._create_completion = self.llm.create_completion
        self.llm.create_completion = self._prepared_completion

    def _load(self, name: str, spec: dict[str, Any], gpu_key: str | None):
        """The model in a llama.cpp context on the job's threads (or ``n_threads``), offloaded as
        ``n_gpu_layers`` asks (an error where the build cannot offload, never a CPU run)."""
        import llama_cpp

        self._sha = sha256_file(self.model_path)
        self._fingerprint = f"llama-cpp-python {llama_cpp.__version__}, gguf sha256 {self._sha[:16]}"
        require_gpu_offload(gpu_key or f"backends.{name}.n_gpu_layers", int(spec["n_gpu_layers"]))
        threads = spec["n_threads"] or job_threads()
        try:
            llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=int(spec["n_ctx"]),
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=int(spec["n_gpu_layers"]),
                seed=0,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise PipelineError(f"backends.{name}: llama.cpp could not load {self.model_path} (truncated or corrupt GGUF?): {e}") from e
        log.info(
            "backends.%s: llama.cpp context of %d tokens on %d thread(s) (%s)",
            name,
            llm.n_ctx(),
            threads,
            "n_threads" if spec["n_threads"] else "the job's threads: n_threads is open",
        )
        return llm

    def _instrument(self, spec: dict[str, Any]) -> None:
        """The grammar sampler, the call lock, and the check before every batch."""
        # A grammar checks the drawn token first and the whole vocabulary only when it rejects it
        # (as llama.cpp's own samplers do); with the tiny model most draws in a JSON answer are
        # rejected, so it saves about a fifth of the time per token.
        from .grammar_sampler import install

        install(self.llm)
        # One llama.cpp context serves one call at a time (sessions may run in threads).
        self._call_lock = threading.RLock()
        # A CPU context's calls go to the process's llama.cpp CPU thread (cpu_thread.py); every
        # batch first checks that the caller still waits for the call (a no-op off that thread).
        self._on_cpu = int(spec["n_gpu_layers"]) == 0
        evaluate = self.llm.eval

        def checked_eval(tokens):
            check_abandoned()
            return evaluate(tokens)

        self.llm.eval = checked_eval

    def identity(self) -> dict[str, Any]:
        from .grammar_sampler import SAMPLER_ID
        from .json_fill import FILL_ID

        # how a prompt is evaluated (its pieces) and how tokens are drawn change the answers
        return {
            "type": self.kind,
            "model_sha256": self._sha,
            "sampler": SAMPLER_ID,
            "prefix_block": self.PREFIX_BLOCK,
            "json": FILL_ID if self.json_fill else "grammar",
        }

    def count_tokens(self, text: str) -> int:
        with self._call_lock:
            return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    # Prompts are also cut every PREFIX_BLOCK tokens from the start: a long prefix that prompts
    # share inside one message (a judge's rubric before each transcript, a generator's
    # instructions before each patient) is then reused up to the last block it fills.
    PREFIX_BLOCK = 128

    def prompt_cuts(self, tokens: list[int]) -> list[int]:
        """Boundaries of the canonical pieces of a prompt: after each end-of-turn token, at every
        multiple of PREFIX_BLOCK, and n-1. Each depends only on the tokens before it, so two
        prompts that share a prefix cut it alike and a reused piece holds what evaluating it
        afresh would."""
        n = len(tokens)
        if n < 2:
            return []
        cuts = {i + 1 for i in range(n - 2) if tokens[i] in self._eog} | set(range(self.PREFIX_BLOCK, n - 1, self.PREFIX_BLOCK))
        return sorted(cuts) + [n - 1]

    def _forget(self) -> None:
        self._cuts = []
        self.llm.reset()

    def _prepare(self, tokens: list[int]) -> None:
        """Leave the KV cache holding ``tokens[:-1]`` evaluated canonically; count reused tokens."""
        self._reused = 0
        if not self.reuse_prefix or len(tokens) < 2 or len(tokens) >= self.n_ctx:
            self._forget()  # llama-cpp-python evaluates it (or reports the overflow) itself
            return
        llm = self.llm
        cuts = self.prompt_cuts(tokens)
        keep = matched(self._cuts, llm.input_ids, cuts, tokens)
        # Another conversation's prefix that this call would throw away is saved first; a saved
        # one that holds more of this prompt than the live cache is copied back (kv_states.py).
        saved, saved_keep = self._kv.best(cuts, tokens)
        restoring = saved is not None and saved_keep - keep >= KV_MIN_TOKENS
        lost = (self._cuts[-1] if self._cuts else 0) - keep
        if restoring or lost >= KV_MIN_TOKENS:
            self._kv.save(llm, self._cuts)
        if restoring:
            keep = saved_keep if self._kv.restore(llm, saved, saved_keep) else 0
            if keep == 0:
                self._forget()
        elif keep == 0 or not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            self._forget()
            keep = 0
        llm.n_tokens = self._reused = keep
        self._cuts = []  # until every piece is in (an error part-way leaves nothing to reuse)
        for c in cuts:
            if c > keep:
                llm.eval(tokens[keep:c])
                keep = c
        self._cuts = cuts

    def _prepared_completion(self, prompt, *args, **kwargs):
        if isinstance(prompt, list):
            self._prepare(prompt)
        else:
            self._forget()
        if self._fill is not None and isinstance(prompt, list):
            return self._filled_completion(prompt)
        return self._create_completion(prompt, *args, **kwargs)

    def _filled_completion(self, prompt: list[int]) -> dict[str, Any]:
        """A completion written by the filler, shaped as llama-cpp-python's (the chat handler
        formatted and tokenized the messages as for any call)."""
        parts, sampling, seed, max_tokens = self._fill
        if len(prompt) < 2 or len(prompt) >= self.n_ctx or not self.reuse_prefix:
            # _prepare left nothing evaluated: the filler needs prompt[:-1] in the KV cache
            self._forget()
            if len(prompt) >= self.n_ctx:
                raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {self.n_ctx}")
            self.llm.eval(prompt[:-1])
        text, made, finish = self._filler.write(parts, prompt, sampling, seed, max_tokens, self.n_ctx)
        return {
            "id": "cmpl-fill",
            "object": "text_completion",
            "created": int(time.time()),
            "model": str(self.model_path),
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": made, "total_tokens": len(prompt) + made},
        }

    def _fill_parts(self, schema: dict[str, Any] | None) -> list | None:
        if schema is None or not self.json_fill:
            return None
        from .json_fill import Filler, compile_schema

        parts = compile_schema(schema)
        if parts is None:
            return None
        if self._filler is None:
            self._filler = Filler(self.llm, self._eog)
        return parts if self._filler.usable(parts) else None

    def _complete(self, messages, *, sampling, seed, schema, stop) -> Completion:
        kwargs: dict[str, Any] = dict(
            temperature=float(sampling.get("temperature", 0.7)),
            top_p=float(sampling.get("top_p", 0.95)),
            max_tokens=int(sampling.get("max_tokens", 256)),
            repeat_penalty=float(sampling.get("repeat_penalty", 1.1)),
            seed=int(seed),
            stop=stop or None,
        )
        with self._call_lock:
            parts = self._fill_parts(schema)
            if parts is not None:
                self._fill = (parts, kwargs | {"top_k": 40, "min_p": 0.05}, int(seed), kwargs["max_tokens"])
            elif schema is not None:
                kwargs["response_format"] = {"type": "json_object", "schema": schema}
            t0 = time.perf_counter()
            try:
                if self._on_cpu:
                    out = on_cpu_thread(self.llm.create_chat_completion, messages=messages, **kwargs)
                else:
                    out = self.llm.create_chat_completion(messages=messages, **kwargs)
            finally:
                self._fill = None
            dt = time.perf_counter() - t0
            reused = self._reused
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            seconds=dt,
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens_reused=reused,
            served_model=self.model_path.name,
            system_fingerprint=self._fingerprint,
            created=time.time(),
        )

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            self._kv.clear()
            llm.close()
            self.llm = None
