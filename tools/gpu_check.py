"""GPU check of the study path, in one run of at most about 10 minutes on one H100 or H200.

No downloads: the model is an 8B Llama-shaped network with random weights (the tokenizer of the
tiny default model), the training data are synthetic conversations of 256 to 2048 tokens, and
llama.cpp is built from the pinned llama-cpp-python sdist.

Phases (each is timed and recorded; a phase that fails or runs out of time is recorded as such and
the others go on):

1. ``build``: the CUDA build of llama-cpp-python through tools/llama_cpp_build.py (profile
   ``cuda``, this GPU's architecture), in the background while training runs; llama.cpp's own
   tools (llama-server, llama-bench) come from the same build tree.
2. ``train``: the project's training code (cbtpipe.stages.training.train_adapter) on the 8B model, LoRA r16
   on all linear projections, batch 4 x up to 2048 tokens, bf16 and QLoRA NF4, against trl's
   default ``SFTConfig`` (padded batches, gradient checkpointing) on the same data in the same
   run: non-padding tokens per second (median over the steps after warm-up) and MFU.
3. ``decode``: a Q8_0 GGUF of the same shape; single-stream decode tokens/s (llama-cpp-python in
   process, and llama-bench), against the memory-bandwidth bound measured on this GPU; then
   llama-server with 16 parallel slots and 16 concurrent sessions.

Usage (the carried folder holds the wheels, the sdist and the tokenizer; see docs/gpu-check.md)::

    python tools/gpu_check.py --assets .gpucheck --out "$OUT" --budget 540"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gpucheck import common
from gpucheck.common import RESULTS, ROOT, T0, left, save
from gpucheck.cudabuild import start_build, wait_build
from gpucheck.decoding import decode_phase, gguf_phase, server_phase, write_q8_gguf
from gpucheck.environment import env_info
from gpucheck.training import train_phase

sys.path.insert(0, str(ROOT / "src"))  # the GPU image has the checkout, not the installed package


def table() -> str:
    p = RESULTS["phases"]
    lines = [
        f"GPU: {RESULTS.get('gpu')}  copy bandwidth {RESULTS.get('bandwidth_GBps')} GB/s  bf16 matmul {RESULTS.get('matmul_bf16_TFLOPs')} TFLOP/s"
    ]
    tr = p.get("train", {})
    for name, r in (tr.get("runs") or {}).items():
        lines.append(
            f"train {name:20s} tok/s {r.get('tokens_per_s')}  MFU(spec) {r.get('mfu_vs_spec')}  x trl {r.get('speedup_vs_trl_default')}  "
            f"ckpt {r.get('gradient_checkpointing')} liger {r.get('liger_kernel')} micro {r.get('micro_batch')} mem {r.get('peak_mem_GiB')} GiB {r.get('error', '')}"
        )
    b = p.get("build", {})
    lines.append(
        f"build ok={b.get('ok')} {b.get('seconds')}s offload={b.get('gpu_offload')} cpu-outside-baseline={b.get('cpu_libs_outside_baseline')} {b.get('error', '')[:300]}"
    )
    d = p.get("decode", {})
    lines.append(
        f"decode python {d.get('python_decode_tok_s')} tok/s, llama-bench {d.get('llama_bench_decode_tok_s')} tok/s, bound {d.get('bandwidth_bound_tok_s')} "
        f"(share {d.get('python_share_of_bound')} / {d.get('llama_bench_share_of_bound')}) {d.get('error', '')[:300]}"
    )
    s = p.get("server", {})
    lines.append(
        f"server x{s.get('parallel')}: single {s.get('single_stream_tok_s')} tok/s, concurrent {s.get('concurrent_tok_s')} tok/s, x{s.get('speedup_vs_single')} {s.get('error', '')[:300]}"
    )
    lines.append(f"total {time.time() - T0:.0f}s")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=".gpucheck")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--work", default="/tmp/gpucheck")
    ap.add_argument("--budget", type=float, default=540)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--write-gguf", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--decode-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--server-predict", type=int, default=256, help="tokens each concurrent session generates")
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: build,train,decode,server")
    a = ap.parse_args()
    if a.decode_child:
        import llama_cpp  # noqa: F401 - first, before any other native library

        common.OUT = Path(a.out)
        st = json.loads(Path(a.decode_child).read_text())
        RESULTS.update({k: st[k] for k in ("gguf", "gguf_bytes", "bandwidth_GBps")})
        RESULTS["phases"]["build"] = st["build"]
        decode_phase(a.budget)
        if "server" not in a.skip and left(a.budget) > 45:
            server_phase(a.budget, n_predict=a.server_predict)
        (common.OUT / "decode_out.json").write_text(json.dumps({k: v for k, v in RESULTS["phases"].items() if k != "build"}, default=str))
        return 0
    if a.write_gguf:
        write_q8_gguf(Path(a.write_gguf), Path(a.assets).resolve(), 49152)
        return 0
    common.OUT = Path(a.out)
    common.OUT.mkdir(parents=True, exist_ok=True)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    assets = Path(a.assets).resolve()
    skip = set(filter(None, a.skip.split(",")))
    t_build = time.time()
    proc = start_build(assets) if "build" not in skip else None
    env_info()
    if "train" not in skip:
        train_phase(assets, work, a.budget - 200, a.steps)
    if "decode" not in skip:
        gguf_phase(assets, work)
    if proc is not None:
        wait_build(proc, t_build, a.budget)
    if "decode" not in skip and RESULTS["phases"].get("build", {}).get("ok") and RESULTS.get("gguf"):
        # A fresh process that loads llama.cpp before anything else: torch, transformers and
        # sentencepiece (loaded above) bring their own C++ runtimes, and llama.cpp loaded after
        # them crashed (SIGSEGV) on the CUDA image.
        state = common.OUT / "decode_in.json"
        state.write_text(
            json.dumps({k: RESULTS.get(k) for k in ("gguf", "gguf_bytes", "bandwidth_GBps")} | {"build": RESULTS["phases"]["build"]})
        )
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--decode-child",
                str(state),
                "--out",
                str(common.OUT),
                "--budget",
                str(left(a.budget)),
                "--server-predict",
                str(a.server_predict),
                "--skip",
                a.skip,
            ],
            check=False,
        )
        child = common.OUT / "decode_out.json"
        if child.is_file():
            RESULTS["phases"].update(json.loads(child.read_text()))
        else:
            RESULTS["phases"]["decode"] = {"ok": False, "error": "the decode process died (see gpu_check.log)"}
    RESULTS["total_s"] = round(time.time() - T0, 1)
    save()
    print(table(), flush=True)
    (common.OUT / "gpu_check_table.txt").write_text(table() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
