"""The machine: GPU, driver, CUDA, torch, and the measured copy bandwidth and bf16 matmul rate that the
other phases are judged against."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .common import RESULTS, phase


@phase("env")
def env_info():
    import torch

    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    vers = {}
    for m in ("transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes", "liger_kernel", "triton"):
        try:
            mod = __import__(m)
            vers[m] = getattr(mod, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            vers[m] = f"missing ({type(e).__name__})"
    # Memory bandwidth: a device-to-device copy, bytes read plus written.
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    for _ in range(10):
        y.copy_(x)
    ev1.record()
    torch.cuda.synchronize()
    bw = 2 * x.numel() * 10 / (ev0.elapsed_time(ev1) / 1e3)
    del x, y
    # bf16 matrix product rate (the practical ceiling for MFU)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    ev0.record()
    for _ in range(10):
        a @ b
    ev1.record()
    torch.cuda.synchronize()
    mm = 2 * 8192**3 * 10 / (ev0.elapsed_time(ev1) / 1e3) / 1e12
    del a, b
    torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(0)
    RESULTS["gpu"] = name
    RESULTS["bandwidth_GBps"] = round(bw / 1e9, 1)
    RESULTS["matmul_bf16_TFLOPs"] = round(mm, 1)
    return {
        "nvidia_smi": smi,
        "gpu": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_amx": sorted(f for f in flags if f.startswith("amx")),
        "cpu_avx512f": "avx512f" in flags,
        "cores": os.cpu_count(),
        "versions": vers,
        "copy_bandwidth_GBps": round(bw / 1e9, 1),
        "matmul_bf16_TFLOPs": round(mm, 1),
    }
