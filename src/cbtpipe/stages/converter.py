"""llama.cpp's own conversion tools, taken from the sdist of the installed llama-cpp-python, so
that GGUF conversion always matches the runtime that reads the files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

from ..workflow import PipelineError, staged_dir, write_json

# the converter, and the chat templates of well-known models (the tests check masks on them)
WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")


def installed_version() -> str:
    return version("llama_cpp_python")


# The sdist's sha256 (tools/lock.sh writes it; tools/llama_cpp_build.py builds from the same lock)
SDIST_LOCK = Path(__file__).resolve().parents[3] / "requirements-llama-cpp.lock"


def fetch_sdist(ver: str, dest: Path) -> Path:
    """The llama-cpp-python ``ver`` sdist in ``dest``: the local copy LLAMA_CPP_SDIST names (an
    offline cluster, as for the build), or pip's download, checked against the lock's sha256
    when the lock pins that version."""
    local = os.environ.get("LLAMA_CPP_SDIST")
    if local:
        p = Path(local)
        if not p.is_file() or not p.name.startswith(f"llama_cpp_python-{ver}."):
            raise PipelineError(f"LLAMA_CPP_SDIST={local}: not a llama_cpp_python-{ver} sdist file (the installed version)")
        return Path(shutil.copy2(p, dest / p.name))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-binary",
        ":all:",
        # scikit-build-core is pinned in the project, so pip reads the sdist's metadata without
        # building an isolated environment (seconds instead of minutes).
        "--no-build-isolation",
        "-d",
        str(dest),
    ]
    pinned = SDIST_LOCK.is_file() and re.search(rf"^llama-cpp-python=={re.escape(ver)}\s", SDIST_LOCK.read_text(), re.M)
    cmd += ["--require-hashes", "-r", str(SDIST_LOCK)] if pinned else [f"llama-cpp-python=={ver}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise PipelineError(f"pip could not download the llama-cpp-python {ver} sdist:\n{r.stderr[-2000:]}")
    found = sorted(dest.glob(f"llama_cpp_python-{ver}.tar.gz"))
    if not found:
        raise PipelineError(f"no llama-cpp-python {ver} sdist in {dest} after pip download")
    return found[0]


def extract_tools(sdist: Path, out_dir: Path, expected_version: str) -> dict[str, object]:
    name = sdist.name
    sdist_version = name[len("llama_cpp_python-") : -len(".tar.gz")]
    if sdist_version != expected_version:
        raise PipelineError(
            f"llama.cpp tools: sdist {name} is version {sdist_version}, but llama-cpp-python "
            f"{expected_version} is installed; conversion must match the runtime"
        )
    n = 0
    with staged_dir(out_dir) as tmp, tarfile.open(sdist) as tar:
        root = tmp.resolve()
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                continue
            rel = parts[1][len("vendor/llama.cpp/") :]
            if not any(rel == w or rel.startswith(w) for w in WANTED) or not m.isfile():
                continue
            target = (tmp / rel).resolve()
            if not target.is_relative_to(root):
                raise PipelineError(f"{sdist}: member {m.name} would be written outside {out_dir}; archive refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise PipelineError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
    return {"llama_cpp_python": expected_version, "sdist": name, "files": n}


def build_tools(out_dir: str | Path, info_path: str | Path) -> dict[str, object]:
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    ver = installed_version()
    with tempfile.TemporaryDirectory() as d:
        sdist = fetch_sdist(ver, Path(d))
        info = extract_tools(sdist, out, ver)
    write_json(info_path, info)
    return info


def check_tools_version(info: dict[str, object]) -> None:
    ver = installed_version()
    if info.get("llama_cpp_python") != ver:
        raise PipelineError(
            f"llama.cpp tools were extracted from llama-cpp-python {info.get('llama_cpp_python')}, but "
            f"{ver} is installed: delete resources/llama_cpp_tools and re-run"
        )
