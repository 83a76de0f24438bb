"""The llama.cpp build: portable by construction, whatever CPU builds it or runs the tests.

The instruction check disassembles the built libraries, so it holds on any CI machine: it does not
depend on which instructions the machine running the tests happens to have. It is first shown to
catch AMX and AVX-512 code in small libraries compiled here for those extensions, then applied to
the installed llama-cpp-python.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import llama_cpp_build as lb  # noqa: E402
from llamabuild import build as lbbuild  # noqa: E402
from llamabuild import flags as lbflags  # noqa: E402
from llamabuild import scan as lbscan  # noqa: E402
from llamabuild import smoke as lbsmoke  # noqa: E402

x86_only = pytest.mark.skipif(not lbflags.is_x86(), reason="the instruction baseline is defined for x86-64")

SOURCES = {
    "avx2": (
        "-mavx2 -mfma -mf16c",
        "void f(float*a,float*b,float*c){__m256 x=_mm256_loadu_ps(a),y=_mm256_loadu_ps(b);_mm256_storeu_ps(c,_mm256_fmadd_ps(x,y,x));}",
    ),
    "avx512": (
        "-mavx512f",
        "void f(float*a,float*b,float*c){__m512 x=_mm512_loadu_ps(a),y=_mm512_loadu_ps(b);_mm512_storeu_ps(c,_mm512_fmadd_ps(x,y,x));}",
    ),
    "avx512vl": (
        "-mavx512f -mavx512vl",
        "void f(int*a,int*b,int*c){__m256i x=_mm256_loadu_si256((void*)a),y=_mm256_loadu_si256((void*)b);"
        "_mm256_storeu_si256((void*)c,_mm256_ternarylogic_epi32(x,y,x,0x96));}",
    ),
    "amx": (
        "-mamx-tile -mamx-int8",
        "void f(void*cfg,void*a,void*b){_tile_loadconfig(cfg);_tile_loadd(0,a,64);_tile_loadd(1,b,64);"
        "_tile_dpbssd(2,0,1);_tile_stored(2,a,64);_tile_release();}",
    ),
    "avxvnni": ("-mavxvnni", "__m256i f(__m256i a,__m256i b,__m256i c){return _mm256_dpbusd_avx_epi32(a,b,c);}"),
}


@pytest.fixture(scope="module")
def isa_libs(tmp_path_factory):
    """Tiny shared libraries compiled for the baseline and for extensions outside it."""
    d = tmp_path_factory.mktemp("isa")
    out = {}
    for name, (flags, body) in SOURCES.items():
        src = d / f"{name}.c"
        src.write_text("#include <immintrin.h>\n" + body + "\n")
        lib = d / f"lib{name}.so"
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", *flags.split(), str(src), "-o", str(lib)], check=True)
        out[name] = lib
    return out


@x86_only
def test_scanner_passes_baseline_code(isa_libs):
    assert lbscan.scan_library(isa_libs["avx2"]) == {}


@x86_only
@pytest.mark.parametrize(
    "name,ext,mnemonic",
    [
        ("amx", "AMX", "tileloadd"),
        ("avx512", "AVX-512 (EVEX)", "vfmadd132ps"),
        ("avx512vl", "AVX-512 (EVEX)", "vpternlogd"),
        ("avxvnni", "AVX-VNNI", "vpdpbusd"),
    ],
)
def test_scanner_catches_instructions_outside_the_baseline(isa_libs, name, ext, mnemonic):
    found = lbscan.scan_library(isa_libs[name])
    assert ext in found, found
    assert any(m.startswith(mnemonic) or mnemonic in m for m in found[ext]["examples"]), found
    # and the command-line form exits non-zero, naming the extension
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools/llama_cpp_build.py"), "scan", str(isa_libs[name])], capture_output=True, text=True
    )
    assert r.returncode == 1 and ext.split()[0] in r.stdout


@x86_only
def test_classify_reads_evex_from_the_bytes():
    assert lbscan.classify([0x62, 0xF1, 0x7C, 0x48, 0x10, 0x00], "vmovups") == "AVX-512 (EVEX)"
    assert lbscan.classify([0x67, 0x62, 0xF1, 0x7C, 0x48, 0x10, 0x00], "vmovups") == "AVX-512 (EVEX)"
    assert lbscan.classify([0xC5, 0xFC, 0x10, 0x00], "vmovups") is None  # VEX: AVX, in the baseline
    assert lbscan.classify([0xC5, 0xF8, 0x90, 0xC1], "kmovw") == "AVX-512 (opmask)"


def _record() -> dict:
    p = Path(sys.prefix) / lbflags.RECORD
    assert p.is_file(), f"{p} is missing: llama-cpp-python was not installed by tools/llama_cpp_build.py (run the set-up)"
    return json.loads(p.read_text())


def test_installed_build_was_made_by_the_build_tool():
    rec = _record()
    import llama_cpp

    assert rec["version"] == lbflags.VERSION == llama_cpp.__version__
    base = lbflags.cmake_args(rec["profile"], extra="")
    assert rec["cmake_args"][: len(base)] == base
    assert rec["smoke"].startswith("smoke ok")


@x86_only
def test_installed_llama_cpp_is_portable():
    """No AMX, no AVX-512, no AVX-VNNI anywhere in the installed libraries (default build)."""
    rec = _record()
    if rec["profile"] == "native":
        pytest.skip("a native build was asked for (LLAMA_CPP_BUILD=native): it is tuned for this CPU by design")
    assert "-DGGML_NATIVE=OFF" in rec["cmake_args"]
    pkg = lb.installed_package_dir()
    libs = lbscan.package_libraries(pkg)
    assert any("ggml-cpu" in p.name for p in libs) or any("ggml" in p.name for p in libs), libs
    found = lbscan.scan_package(pkg)
    assert found == {}, lbscan.baseline_error(found, rec["cmake_args"], "the installed llama-cpp-python")


def test_store_key_follows_every_flag(monkeypatch):
    monkeypatch.delenv("LLAMA_CPP_SDIST", raising=False)
    portable = lbflags.cmake_args("portable", extra="")
    keys = {
        lbflags.build_key(portable),
        lbflags.build_key(lbflags.cmake_args("native", extra="")),
        lbflags.build_key(lbflags.cmake_args("cuda", extra="")),
        lbflags.build_key(lbflags.cmake_args("portable", extra="-DGGML_AVX512=ON")),
    }
    assert len(keys) == 4
    assert lbflags.build_key(portable) == lbflags.build_key(list(portable))


def test_profile_and_extra_flags_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_BUILD", "cuda")
    monkeypatch.setenv("LLAMA_CPP_CMAKE_ARGS", "-DCMAKE_CUDA_ARCHITECTURES=90")
    args = lbflags.cmake_args(lbflags.profile_name())
    assert "-DGGML_CUDA=ON" in args and args[-1] == "-DCMAKE_CUDA_ARCHITECTURES=90"
    if lbflags.is_x86():
        assert "-DGGML_AVX512=OFF" in args and "-DGGML_NATIVE=OFF" in args
    monkeypatch.setenv("LLAMA_CPP_BUILD", "fastest")
    with pytest.raises(lbflags.BuildError, match="LLAMA_CPP_BUILD='fastest'"):
        lbflags.profile_name()


def test_local_sdist_must_be_the_pinned_version(monkeypatch, tmp_path):
    bad = tmp_path / "llama_cpp_python-0.3.1.tar.gz"
    bad.write_bytes(b"x")
    monkeypatch.setenv("LLAMA_CPP_SDIST", str(bad))
    with pytest.raises(lbflags.BuildError, match="not a llama_cpp_python-0.3.36 sdist"):
        lbflags.sdist_source()


def test_build_never_reads_pips_wheel_cache(monkeypatch, tmp_path):
    """pip's cache keys a locally built wheel by the sdist alone: the build must bypass it, and
    the sdist it unpacks must be the lock's (checked by its sha256)."""
    import io
    import tarfile

    calls = []

    def fake_run(cmd, env=None, **kw):
        calls.append((cmd, env))
        if "download" in cmd:  # pip download: the sdist lands in the folder after -d
            d = Path(cmd[cmd.index("-d") + 1])
            d.mkdir(parents=True)
            with tarfile.open(d / f"llama_cpp_python-{lbflags.VERSION}.tar.gz", "w:gz") as t:
                data = f"project(x)\n{lbflags.COMMON_FORCED}\n".encode()
                info = tarfile.TarInfo(f"llama_cpp_python-{lbflags.VERSION}/CMakeLists.txt")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "stopped here by the test")

    monkeypatch.delenv("LLAMA_CPP_SDIST", raising=False)
    monkeypatch.setattr(lb.subprocess, "run", fake_run)
    with pytest.raises(lbflags.BuildError, match="stopped here by the test"):
        lbbuild.build_wheel(["-DGGML_NATIVE=OFF"], tmp_path, tmp_path / "tree")
    (download, _), (wheel, env) = calls
    # the sdist from the index, checked against the lock's sha256, never from pip's cache
    assert "--no-cache-dir" in download and download[-3:] == ["--require-hashes", "-r", str(lbflags.SDIST_LOCK)]
    # the wheel from the unpacked sdist, whose build tree the tools' step reuses
    assert "--no-cache-dir" in wheel and "--no-binary" in wheel
    assert wheel[-1] == str(tmp_path / "tree" / "src" / f"llama_cpp_python-{lbflags.VERSION}")
    assert env["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF" and env["FORCE_CMAKE"] == "1"
    assert env["SKBUILD_BUILD_DIR"] == str(tmp_path / "tree" / "build")
    # llama.cpp's common library is off for the wheel (it does not ship it), on for the tools
    assert "-DLLAMA_BUILD_COMMON=OFF" in lbflags.cmake_args("portable") and "-DLLAMA_BUILD_COMMON=ON" in lbflags.TOOLS_STEP


def test_the_tools_step_builds_only_the_tools_the_pipeline_runs(monkeypatch, tmp_path):
    """llama.cpp's tools are built in the wheel's build tree, as two targets, not all twenty."""
    calls = []
    monkeypatch.setattr(lb.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0, "", ""))
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "CMakeCache.txt").write_text("")
    lbbuild.build_tools_step(tmp_path / "src", tmp_path / "build", "2", {})
    configure, build = calls
    assert configure[1:5] == ["-S", str(tmp_path / "src"), "-B", str(tmp_path / "build")]
    assert "-DLLAMA_BUILD_TOOLS=ON" in configure and "-DLLAMA_BUILD_SERVER=ON" in configure
    assert build[-3:] == ["--target", "llama-server", "llama-bench"]
    # the wheel itself is built without them
    assert "-DLLAMA_BUILD_TOOLS=OFF" in lbflags.cmake_args("portable")


def test_the_common_library_is_left_to_the_flags(tmp_path):
    """The one edit of the unpacked sdist: the FORCE'd common-library line loses its FORCE (so
    -DLLAMA_BUILD_COMMON decides); a CMakeLists without that exact line is refused."""
    f = tmp_path / "CMakeLists.txt"
    f.write_text(f"project(x)\n    {lbflags.COMMON_FORCED}\nadd_subdirectory(vendor/llama.cpp)\n")
    lbbuild.unforce_common(f)
    assert f.read_text() == f"project(x)\n    {lbflags.COMMON_DEFAULT}\nadd_subdirectory(vendor/llama.cpp)\n"
    with pytest.raises(lbflags.BuildError, match="expected the line"):
        lbbuild.unforce_common(f)


def test_the_pinned_sdist_has_the_line_the_build_edits():
    """The real sdist (the one the converter extracts tools from, pip's cache allowed) holds the
    line exactly once, so the edit cannot silently miss after a version bump."""
    import tarfile

    from cbtpipe.stages.converter import fetch_sdist

    with tempfile.TemporaryDirectory() as d:
        sdist = fetch_sdist(lbflags.VERSION, Path(d))
        with tarfile.open(sdist) as t:
            text = t.extractfile(f"llama_cpp_python-{lbflags.VERSION}/CMakeLists.txt").read().decode()
    assert text.count(lbflags.COMMON_FORCED) == 1


def test_the_tools_are_built_only_where_wanted(monkeypatch):
    """The CPU set-up builds the package alone (the CPU pipeline runs llama.cpp in process); the
    cuda profile, --tools and LLAMA_CPP_TOOLS=1 add llama-server and llama-bench."""
    monkeypatch.delenv("LLAMA_CPP_TOOLS", raising=False)
    assert not lbflags.wants_tools("portable") and not lbflags.wants_tools("native")
    assert lbflags.wants_tools("cuda") and lbflags.wants_tools("portable", asked=True)
    monkeypatch.setenv("LLAMA_CPP_TOOLS", "1")
    assert lbflags.wants_tools("portable")
    monkeypatch.setenv("LLAMA_CPP_TOOLS", "0")
    assert not lbflags.wants_tools("portable")


def _fake_build(monkeypatch, tmp_path, calls):
    """The store in tmp_path; pip and CMake replaced by stand-ins that record their commands and
    leave what the real ones leave (a wheel, a build tree, the two tools and a library)."""
    import io
    import tarfile

    monkeypatch.setenv("LLAMA_CPP_WHEEL_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("LLAMA_CPP_SDIST", raising=False)

    def fake_run(cmd, env=None, **kw):
        calls.append(cmd)
        if "download" in cmd:
            d = Path(cmd[cmd.index("-d") + 1])
            d.mkdir(parents=True)
            with tarfile.open(d / f"llama_cpp_python-{lbflags.VERSION}.tar.gz", "w:gz") as t:
                data = f"project(x)\n{lbflags.COMMON_FORCED}\n".encode()
                info = tarfile.TarInfo(f"llama_cpp_python-{lbflags.VERSION}/CMakeLists.txt")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        elif "wheel" in cmd:
            build = Path(env["SKBUILD_BUILD_DIR"])
            build.mkdir(parents=True)
            (build / "CMakeCache.txt").write_text("")
            with zipfile.ZipFile(
                Path(cmd[cmd.index("-w") + 1]) / f"llama_cpp_python-{lbflags.VERSION}-py3-none-linux_x86_64.whl", "w"
            ) as z:
                z.writestr("llama_cpp/__init__.py", "")
                z.writestr("llama_cpp/lib/libllama.so", "lib")
        elif "--build" in cmd:
            b = Path(cmd[cmd.index("--build") + 1]) / "bin"
            b.mkdir(parents=True, exist_ok=True)
            for name in lbflags.TOOL_NAMES:
                (b / name).write_bytes(b"tool")
            (b / "libllama-common.so").write_bytes(b"lib")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(lb.subprocess, "run", fake_run)
    monkeypatch.setattr(lbscan, "scan_library", lambda p: {})


def test_the_tools_step_reuses_the_kept_build_tree(monkeypatch, tmp_path):
    """A wheel built without its tools keeps its build tree; asking for the tools later compiles
    them there (no second package build) and removes the tree; asked again, nothing is built."""
    calls = []
    _fake_build(monkeypatch, tmp_path, calls)
    args = lbflags.cmake_args("portable", extra="")
    key = lbflags.build_key(args)
    wheel, tools = lb._stored_or_built("portable", args, key, with_tools=False)
    assert tools is None and wheel.parent == tmp_path / "store" / key
    assert (lbbuild.tree_root(key) / "build" / "CMakeCache.txt").is_file(), "the build tree is kept for the tools"
    assert sum("wheel" in c for c in calls) == 1 and not any("--target" in c for c in calls)
    calls.clear()
    wheel2, tools = lb._stored_or_built("portable", args, key, with_tools=True)
    assert wheel2 == wheel and tools == wheel.parent / "tools"
    assert not any("wheel" in c for c in calls), "the package was built again"
    assert [c[-3:] for c in calls if "--target" in c] == [["--target", *lbflags.TOOL_NAMES]]
    assert sorted(p.name for p in tools.iterdir()) == sorted([*lbflags.TOOL_NAMES, "libllama-common.so", "tools.json"])
    assert not lbbuild.tree_root(key).exists(), "the build tree outlived the tools' step"
    calls.clear()
    assert lb._stored_or_built("portable", args, key, with_tools=True) == (wheel, tools)
    assert calls == []
    # tools stored by another way of building them are not taken for these
    (tools / "tools.json").write_text('{"cmake_args": [], "targets": ["llama-server"]}')
    assert lbbuild.stored_tools(wheel.parent) is None


def test_the_tools_step_rebuilds_a_lost_build_tree(monkeypatch, tmp_path):
    calls = []
    _fake_build(monkeypatch, tmp_path, calls)
    args = lbflags.cmake_args("portable", extra="")
    key = lbflags.build_key(args)
    wheel, _ = lb._stored_or_built("portable", args, key, with_tools=False)
    shutil.rmtree(lbbuild.tree_root(key))
    calls.clear()
    _, tools = lb._stored_or_built("portable", args, key, with_tools=True)
    assert sum("wheel" in c for c in calls) == 1 and any("--target" in c for c in calls)
    assert lbbuild.stored_tools(wheel.parent) == tools
    # the stored wheel is the first build's, untouched
    assert sorted(p.name for p in wheel.parent.iterdir()) == sorted([wheel.name, "build.json", "tools"])


def test_a_crashing_build_is_a_clear_install_error(tmp_path):
    """The smoke test runs in a subprocess: SIGILL there becomes an error, not a crash later."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nkill -ILL $$\n")
    fake.chmod(0o755)
    with pytest.raises(lbflags.BuildError, match="SIGILL"):
        lbsmoke.smoke_test(python=str(fake))


def test_smoke_test_passes_on_the_installed_build():
    assert lbsmoke.smoke_test().startswith("smoke ok")


def test_portable_cpu_requirements_are_checked(monkeypatch):
    if not lbflags.is_x86():
        pytest.skip("x86 only")
    monkeypatch.setattr(lbflags, "cpu_flags", lambda: {"sse4_2", "avx"})
    with pytest.raises(lbflags.BuildError, match="avx2.*LLAMA_CPP_BUILD=native"):
        lbflags.check_cpu("portable")
    lbflags.check_cpu("native")


def test_flags_command():
    assert platform.machine()
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools/llama_cpp_build.py"), "flags"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert r.returncode == 0 and "-DGGML_NATIVE=OFF" in r.stdout


def test_post_deploy_scripts_use_the_build_tool():
    for env in sorted((ROOT / "envs").glob("*.yaml")):
        text = env.read_text()
        assert "llama-cpp-python" not in text.split("dependencies:")[1], f"{env.name}: pip would build llama.cpp natively"
        post = env.with_name(env.stem + ".post-deploy.sh")
        if env.stem.startswith("stats"):
            continue
        assert post.is_file(), f"{post.name} is missing"
        body = post.read_text()
        assert "tools/llama_cpp_build.py install" in body
        assert ("LLAMA_CPP_BUILD=cuda" in body) == env.stem.endswith("-gpu")


def test_makefile_builds_through_the_tool():
    mk = (ROOT / "Makefile").read_text()
    assert "tools/llama_cpp_build.py install" in mk
    # the tests run llama-server: the test set-up builds the tools, the user's set-up does not
    assert "tools/llama_cpp_build.py install --tools" in mk
    assert re.search(r"^dev: .*\bllama-tools\b", mk, re.M) and not re.search(r"^setup: .*\bllama-tools\b", mk, re.M)
    pins = [ln for ln in (ROOT / "requirements.lock").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert not [ln for ln in pins if ln.lower().startswith("llama")], "pip would build llama-cpp-python with native flags"


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tools")
    import llama_cpp_build as lb
    from llamabuild import flags as lbflags
    print(lbflags.build_key(lbflags.cmake_args("portable", extra="")))
    """
)


def test_key_is_stable_across_processes():
    keys = {subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(keys) == 1


def test_collected_tools_keep_a_librarys_links(tmp_path):
    """A library's versioned names stay links to one file: stored once, scanned once."""
    b = tmp_path / "build" / "bin"
    b.mkdir(parents=True)
    for name in lbflags.TOOL_NAMES:
        (b / name).write_bytes(b"\x7fELF tool")
    (b / "libllama-common.so.0.5.0").write_bytes(b"\x7fELF lib")
    (b / "libllama-common.so.0").symlink_to("libllama-common.so.0.5.0")
    (b / "libllama-common.so").symlink_to("libllama-common.so.0")
    lbbuild.collect_tools(tmp_path / "build", tmp_path / "tools")
    out = tmp_path / "tools"
    assert (out / "libllama-common.so").is_symlink() and (out / "libllama-common.so").read_bytes() == b"\x7fELF lib"
    assert not (out / "libllama-common.so.0.5.0").is_symlink()
    scanned = []
    orig = lbscan.scan_library
    try:
        lbscan.scan_library = lambda p: scanned.append(Path(p).name) or {}
        lbscan.scan_tools(out)
    finally:
        lbscan.scan_library = orig
    assert sorted(scanned) == sorted([*lbflags.TOOL_NAMES, "libllama-common.so.0.5.0"])
    (tmp_path / "bare").mkdir()
    with pytest.raises(lbflags.BuildError, match="no llama-bench, llama-server"):
        lbbuild.collect_tools(tmp_path / "bare", tmp_path / "t2")
