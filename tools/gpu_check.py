#!/usr/bin/env python3
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

    python tools/gpu_check.py --assets .gpucheck --out "$OUT" --budget 540
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the GPU image has the checkout, not the installed package

T0 = time.time()
RESULTS: dict = {"phases": {}}
OUT = Path(".")
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}

SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def save() -> None:
    if "--decode-child" in sys.argv:
        return
    (OUT / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def phase(name):
    def deco(fn):
        def run(*a, **kw):
            t = time.time()
            log(f"--- {name}")
            try:
                r = fn(*a, **kw)
                RESULTS["phases"][name] = {"ok": True, "seconds": round(time.time() - t, 1), **(r or {})}
            except Exception as e:  # record and go on: the other phases still run
                RESULTS["phases"][name] = {"ok": False, "seconds": round(time.time() - t, 1), "error": f"{type(e).__name__}: {e}"}
                log(traceback.format_exc()[-3000:])
            save()
            return RESULTS["phases"][name]

        return run

    return deco


def left(budget: float) -> float:
    return budget - (time.time() - T0)


# --- environment ---------------------------------------------------------------------------


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


# --- llama.cpp CUDA build (background) ------------------------------------------------------


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
    logf = open(OUT / "build.log", "w")  # noqa: SIM115 - stays open for the background build
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
    tail = (OUT / "build.log").read_text()[-1500:]
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


# --- training ---------------------------------------------------------------------------------


def make_model(model_dir: Path, tok_dir: Path) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPE)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir, safe_serialization=True)
    tok.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()
    return n


def make_rows(tok_dir: Path, n: int, seed: int = 0) -> list[dict]:
    """Synthetic therapy-shaped conversations of 256 to 2048 tokens (uniform)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    rng = random.Random(seed)
    words = ["patient", "feel", "thought", "evidence", "mood", "week", "work", "sleep", "agenda", "homework", "plan", "notice", "belief"]
    rows = []
    for _ in range(n):
        target = rng.randint(256, 2000)
        msgs = [{"role": "system", "content": "You are a CBT therapist."}]
        total = 20
        while total < target:
            for role in ("user", "assistant"):
                k = rng.randint(20, 120)
                text = " ".join(rng.choice(words) for _ in range(k))
                msgs.append({"role": role, "content": text})
                total += len(tok(text)["input_ids"]) + 5
        rows.append({"messages": msgs})
    return rows


def flops_per_token(n_params: int, vocab: int, avg_len: float) -> float:
    """Model FLOPs per trained token for LoRA on a frozen base: forward 2N and backward 2N (gradients
    of the activations; the frozen weights get none), over the matmul parameters (the embedding
    lookup is no matmul), plus causal attention scores (QK^T and AV: 2 x 2 x L x d x s/2 forward,
    twice that backward)."""
    h, layers = SHAPE["hidden_size"], SHAPE["num_hidden_layers"]
    n_matmul = n_params - vocab * h
    attn = 3 * (2 * 2 * layers * h * avg_len / 2)
    return 4 * n_matmul + attn


def tps_from_csv(path: Path, skip: int = 2) -> tuple[float | None, list[float]]:
    import csv

    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    vals = [float(r["tokens_per_second"]) for r in rows if r.get("tokens_per_second") and int(r["step"]) > skip]
    return (statistics.median(vals) if vals else None), vals


def measured(log_csv: Path) -> dict:
    """Tokens per second (median over the steps after warm-up) and peak GPU memory of a run."""
    import torch

    med, vals = tps_from_csv(log_csv)
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None
    return {"tokens_per_s": med, "per_step": vals, "peak_mem_GiB": peak}


def run_project(name, method, model_dir, rows_path, work: Path, steps: int, liger: bool = True, n_gpus: int = 1) -> dict:
    import torch

    from cbtpipe.stages import train_adapter

    tcfg = {
        "method": method,
        "rank": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "learning_rate": 2e-4,
        "lr_scheduler": "constant",
        "warmup_ratio": 0.0,
        "epochs": 1,
        "max_steps": steps,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 2048,
        "packing": False,
        "padding_free": True,
        "gradient_checkpointing": "auto",
        "liger_kernel": liger,
        "loss_sample": 8,
        "save_steps": 10_000,
        "logging_steps": 1,
        "weight_decay": 0.0,
        "bf16": True,
        "threads": 8,
    }
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    from transformers import AutoTokenizer

    from cbtpipe.design import chat_layout
    from cbtpipe.workflow import write_json

    layout_path = out / "chat_layout.json"
    write_json(layout_path, chat_layout(AutoTokenizer.from_pretrained(model_dir), "gpu-check"))
    m = train_adapter(
        model_dir=model_dir,
        train_path=rows_path,
        val_path=rows_path,
        layout_path=layout_path,
        tcfg=tcfg,
        seed=1,
        unit_root=out / "units",
        out_adapter=out / "adapter",
        out_csv=out / "log.csv",
        out_metrics=out / "metrics.json",
        out_plot=out / "loss.png",
        title=name,
        n_gpus=n_gpus,
        gpu_key="models.gpu-check.gpus",
    )
    return {
        **measured(out / "log.csv"),
        **{
            k: m.get(k)
            for k in ("micro_batch", "grad_accum", "gradient_checkpointing", "liger_kernel", "padding_free", "train_runtime_s", "steps")
        },
    }


def run_trl_default(model_dir, rows, work: Path, steps: int) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from cbtpipe.design import chat_layout
    from cbtpipe.stages import CsvLogger, build_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds, _ = build_dataset(rows, tok, chat_layout(tok, "gpu-check"), 2048)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    out = work / "trl_default"
    out.mkdir(parents=True, exist_ok=True)
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_length=2048,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        **({} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}),  # CPU: a dry run of this code
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    tr = SFTTrainer(
        model=model,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[CsvLogger(out / "log.csv")],
    )
    tr.train()
    res = {
        **measured(out / "log.csv"),
        "gradient_checkpointing": args.gradient_checkpointing,
        "padding_free": args.padding_free,
        "bf16": args.bf16,
    }
    del tr, model
    torch.cuda.empty_cache()
    return res


@phase("train")
def train_phase(assets: Path, work: Path, budget: float, steps: int):
    import gc

    import torch

    from cbtpipe.workflow import write_jsonl

    model_dir = work / "model8b"
    t = time.time()
    n_params = make_model(model_dir, assets / "tokenizer")
    log(f"random 8B model: {n_params / 1e9:.2f}B parameters, saved in {time.time() - t:.0f}s")
    rows = make_rows(assets / "tokenizer", 48)
    rows_path = work / "rows.jsonl"
    write_jsonl(rows_path, rows)
    from transformers import AutoTokenizer

    from cbtpipe.design import chat_layout
    from cbtpipe.stages import build_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds, _ = build_dataset(rows, tok, chat_layout(tok, "gpu-check"), 2048)
    lens = [len(x) for x in ds["input_ids"]]
    avg = sum(lens) / len(lens)
    res = {"parameters": n_params, "examples": len(rows), "avg_tokens": round(avg), "max_tokens": max(lens), "runs": {}}
    fpt = flops_per_token(n_params, 49152, avg)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in RESULTS.get("gpu", "")), 989.4)
    for name, fn in (
        ("trl_default_sft", lambda: run_trl_default(model_dir, rows, work, steps)),
        ("project_lora_bf16", lambda: run_project("project_lora_bf16", "lora", model_dir, rows_path, work, steps)),
        ("project_qlora_nf4", lambda: run_project("project_qlora_nf4", "qlora", model_dir, rows_path, work, steps)),
    ):
        if left(budget) < 150:
            res["runs"][name] = {"skipped": "out of time"}
            continue
        t = time.time()
        try:
            try:
                r = fn()
            except Exception as e:  # noqa: BLE001
                if not name.startswith("project") or "liger" not in repr(e).lower():
                    raise
                log(f"{name} failed with Liger ({e}); again without it")
                method = "qlora" if "qlora" in name else "lora"
                r = run_project(name + "_noliger", method, model_dir, rows_path, work, steps, liger=False)
                r["liger_error"] = f"{type(e).__name__}: {e}"[:500]
            if r.get("tokens_per_s"):
                r["mfu_vs_spec"] = round(r["tokens_per_s"] * fpt / (peak * 1e12), 3)
                if RESULTS.get("matmul_bf16_TFLOPs"):
                    r["mfu_vs_measured_matmul"] = round(r["tokens_per_s"] * fpt / (RESULTS["matmul_bf16_TFLOPs"] * 1e12), 3)
        except Exception as e:  # noqa: BLE001
            r = {"error": f"{type(e).__name__}: {e}"}
            log(traceback.format_exc()[-2500:])
        r["wall_s"] = round(time.time() - t, 1)
        res["runs"][name] = r
        log(f"{name}: {json.dumps({k: v for k, v in r.items() if k != 'per_step'})}")
        gc.collect()
        torch.cuda.empty_cache()
        RESULTS["phases"]["train"] = res
        save()
    base = res["runs"].get("trl_default_sft", {}).get("tokens_per_s")
    for r in res["runs"].values():
        if base and r.get("tokens_per_s"):
            r["speedup_vs_trl_default"] = round(r["tokens_per_s"] / base, 2)
    res["flops_per_token"] = fpt
    res["peak_TFLOPs_spec"] = peak
    shutil.rmtree(model_dir, ignore_errors=True)
    return res


# --- GGUF and decoding ------------------------------------------------------------------------


def write_q8_gguf(path: Path, assets: Path, vocab: int) -> int:
    """A Q8_0 GGUF of the 8B shape with random weights (random int8 quants, fixed block scale)."""
    import numpy as np

    gguf_py(assets)
    import gguf
    from gguf import GGMLQuantizationType as Q

    h, ff, L = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["num_hidden_layers"]
    nh, nkv = SHAPE["num_attention_heads"], SHAPE["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(8192)
    w.add_embedding_length(h)
    w.add_block_count(L)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_dimension_count(h // nh)
    w.add_rope_freq_base(SHAPE["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(7)  # MOSTLY_Q8_0
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"w{i}" for i in range(vocab - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (vocab - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    rng = np.random.default_rng(0)
    scale = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)

    def q8(name, rows, cols):
        blocks = rows * cols // 32
        raw = rng.integers(-127, 128, size=(blocks, 34), dtype=np.int8).view(np.uint8)
        raw[:, 0:2] = scale
        w.add_tensor(name, raw.reshape(rows, cols // 32 * 34), raw_dtype=Q.Q8_0)

    def ones(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    q8("token_embd.weight", vocab, h)
    ones("output_norm.weight", h)
    q8("output.weight", vocab, h)
    for i in range(L):
        ones(f"blk.{i}.attn_norm.weight", h)
        ones(f"blk.{i}.ffn_norm.weight", h)
        q8(f"blk.{i}.attn_q.weight", h, h)
        q8(f"blk.{i}.attn_k.weight", h * nkv // nh, h)
        q8(f"blk.{i}.attn_v.weight", h * nkv // nh, h)
        q8(f"blk.{i}.attn_output.weight", h, h)
        q8(f"blk.{i}.ffn_gate.weight", ff, h)
        q8(f"blk.{i}.ffn_up.weight", ff, h)
        q8(f"blk.{i}.ffn_down.weight", h, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.stat().st_size


@phase("gguf")
def gguf_phase(assets: Path, work: Path):
    t = time.time()
    path = work / "random8b-Q8_0.gguf"
    if not (path.is_file() and path.stat().st_size > 2**30):
        # In a child process: gguf imports sentencepiece, whose bundled C++ runtime, once loaded,
        # made llama.cpp crash when this process loads it later.
        subprocess.run([sys.executable, __file__, "--write-gguf", str(path), "--assets", str(assets)], check=True)
    size = path.stat().st_size
    RESULTS["gguf"] = str(path)
    RESULTS["gguf_bytes"] = size
    return {"bytes": size, "write_s": round(time.time() - t, 1)}


@phase("decode")
def decode_phase(budget: float):
    from llama_cpp import Llama

    path = RESULTS["gguf"]
    size = RESULTS["gguf_bytes"]
    bound = RESULTS["bandwidth_GBps"] * 1e9 / size  # every weight byte read once per token
    llm = Llama(model_path=path, n_gpu_layers=-1, n_ctx=2048, n_batch=512, flash_attn=True, verbose=False)
    prompt = list(range(300, 364))
    res = {"bandwidth_bound_tok_s": round(bound, 1)}
    for label, n in (("warmup", 16), ("run1", 256), ("run2", 256)):
        llm.reset()
        t = time.perf_counter()
        got = 0
        for _tok in llm.generate(prompt, temp=0.0, reset=True):
            got += 1
            if got == 1:
                t_first = time.perf_counter()
            if got >= n:
                break
        t_end = time.perf_counter()
        if label != "warmup":
            res[f"python_{label}_tok_s"] = round((got - 1) / (t_end - t_first), 1)
            res[f"python_{label}_prefill_s"] = round(t_first - t, 3)
    llm.close()
    runs = [res["python_run1_tok_s"], res["python_run2_tok_s"]]
    res["python_decode_tok_s"] = max(runs)
    res["python_share_of_bound"] = round(max(runs) / bound, 3)
    bench = RESULTS["phases"].get("build", {}).get("binaries", {}).get("llama-bench")
    if bench and left(budget) > 90:
        r = subprocess.run(
            [bench, "-m", path, "-ngl", "99", "-fa", "1", "-p", "512", "-n", "128", "-r", "3", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, LD_LIBRARY_PATH=str(Path(bench).parent)),  # its libraries are beside it
        )
        try:
            rows = json.loads(r.stdout)
            for row in rows:
                kind = "prefill" if row.get("n_prompt") else "decode"
                res[f"llama_bench_{kind}_tok_s"] = round(row["avg_ts"], 1)
            res["llama_bench_share_of_bound"] = round(res.get("llama_bench_decode_tok_s", 0) / bound, 3)
        except (ValueError, KeyError):
            res["llama_bench_error"] = (r.stdout + r.stderr)[-800:]
    return res


def _post(url: str, body: dict, timeout: float = 300) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@phase("server")
def server_phase(budget: float, parallel: int = 16, n_predict: int = 256):
    server = RESULTS["phases"].get("build", {}).get("binaries", {}).get("llama-server")
    if not server:
        raise RuntimeError("llama-server was not built")
    port = 18089
    ctx = parallel * 1024
    cmd = [
        server,
        "-m",
        RESULTS["gguf"],
        "-ngl",
        "99",
        "-np",
        str(parallel),
        "-c",
        str(ctx),
        "-fa",
        "on",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--no-webui",
    ]
    logf = open(OUT / "server.log", "w")  # noqa: SIM115 - stays open while the server runs
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, LD_LIBRARY_PATH=str(Path(server).parent)))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("llama-server did not come up: " + (OUT / "server.log").read_text()[-1500:])
            time.sleep(1)
        words = " ".join(f"w{i}" for i in range(400, 460))

        def one(i: int) -> dict:
            body = {
                "prompt": f"{words} session {i}",
                "n_predict": n_predict,
                "ignore_eos": True,
                "temperature": 0.0,
                "cache_prompt": False,
                "seed": i,
            }
            return _post(base + "/completion", body)

        one(0)  # warm-up
        t = time.perf_counter()
        single = one(1)
        t_single = time.perf_counter() - t
        results: list[dict] = []
        lock = threading.Lock()

        def worker(i):
            r = one(100 + i)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(parallel)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        total = sum(r["timings"]["predicted_n"] for r in results)
        single_tps = single["timings"]["predicted_per_second"]
        agg = total / wall
        return {
            "parallel": parallel,
            "single_stream_tok_s": round(single_tps, 1),
            "single_wall_s": round(t_single, 2),
            "concurrent_tokens": total,
            "concurrent_wall_s": round(wall, 2),
            "concurrent_tok_s": round(agg, 1),
            "speedup_vs_single": round(agg / single_tps, 2),
            "per_session_tok_s_median": round(statistics.median(r["timings"]["predicted_per_second"] for r in results), 1),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    global OUT
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

        OUT = Path(a.out)
        st = json.loads(Path(a.decode_child).read_text())
        RESULTS.update({k: st[k] for k in ("gguf", "gguf_bytes", "bandwidth_GBps")})
        RESULTS["phases"]["build"] = st["build"]
        decode_phase(a.budget)
        if "server" not in a.skip and left(a.budget) > 45:
            server_phase(a.budget, n_predict=a.server_predict)
        (OUT / "decode_out.json").write_text(json.dumps({k: v for k, v in RESULTS["phases"].items() if k != "build"}, default=str))
        return 0
    if a.write_gguf:
        write_q8_gguf(Path(a.write_gguf), Path(a.assets).resolve(), 49152)
        return 0
    OUT = Path(a.out)
    OUT.mkdir(parents=True, exist_ok=True)
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
        state = OUT / "decode_in.json"
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
                str(OUT),
                "--budget",
                str(left(a.budget)),
                "--server-predict",
                str(a.server_predict),
                "--skip",
                a.skip,
            ],
            check=False,
        )
        child = OUT / "decode_out.json"
        if child.is_file():
            RESULTS["phases"].update(json.loads(child.read_text()))
        else:
            RESULTS["phases"]["decode"] = {"ok": False, "error": "the decode process died (see gpu_check.log)"}
    RESULTS["total_s"] = round(time.time() - T0, 1)
    save()
    print(table(), flush=True)
    (OUT / "gpu_check_table.txt").write_text(table() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
