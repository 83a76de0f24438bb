"""Base-model import: a GGUF in a Python package, a local Hugging Face directory or a hub id,
written as a clean Hugging Face safetensors directory with tokenizer and chat template."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

from .gguf import gguf_chat_template, resolve_gguf
from .io import PipelineError, sha256_file, staged_dir


def source_path(name: str, spec: dict[str, Any], hub_dir: str | Path | None = None) -> Path:
    src = spec["source"]
    where = f"models.{name}.source"
    t = src["type"]
    if t in ("package_gguf", "gguf"):  # the keys each type needs are required by the schema
        return resolve_gguf(src, where)
    if t == "local_hf":
        p = Path(src.get("path", ""))
        if not (p / "config.json").is_file():
            raise PipelineError(f"config key {where}.path: {p} is not a Hugging Face model directory (no config.json)")
        return p
    if t == "hub":
        if hub_dir is None:
            raise PipelineError(f"config key {where}: hub models are downloaded by the download_model rule first")
        return Path(hub_dir)
    raise PipelineError(f"config key {where}.type: unknown source type {t!r}")


@contextlib.contextmanager
def gguf_read_once():
    """Within it, a GGUF file is parsed once and tensor-name maps are built once.

    transformers parses the whole file (49k-token vocabulary included) separately for the
    tokenizer, the config and the weights, and rebuilds gguf's tensor-name map for every module
    of the model: three quarters of an import's time for a small model. The cached objects are the
    same objects it would build, read-only.
    """
    import gguf

    orig_reader, orig_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = orig_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(orig_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = orig_reader, orig_map


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# Prompts of the import's own check (the written model against llama.cpp on its source GGUF).
# Fixed, not parity.prompts: the check verifies a conversion, and changing the export's parity
# prompts must not re-run the import and everything after it.
IMPORT_CHECK_PROMPTS = [
    "I have been feeling low for weeks and I cannot get out of bed in the morning.",
    "Let us set an agenda for today's session. What would you like to work on?",
    "When you notice the thought that you are a failure, what goes through your mind?",
]


def import_model(name: str, spec: dict[str, Any], out_dir: str | Path, hub_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``out_dir`` as a clean HF model; return provenance (source, sha256)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = source_path(name, spec, hub_dir)
    out = Path(out_dir)
    dtype = _dtype(spec.get("dtype", "float32"))
    prov: dict[str, Any] = {"model": name, "source": spec["source"], "dtype": spec.get("dtype", "float32")}
    with staged_dir(out) as tmp:
        if src.is_file():
            with gguf_read_once():
                tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
                loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=dtype)
            # A model loaded from GGUF is marked as quantized and refuses save_pretrained: build a
            # fresh model from the same config without the quantization entry and copy weights.
            cfg = loaded.config
            if hasattr(cfg, "quantization_config"):
                delattr(cfg, "quantization_config")
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
            missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
            missing = [k for k in missing if "lm_head" not in k or not cfg.tie_word_embeddings]
            if missing or unexpected:
                raise PipelineError(f"{src}: weights did not map onto the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
            if getattr(cfg, "tie_word_embeddings", False):
                model.tie_weights()
            del loaded
            if not tok.chat_template:
                tok.chat_template = gguf_chat_template(src)
            prov["source_file"] = str(src)
            prov["source_sha256"] = sha256_file(src)
        else:
            tok = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype)
            prov["source_dir"] = str(src)
            prov["source_sha256"] = {f.name: sha256_file(f) for f in sorted(src.glob("*.safetensors")) + sorted(src.glob("*.bin"))}
        if spec.get("chat_template"):
            tok.chat_template = Path(spec["chat_template"]).read_text(encoding="utf-8")
        if not tok.chat_template:
            raise PipelineError(f"model {name}: the tokenizer has no chat template; set models.{name}.chat_template")
        model.generation_config.do_sample = True
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    prov["n_parameters"] = int(sum(p.numel() for p in model.parameters()))
    prov["architecture"] = model.config.architectures
    return prov


def download_hub(repo_id: str, revision: str, out_dir: str | Path) -> dict[str, Any]:
    """Download a hub snapshot (safetensors, tokenizer, config). Needs internet: a login node."""
    from huggingface_hub import snapshot_download

    path = snapshot_download(
        repo_id=repo_id,
        revision=revision,
        local_dir=str(out_dir),
        allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja"],
    )
    return {"repo_id": repo_id, "revision": revision, "path": path}
