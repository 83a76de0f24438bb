"""Checks of the configuration beyond its JSON schema: cross-references and files.

The schema (cbtpipe/schemas/config.schema.yaml, applied by snakemake.utils.validate) catches unknown keys
and wrong types; this catches what a schema cannot: a stage naming an undefined backend, a file
that does not exist, a range that is inverted. Run at workflow start-up, before any rule.

This layer sits above the modules whose loaders it calls (rubrics, prompts, profiles, risk,
safety, imported transcripts); none of them imports it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .design import (
    check_positions,
    check_shares,
    check_template,
    load_attributes,
    load_crisis_resources,
    load_held_out,
    load_human_ratings,
    load_risk_attributes,
    load_rubric,
    load_safety_rubric,
)
from .llm import check_gguf_file
from .stages import load_import
from .workflow import PipelineError, active_backends, check_config_secrets, key_rules, model_training_cfg, read_csv_rows


def _file(path: str, key: str, base: Path) -> None:
    if not (base / path).is_file():
        raise PipelineError(f"config key {key}: file {path} does not exist")


def check_api_keys(cfg: dict[str, Any], rules: set[str] | None = None) -> None:
    """The API-key variables of the backends in use must be set (checked when a run starts, not
    in a dry run, so a login node can plan the study without keys). With ``rules`` (the rules of
    the jobs about to run), only the backends those rules call."""
    for key, name in active_backends(cfg).items():
        if rules is not None and not (key_rules(key) & rules):
            continue
        env = cfg["backends"][name].get("api_key_env")
        if env and not os.environ.get(env):
            raise PipelineError(
                f"environment variable {env} is not set; backend '{name}' (used by {key}) reads its API key from it "
                f"(config key backends.{name}.api_key_env)"
            )


def _models(cfg: dict[str, Any], base: Path) -> None:
    """Backends named by a stage exist; model files and chat templates exist; QLoRA has a GPU."""
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


def _data(cfg: dict[str, Any], base: Path) -> None:
    """The transcripts to import (checked whole) or the prompts and attribute lists that generate
    them; the system prompt and the course templates."""
    d = cfg["data"]
    if d["exchanges_min"] > d["exchanges_max"]:
        raise PipelineError("config keys data.exchanges_min > data.exchanges_max")
    if d["turn_chars_min"] > d["turn_chars_max"]:
        raise PipelineError("config keys data.turn_chars_min > data.turn_chars_max")
    if d["source"] == "import":
        _file(d["import_path"], "data.import_path", base)
        load_import(base / d["import_path"], d)
    else:
        _file(d["prompts"]["session"], "data.prompts.session", base)
        check_template(base / d["prompts"]["session"], "data.prompts.session")
        _file(cfg["profiles"]["attributes"], "profiles.attributes", base)
        load_attributes(base / cfg["profiles"]["attributes"])
    if cfg["profiles"]["eval_set"] != "in_distribution":  # held-out evaluation patients need held-out values
        _file(cfg["profiles"]["attributes"], "profiles.attributes", base)
        load_held_out(base / cfg["profiles"]["attributes"])
    _file(d["system_prompt"], "data.system_prompt", base)
    for key in ("context", "history"):
        _file(d["prompts"][key], f"data.prompts.{key}", base)
        check_template(base / d["prompts"][key], f"data.prompts.{key}")


def _rollout(cfg: dict[str, Any], base: Path) -> None:
    d = cfg["data"]
    r = cfg["rollout"]
    check_positions(r["positions"], d["sessions_per_patient"])
    if r["min_turns"] > r["max_turns"]:
        raise PipelineError(f"config keys rollout.min_turns ({r['min_turns']}) > rollout.max_turns ({r['max_turns']})")
    _file(cfg["rollout"]["patient_prompt"], "rollout.patient_prompt", base)
    check_template(base / cfg["rollout"]["patient_prompt"], "rollout.patient_prompt")


def _judge(cfg: dict[str, Any], base: Path) -> None:
    """The rubric, the judges' prompts and names, the primary endpoint, human ratings."""
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
        _file(cfg["report"]["human_ratings"], "report.human_ratings", base)
        load_human_ratings(base / cfg["report"]["human_ratings"], rubric)
    if cfg["report"].get("packet_ratings"):
        # its shape now; which packet it rates is checked against the key when the report is made
        _file(cfg["report"]["packet_ratings"], "report.packet_ratings", base)
        read_csv_rows(base / cfg["report"]["packet_ratings"], "packet_ratings")


def _safety(cfg: dict[str, Any], base: Path) -> None:
    """Risk attributes and their shares, the safety rubric, its prompt, crisis resources, refusal
    patterns, the risk protocol."""
    r = cfg["rollout"]
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
    pc = cfg["patient_check"]
    if pc["enabled"]:
        _file(pc["prompt"], "patient_check.prompt", base)
        check_template(base / pc["prompt"], "patient_check.prompt")


def check_config(cfg: dict[str, Any], base: str | Path = ".") -> None:
    """Raise PipelineError naming the culprit (config key, file, line)."""
    check_config_secrets(cfg)
    base = Path(base)
    _models(cfg, base)
    _data(cfg, base)
    _rollout(cfg, base)
    _judge(cfg, base)
    _safety(cfg, base)
    q = cfg["rollout"]["quantization"]
    if q not in cfg["export"]["quantizations"] and q != cfg["export"]["outtype"]:
        raise PipelineError(f"config key rollout.quantization: '{q}' is neither export.outtype nor listed in export.quantizations")
