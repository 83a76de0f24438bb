"""Config validation at start-up, and dry runs of the default and study configs."""

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from cbtpipe.config import check_config
from cbtpipe.io import PipelineError

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def load(name="config.yaml"):
    return yaml.safe_load((ROOT / name).read_text())


def valid(cfg):
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(ROOT / "schemas/config.schema.yaml"))
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
        (lambda c: c["data"].update(source="import"), "data.import_path is required"),
        (lambda c: c["backends"].update(api={"type": "openai", "model": "m"}), "backends.api.base_url is required"),
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
    assert time.time() - t0 < 5
    assert r.returncode != 0
    assert "sampels" in r.stdout + r.stderr


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
