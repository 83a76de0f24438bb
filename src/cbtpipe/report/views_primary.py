"""The report's opening: the primary endpoint as declared and its result, every test by family with
its adjusted p, and when each arm ran against which models."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from .numbers import _utc, fmt, fmt_p

PUBLISHED = {
    "source": "Tahir 2024, arXiv 2412.00251 (modified CTRS, Gemini 1.5 Pro-002 judge, DeepSeek-V2.5 patient)",
    "cbt_means": {"Llama 3.1 8B": "67.86 ± 7.24", "Qwen 2.5 7B": "64.28 ± 9.55", "Mistral 7B v0.3": "64.17 ± 9.79"},
    "mean_gain": "11.33 points (CBT-tuned minus instruct, p < 0.001)",
}


def _primary_text(prim: dict[str, Any], decl: dict[str, Any] | None = None) -> str:
    """The primary endpoint in one paragraph: what was declared and when, its result, what the
    design can detect."""
    what = "the CTRS total" if prim["outcome"] == "total" else f"CTRS item {prim['outcome']}"
    where = "pooled over models (stratified by patient)" if prim["contrast"] == "pooled" else f"for {prim['contrast']}"
    test = "paired t-test" if prim["test"] == "paired_t" else "Wilcoxon signed-rank test"
    decl = decl or {"declared_before_run": False, "reason": "no record of its declaration", "recorded_at": None}
    when = (
        f"declared before the run: recorded {decl['recorded_at']}, before the first judge call at {_utc(decl.get('first_judgement'))}"
        if decl["declared_before_run"]
        else f"not shown to be declared before the run: {decl['reason']}"
        + (f" (recorded {decl['recorded_at']}, first judge call {_utc(decl.get('first_judgement'))})" if decl.get("recorded_at") else "")
    )
    head = f"Primary endpoint (config key report.primary, {when}): {what}, CBT-tuned minus instruct, {where}, {test}"
    c = prim.get("result")
    if not c or not c.get("n"):
        return head + ": no patient pairs to test. " + "; ".join(prim["notes"])
    body = (
        f": {c['n']} patient pairs, instruct mean {fmt(c['mean_b'])}, CBT mean {fmt(c['mean_a'])}, difference {fmt(c['mean_diff'])} "
        f"(95% CI {fmt(c['ci_t'][0])} to {fmt(c['ci_t'][1])}), p = {fmt_p(prim['p'])}, d_z = {fmt(c['cohens_dz'])}."
    )
    mde = (
        f" With {c['n']} pairs the design detects d_z of {fmt(prim['mde_dz'])} or more with {100 * prim['power']:.0f}% power (two-sided alpha {prim['alpha']});"
        " a smaller true effect may go unseen."
        if prim["mde_dz"] is not None
        else " " + "; ".join(prim["notes"]) + "."
    )
    return (
        head
        + body
        + mde
        + ' Every other test is labelled secondary or exploratory, with its p adjusted within its family (see "Every test, by family").'
    )


def register(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Every test whose p the report prints: the CTRS analysis's, the safety analysis's, the
    rollout ablations' and the per-turn pass's, each adjusted within its family where it was
    computed."""
    return [
        *ctx["stats"].get("tests", []),
        *(ctx.get("safety") or {}).get("tests", []),
        *(ctx.get("ablations") or {}).get("tests", []),
        *(ctx.get("turn_windows") or {}).get("tests", []),
    ]


def primary_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """The primary endpoint as declared, the tests by family with their adjusted p-values, and when each arm ran."""
    st = ctx["stats"]
    prim = st.get("primary")
    return {
        "primary": _primary_text(prim, ctx.get("declaration")) if prim else None,
        "tests": [
            [t["family"], t["test"], fmt_p(t["p"]), fmt_p(t.get("p_adjusted")), t.get("correction", "holm"), t.get("family_size", "—")]
            for t in register(ctx)
        ],
        "arm_timing": arm_timing(ctx),
    }


def _window(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("first_call") is None:
        return "—"
    return f"{_utc(cell['first_call'])} to {_utc(cell['last_call'])}"


def _judge_deviations(m: str, role: str, cells: dict[str, dict[str, Any]]) -> list[str]:
    """A judge that met the arms of a model as different served models or fingerprints, or, where
    some call gave no fingerprint, at times that do not overlap (one arm judged after the other)."""
    out = []
    served = {a: set(c.get("served", [])) for a, c in cells.items()}
    if len({frozenset(v) for v in served.values()}) > 1:
        detail = "; ".join(f"{a}: {', '.join(sorted(v)) or 'unknown'}" for a, v in sorted(served.items()))
        out.append(f"{m}: the {role} that answered differed between the arms ({detail}); the arms were judged by different models")
    timed = {a: c for a, c in cells.items() if c.get("first_call") is not None}
    # one arm judged after the other is a risk where no fingerprint shows the judge unchanged (a
    # shared instruct arm read back from another entry's job is judged earlier by the same model)
    if len(timed) > 1 and any(c.get("unfingerprinted", 1) for c in timed.values()):
        last_start = max(c["first_call"] for c in timed.values())
        first_end = min(c["last_call"] for c in timed.values())
        if last_start > first_end:
            detail = "; ".join(f"{a}: {_window(c)}" for a, c in sorted(timed.items()))
            out.append(f"{m}: the {role} judged the arms at times that do not overlap ({detail})")
    return out


def arm_timing(ctx: dict[str, Any]) -> dict[str, Any]:
    """When each arm's sessions were played and judged, and which patient and judge models (with
    their fingerprints) answered, per model and arm; a served model or fingerprint that differs
    between the arms of a model, or judging windows that do not overlap, are deviations."""
    rows, deviations = [], []
    judge_by = ((ctx["stats"].get("judge_provenance") or {}).get("by_arm")) or {}
    safety_by = (((ctx.get("safety") or {}).get("judge_provenance") or {}).get("by_arm")) or {}
    by_model: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(lambda: {"first": [], "last": [], "patient": set()}))
    for st in ctx.get("rollout_stats", []):
        cell = by_model[st["model"]][st["arm"]]
        cell["first"] += [st["first_call"]] if st.get("first_call") else []
        cell["last"] += [st["last_call"]] if st.get("last_call") else []
        cell["patient"] |= set(st.get("served_models", []))
    for m, arms in sorted(by_model.items()):
        for a, c in arms.items():
            jc, sc = judge_by.get(m, {}).get(a), safety_by.get(m, {}).get(a)
            rows.append(
                [
                    m,
                    a,
                    _utc(min(c["first"], default=None)),
                    _utc(max(c["last"], default=None)),
                    ", ".join(sorted(c["patient"])) or "—",
                    _window(jc),
                    ", ".join((jc or {}).get("served", [])) or "—",
                    _window(sc),
                    ", ".join((sc or {}).get("served", [])) or "—",
                ]
            )
        patients = {a: c["patient"] for a, c in arms.items()}
        if len({frozenset(v) for v in patients.values()}) > 1:
            detail = "; ".join(f"{a}: {', '.join(sorted(v)) or 'unknown'}" for a, v in sorted(patients.items()))
            deviations.append(f"{m}: the patient model served to the arms differed ({detail}); the arms met different models")
        for role, by in (("CTRS judge", judge_by), ("safety judge", safety_by)):
            deviations += _judge_deviations(m, role, {a: by.get(m, {}).get(a) or {} for a in arms})
    for name, m in sorted(ctx["config"]["models"].items()):
        src = m.get("source") or {}
        rev = str(src.get("revision", "main"))
        if src.get("type") == "hub" and not re.fullmatch(r"[0-9a-f]{40}", rev):
            deviations.append(
                f"models.{name}.source.revision is {rev!r}, a name that can move, not a commit: the downloaded commit is recorded "
                "(model provenance), but another download may get other weights"
            )
    return {"rows": rows, "deviations": deviations}
