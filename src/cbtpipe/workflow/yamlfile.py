"""YAML files a user edits (rubrics, attribute lists, crisis resources): loaded with the node
tree beside the data, so that every error can name the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import PipelineError

# libyaml's parser when PyYAML was built with it (PyPI's wheels are): the same documents, about
# seven times faster than the pure-Python one (the config schema is read by every job and every
# Snakemake start).
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when available."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader


def load(path: str | Path, key: str) -> tuple[Path, str, Any, Any]:
    """(path, text, node tree, data) of a YAML file named by config key ``key``; a missing file
    or invalid YAML is a PipelineError naming the key or the file."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"config key {key}: file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        return p, text, yaml.compose(text, Loader=SafeLoader), safe_load(text)
    except yaml.YAMLError as e:
        raise PipelineError(f"{p}: invalid YAML: {e}") from e


def line(node) -> int:
    """The 1-based line where a node starts (1 for none)."""
    return node.start_mark.line + 1 if node is not None else 1


def child(node, key: str):
    """The value node under ``key`` of a mapping node (None when absent). An unquoted yes/no
    key, which YAML 1.1 reads as a boolean, is found by "yes"/"no"."""
    if node is None or not isinstance(getattr(node, "value", None), list):
        return None
    names = (key, key.capitalize(), key.upper()) if key in ("yes", "no") else (key,)
    for k, v in node.value:
        if getattr(k, "value", None) in names:
            return v
    return None
