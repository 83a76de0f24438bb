"""Loss masks and system-prompt layout on the real chat templates of the three study models.

The templates come from the pinned llama-cpp-python sdist (vendor/llama.cpp/models/templates), as
the llama_cpp_tools rule extracts them. The tokenizer is the tiny model's with each template's
special tokens added as special tokens, as the study models' own tokenizers have them."""

import pytest

from cbtpipe.chat import apply_layout, chat_layout, check_layout, drop_oldest_exchange, mask_example, render, windows
from cbtpipe.course import context_block, eval_context, phase_plan, therapist_system, training_context
from cbtpipe.io import PipelineError

# template file, its special tokens, bos, eos (end of an assistant turn), the layout auto must pick
TEMPLATES = {
    "llama31": (
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|eot_id|>",
        "native",
    ),
    "qwen25": ("Qwen-Qwen2.5-7B-Instruct.jinja", ["<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|im_end|>", "native"),
    "mistral": ("mistralai-Mistral-Nemo-Instruct-2407.jinja", ["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", "</s>", "first_user"),
}

SYSTEM = "You are a CBT therapist. Course context: this is session 2 of 20."
CONV = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "(The patient has arrived for today's session.)"},
    {"role": "assistant", "content": "Hello. How has your week been since we last met?"},
    {"role": "user", "content": "Pretty low, to be honest. I stayed in bed most days."},
    {"role": "assistant", "content": "I am sorry to hear that. What would you like to put on our agenda?"},
]


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def study_tok(request, tiny_hf, llama_cpp_tools):
    from transformers import AutoTokenizer

    name, special, bos, eos, eot, layout = TEMPLATES[request.param]
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    tok.add_special_tokens({"additional_special_tokens": special})
    if bos:
        tok.bos_token = bos
    tok.eos_token = eos
    tok.chat_template = (llama_cpp_tools / "models" / "templates" / name).read_text(encoding="utf-8")
    return request.param, tok, eot, layout


def _masked_turns(tok, ex):
    """The decoded text of each run of masked tokens."""
    runs, cur = [], []
    for t, m in zip(ex["input_ids"], ex["assistant_masks"], strict=True):
        if m:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_masked_tokens_decode_to_exactly_the_therapist_turns(study_tok):
    name, tok, eot, want_layout = study_tok
    layout = chat_layout(tok, name)
    assert layout["system"] == want_layout and layout["end_of_turn"] == eot
    ex = mask_example(tok, CONV, layout)
    therapist = [m["content"] for m in CONV if m["role"] == "assistant"]
    assert _masked_turns(tok, ex) == [t + eot for t in therapist]
    # The system prompt that inference always has is in the training text.
    text = tok.decode(ex["input_ids"])
    assert SYSTEM in text
    # ... and in the prompt of every therapist turn at inference, laid out the same way.
    for i, m in enumerate(CONV):
        if m["role"] == "assistant":
            prompt = render(tok, apply_layout(CONV[:i], layout), generation_prompt=True)
            assert SYSTEM in prompt and text.startswith(prompt)


def test_the_former_mistral_mask_fails_the_check(study_tok):
    """The native layout (the system message left where the template puts it) is refused for
    Mistral's template, which renders the system prompt only inside the last user message."""
    name, tok, _, want_layout = study_tok
    why, _ = check_layout(tok, "native")
    if want_layout == "native":
        assert why is None
        return
    assert why and "system prompt" in why
    with pytest.raises(PipelineError, match="lacks the system prompt"):
        mask_example(tok, CONV, {"system": "native"})
    # What the former mask did: the render up to the generation prompt is not a prefix of the whole.
    full = render(tok, CONV)
    head = render(tok, CONV[:4], generation_prompt=True)
    assert not full.startswith(head) and SYSTEM not in full


def test_windows_keep_whole_exchanges_and_the_session_end(study_tok):
    name, tok, eot, _ = study_tok
    layout = chat_layout(tok, name)
    turns = []
    for k in range(8):
        turns += [
            {"role": "user", "content": f"Patient turn {k}: I keep thinking that I am letting everyone down at work."},
            {"role": "assistant", "content": f"Therapist turn {k}: What evidence do you have for and against that thought?"},
        ]
    conv = [{"role": "system", "content": SYSTEM}, *turns]
    whole = len(mask_example(tok, conv, layout)["input_ids"])
    wins = windows(tok, conv, layout, max_length=whole // 3)
    assert len(wins) >= 3
    seen = []
    for w in wins:
        assert w[0] == conv[0]  # every window has the system prompt
        ex = mask_example(tok, w, layout)  # renders: roles still alternate (Mistral raises otherwise)
        assert len(ex["input_ids"]) <= whole // 3
        seen += [m["content"] for m in w if m["role"] == "assistant"]
    assert seen == [m["content"] for m in turns if m["role"] == "assistant"]  # each turn once, in order
    assert wins[-1][-1] == conv[-1]  # the session's end is kept


def test_dropping_context_keeps_the_roles_alternating(study_tok):
    name, tok, _, _ = study_tok
    layout = chat_layout(tok, name)
    msgs = [dict(m) for m in CONV] + [{"role": "user", "content": "Work, mostly."}]
    assert drop_oldest_exchange(msgs, keep=2)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    render(tok, apply_layout(msgs, layout), generation_prompt=True)  # the template accepts it
    assert not drop_oldest_exchange(msgs, keep=2)  # no whole exchange left to drop


def test_course_context_is_one_definition_for_training_and_evaluation(root):
    """A training session and an evaluation session at the same course position with the same
    history get the same context block, appended the same way to the same base prompt."""
    phases = [{"name": "assessment", "share": 0.5, "focus": "rapport"}, {"name": "middle", "share": 0.5, "focus": "thought records"}]
    dcfg = {"sessions_per_patient": 4, "phases": phases}
    tpl = root / "resources/prompts/course_context.j2"
    hist = [{"index": 1, "phase": "assessment", "summary": "Met, set goals.", "homework": "Activity log."}]
    train_sess = {"patient_id": "p", "session_index": 2, "phase": "assessment", "n_sessions": 4, "history": hist, "messages": []}
    a = training_context(train_sess, [train_sess], dcfg, tpl)
    b = eval_context(
        {"patient_id": "q", "history": hist + [{"index": 2, "summary": "LATERNOTE", "homework": "LATERWORK"}]}, 2, 4, phases, tpl
    )
    assert a == b and "session 2 of 4" in a and "Activity log." in a and "LATERNOTE" not in a
    first = eval_context(None, 1, 4, phases, tpl)
    assert "first session" in first and first == context_block(
        tpl, session_index=1, n_sessions=4, phase=phase_plan(phases, 4)[0], history=[]
    )
    assert eval_context({"patient_id": "q", "history": None}, 2, 4, phases, tpl) is None  # no history: not played
    assert therapist_system("Base prompt.", a) == f"Base prompt.\n\n{a}"
