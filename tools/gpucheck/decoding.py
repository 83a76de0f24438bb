"""Decoding: a Q8_0 GGUF of the same shape, single-stream tokens per second (llama-cpp-python and
llama-bench) against the memory-bandwidth bound, and llama-server with parallel slots."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from . import common
from .common import RESULTS, SHAPE, left, phase
from .cudabuild import gguf_py


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


def _start_server(server: str, parallel: int) -> tuple[subprocess.Popen, str]:
    """llama-server on the GGUF with ``parallel`` slots, up and healthy (or an error with its log)."""
    port = 18089
    cmd = [server, "-m", RESULTS["gguf"], "-ngl", "99", "-np", str(parallel), "-c", str(parallel * 1024), "-fa", "on"]
    cmd += ["--port", str(port), "--host", "127.0.0.1", "--no-webui"]
    logf = open(common.OUT / "server.log", "w")  # noqa: SIM115 - stays open while the server runs
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, LD_LIBRARY_PATH=str(Path(server).parent)))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("llama-server did not come up: " + (common.OUT / "server.log").read_text()[-1500:])
        time.sleep(1)


def _sessions(base: str, parallel: int, n_predict: int) -> dict:
    """One session alone, then ``parallel`` at once: tokens per second of each."""
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


@phase("server")
def server_phase(budget: float, parallel: int = 16, n_predict: int = 256):
    server = RESULTS["phases"].get("build", {}).get("binaries", {}).get("llama-server")
    if not server:
        raise RuntimeError("llama-server was not built")
    proc, base = _start_server(server, parallel)
    try:
        return _sessions(base, parallel, n_predict)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
