"""The build's definition: the pinned version, the profiles and their CMake flags, the key of a wheel
in the store, and whether this CPU can run a profile."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import sysconfig
from pathlib import Path

VERSION = "0.3.36"


# The sdist's sha256, from the project's lock (tools/lock.sh writes it)
SDIST_LOCK = Path(__file__).resolve().parents[2] / "requirements-llama-cpp.lock"


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
