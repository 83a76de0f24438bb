"""Figures, the Markdown report and one self-contained HTML page."""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import importlib.metadata as md
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_text, hash_obj, read_json
from .stattests import finite

PUBLISHED = {
    "source": "Tahir 2024, arXiv 2412.00251 (modified CTRS, Gemini 1.5 Pro-002 judge, DeepSeek-V2.5 patient)",
    "cbt_means": {"Llama 3.1 8B": "67.86 ± 7.24", "Qwen 2.5 7B": "64.28 ± 9.55", "Mistral 7B v0.3": "64.17 ± 9.79"},
    "mean_gain": "11.33 points (CBT-tuned minus instruct, p < 0.001)",
}

PACKAGES = ["torch", "transformers", "peft", "trl", "datasets", "llama_cpp_python", "gguf", "snakemake", "scipy", "numpy", "statsmodels"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, base: Path) -> list[str]:
    fig.tight_layout()
    fig.savefig(base.with_suffix(".png"), dpi=110)
    fig.savefig(base.with_suffix(".svg"))
    _plt().close(fig)
    return [str(base.with_suffix(".png")), str(base.with_suffix(".svg"))]


def _f(x: str) -> float:
    return float(x) if x not in ("", None) else float("nan")


def figures(
    totals: list[dict[str, str]],
    stats: dict[str, Any],
    outdir: Path,
    safety: dict[str, Any] | None = None,
    losses: dict[str, list[dict[str, str]]] | None = None,
) -> dict[str, str]:
    """The report's figures (PNG and SVG): totals, paired lines, the per-item heat map,
    agreement with its intervals, and, when given, the safety forest plot and the loss curves."""
    plt = _plt()
    outdir.mkdir(parents=True, exist_ok=True)
    models, arms, items = stats["models"], stats["arms"], stats["items"]
    figs = {}

    # 1. totals per model and arm: box plot with the points
    fig, ax = plt.subplots(figsize=(max(4, 2.2 * len(models)), 3.6))
    pos, labels, rng = 0, [], np.random.default_rng(0)
    for m in models:
        for a in arms:
            v = np.array([_f(r["total"]) for r in totals if r["model"] == m and r["arm"] == a])
            v = v[np.isfinite(v)]
            if v.size:
                ax.boxplot([v], positions=[pos], widths=0.6, showfliers=False)
                ax.scatter(pos + rng.uniform(-0.12, 0.12, v.size), v, s=14, alpha=0.7, color="tab:green" if a == "cbt" else "tab:gray")
            labels.append(f"{m}\n{a}")
            pos += 1
    # long model names: tilted, so that neighbouring labels do not run into each other
    tilt = pos > 4 or max((len(m) for m in models), default=0) > 14
    ax.set_xticks(range(pos), labels, fontsize=7, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel("total score")
    if stats.get("threshold") is not None:
        ax.axhline(stats["threshold"], ls="--", color="tab:red", lw=1, label=f"competence threshold {stats['threshold']}")
        ax.legend(fontsize=7)
    ax.set_title("Session totals per model and arm")
    _save(fig, outdir / "totals")
    figs["totals"] = "totals.png"

    # 2. paired instruct -> CBT lines per patient
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        tm = stats["tuned_vs_instruct"][m]
        pats = tm.get("patients", [])
        per = defaultdict(dict)
        for r in totals:
            if r["model"] == m:
                per[r["patient_id"]].setdefault(r["arm"], []).append(_f(r["total"]))
        for p in pats:
            a, b = np.nanmean(per[p].get("instruct", [np.nan])), np.nanmean(per[p].get("cbt", [np.nan]))
            if np.isfinite(a) and np.isfinite(b):
                ax.plot([0, 1], [a, b], marker="o", color="tab:blue", alpha=0.6)
        ax.set_xticks([0, 1], ["instruct", "CBT-tuned"])
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(m, fontsize=9)
        ax.set_ylabel("total score (patient mean)")
    _save(fig, outdir / "paired")
    figs["paired"] = "paired.png"

    # 3. heat map of per-item mean differences
    mat = np.array(
        [
            [(next((c["mean_diff"] for c in stats["per_item"][m]["items"] if c["item"] == it), None) or np.nan) for it in items]
            for m in models
        ],
        float,
    )
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(items) + 2), 0.6 * len(models) + 1.8))
    lim = np.nanmax(np.abs(mat)) if np.isfinite(mat).any() else 1.0
    im = ax.imshow(np.nan_to_num(mat), cmap="RdBu", vmin=-lim or -1, vmax=lim or 1, aspect="auto")
    ax.set_xticks(range(len(items)), items, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    for i in range(len(models)):
        for j in range(len(items)):
            ax.text(j, i, "—" if not np.isfinite(mat[i, j]) else f"{mat[i, j]:.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="CBT-tuned minus instruct")
    ax.set_title("Per-item mean difference")
    _save(fig, outdir / "items_heatmap")
    figs["items"] = "items_heatmap.png"

    # 4. agreement: within each judge across its samples, and between the judges of a panel
    rel, ij = stats["reliability"], stats.get("inter_judge") or {}
    keys = [*items, "total"]
    series = [(f"within {j}", r) for j, r in rel.items()] + ([("between judges", ij)] if ij else [])
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(keys) + 1.5), 3.4))
    lows = [0.0]
    for n, (label, r) in enumerate(series):
        vals = np.array([r[k]["icc2_1"] if r.get(k, {}).get("icc2_1") is not None else np.nan for k in keys], float)
        ci = [r.get(k, {}).get("ci2_1") or [None, None] for k in keys]
        lo = np.array([np.nan if c[0] is None else c[0] for c in ci], float)
        hi = np.array([np.nan if c[1] is None else c[1] for c in ci], float)
        lows.append(np.nanmin(np.concatenate([vals, lo])) if np.isfinite(np.concatenate([vals, lo])).any() else 0.0)
        x = np.arange(len(keys)) + n * width - 0.4 + width / 2
        ax.bar(x, np.nan_to_num(vals), width, label=label)
        ok = np.isfinite(vals) & np.isfinite(lo) & np.isfinite(hi)
        if ok.any():  # the ICC's 95% interval (McGraw and Wong)
            ax.errorbar(x[ok], vals[ok], yerr=[vals[ok] - lo[ok], hi[ok] - vals[ok]], fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("ICC(2,1) with 95% CI")
    ax.set_ylim(min(-0.2, *lows), 1)
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=7)
    ax.set_title("Agreement: each judge with itself across samples, and between judges")
    _save(fig, outdir / "reliability")
    figs["reliability"] = "reliability.png"
    if safety and safety.get("comparisons"):
        figs["safety"] = safety_forest(safety, outdir)
    if losses:
        figs["loss"] = loss_curves(losses, outdir)
    return figs


def safety_forest(sf: dict[str, Any], outdir: Path) -> str:
    """CBT minus instruct in the share of sessions with a high-harm rating, per model and
    population, with the cluster-bootstrap 95% interval (patients resampled)."""
    plt = _plt()
    rows = []
    for c in sf["comparisons"]:
        for label, d, pairs in (
            ("all at-risk (primary)", (c.get("all_at_risk") or {}).get("harm_rate_difference"), (c.get("all_at_risk") or {}).get("pairs")),
            ("disclosed in both", c.get("harm_rate_difference"), c.get("pairs")),
        ):
            if d:
                rows.append((f"{c['model']}\n{label} (n={pairs or 0})", d.get("estimate"), (d.get("ci") or [None, None])))
    fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    for yi, (_, est, (lo, hi)) in zip(y, rows, strict=True):
        if est is None:
            ax.text(0, yi, "no estimate", ha="center", va="center", fontsize=7, color="gray")
            continue
        if lo is not None and hi is not None:
            ax.plot([100 * lo, 100 * hi], [yi, yi], color="black", lw=1.2)
        ax.plot(100 * est, yi, "s", color="tab:red" if est > 0 else "tab:blue", ms=6)
    ax.axvline(0, color="gray", ls="--", lw=0.8)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("high-harm rate, CBT-tuned minus instruct (percentage points)")
    lims = [abs(100 * v) for _, e, ci in rows for v in (e, *ci) if v is not None]
    lim = max([5.0, *lims]) * 1.15
    ax.set_xlim(-lim, lim)
    ax.set_title("Safety: difference in high-harm rates (95% cluster-bootstrap CI)", fontsize=9)
    _save(fig, outdir / "safety_forest")
    return "safety_forest.png"


def loss_curves(losses: dict[str, list[dict[str, str]]], outdir: Path) -> str:
    """Training loss per optimizer step, one line per model entry."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for model, rows in losses.items():
        pts = [(int(r["step"]), _f(r["loss"])) for r in rows if r.get("loss") not in (None, "")]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=model)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    ax.set_title("Training loss per model", fontsize=9)
    _save(fig, outdir / "loss_curves")
    return "loss_curves.png"


def benchmark_table(bench_dir: str | Path) -> list[dict[str, Any]]:
    """Per-stage wall time summed from Snakemake's benchmark files."""
    rows: dict[str, dict[str, Any]] = {}
    for f in sorted(Path(bench_dir).glob("**/*.tsv")):
        stage = f.parent.name if f.parent != Path(bench_dir) else f.stem
        with open(f, encoding="utf-8") as fh:
            recs = list(csv.DictReader(fh, delimiter="\t"))
        if not recs:
            continue
        s = float(recs[-1]["s"])
        rss = recs[-1].get("max_rss", "")
        d = rows.setdefault(stage, {"stage": stage, "jobs": 0, "seconds": 0.0, "max_rss_mb": 0.0})
        d["jobs"] += 1
        d["seconds"] += s
        with contextlib.suppress(ValueError):
            d["max_rss_mb"] = max(d["max_rss_mb"], float(rss))
    order = ["import", "data", "train", "merge", "export", "parity", "rollout", "judge", "report"]
    return sorted(rows.values(), key=lambda r: order.index(r["stage"]) if r["stage"] in order else 99)


def provenance(config: dict[str, Any], model_provs: list[dict[str, Any]], extra_files: dict[str, str]) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip() or None
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=False
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = None, None
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    return {
        "config_hash": hash_obj(config, 64),
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": versions,
        "seeds": {
            "global": config["seed"],
            "profiles_train": config["profiles"]["seed_train"],
            "profiles_eval": config["profiles"]["seed_eval"],
            "rollout": config["rollout"]["seed"],
            "judge": config["judge"]["seed"],
        },
        "models": [
            {
                "model": p["model"],
                "source": p.get("source_file") or p.get("source_dir"),
                "sha256": p.get("source_sha256"),
                "hub": p.get("hub"),
            }
            for p in model_provs
        ],
        "files": extra_files,
    }


def _ci(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci and None not in ci else "—"


def _notes(x: dict[str, Any]) -> str:
    return "; ".join(x["notes"]) or ""


def _paired_cells(c: dict[str, Any]) -> list[Any]:
    """A paired comparison's cells: pairs, the two means (b, then a), the difference, its t
    interval and p."""
    return [c["n"], fmt(c["mean_b"]), fmt(c["mean_a"]), fmt(c["mean_diff"]), f"[{fmt(c['ci_t'][0])}, {fmt(c['ci_t'][1])}]", fmt_p(c["p_t"])]


def _shortening(t: dict[str, Any]) -> str:
    sh = t.get("shortening")
    if not sh:
        return "—"
    return f"{sh['sessions_windowed']} of {sh['sessions']} sessions in windows ({sh['examples']} examples), {sh['windows_cut']} cut"


def _utc(t: float | None) -> str:
    import datetime

    return "—" if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


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


def report_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """The rows of the report's tables and its totals, formatted (the template only lays them out)."""
    st = ctx["stats"]
    items = st["items"]
    paired = [
        [
            m,
            c["n"],
            fmt(c["mean_b"]),
            fmt(c["mean_a"]),
            fmt(c["mean_diff"]),
            f"[{fmt(c['ci_t'][0])}, {fmt(c['ci_t'][1])}]",
            f"[{fmt(c['ci_boot'][0])}, {fmt(c['ci_boot'][1])}]",
            fmt(c["t"]),
            fmt_p(c["p_t"]),
            fmt(c["wilcoxon_V"], 1),
            fmt_p(c["p_wilcoxon"]),
            fmt(c["cohens_dz"]),
            fmt(c["rank_biserial"]),
            _notes(c),
        ]
        for m, c in [*st["tuned_vs_instruct"].items(), ("pooled", st["pooled"])]
    ]
    prim = st.get("primary")
    if prim and prim["outcome"] == "total":  # the paired table is of totals: label its rows
        names = [*st["tuned_vs_instruct"], "pooled"]
        for row, name in zip(paired, names, strict=True):
            row[0] = f"{name} (primary)" if name == prim["contrast"] else f"{name} (secondary)"
    ours = {d["model"]: d for d in st["descriptives"] if d["arm"] == "cbt"}
    bm = st["between_models"]
    ha = st.get("human_agreement")
    js = ctx["judge_stats"]
    parity = [
        [p["model"], p["arm"], lab, f"{100 * r['top1_agreement']:.1f}%", r["positions"], fmt(r["max_abs_logit_diff"], 3)]
        for p in ctx["parity"]
        for lab, r in p["results"].items()
    ]
    parity += [
        [p["model"], "import", "source GGUF", f"{100 * r['top1_agreement']:.1f}%", r["positions"], fmt(r["max_abs_logit_diff"], 3)]
        for p in ctx["provenance_models"]
        if (r := p.get("parity_vs_source_gguf"))
    ]
    rs = ctx["rollout_stats"]
    served = sorted({f"{r['model']}/{r['arm']}" for r in rs if r.get("therapist_backend") == "llama_server"})
    bt = ctx["benchmarks"]
    pv = ctx["provenance"]
    import yaml

    mx = st.get("max_total")

    def pct(v):
        return fmt(100 * v / mx, 1) + "%" if (v is not None and mx) else "—"

    def ci(c):
        return f"[{fmt(c[0])}, {fmt(c[1])}]"

    miss = st["missing"]
    bounds = miss.get("bounds") or {}
    missing_rows = [
        [
            g["model"],
            g["arm"],
            g["sessions"],
            g["sessions_without_total"],
            fmt(100 * g["missing_share"], 1) + "%" if g["missing_share"] is not None else "—",
            g["samples"],
            g["invalid_samples"],
        ]
        for g in miss.get("by_group", [])
    ]
    bound_rows = [
        [k, fmt(bounds["complete_case"][k]), fmt(bounds["worst_for_cbt"][k]), fmt(bounds["best_for_cbt"][k])]
        for k in [*st["models"], "pooled"]
        if k in bounds.get("complete_case", {})
    ]
    mm = st.get("mixed_model") or {}
    cl = st.get("closing") or {}
    return {
        "tests": [
            [t["family"], t["test"], fmt_p(t["p"]), fmt_p(t.get("p_adjusted")), t.get("family_size", "—")] for t in st.get("tests", [])
        ],
        "risk_strata": [
            ["no risk" if r["stratum"] == "none" else "at risk", r["model"], *_paired_cells(r), _notes(r)]
            for r in st.get("risk_strata", [])
        ],
        "mixed_risk": [
            ["no risk" if e["risk"] == "none" else "at risk", fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"]), fmt_p(e["p"])]
            for e in mm.get("arm_effects_by_risk", [])
        ],
        "closing": [
            [m, *_paired_cells(c), _notes(c)]
            for m, c in [*cl.get("without", {}).items(), *([("pooled", cl["pooled_without"])] if cl else [])]
        ],
        "mixed_emm": [[e["model"], e["arm"], fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"])] for e in mm.get("emm", [])],
        "mixed_effects": [[e["model"], fmt(e["estimate"]), fmt(e["se"]), _ci(e["ci"]), fmt_p(e["p"])] for e in mm.get("arm_effects", [])],
        "primary": _primary_text(prim, ctx.get("declaration")) if prim else None,
        "arm_timing": arm_timing(ctx),
        "missing_by_group": missing_rows,
        "missing_bounds": bound_rows,
        "paired": paired,
        "published": [[k, v] for k, v in PUBLISHED["cbt_means"].items()],
        "ours": [[m, f"{fmt(d['mean'])} ± {fmt(d['sd'])}", pct(d["mean"]), d["n_total"]] for m, d in ours.items()],
        "positions": [
            [
                r["position"],
                r["model"],
                r["sessions"],
                fmt(r["mean_instruct"]),
                fmt(r["mean_cbt"]),
                r["n"],
                fmt(r["mean_diff"]),
                ci(r["ci_t"]),
                fmt_p(r["p_t"]),
                "; ".join(r["notes"]),
            ]
            for r in st.get("by_position", [])
        ],
        "lengths": [
            [
                r["model"],
                r["arm"],
                r["sessions"],
                fmt(r["turns_mean"], 1),
                fmt(r["words_per_therapist_turn"], 1),
                fmt(r["therapist_tokens_mean"], 0),
                r["turns_cut_at_max_tokens"],
                r["sessions_with_context_truncation"],
                f"{fmt(r['context_tokens_mean'], 0)} / {r['context_tokens_max'] if r['context_tokens_max'] is not None else '—'}",
                r["closing_prompted"],
                ", ".join(f"{k}: {v}" for k, v in r["stop_reasons"].items()),
            ]
            for r in st.get("lengths", [])
        ],
        "length_adjusted": [
            [cov, m, c["n"], fmt(c["adjusted_diff"]), ci(c["ci"]), fmt_p(c["p"]), fmt(c["slope"], 3), fmt_p(c["p_slope"]), _notes(c)]
            for cov, per in st.get("length_adjusted", {}).items()
            for m, c in per.items()
        ],
        "context": [
            [
                g["model"],
                g["arm"],
                g["n"],
                fmt(g["rho"]),
                fmt_p(g["p"]),
                f"{fmt(g.get('rho_sessions'))} {_ci(g.get('ci_sessions') or [None, None])} (n={g.get('n_sessions', '—')})",
                f"{fmt(g['mean_below'])} (n={g['n_below']})",
                f"{fmt(g['mean_at_or_above'])} (n={g['n_at_or_above']})",
                _notes(g),
            ]
            for g in [
                *st.get("context_vs_score", {}).get("groups", []),
                *([dict(st["context_vs_score"]["pooled"], model="pooled", arm="both")] if st.get("context_vs_score") else []),
            ]
        ],
        "subtotals": [
            [
                sub["name"],
                f"0-{sub['max']}",
                m,
                c["n"],
                fmt(c["mean_b"]),
                fmt(c["mean_a"]),
                fmt(c["mean_diff"]),
                ci(c["ci_t"]),
                fmt_p(c["p_t"]),
                fmt(c["cohens_dz"]),
            ]
            for sub in st.get("subtotals", {}).values()
            for m, c in sub["models"].items()
        ],
        "ablations": [
            [
                name,
                ", ".join(f"{k}: {v}" for k, v in ab["settings"].items()),
                r["model"],
                r["arm"],
                *_paired_cells(r),
                f"{fmt(r['context_tokens_mean_main'], 0)} → {fmt(r['context_tokens_mean_variant'], 0)}",
            ]
            for name, ab in ctx.get("ablations", {}).items()
            for r in ab["comparison"]
        ],
        "turn_groups": [
            [g["model"], g["arm"], g["n"], fmt(g["rho"]), fmt_p(g["p"]), _notes(g)] for g in ctx.get("turn_windows", {}).get("groups", [])
        ],
        "turn_bins": [
            [b["model"], b["arm"], b["context"], b["n"], fmt(b["mean_pct"], 1)] for b in ctx.get("turn_windows", {}).get("bins", [])
        ],
        "subtotal_notes": [f"{sub['name']}: {sub['note'].strip()}" for sub in st.get("subtotals", {}).values()],
        "pairwise": [
            [p["a"], p["b"], p["n"], fmt(p["mean_diff"]), fmt_p(p["p_t"]), fmt_p(p["p_holm"]), fmt(p["cohens_dz"])]
            for p in bm.get("pairwise", [])
        ],
        "per_item": {
            m: [
                [
                    c["item"],
                    c["n"],
                    fmt(c["mean_b"]),
                    fmt(c["mean_a"]),
                    fmt(c["mean_diff"]),
                    fmt_p(c["p_t"]),
                    fmt_p(c["p_t_adj"]),
                    fmt_p(c["p_wilcoxon"]),
                    fmt_p(c["p_wilcoxon_adj"]),
                    fmt(c["cohens_dz"]),
                ]
                for c in pi["items"]
            ]
            for m, pi in st["per_item"].items()
        },
        "descriptives": [
            [
                d["model"],
                d["arm"],
                d["sessions"],
                f"{fmt(d['mean'])} ± {fmt(d['sd'])}",
                pct(d["mean"]),
                fmt(100 * d["competent_share"], 0) + "%" if d["competent_share"] is not None else "—",
            ]
            + [f"{fmt(d['items'][i]['mean'], 1)} ± {fmt(d['items'][i]['sd'], 1)}" for i in items]
            for d in st["descriptives"]
        ],
        "reliability": [
            [
                judge,
                k,
                rel[k]["n"],
                rel[k]["k"],
                fmt(rel[k]["icc2_1"]),
                _ci(rel[k].get("ci2_1")),
                fmt(rel[k]["icc2_k"]),
                _ci(rel[k].get("ci2_k")),
                fmt(rel[k].get("kripp_alpha")),
                _ci(rel[k].get("kripp_ci")),
                _notes(rel[k]),
            ]
            for judge, rel in st["reliability"].items()
            for k in [*items, "total"]
        ],
        "inter_judge": [
            [k, v["n"], fmt(v["icc2_1"]), _ci(v.get("ci2_1")), fmt(v.get("kripp_alpha")), _ci(v.get("kripp_ci")), _notes(v)]
            for k in [*items, "total"]
            if (v := (st.get("inter_judge") or {}).get(k))
        ],
        "human": [
            [k, v["n"], fmt(v["icc2_1"]), _ci(v.get("ci2_1")), fmt(v.get("kripp_alpha")), fmt(v["spearman"]), fmt(v["mad"]), _notes(v)]
            for k in [*items, "total"]
            if (v := ha["items"].get(k))
        ]
        if ha
        else [],
        "judge": {
            "completion_tokens": sum(j["completion_tokens"] for j in js),
            "prompt_tokens": sum(j["prompt_tokens"] for j in js),
            "seconds": sum(j["judge_seconds"] for j in js),
            "reused": sum((j.get("llm") or {}).get("prompt_tokens_reused", 0) for j in js),
            "cost": sum(j["cost_usd"] for j in js),
        },
        "training": [
            [
                t["model"],
                t["method"],
                t["steps"],
                fmt(t["train_loss_before"], 3),
                fmt(t["train_loss_after"], 3),
                fmt(t["val_loss_before"], 3),
                fmt(t["val_loss_after"], 3),
                fmt(t["tokens_per_second_mean"], 1),
                t.get("chat_layout", "—"),
                _shortening(t),
                t["resumed_from"] or "—",
            ]
            for t in ctx["training"]
        ],
        "parity": parity,
        "rollouts": [
            [
                r["model"],
                r["arm"],
                r["sessions"],
                r["turns"],
                ", ".join(f"{k}: {v}" for k, v in sorted(r["stop_reasons"].items())),
                fmt(r["therapist"]["tokens_per_second"], 1),
                fmt(r["patient"]["tokens_per_second"], 1),
            ]
            for r in rs
        ],
        "served": served,
        "parallel": max((r.get("parallel_sessions", 1) for r in rs), default=1),
        "benchmarks": [[b["stage"], b["jobs"], fmt(b["seconds"], 1), fmt(b["max_rss_mb"], 0)] for b in bt],
        "benchmark_seconds": sum(b["seconds"] for b in bt),
        "packages": [[k, v or "—"] for k, v in pv["packages"].items()],
        "models": [
            [
                m["model"],
                m["source"],
                f"{m['hub']['repo_id']} @ {m['hub']['commit']} (revision {m['hub']['revision']}, downloaded {m['hub']['downloaded_at']})"
                if m.get("hub")
                else "—",
                m["sha256"] if isinstance(m["sha256"], str) else "; ".join(f"{k}: {v}" for k, v in (m["sha256"] or {}).items()),
            ]
            for m in pv["models"]
        ],
        "files": [[k, v] for k, v in pv["files"].items()],
        "config_yaml": yaml.safe_dump(ctx["config"], sort_keys=True),
    }


def arm_timing(ctx: dict[str, Any]) -> dict[str, Any]:
    """When each arm's sessions were played and which patient and judge models answered, per model
    and arm; a served model that differs between the arms of a model is a deviation of the run."""
    rows, deviations = [], []
    judge_served = ((ctx["stats"].get("judge_provenance") or {}).get("served_by_arm")) or {}
    by_model: dict[str, dict[str, dict[str, Any]]] = defaultdict(lambda: defaultdict(lambda: {"first": [], "last": [], "patient": set()}))
    for st in ctx.get("rollout_stats", []):
        cell = by_model[st["model"]][st["arm"]]
        cell["first"] += [st["first_call"]] if st.get("first_call") else []
        cell["last"] += [st["last_call"]] if st.get("last_call") else []
        cell["patient"] |= set(st.get("served_models", []))
    for m, arms in sorted(by_model.items()):
        for a, c in arms.items():
            judges = judge_served.get(m, {}).get(a, [])
            rows.append(
                [
                    m,
                    a,
                    _utc(min(c["first"], default=None)),
                    _utc(max(c["last"], default=None)),
                    ", ".join(sorted(c["patient"])) or "—",
                    ", ".join(judges) or "—",
                ]
            )
        for role, sets in (
            ("patient", {a: c["patient"] for a, c in arms.items()}),
            ("judge", {a: set(judge_served.get(m, {}).get(a, [])) for a in arms}),
        ):
            if len({frozenset(v) for v in sets.values()}) > 1:
                detail = "; ".join(f"{a}: {', '.join(sorted(v)) or 'unknown'}" for a, v in sorted(sets.items()))
                deviations.append(f"{m}: the {role} model served to the arms differed ({detail}); the arms met different models")
    for name, m in sorted(ctx["config"]["models"].items()):
        src = m.get("source") or {}
        rev = str(src.get("revision", "main"))
        if src.get("type") == "hub" and not re.fullmatch(r"[0-9a-f]{40}", rev):
            deviations.append(
                f"models.{name}.source.revision is {rev!r}, a name that can move, not a commit: the downloaded commit is recorded "
                "(model provenance), but another download may get other weights"
            )
    return {"rows": rows, "deviations": deviations}


def _rate(c: dict[str, Any]) -> str:
    """A cluster-bootstrap rate as "k/n (x%) [lo, hi]"."""
    if not c or c.get("estimate") is None:
        return "—"
    lo, hi = c["ci"]
    ci = f" [{100 * lo:.0f}%, {100 * hi:.0f}%]" if lo is not None else ""
    return f"{fmt(c['num'], 0)}/{fmt(c['den'], 0)} ({100 * c['estimate']:.0f}%){ci}"


def _mean_ci(c: dict[str, Any]) -> str:
    if not c or c.get("estimate") is None:
        return "—"
    lo, hi = c["ci"]
    return f"{fmt(c['estimate'], 1)}" + (f" [{fmt(lo, 1)}, {fmt(hi, 1)}]" if lo is not None else "") + f" (n={fmt(c['den'], 0)})"


def safety_view(sf: dict[str, Any]) -> dict[str, Any]:
    """The rows of the report's safety tables (results/report/safety.json)."""
    if not sf:
        return {}
    dims = {d["id"]: d["name"] for d in sf["rubric"]["dimensions"]}
    per_arm = [
        [
            a["model"],
            a["arm"],
            a["at_risk_sessions"],
            a["disclosed"],
            a["not_disclosed"],
            a["gate_missing"],
            _rate(a["all_at_risk"]["any_high_harm"]),
            _mean_ci(a["all_at_risk"]["score"]),
            _rate(a["any_high_harm"]),
            _mean_ci(a["score"]),
            f"{a['over_escalation']['k']}/{a['over_escalation']['n']}"
            + (f" ({a['over_escalation']['missing']} missing)" if a["over_escalation"].get("missing") else ""),
            a["unexpected_disclosures"],
            f"{a['refusals']['safety_judge']} / {a['refusals']['ctrs_judge']}",
            a["refusals"]["patient_turns"],
        ]
        for a in sf["per_arm"]
    ]
    adj = {t["test"]: t for t in sf.get("tests", [])}

    def comp_row(model: str, population: str, c: dict[str, Any], tests: tuple[str, str]) -> list[Any]:
        t, mc, d, s = c["table"], c["mcnemar"], c["harm_rate_difference"], c["score"]
        dci = f" [{fmt(100 * d['ci'][0], 1)}, {fmt(100 * d['ci'][1], 1)}]" if d["ci"][0] is not None else ""
        harm_t, score_t = (adj.get(f"{model}: {x}") or {} for x in tests)
        return [
            model,
            population,
            c["pairs"],
            c.get("patients", "—"),
            f"{t['both']} / {t['a_only']} / {t['b_only']} / {t['neither']}",
            fmt(mc["chi2"]),
            fmt_p(mc["p"]),
            fmt_p(harm_t.get("p_adjusted")),
            (fmt(100 * d["estimate"], 1) + " pts" + dci) if d["estimate"] is not None else "—",
            s["n"],
            fmt(s["mean_diff"], 1),
            f"[{fmt(s['ci_boot'][0], 1)}, {fmt(s['ci_boot'][1], 1)}]",
            fmt_p(s["p_t"]),
            fmt_p(score_t.get("p_adjusted")),
            "; ".join(mc["notes"] + s["notes"]),
        ]

    comp = []
    for c in sf["comparisons"]:
        if "all_at_risk" in c:
            comp.append(
                comp_row(
                    c["model"],
                    "all at-risk sessions (primary)",
                    c["all_at_risk"],
                    (
                        "any high-harm rating, all at-risk sessions (clustered McNemar)",
                        "safety score, all at-risk sessions (paired t)",
                    ),
                )
            )
        comp.append(
            comp_row(
                c["model"],
                "disclosed in both arms",
                c,
                ("any high-harm rating, disclosed sessions (clustered McNemar)", "safety score, disclosed sessions (paired t)"),
            )
        )

    def pc(x, ci=None):
        if x is None:
            return "—"
        lo, hi = ci or (None, None)
        return f"{100 * x:.0f}%" + (f" [{100 * lo:.0f}%, {100 * hi:.0f}%]" if lo is not None else "")

    def dci(v, k):
        return (v.get("ci") or {}).get(k)

    dim_rows = [
        [
            a["model"],
            a["arm"],
            dims.get(d, d),
            v["rated"],
            pc(v["rates"]["best_practice"], dci(v, "best_practice")),
            pc(v["rates"]["suboptimal"]),
            pc(v["rates"]["high_harm"], dci(v, "high_harm")),
            v["not_applicable"],
            v["missing"],
        ]
        for a in sf["per_arm"]
        for d in dims
        if (v := a["dimensions"].get(d))
    ]
    breakdown = [
        [
            b["model"],
            b["arm"],
            b["risk_level"],
            b["disclosure_style"] or "—",
            b["sessions"],
            b["disclosed"],
            b.get("not_disclosed", "—"),
            f"{b['any_high_harm_all']}/{b['with_harm_outcome_all']}" if "any_high_harm_all" in b else "—",
            f"{b['any_high_harm']}/{b['with_harm_outcome']}",
            fmt(b["mean_score"], 1),
        ]
        for b in sf["breakdown"]
    ]
    timing = [
        [
            a["model"],
            a["arm"],
            a["timing"]["with_disclosure_turn"],
            fmt(a["timing"]["turns_to_acknowledgement"]["median"], 1),
            a["timing"]["never_acknowledged"],
            fmt(a["timing"]["turns_to_resources"]["median"], 1),
            a["timing"].get("resources_only_before_disclosure", "—"),
            a["timing"]["never_resources"],
        ]
        for a in sf["per_arm"]
    ]
    abl = [
        [
            x["variant"],
            x["model"],
            x["arm"],
            x["disclosed"],
            _rate(x.get("any_high_harm_all")),
            _rate(x["any_high_harm"]),
            _mean_ci(x["score"]),
            x["vs_main"]["pairs"],
            f"{x['vs_main']['table']['a_only']} / {x['vs_main']['table']['b_only']}",
            fmt_p(x["vs_main"]["mcnemar"]["p"]),
            fmt(x["vs_main"]["score"]["mean_diff"], 1),
        ]
        for x in sf["ablations"]
    ]
    return {"per_arm": per_arm, "comparisons": comp, "dimensions": dim_rows, "breakdown": breakdown, "timing": timing, "ablations": abl}


def plan_view(ctx: dict[str, Any]) -> list[list[Any]]:
    """The plan's estimates beside what this run's jobs used (calls made now: units reused from
    an earlier run and answers from the response cache cost nothing)."""
    plan = ctx.get("plan") or {}
    if not plan:
        return []

    def llm_sum(stats):
        acc = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cache_hits": 0}
        for s in stats:
            for k in acc:
                acc[k] += ((s or {}).get("llm") or {}).get(k, 0) or 0
        return acc

    rs = ctx.get("rollout_stats", [])
    actual = {
        "generation": llm_sum([ctx.get("gen_stats")]),
        "eval_history": llm_sum([ctx.get("eval_history")]),
        "judge": llm_sum(ctx.get("judge_stats", [])),
        **{
            f"judge ({name})": llm_sum([s["judges"][name] for s in ctx.get("judge_stats", []) if name in (s.get("judges") or {})])
            for name in {n for s in ctx.get("judge_stats", []) for n in (s.get("judges") or {})}
        },
        "safety": llm_sum(ctx.get("safety_stats", [])),
        "rollout": {
            "calls": sum(s.get("turns", 0) for s in rs) / 2,
            "prompt_tokens": sum((s.get("patient") or {}).get("prompt_tokens", 0) for s in rs),
            "completion_tokens": sum((s.get("patient") or {}).get("completion_tokens", 0) for s in rs),
            "cache_hits": None,
        },
    }
    rows = []
    for x in plan["stages"]:
        a = actual.get(x["stage"], {})
        calls = a.get("calls")
        rows.append(
            [
                x["stage"],
                x["backend"],
                f"{x['calls']:,}",
                "—" if calls is None else (f"≈{calls:,.0f}" if x["stage"] == "rollout" else f"{calls:,}"),
                "—" if a.get("cache_hits") is None else a["cache_hits"],
                f"{x['prompt_tokens']:,}",
                f"{a.get('prompt_tokens', 0):,}",
                f"{x['completion_tokens']:,}",
                f"{a.get('completion_tokens', 0):,}",
                fmt(x["cost_usd"]),
                x["rates"],
            ]
        )
    return rows


def build_markdown(ctx: dict[str, Any]) -> str:
    """The Markdown report: templates/report.md.j2 laid out over report_view(ctx)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cbtpipe", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML; markdown-it-py escapes raw HTML when it renders the page
    )
    env.filters["fmt"] = fmt
    env.filters["fmt_p"] = fmt_p
    ctx = {"safety": {}} | ctx
    text = env.get_template("report.md.j2").render(
        **ctx, view=report_view(ctx), sview=safety_view(ctx["safety"]), plan_rows=plan_view(ctx), published=PUBLISHED
    )
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    return link_rows(text, list(ctx.get("config", {}).get("models", {})))


# Table columns whose value names a model (or "pooled"), and columns that narrow the selection.
MODEL_COLUMNS = ("model", "contrast", "our model")
FILTER_COLUMNS = {"position": "position", "risk level": "risk", "patient": "patient"}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def link_rows(markdown: str, models: list[str]) -> str:
    """Every table row that names a model (or the pooled models) links its model cell to the
    row's sessions in the results browser, narrowed by the row's position, risk level or
    patient where the table has such a column."""
    from .browser import browser_link

    lines = markdown.split("\n")
    header: list[str] | None = None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = [h.lower() for h in _cells(line)]
            continue
        if set(line) <= set("|-: "):
            continue  # the separator
        cells = _cells(line)
        col = next((header.index(c) for c in MODEL_COLUMNS if c in header), None)
        if col is None or col >= len(cells) or len(cells) != len(header):
            continue
        value = cells[col]
        base = value.split(" (")[0].strip()
        if base not in models and base != "pooled":
            continue
        filters = {}
        for name, key in FILTER_COLUMNS.items():
            if name in header and cells[header.index(name)] not in ("", "—", "all"):
                filters[key] = cells[header.index(name)]
        cells[col] = f"[{value}]({browser_link(base if base in models else None, **filters)})"
        lines[i] = "| " + " | ".join(cells) + " |"
    return "\n".join(lines)


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    ".table-wrap{overflow-x:auto;max-width:100%;margin:1em 0}"
    "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em}"
    "th{background:#f3f3f3}img{max-width:100%}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em}"
    "blockquote{background:#fff4e5;border-left:4px solid #f0a020;margin:1em 0;padding:.5em 1em}"
    "figure{margin:1em 0}figcaption{color:#555;font-size:.85em}"
)


def md_to_html(text: str, base: Path, title: str) -> str:
    """The Markdown report as one self-contained page: rendered by markdown-it-py (CommonMark and
    tables, raw HTML escaped), figures inlined as data URIs, wide tables scrolling inside their own
    box instead of running off the page."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)

    def figure(m: re.Match) -> str:
        src, alt = html.unescape(m.group(1)), m.group(2)
        img = base / src
        data = base64.b64encode(img.read_bytes()).decode() if img.is_file() else ""
        return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}" /><figcaption>{alt}</figcaption></figure>'

    body = re.sub(r'<p><img src="([^"]+)" alt="([^"]*)" /></p>', figure, body)
    body = body.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n'
        + body
        + "</body></html>\n"
    )


def write_report(md_path: str | Path, html_path: str | Path, markdown: str) -> None:
    atomic_write_text(md_path, markdown)
    atomic_write_text(html_path, md_to_html(markdown, Path(md_path).parent, "CBT fine-tuning report"))


def load_many(paths: list[str]) -> list[dict[str, Any]]:
    return [read_json(p) for p in paths]


def fmt(x: Any, nd: int = 2) -> str:
    """Format a number for a report; None shows as an em dash (never 'nan')."""
    v = finite(x)
    if v is None:
        return "—"
    if abs(v) < 10 ** (-nd) and v != 0:
        return f"{v:.1e}"
    return f"{v:.{nd}f}"


def fmt_p(p: Any) -> str:
    v = finite(p)
    if v is None:
        return "—"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"
