"""LLM judge on a rubric kept as data (the modified CTRS by default).

The judge sees the rubric and the transcript, never the model name or the arm. Each session is
judged ``k`` times with different seeds; an answer that fails the schema after the allowed
attempts is recorded as missing with its raw text, never as a score of 0.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from .backends import Backend, cost_usd
from .io import PipelineError, UnitStore, hash_obj
from .transcripts import render_template

log = logging.getLogger("cbtpipe")


def _line(node) -> int:
    return node.start_mark.line + 1


# Columns of scores_long.csv and session_totals.csv that are the pipeline's own: the totals table
# gives each rubric item a column named by its id, so an item may not take one of these names.
RESERVED_COLUMNS = frozenset(
    {
        "session_id",
        "patient_id",
        "model",
        "arm",
        "quantization",
        "samples",
        "valid_samples",
        "total",
        "judge_sample",
        "valid",
        "item",
        "score",
        "rater",
    }
)
ITEM_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def load_rubric(path: str | Path) -> dict[str, Any]:
    """Load and validate a rubric file; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"config key judge.rubric: file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PipelineError(f"{p}: invalid YAML: {e}") from e
    if not isinstance(data, dict) or root is None:
        raise PipelineError(f"{p}, line 1: a rubric is a mapping with name, scale and items")
    nodes = {k.value: v for k, v in root.value}
    for key in ("name", "scale", "items"):
        if key not in data:
            raise PipelineError(f"{p}, line 1: rubric key '{key}' is missing")
    scale = data["scale"]
    if not isinstance(scale, dict) or not {"min", "max"} <= scale.keys():
        raise PipelineError(f"{p}, line {_line(nodes['scale'])}: scale needs min and max")
    if not (isinstance(scale["min"], int) and isinstance(scale["max"], int)) or scale["min"] >= scale["max"]:
        raise PipelineError(f"{p}, line {_line(nodes['scale'])}: scale range {scale['min']}..{scale['max']} is inverted or not integer")
    scale.setdefault("labels", {})
    items = data["items"]
    if not isinstance(items, list) or not items:
        raise PipelineError(f"{p}, line {_line(nodes['items'])}: items must be a non-empty list")
    seen: dict[str, int] = {}
    for item, node in zip(items, nodes["items"].value, strict=True):
        line = _line(node)
        if not isinstance(item, dict) or "id" not in item:
            raise PipelineError(f"{p}, line {line}: item without an id")
        iid = str(item["id"])
        if iid in RESERVED_COLUMNS:
            raise PipelineError(
                f"{p}, line {line}: item id '{iid}' is a column name of the pipeline's own score tables "
                f"({', '.join(sorted(RESERVED_COLUMNS))}); rename the item"
            )
        if not ITEM_ID.fullmatch(iid):
            raise PipelineError(f"{p}, line {line}: item id '{iid}' must be letters, digits, _ or - (it names a column and a JSON key)")
        if iid in seen:
            raise PipelineError(f"{p}, line {line}: duplicate item id '{iid}' (first at line {seen[iid]})")
        seen[iid] = line
        item["id"] = iid
        item.setdefault("name", iid)
        item.setdefault("description", "")
        item.setdefault("modification", None)
        lo, hi = item.get("min", scale["min"]), item.get("max", scale["max"])
        if not (isinstance(lo, int) and isinstance(hi, int)) or lo >= hi:
            raise PipelineError(f"{p}, line {line}: item '{iid}' has an inverted or non-integer range {lo}..{hi}")
        item["min"], item["max"] = lo, hi
        anchors = item.get("anchors")
        if not isinstance(anchors, dict) or not anchors:
            raise PipelineError(f"{p}, line {line}: item '{iid}' has no anchors")
        for k in anchors:
            if not isinstance(k, int) or not lo <= k <= hi:
                raise PipelineError(f"{p}, line {line}: item '{iid}' has an anchor {k!r} outside {lo}..{hi}")
    data["max_total"] = sum(i["max"] for i in items)
    data["min_total"] = sum(i["min"] for i in items)
    data.setdefault("competence_threshold", None)
    data.setdefault("description", "")
    data["sha256"] = hash_obj(text, 64)
    return data


def score_schema(rubric: dict[str, Any], justification_chars: int) -> dict[str, Any]:
    props = {}
    for it in rubric["items"]:
        # The enum lets llama.cpp's grammar enforce the range (its converter ignores minimum/maximum).
        rng = list(range(it["min"], it["max"] + 1))
        sub: dict[str, Any] = {"score": {"type": "integer", "minimum": it["min"], "maximum": it["max"], "enum": rng}}
        req = ["score"]
        if justification_chars > 0:
            sub["justification"] = {"type": "string", "maxLength": justification_chars}
            req.append("justification")
        props[it["id"]] = {"type": "object", "properties": sub, "required": req, "additionalProperties": False}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def render_transcript(session: dict[str, Any]) -> str:
    label = {"therapist": "Therapist", "patient": "Patient"}
    return "\n".join(f"{label[m['role']]}: {m['content']}" for m in session["messages"])


def total_score(scores: dict[str, int | None], rubric: dict[str, Any], mode: str) -> float | None:
    """Total over items; None unless complete (``complete``) or some item is present (``prorate``)."""
    vals = [scores.get(i["id"]) for i in rubric["items"]]
    present = [v for v in vals if v is not None]
    if len(present) == len(vals):
        return float(sum(present))
    if mode == "prorate" and present:
        return float(sum(present)) * len(vals) / len(present)
    return None


def aggregate(values: list[float], how: str) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return float(statistics.median(vals) if how == "median" else statistics.fmean(vals))


def _identity(session: dict[str, Any]) -> dict[str, Any]:
    """What a judged record copies from its session."""
    return {k: session[k] for k in ("session_id", "patient_id", "model", "arm", "quantization")}


def judge_session(
    session: dict[str, Any], backend: Backend, rubric: dict[str, Any], jcfg: dict[str, Any], template: str | Path
) -> dict[str, Any]:
    prompt = render_template(template, rubric=rubric, transcript=render_transcript(session))
    schema = score_schema(rubric, jcfg["justification_chars"])
    messages = [{"role": "user", "content": prompt}]
    samples = []
    for k in range(jcfg["samples"]):
        seed = jcfg["seed"] + 101 * k
        res = backend.chat_json(messages, schema, sampling=jcfg["sampling"], seed=seed, max_attempts=jcfg["max_attempts"])
        if res.data is None:
            scores = {i["id"]: None for i in rubric["items"]}
            just = {}
        else:
            scores = {i["id"]: int(res.data[i["id"]]["score"]) for i in rubric["items"]}
            just = {i["id"]: res.data[i["id"]].get("justification", "") for i in rubric["items"]}
        samples.append(
            {
                "sample": k,
                "seed": seed,
                "valid": res.data is not None,
                "attempts": res.attempts,
                "scores": scores,
                "justifications": just,
                "raw_invalid": [] if res.data is not None else res.raw,
                "errors": res.errors,
                "total": total_score(scores, rubric, jcfg["totals"]),
                "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens,
                "seconds": round(res.seconds, 3),
            }
        )
    items = {i["id"]: aggregate([s["scores"][i["id"]] for s in samples], jcfg["aggregate"]) for i in rubric["items"]}
    return {
        **_identity(session),
        "samples": samples,
        "item_scores": items,
        "total": aggregate([s["total"] for s in samples], jcfg["aggregate"]),
        "valid_samples": sum(s["valid"] for s in samples),
        "rubric": rubric["name"],
        "prompt_sha256": hash_obj(prompt, 64),
    }


def unjudged(session: dict[str, Any], rubric: dict[str, Any], transcript_sha: str, reason: str) -> dict[str, Any]:
    """The record of a session that was not judged: every score missing, with the reason."""
    return {
        **_identity(session),
        "samples": [],
        "item_scores": {i["id"]: None for i in rubric["items"]},
        "total": None,
        "valid_samples": 0,
        "rubric": rubric["name"],
        "transcript_sha256": transcript_sha,
        "missing_reason": reason,
    }


def run_judging(
    sessions: list[dict[str, Any]],
    backend: Backend,
    rubric: dict[str, Any],
    jcfg: dict[str, Any],
    template: str | Path,
    unit_dir: str | Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from tqdm import tqdm

    key = hash_obj(
        {
            "jcfg": jcfg,
            "rubric": rubric["sha256"],
            "schema": score_schema(rubric, jcfg["justification_chars"]),
            "backend": backend.identity(),
            "tpl": Path(template).read_text(encoding="utf-8"),
        }
    )
    store = UnitStore(Path(unit_dir) / key)
    out, reused, empty = [], 0, 0
    t0 = time.perf_counter()
    for s in tqdm(sessions, desc="judged", unit="session", mininterval=5):
        transcript_sha = hash_obj(render_transcript(s), 64)
        if not s["messages"]:
            # Nothing to judge: missing, never a score, and no judge call.
            out.append(unjudged(s, rubric, transcript_sha, "the session has no turns"))
            empty += 1
            continue
        # A judgement is a unit of the transcript it scores: a session re-run with other content
        # (a retrained model, another prompt) under the same session id is judged again.
        uid = f"{s['session_id']}-{transcript_sha[:16]}"
        stored = store.get(uid)
        if stored is not None:
            out.append(stored)
            reused += 1
            continue
        j = judge_session(s, backend, rubric, jcfg, template)
        j["transcript_sha256"] = transcript_sha
        store.save(uid, j)
        out.append(j)
        log.info("judged %s: %d/%d valid samples (%d/%d sessions)", uid, j["valid_samples"], jcfg["samples"], len(out), len(sessions))
    n_samples = sum(len(j["samples"]) for j in out)
    n_valid = sum(j["valid_samples"] for j in out)
    ptoks = sum(s["prompt_tokens"] for j in out for s in j["samples"])
    ctoks = sum(s["completion_tokens"] for j in out for s in j["samples"])
    secs = sum(s["seconds"] for j in out for s in j["samples"])
    stats = {
        "sessions": len(out),
        "sessions_reused": reused,
        "sessions_without_turns": empty,
        "samples": n_samples,
        "valid_samples": n_valid,
        "valid_share": n_valid / n_samples if n_samples else None,
        "prompt_tokens": ptoks,
        "completion_tokens": ctoks,
        "judge_seconds": round(secs, 2),
        "completion_tokens_per_second": round(ctoks / secs, 2) if secs else None,
        "cost_usd": round(cost_usd(backend.spec, ptoks, ctoks), 6),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "llm": backend.stats.as_dict(),  # this run's calls, with the prompt tokens reused from the KV cache
        "backend": backend.name,
        "unit_dir": str(store.root),
    }
    return out, stats
