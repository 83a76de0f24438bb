"""The smoke test: a small random GGUF written with gguf-py, and a long prompt evaluated as one batch
in a fresh process, so that a build that cannot run here is an install error, not a crash later."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .flags import BuildError

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
