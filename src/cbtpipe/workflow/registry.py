"""One registry of the backend types and of the stages that call an LLM backend.

Everything that needs to know which backend types exist or which rules call which backend reads
it from here: ``make_backend`` (the class of a type), the rules (``used_backends("judge")`` and
the other helpers of ``rules/common.smk`` take a stage's name), the start-up checks (the API keys
of the backends whose rules are about to run), the plan (its rows, the rule whose runtime limit
bounds a stage, the stats files of measured rates) and the config schema's enum of types (a test
holds the two equal). Adding a backend type or an LLM stage is one entry here.

This module imports nothing of the package: every layer may read it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BackendType:
    """A value of ``backends.<name>.type``."""

    name: str
    target: str  # "module:Class" of its implementation, imported when first built
    api: bool  # calls go to a remote endpoint: API keys, api_<backend> resources, cost, probing

    def load(self) -> type:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)


BACKEND_TYPES: dict[str, BackendType] = {
    t.name: t
    for t in (
        BackendType("llama_cpp", "cbtpipe.llm.llamacpp:LlamaCppBackend", api=False),
        BackendType("openai", "cbtpipe.llm.openai_compat:OpenAIBackend", api=True),
    )
}


def is_api(spec: dict[str, Any]) -> bool:
    """Whether a backend's settings describe a remote API (an unknown type is not one)."""
    t = BACKEND_TYPES.get(spec.get("type", ""))
    return bool(t and t.api)


# The config key that names a stage's backend. "judge.panel": the backend of every judge of the
# panel (a judge without its own inherits judge.backend).
PANEL = "judge.panel"


@dataclass(frozen=True)
class Stage:
    """A stage whose jobs call an LLM backend."""

    name: str  # the plan's name of the stage, and what the rules pass to used_backends() & co.
    key: str  # the config key naming its backend (section.field, or PANEL)
    rules: tuple[str, ...]  # the rules whose jobs call it; the first one's runtime limit bounds a job
    stats: str | None = None  # glob under results/ of the stats files whose "llm" gives measured rates

    @property
    def section(self) -> str:
        return self.key.split(".")[0]


STAGES: tuple[Stage, ...] = (
    Stage("generation", "data.generator", ("transcripts",), "data/generation_stats.json"),
    Stage("eval_history", "data.generator", ("eval_history",), "profiles/eval_history_stats.json"),
    # the patient's measured rates come from the rollout stats' "patient" (see plan.measured_rates)
    Stage("rollout", "rollout.patient_backend", ("rollout", "rollout_ablation")),
    Stage("judge", PANEL, ("judge", "judge_ablation", "judge_closing"), "judge/*/shard*.stats.json"),
    Stage("judge_turns", "judge.backend", ("judge_turns",)),
    Stage("safety", "safety.backend", ("safety", "safety_ablation"), "safety/*/shard*.stats.json"),
    Stage("patient_check", "patient_check.backend", ("patient_check",), "patient_check/*/shard*.stats.json"),
)
STAGE = {s.name: s for s in STAGES}

# The config keys that may name a backend, in the stages' order (errors report them so): the
# panel's stages name judge.backend, which every judge without its own inherits.
BACKEND_KEYS: tuple[str, ...] = tuple(dict.fromkeys("judge.backend" if s.key == PANEL else s.key for s in STAGES))


def stage(name: str) -> Stage:
    try:
        return STAGE[name]
    except KeyError:
        raise KeyError(f"unknown LLM stage '{name}' (known: {', '.join(STAGE)})") from None


def stage_backend_names(name: str, cfg: dict[str, Any], judges: list[dict[str, Any]]) -> list[str]:
    """The backends a stage's jobs call in this config (``judges``: the complete panel members)."""
    s = stage(name)
    if s.key == PANEL:
        return sorted({m["backend"] for m in judges})
    sec, field = s.key.split(".")
    return [cfg[sec][field] or cfg["judge"]["backend"]]  # safety.backend null: the judge's


def key_rules(key: str) -> set[str]:
    """The rules whose jobs call the backend named by a config key. A panel member's own backend
    (judge.panel.<name>.backend) is called by the panel's rules; judge.backend by those and by
    every stage that names it directly."""
    if key.startswith(PANEL + "."):
        keys = {PANEL}
    elif key == "judge.backend":
        keys = {PANEL, key}
    else:
        keys = {key}
    return {r for s in STAGES if s.key in keys for r in s.rules}


def plan_rules() -> dict[str, str]:
    """Stage name -> the rule whose runtime limit bounds one of its jobs."""
    return {s.name: s.rules[0] for s in STAGES}
