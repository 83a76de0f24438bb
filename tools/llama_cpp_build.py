"""Build and install llama-cpp-python from its pinned sdist with known, portable build flags.

This file is the one place where the llama.cpp build is defined: the pinned version, the build
profiles and their CMake flags, the wheel store, the instruction-set check and the smoke test.
The README's set-up (``make setup``) and the conda environments' post-deploy scripts both call it.

Why not ``pip install llama-cpp-python``: llama.cpp's CMake tunes a source build for the CPU it is
built on (``GGML_NATIVE``). A wheel built on a machine with AMX or AVX-512 dies with SIGILL on one
without, and pip's wheel cache keys a locally built wheel by the sdist alone, not by ``CMAKE_ARGS``,
so a cached native wheel is reinstalled whatever flags are set. Here every wheel is built with
``--no-cache-dir`` and kept in a store keyed by the hash of the version, the full CMake flags and
the interpreter: a wheel is only ever reused for exactly the flags it was built with.

Profiles (choose with the environment variable ``LLAMA_CPP_BUILD``):

* ``portable`` (default): x86-64-v3 (AVX2, FMA, F16C, BMI2), no native tuning, no AVX-512, no AMX.
  Runs on any x86-64 CPU of the last ten years (Intel Haswell / AMD Zen and later).
* ``native``: llama.cpp's own tuning for the CPU that builds it; only for a machine that builds
  and runs on the same CPU model.
* ``cuda``: the portable CPU flags plus the CUDA backend (needs ``nvcc`` and a driver);
  ``CMAKE_CUDA_ARCHITECTURES`` defaults to 80;86;89;90 (A100, A10/RTX 30, L4/RTX 40, H100/H200).

``LLAMA_CPP_CMAKE_ARGS`` appends further CMake flags to the chosen profile (for example
``-DCMAKE_CUDA_ARCHITECTURES=90``); they become part of the store key. ``LLAMA_CPP_SDIST`` names
a local copy of the sdist to build from (an offline cluster); its sha256 joins the key.

Commands::

    python tools/llama_cpp_build.py install     # build (or reuse a stored wheel), check, install
    python tools/llama_cpp_build.py install --tools   # the same, plus llama-server and llama-bench
    python tools/llama_cpp_build.py check       # check the installed build: instructions + smoke test
    python tools/llama_cpp_build.py flags       # print the CMake flags of the chosen profile
    python tools/llama_cpp_build.py scan LIB... # list instructions outside the portable baseline

Only the standard library is needed to build; the smoke test uses numpy and gguf (pinned in the
project's lock and in every environment that holds llama-cpp-python)."""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from llamabuild.build import build_tools, build_wheel, stored_tools, stored_wheel, tree_root
from llamabuild.flags import (
    PACKAGE,
    RECORD,
    TOOL_NAMES,
    VERSION,
    BuildError,
    build_key,
    check_cpu,
    cmake_args,
    is_x86,
    profile_name,
    store_dir,
    wants_tools,
)
from llamabuild.scan import baseline_error, package_libraries, scan_library, scan_package, scan_tools, scan_wheel
from llamabuild.smoke import smoke_test


def record_path(prefix: str = sys.prefix) -> Path:
    return Path(prefix) / RECORD


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


def _stored_or_built(profile: str, args: list[str], key: str, with_tools: bool) -> tuple[Path, Path | None]:
    """The stored wheel of ``key`` (built first if absent) and its stored tools (built first if
    asked for and absent)."""
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    wheel = stored_wheel(key)
    if wheel is None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=store))
        try:
            built = build_wheel(args, tmp, tree_root(key))
            found = scan_wheel(built) if profile != "native" and is_x86() else {}
            if found:
                raise baseline_error(found, args, f"the {profile} build")
            (tmp / "build.json").write_text(json.dumps({"key": key, "profile": profile, "cmake_args": args, "version": VERSION}, indent=1))
            final = store / key
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        wheel = stored_wheel(key)
        assert wheel is not None
    else:
        print(f"reusing the wheel built with the same flags: {wheel}")
    tools_src = stored_tools(wheel.parent)
    if tools_src is None and with_tools:
        tools_src = build_tools(args, key, wheel.parent)
    return wheel, tools_src


def install(force: bool = False, tools: bool = False) -> dict:
    """Build (or take from the store) the profile's wheel, install it and smoke-test it; with the
    tools (cuda profile, or asked for) also llama-server and llama-bench, built once per wheel."""
    profile = profile_name()
    args = cmake_args(profile)
    key = build_key(args)
    with_tools = wants_tools(profile, tools)
    check_cpu(profile)
    rec_file = record_path()
    if not force and rec_file.is_file() and installed_version() == VERSION:
        rec = json.loads(rec_file.read_text())
        if rec.get("key") == key and (rec.get("tools_dir") or not with_tools):
            print(
                f"{PACKAGE} {VERSION} ({profile}, key {key}) is installed{' with its tools' if rec.get('tools_dir') else ''}; nothing to do"
            )
            return rec
    store = store_dir()
    store.mkdir(parents=True, exist_ok=True)
    with open(store / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build of a key at a time (its build tree is shared)
        wheel, tools_src = _stored_or_built(profile, args, key, with_tools)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            "--force-reinstall",
            "--no-cache-dir",
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise BuildError(f"pip could not install {wheel}:\n{r.stderr[-2000:]}")
    # stored tools are installed whenever they are there (a copy, no build)
    tools_dir = install_tools(tools_src)
    rec = {
        "package": PACKAGE,
        "version": VERSION,
        "profile": profile,
        "cmake_args": args,
        "key": key,
        "wheel": str(wheel),
        "tools_dir": str(tools_dir) if tools_dir else None,
    }
    if rec_file.exists():
        rec_file.unlink()
    try:
        rec["smoke"] = smoke_test()
    except BuildError as e:
        raise BuildError(
            f"{e}\nThe {profile} build of {PACKAGE} {VERSION} (CMake flags: {' '.join(args)}) does not run on this "
            f"machine. Way out: build the portable profile (unset LLAMA_CPP_BUILD and LLAMA_CPP_CMAKE_ARGS) and "
            f"re-run the set-up; to rebuild this profile from scratch, delete {wheel.parent}"
        ) from None
    rec_file.write_text(json.dumps(rec, indent=1) + "\n")
    tools_note = f" with {', '.join(TOOL_NAMES)}" if tools_dir else f" (without {', '.join(TOOL_NAMES)}: `make llama-tools` adds them)"
    print(f"{PACKAGE} {VERSION} installed ({profile}){tools_note}; {rec['smoke']}")
    return rec


def tools_home(prefix: str = sys.prefix) -> Path:
    return Path(prefix) / "libexec" / "llama-cpp"


def install_tools(src: Path | None) -> Path | None:
    """Copy the stored tools and their libraries to <prefix>/libexec/llama-cpp (replaced whole;
    removed when there are none, so no tool of another build stays behind)."""
    dst = tools_home()
    if dst.exists():
        shutil.rmtree(dst)
    if src is None or not src.is_dir() or not any(src.iterdir()):
        return None
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("tools.json"))
    return dst


def installed_package_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"{PACKAGE} is not installed in {sys.prefix}; run the set-up")
    return Path(list(spec.submodule_search_locations)[0])


def tool_binary(name: str) -> Path | None:
    """A llama.cpp tool (llama-server, llama-bench) installed with the package; it needs
    LD_LIBRARY_PATH set to its folder (the libraries it loads are beside it)."""
    c = tools_home() / name
    return c if c.is_file() and os.access(c, os.X_OK) else None


def scan_installed() -> dict[str, dict]:
    """The installed package's libraries and the installed tools."""
    pkg = installed_package_dir()
    found = scan_package(pkg)
    found.update(scan_tools(tools_home(), skip={p.name for p in package_libraries(pkg)}))
    return found


def check() -> dict:
    rec_file = record_path()
    rec = json.loads(rec_file.read_text()) if rec_file.is_file() else {"profile": "unknown (not installed by this tool)"}
    found = scan_installed() if is_x86() else {}
    out = {"record": rec, "outside_baseline": found, "smoke": smoke_test()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("install")
    p.add_argument("--force", action="store_true", help="reinstall even if the recorded build matches")
    p.add_argument(
        "--tools",
        action="store_true",
        help=f"also build and install {', '.join(TOOL_NAMES)} (always with the cuda profile; LLAMA_CPP_TOOLS=1 asks too)",
    )
    sub.add_parser("check")
    sub.add_parser("flags")
    s = sub.add_parser("scan")
    s.add_argument("libs", nargs="+")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "install":
            install(a.force, a.tools)
        elif a.cmd == "check":
            print(json.dumps(check(), indent=1))
        elif a.cmd == "flags":
            print(" ".join(cmake_args(profile_name())))
        else:
            bad = 0
            for lib in a.libs:
                found = scan_library(lib)
                bad += bool(found)
                print(f"{lib}: " + (json.dumps(found) if found else "portable (x86-64-v3)"))
            return 1 if bad else 0
    except BuildError as e:
        print(f"llama.cpp build: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
