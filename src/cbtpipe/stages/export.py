"""GGUF export: llama.cpp's own converter, then llama.cpp's quantizer through llama-cpp-python.

The instruct base and the CBT-tuned merge go through exactly this path, so the comparison is fair.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

from ..workflow import PipelineError, die_with_parent, job_threads, partial_path, remove_partial


def convert_to_gguf(hf_dir: str | Path, out_path: str | Path, tools_dir: str | Path, outtype: str = "f16") -> float:
    script = Path(tools_dir) / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise PipelineError(f"{script} is missing: run the llama_cpp_tools rule")
    out = Path(out_path)
    tmp = partial_path(out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(tools_dir) / "gguf-py"), str(tools_dir)]))
    t0 = time.perf_counter()
    try:
        # The converter dies with this job (a killed job leaves no converter writing on).
        r = subprocess.run(
            [sys.executable, str(script), str(hf_dir), "--outtype", outtype, "--outfile", str(tmp)],
            capture_output=True,
            text=True,
            env=env,
            preexec_fn=die_with_parent,
        )
        if r.returncode != 0:
            raise PipelineError(f"convert_hf_to_gguf.py failed on {hf_dir}:\n{r.stderr[-3000:]}")
        os.replace(tmp, out)
    finally:
        remove_partial(tmp)
    return time.perf_counter() - t0


def quantize(in_path: str | Path, out_path: str | Path, qtype: str, threads: int | None = None) -> float:
    import llama_cpp

    ftype_name = f"LLAMA_FTYPE_MOSTLY_{qtype}"
    if not hasattr(llama_cpp, ftype_name):
        raise PipelineError(f"config key export.quantizations: llama.cpp knows no quantization type {qtype}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = threads or job_threads()
    out = Path(out_path)
    tmp = partial_path(out)
    t0 = time.perf_counter()
    try:
        rc = llama_cpp.llama_model_quantize(str(in_path).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise PipelineError(f"llama.cpp could not quantize {in_path} to {qtype} (code {rc})")
        os.replace(tmp, out)
    finally:
        remove_partial(tmp)
    return time.perf_counter() - t0
