"""The report's figures (matplotlib, PNG and SVG): CTRS scores, agreement, the safety forest plot, loss curves."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


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


def _totals(totals: list[dict[str, str]], stats: dict[str, Any], outdir: Path) -> str:
    """Totals per model and arm: a box plot with the points."""
    plt = _plt()
    models, arms = stats["models"], stats["arms"]
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
    return "totals.png"


def _paired(totals: list[dict[str, str]], stats: dict[str, Any], outdir: Path) -> str:
    """Each patient's instruct and CBT means joined by a line, per model."""
    plt = _plt()
    models = stats["models"]
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
    return "paired.png"


def _items_heatmap(totals: list[dict[str, str]], stats: dict[str, Any], outdir: Path) -> str:
    """The per-item mean differences, CBT-tuned minus instruct, per model."""
    plt = _plt()
    models, items = stats["models"], stats["items"]
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
    return "items_heatmap.png"


def _agreement(totals: list[dict[str, str]], stats: dict[str, Any], outdir: Path) -> str:
    """Agreement: each judge with itself across samples, and between the judges of a panel (ICC with its interval)."""
    plt = _plt()
    items = stats["items"]
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
    return "reliability.png"


def draw_figures(
    totals: list[dict[str, str]],
    stats: dict[str, Any],
    outdir: Path,
    safety: dict[str, Any] | None = None,
    losses: dict[str, list[dict[str, str]]] | None = None,
) -> dict[str, str]:
    """The report's figures (PNG and SVG): totals, paired lines, the per-item heat map,
    agreement with its intervals, and, when given, the safety forest plot and the loss curves."""
    outdir.mkdir(parents=True, exist_ok=True)
    figs = {
        "totals": _totals(totals, stats, outdir),
        "paired": _paired(totals, stats, outdir),
        "items": _items_heatmap(totals, stats, outdir),
        "reliability": _agreement(totals, stats, outdir),
    }
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
