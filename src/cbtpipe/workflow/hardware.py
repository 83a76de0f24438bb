"""Hardware checks that run when a job starts: a job configured for a GPU stops at once with an
error naming the config key, instead of running (slowly) on the CPU."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .errors import PipelineError

log = logging.getLogger("cbtpipe")


def _visible() -> str:
    v = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "unset" if v is None else repr(v)


def require_cuda(key: str, n_gpus: int) -> None:
    """Raise unless torch sees at least ``n_gpus`` CUDA devices (``key`` asked for them)."""
    if n_gpus <= 0:
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found >= n_gpus:
        return
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    raise PipelineError(
        f"config key {key} is {n_gpus}, but this job sees {found} CUDA device(s) (torch {torch.__version__} is "
        f"{build}; CUDA_VISIBLE_DEVICES={_visible()}). Run it on a GPU node with the GPU stack installed "
        f"(`make setup GPU=1`, or the *-gpu conda environments), or set {key}: 0 to train on the CPU."
    )


def llama_build_record() -> dict[str, Any]:
    """What tools/llama_cpp_build.py recorded about the installed llama.cpp build, if anything."""
    p = Path(sys.prefix) / "llama-cpp-build.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def require_gpu_offload(key: str, n_gpu_layers: int) -> None:
    """Raise if layers are to be offloaded but llama.cpp has no GPU backend with a device."""
    if not n_gpu_layers:
        return
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return
    profile = llama_build_record().get("profile", "unknown")
    raise PipelineError(
        f"config key {key} is {n_gpu_layers}, but the installed llama.cpp (build profile: {profile}) cannot offload "
        f"to a GPU: it was built without a GPU backend, or no GPU is visible (CUDA_VISIBLE_DEVICES={_visible()}). "
        f"Install the CUDA build (`make setup GPU=1`, i.e. LLAMA_CPP_BUILD=cuda) and run on a GPU node, "
        f"or set {key}: 0 to decode on the CPU."
    )


def cuda_or_cpu(key: str, n_gpus: int) -> str:
    """The device a training job uses: exactly what the config asks for, never a silent fallback."""
    require_cuda(key, n_gpus)
    if n_gpus > 0:
        return "cuda"
    try:
        import torch

        if torch.cuda.is_available():
            log.warning("%s is 0: training on the CPU as configured, although a CUDA device is visible", key)
    except ImportError:  # pragma: no cover - torch is in every training environment
        pass
    return "cpu"


def process_cpus() -> int:
    """The CPUs this process may run on: its affinity, which a SLURM allocation or ``taskset``
    narrows, where the platform has one; else the machine's CPU count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def job_threads() -> int:
    """The threads a step may use when its config leaves them open (``n_threads: null``):
    OMP_NUM_THREADS, which workflow.rule.entry sets to the Snakemake job's threads (outside a job,
    where it is set), else the CPUs this process may run on; never the machine's whole CPU count:
    two jobs of one thread each on two cores must not each start a team of every CPU."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return process_cpus()
