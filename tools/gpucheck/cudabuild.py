"""The CUDA build of llama-cpp-python (tools/llama_cpp_build.py, profile cuda) in the background
while training runs, and gguf-py from the same sdist."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from . import common
from .common import ROOT, left, phase


def gguf_py(assets: Path) -> Path:
    """gguf-py from the pinned sdist (the smoke test and the GGUF writer need it; the GPU image
    has no gguf package)."""
    gdir = Path("/tmp/gguf-py")
    if not gdir.exists():
        with tarfile.open(assets / "llama_cpp_python-0.3.36.tar.gz") as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/gguf-py/" in m.name]
            # the "data" filter keeps every member inside the target (no absolute paths, no "..", no links out)
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall("/tmp/ggufsrc", members=members, **kw)
        src = next(Path("/tmp/ggufsrc").rglob("gguf-py"))
        shutil.move(str(src), gdir)
    if str(gdir) not in sys.path:
        sys.path.insert(0, str(gdir))
    return gdir


def start_build(assets: Path) -> subprocess.Popen:
    gdir = gguf_py(assets)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(gdir), os.environ.get("PYTHONPATH", "")])),
        LLAMA_CPP_BUILD="cuda",
        LLAMA_CPP_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90",
        LLAMA_CPP_SDIST=str(assets / "llama_cpp_python-0.3.36.tar.gz"),
        LLAMA_CPP_WHEEL_STORE="/tmp/llstore",
    )
    logf = open(common.OUT / "build.log", "w")  # noqa: SIM115 - stays open for the background build
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tools/llama_cpp_build.py"), "install"], env=env, stdout=logf, stderr=subprocess.STDOUT
    )


@phase("build")
def wait_build(proc: subprocess.Popen, t_start: float, budget: float):
    while proc.poll() is None:
        if left(budget) < 100:
            proc.kill()
            raise TimeoutError("the CUDA build did not finish in time")
        time.sleep(2)
    tail = (common.OUT / "build.log").read_text()[-1500:]
    if proc.returncode != 0:
        raise RuntimeError(f"build failed (exit {proc.returncode}): {tail}")
    rec = json.loads((Path(sys.prefix) / "llama-cpp-build.json").read_text())
    import llama_cpp

    sys.path.insert(0, str(ROOT / "tools"))
    import llama_cpp_build as lb

    bins = {n: str(lb.tool_binary(n) or "") for n in ("llama-server", "llama-bench")}

    scan = lb.scan_installed()
    return {
        "wall_s_from_start": round(time.time() - t_start, 1),
        "profile": rec["profile"],
        "cmake_args": rec["cmake_args"],
        "smoke": rec.get("smoke"),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        "binaries": bins,
        "cpu_libs_outside_baseline": scan,
    }
