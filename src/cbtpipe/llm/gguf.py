"""GGUF files: where one is (a path or a file shipped in a Python package), whether it is one,
and the chat template it carries."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..workflow import PipelineError


def resolve_gguf(source: dict[str, Any], where: str = "gguf") -> Path:
    """Path of a GGUF given as ``{path}`` or ``{package, file}``; clear error if missing or bad."""
    if "path" in source:
        p = Path(source["path"])
    else:
        spec = importlib.util.find_spec(source["package"])
        if spec is None or not spec.submodule_search_locations:
            raise PipelineError(
                f"{where}: Python package '{source['package']}' is not installed "
                f"(it should ship {source['file']}); run the README's set-up command"
            )
        p = Path(list(spec.submodule_search_locations)[0]) / source["file"]
    check_gguf_file(p, where)
    return p


def check_gguf_file(path: str | os.PathLike, where: str = "model") -> None:
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"{where}: model file {p} does not exist")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise PipelineError(f"{where}: {p} is not a GGUF file (magic bytes {magic!r}, expected b'GGUF')")
    if p.stat().st_size < 1024:
        raise PipelineError(f"{where}: {p} is truncated ({p.stat().st_size} bytes)")


def gguf_chat_template(path: str | Path) -> str | None:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field = reader.fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")
