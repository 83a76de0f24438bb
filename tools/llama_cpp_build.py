#!/usr/bin/env python3
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
project's lock and in every environment that holds llama-cpp-python).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path

VERSION = "0.3.36"
# The sdist's sha256, from the project's lock (tools/lock.sh writes it)
SDIST_LOCK = Path(__file__).resolve().parents[1] / "requirements-llama-cpp.lock"
PACKAGE = "llama-cpp-python"

# The x86-64-v3 baseline, spelled out: with GGML_NATIVE=OFF llama.cpp enables exactly these, but
# naming them keeps the build the same if upstream defaults move.
PORTABLE_X86 = [
    "-DGGML_NATIVE=OFF",
    "-DGGML_CPU_ALL_VARIANTS=OFF",
    "-DGGML_BACKEND_DL=OFF",
    "-DGGML_SSE42=ON",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    "-DGGML_AVX_VNNI=OFF",
    "-DGGML_AVX512=OFF",
    "-DGGML_AVX512_VBMI=OFF",
    "-DGGML_AVX512_VNNI=OFF",
    "-DGGML_AVX512_BF16=OFF",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
]
# Elsewhere (aarch64 ...) "portable" means llama.cpp's generic, non-native build.
PORTABLE_OTHER = ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF", "-DGGML_BACKEND_DL=OFF"]
CUDA = ["-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=80;86;89;90"]
# The Python package is built without llama.cpp's tools (about twenty programs). The two the
# pipeline can run, llama-server (parallel slots for GPU rollouts and concurrent sessions) and
# llama-bench (throughput on a GPU), are a second, optional step in the same build tree: its
# libraries are already compiled, so the step compiles the two programs and what they alone need
# (the server's HTTP layer, libmtmd, llama.cpp's common library: about four minutes on two cores,
# more than the wheel itself). The cuda profile always takes it; the CPU profiles take it when
# asked (``install --tools``, ``make llama-tools``, LLAMA_CPP_TOOLS=1), since the CPU pipeline runs
# llama.cpp in process. The wheel's build tree is kept in the store until then. The Python
# package's separate mtmd target is off (the pipeline sends no images); the web UI is not embedded
# (it would be downloaded at build time).
TOOLS = [
    "-DLLAMA_BUILD_COMMON=OFF",
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
]
# llama-cpp-python's CMakeLists forces llama.cpp's common library on (a FORCE'd cache entry), so
# the wheel step would compile it (about 2.5 minutes on two cores) although the wheel does not
# ship it and the package does not load it: only the tools need it. The unpacked sdist (after its
# sha256 was checked) gets that one line without FORCE, so -DLLAMA_BUILD_COMMON=OFF holds for the
# wheel and the tools' step turns it on; a source without that exact line is refused.
COMMON_FORCED = 'set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library" FORCE)'
COMMON_DEFAULT = 'set(LLAMA_BUILD_COMMON ON CACHE BOOL "Build llama.cpp common library")'
# the second step's flags (added to the first's, which the build tree keeps) and targets
TOOLS_STEP = ["-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_TOOLS_INSTALL=OFF"]
TOOL_NAMES = ("llama-server", "llama-bench")
# CPU features the portable x86 build needs at run time (names as in /proc/cpuinfo).
PORTABLE_X86_NEEDS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2")

PROFILES = ("portable", "native", "cuda")
RECORD = "llama-cpp-build.json"


class BuildError(RuntimeError):
    pass


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def profile_name() -> str:
    name = os.environ.get("LLAMA_CPP_BUILD", "portable").strip() or "portable"
    if name not in PROFILES:
        raise BuildError(f"LLAMA_CPP_BUILD={name!r} is not a build profile; use one of {', '.join(PROFILES)}")
    return name


def cmake_args(profile: str, extra: str | None = None) -> list[str]:
    """The full CMake flags of a profile, plus LLAMA_CPP_CMAKE_ARGS (later flags win in CMake)."""
    portable = PORTABLE_X86 if is_x86() else PORTABLE_OTHER
    args = {"portable": portable, "native": ["-DGGML_NATIVE=ON"], "cuda": [*portable, *CUDA]}[profile] + TOOLS
    extra = os.environ.get("LLAMA_CPP_CMAKE_ARGS", "") if extra is None else extra
    return [*args, *extra.split()]


def sdist_source() -> str:
    """What pip builds: the pinned release from the index, or a local sdist (LLAMA_CPP_SDIST)."""
    local = os.environ.get("LLAMA_CPP_SDIST")
    if not local:
        return f"{PACKAGE}=={VERSION}"
    p = Path(local)
    if not p.is_file() or not p.name.startswith(f"llama_cpp_python-{VERSION}."):
        raise BuildError(f"LLAMA_CPP_SDIST={local}: not a llama_cpp_python-{VERSION} sdist file")
    return str(p.resolve())


def build_key(args: list[str]) -> str:
    """The wheel's key: the sdist and its one edit, the full CMake flags, the interpreter and the platform."""
    src = sdist_source()
    ident = {
        "source": src if not Path(src).is_file() else hashlib.sha256(Path(src).read_bytes()).hexdigest(),
        "package": PACKAGE,
        "version": VERSION,
        "cmake_args": args,
        "source_edit": [COMMON_FORCED, COMMON_DEFAULT],
        "python": sys.implementation.cache_tag,
        "platform": sysconfig.get_platform(),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def tools_ident() -> dict:
    """What the tools stored beside a wheel were built with (the wheel's key covers the rest)."""
    return {"cmake_args": TOOLS_STEP, "targets": list(TOOL_NAMES)}


def wants_tools(profile: str, asked: bool = False) -> bool:
    """The cuda profile always builds the tools; a CPU profile when asked (--tools, LLAMA_CPP_TOOLS=1)."""
    return asked or profile == "cuda" or os.environ.get("LLAMA_CPP_TOOLS", "").strip().lower() in ("1", "true", "yes", "on")


def store_dir() -> Path:
    base = os.environ.get("LLAMA_CPP_WHEEL_STORE")
    if base:
        return Path(base)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "cbt-pipeline" / "llama-cpp-wheels"


# --- instruction-set check ------------------------------------------------------------------

# Mnemonics outside x86-64-v3 that are not EVEX-encoded (EVEX is found from the bytes).
AMX = re.compile(r"^(tile\w*|tdp\w+|ldtilecfg|sttilecfg|tcmmi\w+|tcmmr\w+)$")
OPMASK = re.compile(r"^k(mov|and|andn|or|xor|xnor|not|ortest|test|shiftl|shiftr|unpck|add)[bwdq]{1,2}$")
VEX_VNNI = re.compile(r"^vpdp(bu|bs|ws|wu)\w*$")
LEGACY_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3}
_LINE = re.compile(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(?:\{\w+\}\s+)?(\S+)")


def classify(raw: list[int], mnemonic: str) -> str | None:
    """The extension an instruction belongs to, if it is outside the portable baseline."""
    i = 0
    while i < len(raw) and raw[i] in LEGACY_PREFIXES:
        i += 1
    if i < len(raw) and raw[i] == 0x62:  # in 64-bit mode 0x62 is only ever the EVEX prefix
        return "AVX-512 (EVEX)"
    if AMX.match(mnemonic):
        return "AMX"
    if OPMASK.match(mnemonic):
        return "AVX-512 (opmask)"
    if VEX_VNNI.match(mnemonic):
        return "AVX-VNNI"
    return None


def scan_library(path: str | os.PathLike) -> dict[str, dict]:
    """Disassemble a shared library and list instructions outside x86-64-v3, by extension.

    Returns ``{extension: {"count": n, "examples": [mnemonic, ...]}}``; empty means portable."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise BuildError("objdump (GNU binutils) is needed to check the built library; install binutils")
    found: dict[str, dict] = {}
    with subprocess.Popen([objdump, "-d", "-w", str(path)], stdout=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _LINE.match(line)
            if not m:
                continue
            raw = [int(b, 16) for b in m.group(1).split()]
            mnem = m.group(2)
            ext = classify(raw, mnem)
            if ext:
                entry = found.setdefault(ext, {"count": 0, "examples": []})
                entry["count"] += 1
                if mnem not in entry["examples"] and len(entry["examples"]) < 8:
                    entry["examples"].append(mnem)
    if proc.returncode != 0:
        raise BuildError(f"objdump failed on {path} (exit {proc.returncode})")
    return found


def package_libraries(pkg_dir: Path) -> list[Path]:
    """The shared libraries to scan. The CUDA backend's library is left out: its host code is
    compiled by nvcc with the host compiler's defaults (no -march), and its size would make the
    scan take minutes."""
    return sorted(p for p in pkg_dir.rglob("*.so*") if p.is_file() and "ggml-cuda" not in p.name)


def scan_package(pkg_dir: Path) -> dict[str, dict]:
    libs = package_libraries(pkg_dir)
    if not libs:
        raise BuildError(f"no shared libraries under {pkg_dir}: not a llama-cpp-python build")
    return {p.name: r for p in libs if (r := scan_library(p))}


# --- smoke test -------------------------------------------------------------------------------

SMOKE = r"""
import sys
# llama.cpp's C++ libraries are loaded first: a Python extension with its own bundled C++ runtime
# (sentencepiece, which gguf imports) loaded before them made model loading crash (SIGSEGV in
# std::stringstream) on a CUDA image.
from llama_cpp import Llama
import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

path, n_prompt = sys.argv[1], int(sys.argv[2])
n_embd, n_ff, n_layer, n_head = 256, 512, 2, 4
tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)] + [f"w{i}" for i in range(61)]
types = [2, 3, 3] + [6] * 256 + [1] * 61
rng = np.random.default_rng(0)
w = gguf.GGUFWriter(path, "llama")
w.add_context_length(1024)
w.add_embedding_length(n_embd)
w.add_block_count(n_layer)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_head)
w.add_rope_dimension_count(n_embd // n_head)
w.add_layer_norm_rms_eps(1e-5)
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores([0.0] * len(tokens))
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)

def q(name, shape, qt=Q.Q8_0):
    data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    if qt == Q.F32:
        w.add_tensor(name, data)
    else:
        w.add_tensor(name, gguf.quants.quantize(data, qt), raw_dtype=qt)

q("token_embd.weight", (len(tokens), n_embd))
q("output_norm.weight", (n_embd,), Q.F32)
q("output.weight", (len(tokens), n_embd), Q.Q4_0)
for i in range(n_layer):
    q(f"blk.{i}.attn_norm.weight", (n_embd,), Q.F32)
    q(f"blk.{i}.ffn_norm.weight", (n_embd,), Q.F32)
    for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
        q(f"blk.{i}.{t}.weight", (n_embd, n_embd), Q.Q4_0 if t == "attn_v" else Q.Q8_0)
    q(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd), Q.Q4_1)
    q(f"blk.{i}.ffn_up.weight", (n_ff, n_embd))
    q(f"blk.{i}.ffn_down.weight", (n_embd, n_ff))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=2, n_gpu_layers=0, verbose=False)
prompt = [int(t) for t in rng.integers(3, len(tokens), n_prompt)]
llm.eval(prompt)  # one batch of n_prompt tokens: the matrix-matrix kernels
out = llm.create_completion(prompt[:40], max_tokens=8, temperature=0.0)
logits = np.asarray(llm.scores[llm.n_tokens - 1])
assert np.isfinite(logits).all(), "non-finite logits"
print("smoke ok: batch of", n_prompt, "tokens evaluated,", out["usage"]["completion_tokens"], "tokens generated")
"""


def smoke_test(python: str = sys.executable, n_prompt: int = 384, timeout: int = 300) -> str:
    """Evaluate a long prompt as one batch in a fresh process; a crash becomes a BuildError."""
    with tempfile.TemporaryDirectory(prefix="llama-smoke-") as d:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        r = subprocess.run(
            [python, "-c", SMOKE, str(Path(d) / "smoke.gguf"), str(n_prompt)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    if r.returncode != 0:
        how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"exit {r.returncode}"
        if r.returncode in (-4, 132):
            how += " (SIGILL: the library uses instructions this CPU does not have)"
        raise BuildError(f"smoke test failed ({how}):\n{(r.stdout + r.stderr)[-2000:]}")
    return r.stdout.strip().splitlines()[-1]


# --- build and install ------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def check_cpu(profile: str) -> None:
    if profile == "native" or not is_x86():
        return
    flags = cpu_flags()
    missing = [f for f in PORTABLE_X86_NEEDS if flags and f not in flags]
    if missing:
        raise BuildError(
            f"this CPU lacks {', '.join(missing)}, which the portable x86-64-v3 build of llama.cpp needs; "
            "build for this CPU instead with LLAMA_CPP_BUILD=native"
        )


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


def scan_wheel(wheel: Path) -> dict[str, dict]:
    """Instructions outside the baseline in the wheel's libraries."""
    with tempfile.TemporaryDirectory(prefix="llama-scan-") as d:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if ".so" in Path(name).name:
                    z.extract(name, d)
        return scan_package(Path(d))


def scan_tools(tools: Path, skip: set[str] = frozenset()) -> dict[str, dict]:
    """The tools and the libraries beside them (those also in the package are scanned there)."""
    if not tools.is_dir():
        return {}
    names = {Path(n).name for n in skip}
    todo = [
        p
        for p in sorted(tools.iterdir())
        if p.is_file() and not p.is_symlink() and p.name not in names and "ggml-cuda" not in p.name and p.suffix != ".json"
    ]
    return {f"tools/{p.name}": r for p in todo if (r := scan_library(p))}


def record_path(prefix: str = sys.prefix) -> Path:
    return Path(prefix) / RECORD


def installed_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


def baseline_error(found: dict[str, dict], args: list[str], where: str) -> BuildError:
    lines = [
        f"  {lib}: " + ", ".join(f"{ext} x{v['count']} ({' '.join(v['examples'][:4])})" for ext, v in r.items()) for lib, r in found.items()
    ]
    return BuildError(
        f"{where} contains instructions outside the portable x86-64-v3 baseline:\n"
        + "\n".join(lines)
        + f"\nCMake flags were: {' '.join(args)}\nSuch a build crashes (SIGILL) on CPUs without them."
    )


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
