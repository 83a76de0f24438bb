"""Figures, the Markdown report and one self-contained HTML page."""

from __future__ import annotations

import base64
import contextlib
import csv
import html
import importlib.metadata as md
import math
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .io import atomic_write_text, hash_obj, read_json

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


def figures(totals: list[dict[str, str]], stats: dict[str, Any], outdir: Path) -> dict[str, str]:
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
    ax.set_xticks(range(pos), labels, fontsize=7)
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

    # 4. judge reliability
    rel = stats["reliability"]
    keys = [*items, "total"]
    vals = [rel[k]["icc2_1"] if rel[k]["icc2_1"] is not None else np.nan for k in keys]
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(keys) + 1.5), 3.2))
    ax.bar(range(len(keys)), np.nan_to_num(vals), color=["tab:purple" if np.isfinite(v) else "lightgray" for v in vals])
    ax.axhspan(0.3, 0.6, color="tab:orange", alpha=0.15, label="human raters, items (about .3-.6)")
    ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("ICC(2,1) across judge samples")
    ax.set_ylim(min(-0.2, np.nanmin(vals) if np.isfinite(vals).any() else 0), 1)
    ax.legend(fontsize=7)
    ax.set_title("Judge reliability (grey: undefined)")
    _save(fig, outdir / "reliability")
    figs["reliability"] = "reliability.png"
    return figs


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
            {"model": p["model"], "source": p.get("source_file") or p.get("source_dir"), "sha256": p.get("source_sha256")}
            for p in model_provs
        ],
        "files": extra_files,
    }


def _reused_note(n: int) -> str:
    return f", {n} of them reused from llama.cpp's key/value cache in this run" if n else ""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def build_markdown(ctx: dict[str, Any]) -> str:
    st = ctx["stats"]
    rub = ctx["rubric"]
    cfg = ctx["config"]
    L = []
    L.append("# CBT fine-tuning report")
    L.append(
        "> Research software, not for clinical use. "
        + (
            "This run used the embedded tiny default model (SmolLM2-135M-Instruct) in every role: its scores say "
            "nothing about therapy quality; they show that each stage ran."
            if ctx.get("tiny")
            else "Scores come from an LLM judge on simulated sessions, not from patients."
        )
    )
    miss = st["missing"]
    L.append("## Summary")
    L.append(
        f"Models: {', '.join(st['models'])}. Arms: {', '.join(st['arms'])}. Sessions judged: {miss['sessions']}. "
        f"Judge samples: {miss['samples']}, valid answers: {miss['valid_samples']} "
        f"({fmt(100 * miss['valid_share'] if miss['valid_share'] is not None else None, 1)}%), missing: {miss['invalid_samples']} "
        f"(recorded as missing, never as 0). Sessions without a total: {miss['sessions_without_total']}. "
        f"Rubric: {rub['name']} ({len(rub['items'])} items, total {rub['min_total']}-{rub['max_total']}); totals use "
        f"{cfg['judge']['totals']} item sets, {cfg['judge']['samples']} judge sample(s) per session reduced by the {cfg['judge']['aggregate']}."
    )
    L.append("## CBT-tuned versus instruct (paired by patient)")
    rows = []
    for m, c in [*st["tuned_vs_instruct"].items(), ("pooled", st["pooled"])]:
        rows.append(
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
                "; ".join(c["notes"]) or "",
            ]
        )
    L.append(
        _table(
            [
                "model",
                "n pairs",
                "instruct mean",
                "CBT mean",
                "difference",
                "95% CI (t)",
                "95% CI (bootstrap)",
                "t",
                "p (t)",
                "Wilcoxon V",
                "p (Wilcoxon)",
                "d_z",
                "rank-biserial",
                "notes",
            ],
            rows,
        )
    )
    L.append(f"Pooled: {st['pooled']['method']}.")
    L.append("![Totals](figures/totals.png)")
    L.append("![Paired](figures/paired.png)")
    L.append("## Published figures for orientation")
    L.append(f"{PUBLISHED['source']}. Mean gain of CBT-tuned over instruct: {PUBLISHED['mean_gain']}.")
    ours = {d["model"]: d for d in st["descriptives"] if d["arm"] == "cbt"}
    L.append(_table(["published model", "published CBT mean ± SD"], [[k, v] for k, v in PUBLISHED["cbt_means"].items()]))
    L.append(
        _table(["our model", "our CBT mean ± SD", "n"], [[m, f"{fmt(d['mean'])} ± {fmt(d['sd'])}", d["n_total"]] for m, d in ours.items()])
    )
    L.append("## Between models (CBT-tuned arms)")
    bm = st["between_models"]
    if "note" in bm:
        L.append(bm["note"] + ".")
    else:
        a, f = bm["rm_anova"], bm["friedman"]
        L.append(
            f"Repeated-measures ANOVA: F({a['df1']}, {a['df2']}) = {fmt(a['F'])}, p = {fmt_p(a['p'])} "
            f"(Greenhouse-Geisser ε = {fmt(a.get('gg_epsilon'))}, p = {fmt_p(a.get('p_gg'))}), "
            f"partial η² = {fmt(a['partial_eta_sq'])} {'; '.join(a['notes'])}"
        )
        L.append(
            f"Friedman: χ²({f['df']}) = {fmt(f['chi2'])}, p = {fmt_p(f['p'])}, Kendall's W = {fmt(f['kendalls_w'])} {'; '.join(f['notes'])}"
        )
        L.append(
            _table(
                ["a", "b", "n", "difference", "p (t)", "p (Holm)", "d_z"],
                [
                    [p["a"], p["b"], p["n"], fmt(p["mean_diff"]), fmt_p(p["p_t"]), fmt_p(p["p_holm"]), fmt(p["cohens_dz"])]
                    for p in bm["pairwise"]
                ],
            )
        )
    L.append("## Per CTRS item")
    for m, pi in st["per_item"].items():
        L.append(f"### {m} (correction across items: {pi['correction']})")
        L.append(
            _table(
                ["item", "n", "instruct", "CBT", "difference", "p (t)", "p adj (t)", "p (Wilcoxon)", "p adj (Wilcoxon)", "d_z"],
                [
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
                ],
            )
        )
    L.append("![Items](figures/items_heatmap.png)")
    L.append("### Descriptives (mean ± SD)")
    hdr = ["model", "arm", "sessions", "total", f"≥ {st['threshold']}"] + st["items"]
    L.append(
        _table(
            hdr,
            [
                [
                    d["model"],
                    d["arm"],
                    d["sessions"],
                    f"{fmt(d['mean'])} ± {fmt(d['sd'])}",
                    fmt(100 * d["competent_share"], 0) + "%" if d["competent_share"] is not None else "—",
                ]
                + [f"{fmt(d['items'][i]['mean'], 1)} ± {fmt(d['items'][i]['sd'], 1)}" for i in st["items"]]
                for d in st["descriptives"]
            ],
        )
    )
    L.append("## Judge validity and reliability")
    L.append(
        f"Valid structured answers: {miss['valid_samples']} of {miss['samples']}. Agreement between the judge's samples of the same session "
        "(ICC(2,1): one sample; ICC(2,k): the mean of k). Human raters reach about .3-.6 on items."
    )
    rel = st["reliability"]
    L.append(
        _table(
            ["item", "sessions", "k", "ICC(2,1)", "ICC(2,k)", "notes"],
            [
                [k, rel[k]["n"], rel[k]["k"], fmt(rel[k]["icc2_1"]), fmt(rel[k]["icc2_k"]), "; ".join(rel[k]["notes"])]
                for k in [*st["items"], "total"]
            ],
        )
    )
    if st.get("human_agreement"):
        ha = st["human_agreement"]
        L.append("Judge-human agreement per item:")
        L.append(
            _table(
                ["item", "n", "ICC(2,1)", "Spearman", "mean |diff|", "notes"],
                [[k, v["n"], fmt(v["icc2_1"]), fmt(v["spearman"]), fmt(v["mad"]), "; ".join(v["notes"])] for k, v in ha["items"].items()],
            )
        )
    else:
        L.append("No human ratings were supplied (config key report.human_ratings).")
    L.append("![Reliability](figures/reliability.png)")
    js = ctx["judge_stats"]
    L.append(
        f"Judge throughput: {sum(j['completion_tokens'] for j in js)} completion tokens in {fmt(sum(j['judge_seconds'] for j in js), 1)} s; "
        f"{sum(j['prompt_tokens'] for j in js)} prompt tokens"
        f"{_reused_note(sum((j.get('llm') or {}).get('prompt_tokens_reused', 0) for j in js))}; "
        f"cost {fmt(sum(j['cost_usd'] for j in js), 4)} USD at the configured prices."
    )
    L.append("## Training")
    L.append(
        _table(
            ["model", "method", "steps", "train loss before", "after", "validation loss before", "after", "tokens/s", "resumed from"],
            [
                [
                    t["model"],
                    t["method"],
                    t["steps"],
                    fmt(t["train_loss_before"], 3),
                    fmt(t["train_loss_after"], 3),
                    fmt(t["val_loss_before"], 3),
                    fmt(t["val_loss_after"], 3),
                    fmt(t["tokens_per_second_mean"], 1),
                    t["resumed_from"] or "—",
                ]
                for t in ctx["training"]
            ],
        )
    )
    L.append("## Export parity (next-token logits, Hugging Face vs llama.cpp)")
    prow = []
    for p in ctx["parity"]:
        for lab, r in p["results"].items():
            prow.append([p["model"], p["arm"], lab, f"{100 * r['top1_agreement']:.1f}%", r["positions"], fmt(r["max_abs_logit_diff"], 3)])
    for p in ctx["provenance_models"]:
        if "parity_vs_source_gguf" in p:
            r = p["parity_vs_source_gguf"]
            prow.append(
                [p["model"], "import", "source GGUF", f"{100 * r['top1_agreement']:.1f}%", r["positions"], fmt(r["max_abs_logit_diff"], 3)]
            )
    L.append(_table(["model", "arm", "GGUF", "top-1 agreement", "positions", "max |Δ logit|"], prow))
    L.append("## Data and sessions")
    g = ctx["gen_stats"]
    L.append(
        f"Transcripts: source {g.get('source')}, {g.get('sessions_kept')} sessions kept, {g.get('sessions_failed', 0)} failed validation "
        f"after retries, generation speed {fmt((g.get('llm') or {}).get('tokens_per_second'), 1)} tokens/s."
    )
    ds = ctx["data_stats"]
    for m, s in ds["per_model"].items():
        L.append(
            f"Dataset ({m} tokenizer): train {s['train'].get('sessions')} sessions, {s['train'].get('tokens_total')} tokens "
            f"({s['train'].get('over_max_length')} over max length); validation {s['val'].get('sessions')} sessions."
        )
    L.append(
        _table(
            ["model", "arm", "sessions", "turns", "stop reasons", "therapist tok/s", "patient tok/s"],
            [
                [
                    r["model"],
                    r["arm"],
                    r["sessions"],
                    r["turns"],
                    ", ".join(f"{k}: {v}" for k, v in sorted(r["stop_reasons"].items())),
                    fmt(r["therapist"]["tokens_per_second"], 1),
                    fmt(r["patient"]["tokens_per_second"], 1),
                ]
                for r in ctx["rollout_stats"]
            ],
        )
    )
    served = [f"{r['model']}/{r['arm']}" for r in ctx["rollout_stats"] if r.get("therapist_backend") == "llama_server"]
    if served:
        L.append(
            f"The therapist of {', '.join(sorted(set(served)))} was served by llama.cpp's server with "
            f"{max(r.get('parallel_sessions', 1) for r in ctx['rollout_stats'])} parallel slots (batched decoding). Batched "
            "decoding is not bit-identical to single-stream decoding: the same seed can give another answer than the "
            "in-process backend would. Re-runs are identical, because every answer is kept in the response cache."
        )
    L.append("## Timing per stage (Snakemake benchmark files)")
    bt = ctx["benchmarks"]
    L.append(
        _table(
            ["stage", "jobs", "seconds", "max RSS (MB)"],
            [[b["stage"], b["jobs"], fmt(b["seconds"], 1), fmt(b["max_rss_mb"], 0)] for b in bt],
        )
    )
    L.append(f"Sum of job times: {fmt(sum(b['seconds'] for b in bt), 1)} s.")
    L.append("## Provenance")
    pv = ctx["provenance"]
    L.append(
        f"Config hash: `{pv['config_hash']}`. Git commit: `{pv['git_commit']}`{' (uncommitted changes)' if pv['git_dirty'] else ''}. Seeds: {pv['seeds']}."
    )
    L.append(_table(["package", "version"], [[k, v or "—"] for k, v in pv["packages"].items()]))
    L.append(
        _table(
            ["model", "source", "sha256"],
            [
                [
                    m["model"],
                    m["source"],
                    m["sha256"] if isinstance(m["sha256"], str) else "; ".join(f"{k}: {v}" for k, v in (m["sha256"] or {}).items()),
                ]
                for m in pv["models"]
            ],
        )
    )
    L.append(_table(["file", "sha256"], [[k, v] for k, v in pv["files"].items()]))
    import yaml

    L.append("Configuration used:\n\n```yaml\n" + yaml.safe_dump(cfg, sort_keys=True) + "```")
    return "\n\n".join(L) + "\n"


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


def _finite(x: Any) -> float | None:
    """A finite float or None."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt(x: Any, nd: int = 2) -> str:
    """Format a number for a report; None shows as an em dash (never 'nan')."""
    v = _finite(x)
    if v is None:
        return "—"
    if abs(v) < 10 ** (-nd) and v != 0:
        return f"{v:.1e}"
    return f"{v:.{nd}f}"


def fmt_p(p: Any) -> str:
    v = _finite(p)
    if v is None:
        return "—"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"
