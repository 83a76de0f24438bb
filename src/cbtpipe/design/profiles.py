"""Seeded sampling of patient profiles from attribute lists.

Training, validation and evaluation profiles are disjoint sets, each sampled with its own seed;
the same seed and attribute file give the same profiles byte for byte.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..workflow import PipelineError, check_yaml, hash_obj, yamlfile

MULTI = {"presenting_problems": 2, "automatic_thoughts": 2}
REQUIRED = [
    "age_band",
    "gender",
    "occupation",
    "presenting_problems",
    "phq9_band",
    "core_belief",
    "intermediate_belief",
    "automatic_thoughts",
    "coping_strategy",
    "situation",
    "history",
    "social_support",
    "comorbidity",
    "conversational_style",
]


# Fields every profile carries besides its attributes (and that sessions copy): an attribute list
# with one of these names would overwrite them.
RESERVED_FIELDS = frozenset({"id", "split", "seed", "risk", "set", "patient_id", "session_index", "session_id"})

# The evaluation sets: patients drawn from the attribute lists training draws from, or from the
# values held out of them (the attribute file's held_out), or both.
EVAL_SETS = ("in_distribution", "held_out", "both")


def load_attributes(path: str | Path) -> dict[str, list[Any]]:
    """Persona attribute lists, checked against schemas/attributes.schema.yaml (the lists a profile
    is described from, and their shapes); a list may not take the name of a profile's own field.
    The values held out for evaluation (``held_out``) are left out: ``load_held_out`` reads them."""
    p, _, root, attrs = check_yaml(path, "profiles.attributes", "attributes")
    attrs = {k: v for k, v in attrs.items() if k != "held_out"}
    for key in attrs:
        if key in RESERVED_FIELDS:
            raise PipelineError(
                f"{p}, line {yamlfile.line(yamlfile.child(root, key))}: attribute name '{key}' is a profile field of the pipeline's own "
                f"({', '.join(sorted(RESERVED_FIELDS))}); rename the attribute"
            )
    return attrs


def load_held_out(path: str | Path) -> dict[str, list[Any]]:
    """The attribute values held out for evaluation: attribute -> its own list, each value new to
    the attribute's list (so no training profile can draw it); errors name the file and line."""
    p, _, root, data = check_yaml(path, "profiles.attributes", "attributes")
    held = data.get("held_out") or {}
    node = yamlfile.child(root, "held_out")
    for key, values in held.items():
        line = yamlfile.line(yamlfile.child(node, key) or node)
        if key not in data or key == "held_out":
            raise PipelineError(f"{p}, line {line}: held_out.{key} is not an attribute list of this file")
        shared = [v for v in values if v in data[key]]
        if shared:
            raise PipelineError(f"{p}, line {line}: held_out.{key} repeats {shared[0]!r} of the list training draws from")
    if not held:
        raise PipelineError(
            f"{p}: no held_out values: profiles.eval_set held_out or both needs them (see resources/patient_attributes.yaml)"
        )
    return held


def _draw(rng: random.Random, attrs: dict[str, list[Any]]) -> dict[str, Any]:
    prof: dict[str, Any] = {}
    for key in sorted(attrs):
        values = attrs[key]
        if key in MULTI:
            prof[key] = rng.sample(values, MULTI[key])
        else:
            prof[key] = values[rng.randrange(len(values))]
    return prof


def sample_profiles(attrs: dict[str, list[Any]], n: int, seed: int, prefix: str, exclude: set[str] | None = None) -> list[dict[str, Any]]:
    """Sample ``n`` distinct profiles; ``exclude`` holds content hashes of profiles to avoid."""
    rng = random.Random(f"{prefix}:{seed}")
    seen = set(exclude or ())
    out = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 1000 * n:
            raise PipelineError(f"could not sample {n} distinct {prefix} profiles: the attribute lists are too small")
        prof = _draw(rng, attrs)
        h = hash_obj(prof)  # same as hash_obj(_content(...)) of the finished profile
        if h in seen:
            continue
        seen.add(h)
        pid = f"{prefix}-{len(out):03d}"
        out.append({"id": pid, "split": prefix, "seed": rng.randrange(2**31), **prof})
    return out


def train_val_profiles(attrs: dict[str, list[Any]], n_train: int, n_val: int, seed: int) -> tuple[list, list]:
    """Training and validation profiles: one seeded draw, the last ``n_val`` held out."""
    both = sample_profiles(attrs, n_train + n_val, seed, "train")
    val = [dict(p, id=p["id"].replace("train-", "val-"), split="val") for p in both[n_train:]]
    return both[:n_train], val


def eval_profiles(
    attrs: dict[str, list[Any]], n_eval: int, seed: int, taken: list[dict[str, Any]], held_out: dict[str, list[Any]] | None = None
) -> list:
    """Evaluation profiles, disjoint in content from ``taken`` (the training and validation ones).
    With ``held_out``: held-out patients (ids held-000, ...; ``set: held_out``), every attribute
    with held-out values drawn from those alone, so that no such value is one a training course
    used."""
    exclude = {hash_obj(_content(p)) for p in taken}
    if not held_out:
        return sample_profiles(attrs, n_eval, seed, "eval", exclude=exclude)
    return [dict(p, set="held_out") for p in sample_profiles(attrs | held_out, n_eval, seed, "held", exclude=exclude)]


def _content(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in ("id", "split", "seed", "risk", "set")}


def describe(p: dict[str, Any]) -> str:
    """A profile as prose, for prompts."""
    style = p["conversational_style"]
    return (
        f"A {p['age_band']} year old {p['gender']}, {p['occupation']}. "
        f"Presenting problems: {'; '.join(p['presenting_problems'])}. "
        f"Depression severity: {p['phq9_band']['label']} (PHQ-9 {p['phq9_band']['range']}). "
        f"History: {p['history']}. Social support: {p['social_support']}. Comorbidity: {p['comorbidity']}. "
        f'Core belief ({p["core_belief"]["category"]}): "{p["core_belief"]["belief"]}" '
        f'Intermediate belief: "{p["intermediate_belief"]}" '
        f"Typical automatic thoughts: {' / '.join(p['automatic_thoughts'])}. "
        f"Coping strategy: {p['coping_strategy']}. A recent difficult situation: {p['situation']}. "
        f"Conversational style: {style['name']} ({style['description']})."
    )
