"""Logit parity between a Hugging Face model and llama.cpp running a GGUF of it.

The same token ids go to both; we compare next-token logits at every position: top-1 agreement
and the maximum absolute difference.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np

from ..workflow import job_threads


def hf_logits(hf_dir: str | Path, prompts: list[str]) -> tuple[list[list[int]], list[np.ndarray]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    ids_list, logits = [], []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, add_special_tokens=True)["input_ids"]
            out = model(torch.tensor([ids]))
            ids_list.append(list(ids))
            logits.append(out.logits[0].float().numpy())
    del model
    gc.collect()
    return ids_list, logits


def gguf_logits(gguf: str | Path, ids_list: list[list[int]], n_threads: int | None = None) -> list[np.ndarray]:
    from llama_cpp import Llama

    n_ctx = max(64, max(len(x) for x in ids_list) + 8)
    threads = n_threads or job_threads()
    # n_threads_batch too: llama-cpp-python's default for it is every CPU of the machine, and
    # two jobs whose spinning thread pools share the cores ran 16 times slower (parity beside parity)
    llm = Llama(model_path=str(gguf), n_ctx=n_ctx, logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)
    out = []
    try:
        for ids in ids_list:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    finally:
        llm.close()
    return out


def compare(ref: list[np.ndarray], other: list[np.ndarray]) -> dict[str, Any]:
    agree = total = 0
    max_abs = 0.0
    for a, b in zip(ref, other, strict=True):
        v = min(a.shape[1], b.shape[1])
        a, b = a[:, :v], b[:, :v]
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
        max_abs = max(max_abs, float(np.abs(a - b).max()))
    return {"top1_agreement": agree / total, "positions": total, "top1_agree_count": agree, "max_abs_logit_diff": max_abs}


def parity_report(hf_dir: str | Path, ggufs: dict[str, str | Path], prompts: list[str], n_threads: int | None = None) -> dict[str, Any]:
    ids_list, ref = hf_logits(hf_dir, prompts)
    res = {}
    for label, path in ggufs.items():
        res[label] = compare(ref, gguf_logits(path, ids_list, n_threads)) | {"gguf": str(path)}
    return res
