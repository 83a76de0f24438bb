"""Base-model import: a GGUF in a Python package, a local Hugging Face directory or a hub id,
written as a clean Hugging Face safetensors directory with tokenizer and chat template."""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path
from typing import Any

from ..llm import gguf_chat_template, resolve_gguf
from ..workflow import PipelineError, read_json, sha256_file, staged_dir, write_json


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
            if spec["source"]["type"] == "hub":
                prov["hub"] = hub_record(src, name, spec["source"])
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


COMMIT = re.compile(r"[0-9a-f]{40}")
DOWNLOAD_RECORD = "download.json"


def hub_access_error(e: Exception, repo_id: str, name: str | None = None) -> PipelineError:
    """What to do when the hub refuses a model: a gated model (Llama 3.1, Mistral) needs its terms
    accepted and a token in HF_TOKEN; a private or gated one answers "not found" without a token."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import GatedRepoError

    key = f"config key models.{name}.source.repo_id" if name else "hub repo"
    has_token = bool(get_token())
    if isinstance(e, GatedRepoError):
        todo = (
            "check that the token in HF_TOKEN belongs to an account that accepted them"
            if has_token
            else "set the environment variable HF_TOKEN to a read token of that account"
        )
        return PipelineError(f"{key}: {repo_id} is a gated model: accept its terms on its hub page, then {todo}")
    hint = "" if has_token else " (HF_TOKEN is not set: without a token a gated or private model answers as not found)"
    return PipelineError(f"{key}: the hub has no model {repo_id} that this account can see{hint}")


def download_hub(repo_id: str, revision: str, out_dir: str | Path, api=None, name: str | None = None) -> dict[str, Any]:
    """Download a hub snapshot (safetensors, tokenizer, config) at the commit ``revision`` names,
    and record that commit in ``out_dir/download.json`` (a branch such as main moves: the record
    says what was downloaded). Needs internet: a login node; a gated model needs HF_TOKEN."""
    import datetime

    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError

    api = api or HfApi()
    try:
        commit = api.model_info(repo_id, revision=revision).sha
        if COMMIT.fullmatch(revision) and commit != revision:
            raise PipelineError(f"{repo_id}: the hub resolved revision {revision} to {commit}")
        path = snapshot_download(
            repo_id=repo_id,
            revision=commit,
            local_dir=str(out_dir),
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja"],
            endpoint=api.endpoint,
        )
    except RepositoryNotFoundError as e:  # GatedRepoError is one
        raise hub_access_error(e, repo_id, name) from None
    rec = {
        "repo_id": repo_id,
        "revision": revision,
        "commit": commit,
        "pinned": bool(COMMIT.fullmatch(revision)),
        "downloaded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_json(Path(out_dir) / DOWNLOAD_RECORD, rec)
    return rec | {"path": path}


def hub_record(hub_dir: str | Path, name: str, source: dict[str, Any]) -> dict[str, Any]:
    """The download record of a hub model (which commit was downloaded), checked against the
    config: a pinned revision must be the downloaded commit."""
    p = Path(hub_dir) / DOWNLOAD_RECORD
    if not p.is_file():
        raise PipelineError(f"{hub_dir}: no {DOWNLOAD_RECORD} (which commit was downloaded?): run the download_model rule again")
    rec = read_json(p)
    rev = str(source.get("revision", "main"))
    if COMMIT.fullmatch(rev) and rec.get("commit") != rev:
        raise PipelineError(
            f"config key models.{name}.source.revision pins {rev}, but {hub_dir} holds commit {rec.get('commit')}: download it again"
        )
    return {k: rec.get(k) for k in ("repo_id", "revision", "commit", "downloaded_at")}
