"""Every file a user hands the pipeline is checked against a JSON schema before work starts.

The schemas are package data (``cbtpipe/schemas/<name>.schema.yaml``), one per kind of file: the
config, rubrics, the safety rubric, persona attribute lists, risk attributes, crisis resources,
an imported transcript (one JSONL line), human ratings and a filled rating packet (one CSV row).
They hold the types and shapes; what a schema cannot say (a reference to another part of the
file, a loop in a flow, a name the pipeline keeps for itself) stays in the loader, with the same
kind of message. An error names the file, the line and the field, and says what is wrong, with
jsonschema's own words: never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .errors import PipelineError
from .yamlfile import SafeLoader, child, line, load, safe_load

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


@functools.cache
def file_schema(name: str) -> dict[str, Any]:
    """The schema of one kind of file (``schemas/<name>.schema.yaml``)."""
    return safe_load((SCHEMAS / f"{name}.schema.yaml").read_text(encoding="utf-8"))


@functools.cache
def _validator(name: str):
    import jsonschema

    schema = file_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def field_name(path: Sequence[Any]) -> str:
    """A field's path as one reads it: ``branches.at_risk.questions[2].failure``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the whole file)"


def first_error(data: Any, name: str):
    """The most relevant schema violation of ``data`` (None when it conforms)."""
    from jsonschema.exceptions import best_match

    return best_match(_validator(name).iter_errors(data))


def yaml_line(root, path: Sequence[Any]) -> int:
    """The line of the field at ``path`` in a YAML node tree: a mapping's key where the field is a
    block under its key, the value's own line otherwise; the deepest field that exists where the
    path goes further than the file (the mapping that lacks a key)."""
    node, key_line = root, None
    for part in path:
        nxt, kl = None, None
        if isinstance(part, int) and isinstance(node, yaml.SequenceNode) and part < len(node.value):
            nxt = node.value[part]
        elif isinstance(part, str) and isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part or (part in ("yes", "no") and k.value in (part.capitalize(), part.upper())):
                    nxt, kl = v, line(k)
                    break
        if nxt is None:
            break
        node, key_line = nxt, kl
    block = isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style
    return key_line if (block and key_line is not None) else line(node)


def _message(e) -> str:
    """The field, jsonschema's words, and what the schema says the field is (its description)."""
    what = (
        e.schema.get("description")
        if e.absolute_path and isinstance(e.schema, dict) and e.validator in ("pattern", "type", "enum")
        else None
    )
    field = field_name(e.absolute_path) if e.absolute_path else ""
    return (f"{field}: " if field else "") + e.message + (f" ({' '.join(what.split())})" if what else "")


def check_yaml(path: str | Path, key: str, name: str) -> tuple[Path, str, Any, Any]:
    """Load a YAML file named by config key ``key`` and check it against schema ``name``:
    (path, text, node tree, data), or a PipelineError naming the file, the line and the field."""
    p, text, root, data = load(path, key)
    check_loaded(p, root, data, name)
    return p, text, root, data


def check_loaded(p: Path, root, data: Any, name: str) -> None:
    """Check data loaded from the YAML file ``p`` (node tree ``root``) against schema ``name``."""
    e = first_error(data, name)
    if e is not None:
        raise PipelineError(f"{p}, line {yaml_line(root, list(e.absolute_path))}: {_message(e)}")


def check_record(data: Any, name: str, where: str) -> None:
    """Check one record (a JSONL line, a CSV row) against schema ``name``; ``where`` names it
    ("file, line N")."""
    e = first_error(data, name)
    if e is not None:
        raise PipelineError(f"{where}: {_message(e)}")


def read_csv_rows(path: str | Path, name: str) -> list[tuple[int, dict[str, Any]]]:
    """A CSV file a user fills (a spreadsheet's byte-order mark and CRLF line ends are fine), each
    row checked against schema ``name``: [(line, row)], a number column read as a number (a blank
    cell as null) so that "abc" is a wrong type there. The header must hold the schema's required
    columns, each once."""
    import csv

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PipelineError(f"{p}: not valid UTF-8 (byte {e.start})") from e
    schema = file_schema(name)
    need = schema.get("required", [])
    reader = csv.DictReader(text.splitlines())  # splitlines also ends CRLF lines cleanly
    names = [f.strip() for f in reader.fieldnames or []]
    if not set(need) <= set(names):
        raise PipelineError(f"{p}, line 1: the header must contain {', '.join(need)} (it has {', '.join(names) or 'nothing'})")
    dup = sorted({f for f in names if names.count(f) > 1})
    if dup:
        raise PipelineError(f"{p}, line 1: column {', '.join(dup)} appears more than once (which one holds the value?)")
    reader.fieldnames = names
    numeric = {
        k
        for k, v in schema.get("properties", {}).items()
        if "number" in (v.get("type") if isinstance(v.get("type"), list) else [v.get("type")])
    }
    out = []
    for n, row in enumerate(reader, 2):
        row = {k: v for k, v in row.items() if k is not None}
        for k in numeric & row.keys():
            row[k] = _number(row[k])
        check_record(row, name, f"{p}, line {n}")
        out.append((n, row))
    return out


def _number(cell: str | None) -> Any:
    """A CSV cell as a number where it reads as one, None where blank, else the text as it is."""
    if cell is None or not cell.strip():
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


def check_config_files(config: dict[str, Any], files: Sequence[str | Path], schema: str | Path) -> None:
    """A config against its schema before Snakemake's own validation: the error names the config
    file and line that set the field (the last file that sets it: later files override earlier
    ones), and a config that lacks a section the schema gives no default is refused with the
    sections it lacks and where to start from."""
    import jsonschema
    from jsonschema.exceptions import best_match

    full = safe_load(Path(schema).read_text(encoding="utf-8"))
    need = [k for k, v in full.get("properties", {}).items() if "default" not in v]
    missing = [k for k in need if k not in config]
    named = ", ".join(str(f) for f in files) or "the config"
    if missing:
        raise PipelineError(
            f"{named}: the config lacks {', '.join(missing)}, which have no default. A config given with --configfile replaces "
            "config.yaml whole (it is not an overlay): start from a copy of config.yaml (the embedded default) or "
            "config/study.yaml and change what you need"
        )
    e = best_match(jsonschema.Draft202012Validator(full).iter_errors(config))
    if e is None:
        return
    path = list(e.absolute_path)
    where = named
    for f in reversed([Path(f) for f in files]):
        try:
            root = _compose(f)
        except (OSError, ValueError):
            continue
        if root is not None and _has_path(root, path[:1]):
            where = f"{f}, line {yaml_line(root, path)}"
            break
    raise PipelineError(f"{where}: config {'key ' if path else ''}{_message(e)}")


def _compose(f: Path):
    import yaml

    return yaml.compose(f.read_text(encoding="utf-8"), Loader=SafeLoader)


def _has_path(root, path: Sequence[Any]) -> bool:
    return all(child(root, p) is not None for p in path if isinstance(p, str))
