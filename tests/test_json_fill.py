"""Schema-filled structured answers (cbtpipe.llm.json_fill) on the real tiny model in llama.cpp: every
schema the pipeline asks with is written by the filler, answers pass their schema at the first
attempt and repeat for a seed, the fixed text costs no forward pass of its own, the sampler draws
from the masked distribution, and schemas it cannot write go to the grammar path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbtpipe.llm import LlamaCppBackend, validate_json_text
from cbtpipe.llm.json_fill import Enum, Filler, Lit, Str, compile_schema
from cbtpipe.stages.judge import score_schema
from cbtpipe.stages.safety import answer_schema, timing_schema
from tests.conftest import TINY

RUBRIC = {"items": [{"id": i, "min": 0, "max": 6} for i in ("agenda", "feedback", "pacing", "homework")]}
MSGS = [
    {"role": "system", "content": "You are a CBT supervisor. Rate the session on each item from 0 to 6 and answer in JSON."},
    {
        "role": "user",
        "content": "Therapist: What shall we work on today?\nPatient: I feel low and I cannot sleep.\nTherapist: Sleep first, then mood.",
    },
]
TURNS = [{"role": "patient"}, {"role": "therapist"}] * 7  # turns 1..14: two-digit enums
SCHEMAS = {
    "flat scores": score_schema(RUBRIC, 0),
    "scores with rationales": score_schema(RUBRIC, 24),
    "scores before rationales": score_schema(RUBRIC, 24, reasoning_first=False),
    "safety answer": answer_schema(40),
    "safety answer, no reasoning": answer_schema(0),
    "timing": timing_schema(TURNS, 0),
    "boolean": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False},
}


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    fill = LlamaCppBackend("tiny", {"gguf": TINY, "n_ctx": 2048}, cache_dir=None)
    grammar = LlamaCppBackend("tiny", {"gguf": TINY, "n_ctx": 2048, "json_fill": False}, cache_dir=None)
    yield fill, grammar
    fill.close()
    grammar.close()


def test_the_pipelines_schemas_compile_and_others_are_left_to_the_grammar():
    for name, s in SCHEMAS.items():
        assert compile_schema(s), name
    assert compile_schema(score_schema(RUBRIC, 0)) == [
        Lit('{"agenda":'),
        Enum(tuple(f" {v}" for v in range(7))),
        Lit(', "feedback":'),
        Enum(tuple(f" {v}" for v in range(7))),
        Lit(', "pacing":'),
        Enum(tuple(f" {v}" for v in range(7))),
        Lit(', "homework":'),
        Enum(tuple(f" {v}" for v in range(7))),
        Lit("}"),
    ]
    assert Str(40) in compile_schema(answer_schema(40))

    def obj(props, required=None, extra=False):
        return {
            "type": "object",
            "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": extra,
        }

    for bad in (
        obj({"a": {"type": "integer"}}),  # unbounded
        obj({"a": {"type": "string"}}),  # no maxLength
        obj({"a": {"type": "string", "maxLength": 5, "pattern": "^x"}}),
        obj({"a": {"type": "number", "enum": [0.5, 1.5]}}),
        obj({"a": {"type": "array", "items": {"type": "integer"}}}),
        obj({"a": {"type": "string", "enum": ['say "hi"', "no"]}}),  # an option that needs escapes
        obj({"a": {"type": "boolean"}, "b": {"type": "boolean"}}, required=["a"]),  # optional key
        obj({"a": {"type": "boolean"}}, extra=True),
        {"type": "array", "items": {"type": "integer"}},
        None,
    ):
        assert compile_schema(bad) is None, bad


@pytest.mark.parametrize("name", list(SCHEMAS))
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_filled_answers_pass_their_schema_at_once_and_repeat_for_a_seed(backends, name, temperature):
    fill, _ = backends
    schema = SCHEMAS[name]
    sampling = {"temperature": temperature, "max_tokens": 400}
    a = fill.chat_json(MSGS, schema, sampling=sampling, seed=7, max_attempts=1)
    assert a.data is not None and a.attempts == 1, (name, a.raw, a.errors)
    assert validate_json_text(a.raw[0], schema)[1] is None
    b = fill.chat_json(MSGS, schema, sampling=sampling, seed=7, max_attempts=1)
    assert b.raw == a.raw, "the same request gave another answer"
    for key, sub in schema["properties"].items():
        if sub.get("type") == "string" and "maxLength" in sub:
            assert len(a.data[key]) <= sub["maxLength"]


def test_sampled_answers_vary_with_the_seed(backends):
    fill, _ = backends
    answers = {fill.chat_json(MSGS, SCHEMAS["flat scores"], sampling={"temperature": 1.0}, seed=s).raw[0] for s in range(6)}
    assert len(answers) > 1


def test_the_fixed_text_costs_no_forward_pass_of_its_own(backends):
    """After the prompt, a flat answer takes one forward pass per token the model chooses among
    several (the digit of each item): the fixed text and a forced token (the space before the
    digit, the one token that can begin " 0" to " 6" here) go in with the next choice; the
    grammar path takes one per token of the whole answer."""
    fill, grammar = backends
    n_items = len(RUBRIC["items"])
    passes = {}
    for label, b in (("fill", fill), ("grammar", grammar)):
        b._forget()  # both evaluate the whole prompt, in the same pieces
        calls: list[int] = []
        ev = b.llm.eval
        b.llm.eval = lambda toks, ev=ev, calls=calls: (calls.append(len(toks)), ev(toks))[1]
        try:
            r = b.chat_json(MSGS, SCHEMAS["flat scores"], sampling={"temperature": 0.0}, seed=3, max_attempts=1)
        finally:
            b.llm.eval = ev
        assert r.data is not None
        prompt_pieces = len(b.prompt_cuts(b.llm.input_ids[: r.prompt_tokens].tolist()))
        passes[label] = calls[prompt_pieces:]
    assert len(passes["fill"]) == n_items, passes["fill"]
    assert len(passes["grammar"]) >= 4 * n_items, passes["grammar"]
    assert max(passes["fill"]) > 1, "the fixed text went in token by token"


def test_the_sampler_draws_from_the_masked_distribution():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.5, 0.2, 0.2, 0.1]))
    cand = np.array([1, 2, 3])  # token 0 is masked out
    sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
    draws = [Filler.choose(logits, cand, sampling, rng, np.array([], dtype=np.int64)) for _ in range(20_000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq[0] == 0
    np.testing.assert_allclose(freq[1:], [0.4, 0.4, 0.2], atol=0.015)
    # greedy, and greedy after the repetition penalty moved the best token down
    assert Filler.choose(logits, cand, {"temperature": 0.0, "repeat_penalty": 1.0}, rng, np.array([])) == 1
    assert Filler.choose(np.array([0.0, 2.0, 1.9, 0.0]), cand, {"temperature": 0.0, "repeat_penalty": 1.5}, rng, np.array([1])) == 2
    # top_k 1 is greedy whatever the temperature
    assert {Filler.choose(logits, cand, {"temperature": 2.0, "top_k": 1}, rng, np.array([])) for _ in range(50)} == {1}


def test_a_too_small_token_budget_is_a_cut_answer_recorded_as_missing(backends):
    fill, _ = backends
    r = fill.chat_json(MSGS, SCHEMAS["scores with rationales"], sampling={"temperature": 0.0, "max_tokens": 12}, seed=1, max_attempts=2)
    assert r.data is None and r.attempts == 2 and r.errors
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.raw[0])


def test_the_decoder_is_part_of_the_backends_identity_and_can_be_turned_off(backends):
    fill, grammar = backends
    assert fill.identity()["json"] != grammar.identity()["json"]
    assert grammar._fill_parts(SCHEMAS["flat scores"]) is None
    r = grammar.chat_json(MSGS, SCHEMAS["flat scores"], sampling={"temperature": 0.0}, seed=1)
    assert r.data is not None and grammar._filler is None
