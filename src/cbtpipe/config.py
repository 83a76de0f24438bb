"""Checks of the configuration beyond its JSON schema: cross-references and files.

The schema (cbtpipe/schemas/config.schema.yaml, applied by snakemake.utils.validate) catches unknown keys
and wrong types; this catches what a schema cannot: a stage naming an undefined backend, a file
that does not exist, a range that is inverted. Run at workflow start-up, before any rule.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from .io import PipelineError

# The one home of every config key's type, default and conditional requirement.
SCHEMA = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


@functools.cache
def schema() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


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


STAGE_BACKENDS = {
    "data.generator": ("data", "generator"),
    "rollout.patient_backend": ("rollout", "patient_backend"),
    "judge.backend": ("judge", "backend"),
    "safety.backend": ("safety", "backend"),
}


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
    """Defaults that refer to other keys: ``safety.backend: null`` is the CTRS judge's backend."""
    if cfg.get("safety", {}).get("backend") is None:
        cfg["safety"]["backend"] = cfg["judge"]["backend"]


def _file(path: str, key: str, base: Path) -> None:
    if not (base / path).is_file():
        raise PipelineError(f"config key {key}: file {path} does not exist")


def active_backends(cfg: dict[str, Any]) -> dict[str, str]:
    """Config key -> backend name, for the stages that call an LLM backend in this config."""
    out = {}
    for key, (sec, field) in STAGE_BACKENDS.items():
        # the generator writes the transcripts, and the course histories of later positions
        if key == "data.generator" and cfg["data"]["source"] != "generate" and max(cfg["rollout"]["positions"]) == 1:
            continue
        out[key] = cfg[sec][field] or cfg["judge"]["backend"]  # safety.backend null: the judge's
    for m in cfg["judge"].get("panel") or []:
        if "backend" in m:
            out[f"judge.panel.{m['name']}.backend"] = m["backend"]
    return out


def stage_rules(key: str) -> set[str]:
    """The rules that call the backend named by a config key (a panel member's: the judge's)."""
    return STAGE_RULES["judge.backend" if key.startswith("judge.panel.") else key]


# The rules that call the backend named by each config key.
STAGE_RULES = {
    "data.generator": {"transcripts", "eval_history"},
    "rollout.patient_backend": {"rollout", "rollout_ablation"},
    "judge.backend": {"judge", "judge_ablation", "judge_turns"},
    "safety.backend": {"safety", "safety_ablation"},
}


def check_api_keys(cfg: dict[str, Any], rules: set[str] | None = None) -> None:
    """The API-key variables of the backends in use must be set (checked when a run starts, not
    in a dry run, so a login node can plan the study without keys). With ``rules`` (the rules of
    the jobs about to run), only the backends those rules call."""
    for key, name in active_backends(cfg).items():
        if rules is not None and not (stage_rules(key) & rules):
            continue
        env = cfg["backends"][name].get("api_key_env")
        if env and not os.environ.get(env):
            raise PipelineError(
                f"environment variable {env} is not set; backend '{name}' (used by {key}) reads its API key from it "
                f"(config key backends.{name}.api_key_env)"
            )


def check_config(cfg: dict[str, Any], base: str | Path = ".") -> None:
    """Raise PipelineError naming the culprit (config key, file, line)."""
    from .gguf import check_gguf_file
    from .prompts import check_template
    from .rubric import load_rubric
    from .secrets import check_config_secrets

    check_config_secrets(cfg)
    base = Path(base)
    backends = cfg["backends"]
    for key, name in active_backends(cfg).items():
        if name not in backends:
            raise PipelineError(f"config key {key}: unknown backend '{name}' (defined: {', '.join(sorted(backends))})")
    for name, b in backends.items():
        if b["type"] == "llama_cpp" and "path" in b.get("gguf", {}):
            _file(b["gguf"]["path"], f"backends.{name}.gguf.path", base)
            check_gguf_file(base / b["gguf"]["path"], f"config key backends.{name}.gguf.path")
    for name, m in cfg["models"].items():
        src = m["source"]
        where = f"models.{name}.source"
        if src["type"] == "gguf":
            _file(src["path"], f"{where}.path", base)
            check_gguf_file(base / src["path"], f"config key {where}.path")
        if src["type"] == "local_hf" and not (base / src["path"] / "config.json").is_file():
            raise PipelineError(f"config key {where}.path: {src['path']} is not a Hugging Face model directory")
        if m.get("chat_template"):
            _file(m["chat_template"], f"models.{name}.chat_template", base)
        if model_training_cfg(cfg, name)["method"] == "qlora" and not m["gpus"]:
            raise PipelineError(
                f"config key models.{name}.gpus is 0, but training.method qlora needs a CUDA GPU "
                f"(4-bit NF4 weights through bitsandbytes): set models.{name}.gpus: 1, or use method: lora on the CPU"
            )
    d = cfg["data"]
    if d["exchanges_min"] > d["exchanges_max"]:
        raise PipelineError("config keys data.exchanges_min > data.exchanges_max")
    if d["turn_chars_min"] > d["turn_chars_max"]:
        raise PipelineError("config keys data.turn_chars_min > data.turn_chars_max")
    if d["source"] == "import":
        from .transcripts import load_import

        _file(d["import_path"], "data.import_path", base)
        load_import(base / d["import_path"], d)
    else:
        from .profiles import load_attributes

        _file(d["prompts"]["session"], "data.prompts.session", base)
        check_template(base / d["prompts"]["session"], "data.prompts.session")
        _file(cfg["profiles"]["attributes"], "profiles.attributes", base)
        load_attributes(base / cfg["profiles"]["attributes"])
    _file(d["system_prompt"], "data.system_prompt", base)
    for key in ("context", "history"):
        _file(d["prompts"][key], f"data.prompts.{key}", base)
        check_template(base / d["prompts"][key], f"data.prompts.{key}")
    from .course import check_positions

    r = cfg["rollout"]
    check_positions(r["positions"], d["sessions_per_patient"])
    if r["min_turns"] > r["max_turns"]:
        raise PipelineError(f"config keys rollout.min_turns ({r['min_turns']}) > rollout.max_turns ({r['max_turns']})")
    _file(cfg["rollout"]["patient_prompt"], "rollout.patient_prompt", base)
    check_template(base / cfg["rollout"]["patient_prompt"], "rollout.patient_prompt")
    _file(cfg["judge"]["rubric"], "judge.rubric", base)
    rubric = load_rubric(base / cfg["judge"]["rubric"])
    _file(cfg["judge"]["prompt"], "judge.prompt", base)
    check_template(base / cfg["judge"]["prompt"], "judge.prompt")
    seen_names: set[str] = set()
    for k, m in enumerate(cfg["judge"]["panel"]):
        if m["name"] in seen_names:
            raise PipelineError(f"config key judge.panel[{k}].name: '{m['name']}' names two judges of the panel")
        seen_names.add(m["name"])
        if "prompt" in m:
            _file(m["prompt"], f"judge.panel[{k}].prompt", base)
            check_template(base / m["prompt"], f"judge.panel[{k}].prompt")
    prim = cfg["report"]["primary"]
    outcomes = ["total", *(i["id"] for i in rubric["items"])]
    if prim["outcome"] not in outcomes:
        raise PipelineError(f"config key report.primary.outcome: '{prim['outcome']}' is not total or an item of {cfg['judge']['rubric']}")
    if prim["contrast"] != "pooled" and prim["contrast"] not in cfg["models"]:
        raise PipelineError(
            f"config key report.primary.contrast: '{prim['contrast']}' is neither pooled nor a model (models: {', '.join(sorted(cfg['models']))})"
        )
    if cfg["report"]["human_ratings"]:
        from .rubric import load_human_ratings

        _file(cfg["report"]["human_ratings"], "report.human_ratings", base)
        load_human_ratings(base / cfg["report"]["human_ratings"], rubric)
    from .risk import check_shares, load_risk_attributes
    from .safety import load_crisis_resources, load_safety_rubric

    rk = cfg["profiles"]["risk"]
    _file(rk["attributes"], "profiles.risk.attributes", base)
    check_shares(load_risk_attributes(base / rk["attributes"]), rk)
    s = cfg["safety"]
    _file(s["rubric"], "safety.rubric", base)
    load_safety_rubric(base / s["rubric"])
    _file(s["prompt"], "safety.prompt", base)
    check_template(base / s["prompt"], "safety.prompt")
    _file(s["crisis_resources"], "safety.crisis_resources", base)
    load_crisis_resources(base / s["crisis_resources"], s["country"])
    for n, pat in enumerate(s["refusal_patterns"]):
        try:
            re.compile(pat)
        except re.error as e:
            raise PipelineError(f"config key safety.refusal_patterns[{n}]: {pat!r} is not a valid regular expression ({e})") from None
    _file(r["risk_protocol_prompt"], "rollout.risk_protocol_prompt", base)
    check_template(base / r["risk_protocol_prompt"], "rollout.risk_protocol_prompt")
    q = cfg["rollout"]["quantization"]
    if q not in cfg["export"]["quantizations"] and q != cfg["export"]["outtype"]:
        raise PipelineError(f"config key rollout.quantization: '{q}' is neither export.outtype nor listed in export.quantizations")


def model_training_cfg(cfg: dict[str, Any], model: str) -> dict[str, Any]:
    """The training section with the model's own overrides applied."""
    t = dict(cfg["training"])
    over = cfg["models"][model].get("training") or {}
    unknown = set(over) - set(t)
    if unknown:
        raise PipelineError(f"config key models.{model}.training: unknown key(s) {', '.join(sorted(unknown))}")
    t.update(over)
    return t
