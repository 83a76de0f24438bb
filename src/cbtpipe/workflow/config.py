"""The configuration layer: the schema, its defaults, and what follows from a config's keys
(a backend's complete settings, the judges of the panel, a model's training settings, the
backends in use).

It sits low in the import graph (errors and the registry below it) so that every module may read
a config through it; the checks that open the files a config names live one layer up, in
cbtpipe.checks.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from .errors import PipelineError
from .registry import BACKEND_KEYS

# The one home of every config key's type, default and conditional requirement.
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def schema() -> dict[str, Any]:
    from .yamlfile import safe_load

    return safe_load(SCHEMA.read_text(encoding="utf-8"))


@functools.cache
def _backend_validator():
    """A validator for one entry of ``backends`` (with the $defs it refers to)."""
    import jsonschema

    s = schema()
    return jsonschema.Draft202012Validator({**s["properties"]["backends"]["additionalProperties"], "$defs": s["$defs"]})


def backend_spec(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A backend's settings checked against the schema and completed with its defaults, for a
    backend built outside a Snakemake run (a test, a notebook): the same rules and defaults as a
    config, from the same place."""
    validator = _backend_validator()
    props = validator.schema["properties"]
    full = {k: v["default"] for k, v in props.items() if "default" in v} | dict(spec)
    errors = sorted(validator.iter_errors(full), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in [name, *e.absolute_path])
        raise PipelineError(f"config key backends.{where}: {e.message}")
    return full


def section_defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of one config section (for code run outside a Snakemake run)."""
    return _defaults(schema()["properties"][section])


def _defaults(sub: dict[str, Any]) -> dict[str, Any]:
    """Defaults of an object schema, with those of nested objects filled in (as a validation
    with defaults fills them in a config)."""
    out = {}
    for k, v in sub.get("properties", {}).items():
        if "default" not in v:
            continue
        d = v["default"]
        out[k] = _defaults(v) | d if isinstance(d, dict) and "properties" in v else d
    return out


def api_resource_name(backend: str) -> str:
    """The Snakemake resource that bounds the calls in flight to an API backend across jobs."""
    return "api_" + re.sub(r"\W", "_", backend)


# The keys of the judge section that each member of a panel inherits unless it sets its own.
JUDGE_MEMBER_KEYS = (
    "backend",
    "prompt",
    "samples",
    "sampling",
    "justification_chars",
    "reasoning_first",
    "mode",
    "seed",
    "max_attempts",
    "aggregate",
    "totals",
)


def judge_members(judge: dict[str, Any]) -> list[dict[str, Any]]:
    """The judges of the panel, each complete: the section's keys under the member's own (its
    sampling merged key by key). No panel: one judge, the section itself, named "judge"."""
    members = judge.get("panel") or [{"name": "judge"}]
    out = []
    for m in members:
        full = {k: judge[k] for k in JUDGE_MEMBER_KEYS} | {k: v for k, v in m.items() if k != "sampling"}
        full["sampling"] = dict(judge["sampling"]) | dict(m.get("sampling") or {})
        out.append(full)
    return out


def resolve_defaults(cfg: dict[str, Any]) -> None:
    """Defaults that refer to other keys: ``safety.backend: null`` (and ``patient_check.backend``)
    is the CTRS judge's backend."""
    for sec in ("safety", "patient_check"):
        if sec in cfg and cfg[sec].get("backend") is None:
            cfg[sec]["backend"] = cfg["judge"]["backend"]


def active_backends(cfg: dict[str, Any]) -> dict[str, str]:
    """Config key -> backend name, for the stages that call an LLM backend in this config (the
    keys of workflow.registry.BACKEND_KEYS, and each panel member's own backend)."""
    out = {}
    for key in BACKEND_KEYS:
        sec, field = key.split(".")
        # the generator writes the transcripts, and the course histories of later positions
        if key == "data.generator" and cfg["data"]["source"] != "generate" and max(cfg["rollout"]["positions"]) == 1:
            continue
        if key == "patient_check.backend" and not cfg.get("patient_check", {}).get("enabled", True):
            continue
        out[key] = cfg[sec][field] or cfg["judge"]["backend"]  # safety.backend null: the judge's
    for m in cfg["judge"].get("panel") or []:
        if "backend" in m:
            out[f"judge.panel.{m['name']}.backend"] = m["backend"]
    return out


def expand_seeds(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Replication over training seeds (``training.seeds``): for every model entry, the entry of the
    first seed keeps its name and each further seed adds an entry ``<model>-seed<seed>``, a copy
    with ``training.seed`` set, sharing the model's instruct arm (the same base). Returns every
    entry's model and training seed; with one seed, each entry is its own model. Idempotent (the
    workflow may be read more than once with one config)."""
    import copy

    seeds = cfg["training"].get("seeds")
    out: dict[str, dict[str, Any]] = {}
    names = sorted(cfg["models"])
    if not seeds:
        for m in names:
            seed = model_training_cfg(cfg, m)["seed"]
            out[m] = {"model": m, "seed": cfg["seed"] if seed is None else seed}
        return out
    added = {f"{m}-seed{s}": m for m in names for s in seeds[1:]}
    for m in names:
        if m in added and added[m] in cfg["models"]:
            continue  # a replicate this function added before
        spec = cfg["models"][m]
        own = (spec.get("training") or {}).get("seed")
        if own is not None and own != seeds[0]:
            raise PipelineError(f"config key models.{m}.training.seed: not with training.seeds (the seeds set every model's)")
        spec.setdefault("training", {})["seed"] = seeds[0]
        out[m] = {"model": m, "seed": seeds[0]}
        for s in seeds[1:]:
            name = f"{m}-seed{s}"
            rep = copy.deepcopy(spec)
            rep["training"]["seed"] = s
            if cfg["models"].get(name, rep) != rep:
                raise PipelineError(f"config key training.seeds: the entry {name} it adds is already a model entry")
            cfg["models"][name] = rep
            out[name] = {"model": m, "seed": s}
    return out


def training_seed(cfg: dict[str, Any], model: str) -> int:
    """A model entry's training seed: its own, else training.seed, else the run's seed."""
    seed = model_training_cfg(cfg, model)["seed"]
    return cfg["seed"] if seed is None else int(seed)


def model_training_cfg(cfg: dict[str, Any], model: str) -> dict[str, Any]:
    """The training section with the model's own overrides applied."""
    t = dict(cfg["training"])
    over = cfg["models"][model].get("training") or {}
    unknown = set(over) - set(t)
    if unknown:
        raise PipelineError(f"config key models.{model}.training: unknown key(s) {', '.join(sorted(unknown))}")
    t.update(over)
    return t


# What makes a model entry's instruct arm: its imported base, the GGUF files exported from it,
# their parity and its chat layout. Entries equal in these (say, one base under two LoRA settings)
# share one instruct arm, built once, for the first of them in name order.
BASE_KEYS = ("source", "dtype", "chat_template", "chat_layout")


def instruct_owners(cfg: dict[str, Any]) -> dict[str, str]:
    """Model entry -> the entry whose instruct arm it uses (itself when it is the first of its base)."""
    import json

    ident = {m: json.dumps({k: spec.get(k) for k in BASE_KEYS}, sort_keys=True) for m, spec in cfg["models"].items()}
    names = sorted(cfg["models"])
    return {m: next(o for o in names if ident[o] == ident[m]) for m in names}
