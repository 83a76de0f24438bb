"""Building: the sdist fetched and checked against the lock, the wheel built with scikit-build-core
from the unpacked tree (llama.cpp's common library no longer forced on), llama-server and
llama-bench built later in the same tree, and the wheel store."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .flags import (
    COMMON_DEFAULT,
    COMMON_FORCED,
    PACKAGE,
    SDIST_LOCK,
    TOOL_NAMES,
    TOOLS_STEP,
    VERSION,
    BuildError,
    is_x86,
    sdist_source,
    store_dir,
    tools_ident,
)
from .scan import baseline_error, scan_tools


def fetch_sdist(dest: Path) -> Path:
    """The sdist unpacked under ``dest``: the pinned release from the index (checked against the
    sha256 in the lock, never from pip's cache) or the local copy LLAMA_CPP_SDIST names."""
    src = sdist_source()
    if Path(src).is_file():
        archive = Path(src)
    else:
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        cmd = pip + ["download", "--no-deps", "--no-cache-dir", "--no-binary", PACKAGE, "-d", str(dest / "sdist")]
        if importlib.util.find_spec("scikit_build_core"):
            cmd.append("--no-build-isolation")  # pip reads the sdist's metadata with the pinned backend
        cmd += ["--require-hashes", "-r", str(SDIST_LOCK)] if SDIST_LOCK.is_file() else [src]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"downloading the {PACKAGE} {VERSION} sdist failed:\n{(r.stdout + r.stderr)[-4000:]}")
        found = sorted((dest / "sdist").glob(f"llama_cpp_python-{VERSION}.tar.gz"))
        if len(found) != 1:
            raise BuildError(f"expected the {PACKAGE} {VERSION} sdist in {dest / 'sdist'}, found {sorted(os.listdir(dest / 'sdist'))}")
        archive = found[0]
    with tarfile.open(archive) as t:
        t.extractall(dest / "src", filter="data")
    tree = dest / "src" / f"llama_cpp_python-{VERSION}"
    if not (tree / "CMakeLists.txt").is_file():
        raise BuildError(f"{archive} holds no llama_cpp_python-{VERSION}/CMakeLists.txt")
    unforce_common(tree / "CMakeLists.txt")
    return tree


def unforce_common(cmakelists: Path) -> None:
    """Let -DLLAMA_BUILD_COMMON decide (COMMON_FORCED above)."""
    text = cmakelists.read_text(encoding="utf-8")
    if text.count(COMMON_FORCED) != 1:
        raise BuildError(f"{cmakelists}: expected the line {COMMON_FORCED!r} once; the build tool does not know this sdist")
    cmakelists.write_text(text.replace(COMMON_FORCED, COMMON_DEFAULT), encoding="utf-8")


def build_env(args: list[str], build_dir: Path) -> tuple[str, dict[str, str]]:
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
    env = {
        **os.environ,
        "SKBUILD_BUILD_DIR": str(build_dir),
        "CMAKE_ARGS": " ".join(args),
        "FORCE_CMAKE": "1",
        "CMAKE_BUILD_PARALLEL_LEVEL": jobs,
    }
    return jobs, env


def build_wheel(args: list[str], dest: Path, tree_root: Path) -> Path:
    """pip wheel from the sdist unpacked under ``tree_root`` (src/), never from pip's cache, with
    its CMake build tree in ``tree_root/build``; returns the wheel file (in ``dest``).

    The tree is left in place for the tools' step (build_tools). The copies of llama.cpp's own
    programs and headers that its install rules put at the top of the wheel (bin/, lib/, include/
    in site-packages) are dropped from it."""
    shutil.rmtree(tree_root, ignore_errors=True)  # a tree left by a stopped build is not reused
    tree_root.mkdir(parents=True)
    jobs, env = build_env(args, tree_root / "build")
    tree = fetch_sdist(tree_root)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-cache-dir",
        "--no-binary",
        PACKAGE,
        "--disable-pip-version-check",
        "-w",
        str(dest),
    ]
    if importlib.util.find_spec("scikit_build_core") and shutil.which("cmake"):
        # The build backend is already here (pinned in the lock): no isolated build environment,
        # so an offline machine can build too.
        cmd.append("--no-build-isolation")
    cmd.append(str(tree))
    print(f"building {PACKAGE} {VERSION} with CMAKE_ARGS={env['CMAKE_ARGS']!r} (several minutes)", flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"building {PACKAGE} {VERSION} failed:\n{(r.stdout + r.stderr)[-4000:]}")
    wheels = sorted(dest.glob("llama_cpp_python-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wheel in {dest}, found {[w.name for w in wheels]}")
    shutil.rmtree(tree_root / "sdist", ignore_errors=True)
    strip_wheel(wheels[0])
    return wheels[0]


def tree_root(key: str) -> Path:
    """Where the wheel of ``key`` was built: its unpacked sdist and CMake build tree, kept for the
    tools' step and removed by it."""
    return store_dir() / ".trees" / key


def build_tools(args: list[str], key: str, entry: Path) -> Path:
    """llama-server and llama-bench for the wheel stored in ``entry`` (a store folder), built in
    that wheel's kept build tree (or in a new one, the wheel built again, if the tree is gone);
    stored in ``entry/tools`` with what they were built with; the tree is then removed."""
    root = tree_root(key)
    if not (root / "build" / "CMakeCache.txt").is_file():
        print(f"the build tree of {entry.name} is gone: building the package again first", flush=True)
        with tempfile.TemporaryDirectory(prefix=f".{key}.", dir=store_dir()) as scratch:
            build_wheel(args, Path(scratch), root)
    jobs, env = build_env(args, root / "build")
    build_tools_step(root / "src" / f"llama_cpp_python-{VERSION}", root / "build", jobs, env)
    tmp = entry / ".tools.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    collect_tools(root / "build", tmp)
    found = scan_tools(tmp) if profile_of(entry) != "native" and is_x86() else {}
    if found:
        shutil.rmtree(tmp, ignore_errors=True)
        raise baseline_error(found, args, f"the {profile_of(entry)} build of llama.cpp's tools")
    (tmp / "tools.json").write_text(json.dumps(tools_ident(), indent=1))
    final = entry / "tools"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    shutil.rmtree(root, ignore_errors=True)
    return final


def profile_of(entry: Path) -> str:
    return json.loads((entry / "build.json").read_text()).get("profile", "portable")


def stored_tools(entry: Path) -> Path | None:
    """The tools stored beside a wheel, if they were built the way this file builds them now."""
    t = entry / "tools"
    try:
        ok = json.loads((t / "tools.json").read_text()) == tools_ident()
    except (OSError, ValueError):
        ok = False
    return t if ok else None


def build_tools_step(tree: Path, build_dir: Path, jobs: str, env: dict[str, str]) -> None:
    """Configure the wheel's build tree again with llama.cpp's tools and build only TOOL_NAMES."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise BuildError("cmake is not on PATH: it is needed to build llama-server and llama-bench")
    if not (build_dir / "CMakeCache.txt").is_file():
        raise BuildError(f"the wheel's build left no CMake build tree in {build_dir}")
    print(f"building {', '.join(TOOL_NAMES)} in the same build tree", flush=True)
    for step in (
        [cmake, "-S", str(tree), "-B", str(build_dir), *TOOLS_STEP],
        [cmake, "--build", str(build_dir), "--parallel", jobs, "--target", *TOOL_NAMES],
    ):
        r = subprocess.run(step, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"{' '.join(step)} failed:\n{(r.stdout + r.stderr)[-4000:]}")


def collect_tools(build_dir: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    found = [p for p in build_dir.rglob("*") if p.is_file() and p.name in TOOL_NAMES]
    missing = sorted(set(TOOL_NAMES) - {p.name for p in found})
    if missing:
        raise BuildError(f"the build made no {', '.join(missing)} (looked in {build_dir})")
    bins = {p.parent for p in found}
    for b in bins:
        for p in b.iterdir():
            if p.is_file() and (p.name in TOOL_NAMES or ".so" in p.name):
                # a library's versioned names stay links to its one file (copied once, scanned once)
                shutil.copy2(p, out / p.name, follow_symlinks=False)


def strip_wheel(wheel: Path) -> None:
    """Drop bin/, lib/ and include/ at the wheel's top level (llama.cpp's own install rules): the
    package's libraries are in llama_cpp/lib, the tools in the store's tools folder."""
    tmp = wheel.with_suffix(".tmp")
    dropped = ("bin/", "lib/", "include/")
    with zipfile.ZipFile(wheel) as zi, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zo:
        for info in zi.infolist():
            if info.filename.startswith(dropped):
                continue
            data = zi.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [ln for ln in data.decode().splitlines() if not ln.startswith(dropped)]
                data = ("\n".join(lines) + "\n").encode()
            zo.writestr(info, data)
    tmp.replace(wheel)


def stored_wheel(key: str) -> Path | None:
    d = store_dir() / key
    wheels = sorted(d.glob("llama_cpp_python-*.whl")) if (d / "build.json").is_file() else []
    return wheels[0] if len(wheels) == 1 else None
