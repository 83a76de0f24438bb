"""Loss masks and system-prompt layout on the real chat templates of the three study models.

The templates come from the pinned llama-cpp-python sdist (vendor/llama.cpp/models/templates), as
the llama_cpp_tools rule extracts them; Mistral 7B Instruct v0.3's own template, which that folder
lacks, is test data (tests/data/templates). The tokenizer is the tiny model's with each template's
special tokens added as special tokens, as the study models' own tokenizers have them; the masks
are also proven with the real tokenizers that packages ship (Mistral's v3 tokenizer in
mistral-common, Llama 3's in llama-models)."""

import json
from pathlib import Path

import pytest
import yaml

from cbtpipe.design import (
    apply_layout,
    chat_layout,
    drop_oldest_exchange,
    eval_context,
    mask_example,
    phase_plan,
    therapist_system,
    training_context,
    windows,
)
from cbtpipe.design.chat import check_layout, render
from cbtpipe.design.course import context_block
from cbtpipe.workflow import PipelineError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "templates"
V03 = "mistralai-Mistral-7B-Instruct-v0.3.jinja"
# template file, its special tokens, bos, eos (end of an assistant turn), the layout auto must pick
# (and the separator between the generation prompt and a turn's content, where there is one)
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
    # the study's Mistral: "[/INST]" + " " + content|trim + eos
    "mistral_v03": (V03, ["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", "</s>", "first_user"),
}
SEPARATOR = {"mistral_v03": " "}


def _template(llama_cpp_tools, name: str) -> str:
    path = DATA / name if (DATA / name).exists() else llama_cpp_tools / "models" / "templates" / name
    return path.read_text(encoding="utf-8")


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
    tok.chat_template = _template(llama_cpp_tools, name)
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
    sep = SEPARATOR.get(name, "")
    assert layout["system"] == want_layout and layout["end_of_turn"] == eot and layout["separator"] == sep
    ex = mask_example(tok, CONV, layout)
    therapist = [m["content"] for m in CONV if m["role"] == "assistant"]
    assert _masked_turns(tok, ex) == [sep + t + eot for t in therapist]
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
    why, _, _ = check_layout(tok, "native")
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
    assert therapist_system("Base prompt.", context=a) == f"Base prompt.\n\n{a}"


def _package_file(package: str, rel: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    assert spec and spec.submodule_search_locations, f"{package} is not installed (requirements-nodeps.lock)"
    return Path(next(iter(spec.submodule_search_locations))) / rel


@pytest.fixture(scope="module")
def mistral_v3_tok(tmp_path_factory):
    """Mistral's own v3 SentencePiece tokenizer (Mistral 7B Instruct v0.3's), as mistral-common
    ships it, with the v0.3 chat template."""
    from transformers import LlamaTokenizer

    d = tmp_path_factory.mktemp("mistral_v3")
    (d / "tokenizer.model").write_bytes(_package_file("mistral_common", "data/mistral_instruct_tokenizer_240323.model.v3").read_bytes())
    tok = LlamaTokenizer.from_pretrained(d, legacy=False)
    tok.chat_template = (DATA / V03).read_text(encoding="utf-8")
    return tok


def test_mistral_v03_masks_with_its_own_tokenizer(mistral_v3_tok):
    """The real v3 tokenizer folds the separator's space into the turn's first token ("▁Hello"):
    the mask covers that token, so the model learns to start its turn as it does at inference,
    where the prompt ends with "[/INST]"."""
    tok = mistral_v3_tok
    layout = chat_layout(tok, "mistral-7b-v0.3")
    assert (layout["system"], layout["separator"], layout["end_of_turn"]) == ("first_user", " ", "</s>")
    ex = mask_example(tok, CONV, layout)
    therapist = [m["content"] for m in CONV if m["role"] == "assistant"]
    runs = [[t for t, m in zip(ex["input_ids"], ex["assistant_masks"], strict=True) if m]]
    assert ex["turns"] == 2 and sum(ex["assistant_masks"]) == sum(
        len(tok(" " + t, add_special_tokens=False)["input_ids"]) + 1 for t in therapist
    )
    pieces = tok.convert_ids_to_tokens(runs[0])
    assert pieces[0] == "▁Hello" and pieces.count("</s>") == 2
    assert [t.strip() for t in _masked_turns(tok, ex)] == [t + "</s>" for t in therapist]
    # inference renders the same prompt format for both arms: the system prompt in the first user turn
    prompt = render(tok, apply_layout(CONV[:2], layout), generation_prompt=True)
    assert prompt.endswith("[/INST]") and SYSTEM in prompt and render(tok, apply_layout(CONV, layout)).startswith(prompt + " Hello.")


def test_the_study_profiles_chat_layout_job_for_mistral_v03_records_first_user(mistral_v3_tok, tmp_path):
    """The study profile's own chat_layout job, run by Snakemake for the Mistral entry on a model
    folder with Mistral's real v3 tokenizer and v0.3 template: the layout every later step reads
    (training, preference pairs, both arms' sessions) folds the system prompt into the first user
    turn, and the study profile lists that as a deviation."""
    from tests.helpers.workdir import make_workdir, run_snakemake

    wd = make_workdir(tmp_path)
    hf = wd / "results/models/mistral-7b-v0.3/instruct/hf"
    mistral_v3_tok.save_pretrained(hf)
    target = "results/models/mistral-7b-v0.3/chat_layout.json"
    r = run_snakemake(wd, target, "--cores", "1", "--configfile", "config/study.yaml", "--allowed-rules", "chat_layout", timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    layout = json.loads((wd / target).read_text())
    assert (layout["system"], layout["separator"], layout["end_of_turn"]) == ("first_user", " ", "</s>")
    study = yaml.safe_load((ROOT / "config/study.yaml").read_text())
    assert any("Mistral 7B v0.3" in d and "first_user" in d for d in study["deviations"])


def test_llama3_masks_with_its_own_tokenizer(llama_cpp_tools, tmp_path):
    """Llama 3's own tiktoken BPE (llama-models ships it), with its special tokens, and the Llama 3.1
    template: native layout, and the mask is exactly each turn and its <|eot_id|>."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
    pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    conv = TikTokenConverter(str(_package_file("llama_models", "llama3/tokenizer.model")), pattern=pattern, extra_special_tokens=special)
    tok = PreTrainedTokenizerFast(tokenizer_object=conv.converted(), bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tok.add_special_tokens({"additional_special_tokens": special})
    tok.chat_template = _template(llama_cpp_tools, "meta-llama-Llama-3.1-8B-Instruct.jinja")
    assert len(tok) > 128000
    layout = chat_layout(tok, "llama3.1-8b")
    assert (layout["system"], layout["separator"], layout["end_of_turn"]) == ("native", "", "<|eot_id|>")
    ex = mask_example(tok, CONV, layout)
    assert _masked_turns(tok, ex) == [m["content"] + "<|eot_id|>" for m in CONV if m["role"] == "assistant"]
