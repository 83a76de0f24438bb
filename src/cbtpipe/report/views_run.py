"""What a run was made of and cost: judge agreement (within a judge, between judges, with humans),
judge tokens, training, parity, rollouts, benchmarks, provenance, and the plan's estimates beside
what the jobs used."""

from __future__ import annotations

from typing import Any

from ..workflow import instruct_owners
from .numbers import _ci, _notes, _shortening, fmt


def agreement_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """Within-judge consistency, inter-judge agreement and judge-human agreement, kept apart."""
    st = ctx["stats"]
    items = st["items"]
    ha = st.get("human_agreement")
    return {
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
                fmt(rel[k].get("kripp_ordinal_alpha")),
                _ci(rel[k].get("kripp_ordinal_ci")),
                _notes(rel[k]),
            ]
            for judge, rel in st["reliability"].items()
            for k in [*items, "total"]
        ],
        "inter_judge": [
            [
                k,
                v["n"],
                fmt(v["icc2_1"]),
                _ci(v.get("ci2_1")),
                fmt(v.get("kripp_alpha")),
                _ci(v.get("kripp_ci")),
                fmt(v.get("kripp_ordinal_alpha")),
                _ci(v.get("kripp_ordinal_ci")),
                _notes(v),
            ]
            for k in [*items, "total"]
            if (v := (st.get("inter_judge") or {}).get(k))
        ],
        "human": [
            [
                k,
                v["n"],
                fmt(v["icc2_1"]),
                _ci(v.get("ci2_1")),
                fmt(v.get("kripp_alpha")),
                fmt(v.get("kripp_ordinal_alpha")),
                fmt(v["spearman"]),
                fmt(v["mad"]),
                _notes(v),
            ]
            for k in [*items, "total"]
            if (v := ha["items"].get(k))
        ]
        if ha
        else [],
    }


def _parity_rows(ctx: dict[str, Any]) -> list[list[Any]]:
    """Export parity of every arm and quantization, and the import's own check against the source GGUF."""
    owners = instruct_owners(ctx["config"])

    def users(p):  # every entry whose arm this record checks (entries with one base share the instruct arm)
        if p["arm"] != "instruct":
            return p["model"]
        return ", ".join(m for m, o in owners.items() if o == p["model"]) or p["model"]

    parity = [
        [users(p), p["arm"], lab, f"{100 * r['top1_agreement']:.1f}%", r["positions"], fmt(r["max_abs_logit_diff"], 3)]
        for p in ctx["parity"]
        for lab, r in p["results"].items()
    ]
    # the import's own check: the written Hugging Face model against llama.cpp on its source GGUF
    parity += [
        [
            users({**p, "arm": "instruct"}),
            "import",
            "source GGUF",
            f"{100 * r['top1_agreement']:.1f}%",
            r["positions"],
            fmt(r["max_abs_logit_diff"], 3),
        ]
        for p in ctx["provenance_models"]
        if (r := p.get("parity_vs_source_gguf"))
    ]
    return parity


def _training_rows(ctx: dict[str, Any]) -> list[list[Any]]:
    return [
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
    ]


def run_view(ctx: dict[str, Any]) -> dict[str, Any]:
    """What the run cost and was made of: judge tokens, training, parity, rollouts, benchmarks, packages, models, files and the config."""
    js = ctx["judge_stats"]

    parity = _parity_rows(ctx)
    rs = ctx["rollout_stats"]
    served = sorted({f"{r['model']}/{r['arm']}" for r in rs if r.get("therapist_backend") == "llama_server"})
    bt = ctx["benchmarks"]
    pv = ctx["provenance"]
    import yaml

    return {
        "judge": {
            "completion_tokens": sum(j["completion_tokens"] for j in js),
            "prompt_tokens": sum(j["prompt_tokens"] for j in js),
            "seconds": sum(j["judge_seconds"] for j in js),
            "reused": sum((j.get("llm") or {}).get("prompt_tokens_reused", 0) for j in js),
            "cost": sum(j["cost_usd"] for j in js),
        },
        "training": _training_rows(ctx),
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
