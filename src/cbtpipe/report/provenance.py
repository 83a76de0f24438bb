"""What a run was made with: packages, models, files (hashes), and the benchmark files per stage."""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata as md
import subprocess
from pathlib import Path
from typing import Any

from ..workflow import hash_obj

PACKAGES = ["torch", "transformers", "peft", "trl", "datasets", "llama_cpp_python", "gguf", "snakemake", "scipy", "numpy", "statsmodels"]


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


def collect_provenance(config: dict[str, Any], model_provs: list[dict[str, Any]], extra_files: dict[str, str]) -> dict[str, Any]:
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
