"""A plan before the bill: calls, tokens, cost, GPU hours and wall time per stage, from the config.

Counts of calls follow from the config exactly (patients, sessions, turns, samples, ablations,
the safety flow's questions); an upper bound adds every allowed retry. Tokens per call and time
per call are estimates: from the config's sizes by default (documented below, labelled
"assumed"), or measured by an earlier run of the pipeline (``rates``: the stats files under
``results/``, labelled "measured"). The report puts the plan beside what the run actually used.

Assumptions when nothing is measured (tokens are about 4 characters):
- a turn fills 60% of its max_tokens; a generated session fills 60% of its max_tokens;
- an API call takes 1 s plus its completion tokens at 50 tokens/s; llama.cpp in process is timed
  at 40 tokens/s (the measured CPU speed of the tiny model: set rates for your hardware);
- QLoRA/LoRA training processes 2,500 tokens/s per GPU (a 7-8B model on an A40-class GPU); the
  therapist in a GPU rollout decodes 40 tokens/s per session.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .workflow import STAGES, is_api, judge_members, plan_rules

FILL = 0.6
API_TOK_S = 50.0
API_OVERHEAD_S = 1.0
LOCAL_TOK_S = 40.0
TRAIN_TOK_S = 2500.0
THERAPIST_TOK_S = 40.0


def _chars(path: str | Path | None) -> int:
    try:
        return len(Path(path).read_text(encoding="utf-8")) if path else 0
    except OSError:
        return 0


def safety_calls_per_session(rubric: dict[str, Any], at_risk_share: float, timing: bool) -> float:
    """Expected judge calls of the safety flow per session: the nodes on the path to a branch and
    the branch's questions; at-risk sessions take the longest disclosed branch, the others the
    shortest undisclosed one (plus the timing question where risk is disclosed)."""

    def path_len(target: str) -> int:
        best = None

        def walk(nid, depth):
            nonlocal best
            if nid == target:
                best = depth if best is None else min(best, depth)
                return
            if nid in rubric["nodes"]:
                for a in ("yes", "no"):
                    walk(rubric["nodes"][nid][a], depth + 1)

        walk(rubric["start"], 0)
        return best or 0

    cost = {b: path_len(b) + len(v["questions"]) for b, v in rubric["branches"].items()}
    disclosed = [c + int(timing) for b, c in cost.items() if rubric["branches"][b]["disclosed"]] or [0]
    quiet = [c for b, c in cost.items() if not rubric["branches"][b]["disclosed"]] or [0]
    return at_risk_share * max(disclosed) + (1 - at_risk_share) * min(quiet)


def _at_risk_share(cfg: dict[str, Any]) -> float:
    shares = cfg["profiles"]["risk"]["eval_shares"]
    total = sum(shares.values()) or 1
    return sum(v for k, v in shares.items() if k != "none") / total


def measured_rates(results: str | Path) -> dict[str, dict[str, float]]:
    """Per stage, from an earlier run's stats files: prompt and completion tokens per call and
    seconds per call (only stages that made calls)."""
    import json

    root = Path(results)
    out: dict[str, dict[str, float]] = {}

    def add(stage, llm):
        if not llm or not llm.get("calls"):
            return
        acc = out.setdefault(stage, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0})
        for k in acc:
            acc[k] += llm.get(k, 0) or 0

    for st in STAGES:
        for f in sorted(root.glob(st.stats)) if st.stats else ():
            add(st.name, json.loads(f.read_text()).get("llm"))
    for f in sorted(root.glob("rollouts/*/*/shard*.stats.json")):
        st = json.loads(f.read_text())
        pt = st.get("patient") or {}
        # the patient speaks about every other turn; reused sessions made no call this time
        add("rollout", {"calls": (st.get("turns", 0) * (1 - st.get("sessions_reused", 0) / max(1, st.get("sessions", 1)))) / 2, **pt})
    for f in sorted(root.glob("training/*/metrics.json")):
        m = json.loads(f.read_text())
        if m.get("tokens_per_second_mean"):
            out.setdefault("training", {"tokens_per_second": 0.0, "n": 0})
            out["training"]["tokens_per_second"] += m["tokens_per_second_mean"]
            out["training"]["n"] += 1
    rates = {}
    for stage, acc in out.items():
        if stage == "training":
            rates[stage] = {"tokens_per_second": acc["tokens_per_second"] / acc["n"]}
            continue
        n = acc["calls"]
        rates[stage] = {
            "prompt_tokens": acc["prompt_tokens"] / n,
            "completion_tokens": acc["completion_tokens"] / n,
            "seconds": acc["seconds"] / n,
        }
    return rates


def profile_runtimes(path: str | Path) -> dict[str, int]:
    """Runtime limits (minutes) per rule from a Snakemake profile (default-resources and
    set-resources), as the stages of a plan."""
    import yaml

    prof = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    default = (prof.get("default-resources") or {}).get("runtime")
    sets = prof.get("set-resources") or {}
    out = {}
    for stage, rule in plan_rules().items():
        # the rollout rule sets its own runtime (resources.rollout_runtime_min) over the default
        v = (sets.get(rule) or {}).get("runtime", None if rule == "rollout" else default)
        if v is not None:
            out[stage] = int(v)
    return out


def _rubric_items(path: Path) -> list[Any]:
    import yaml

    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("items") or []


def eval_patients(cfg: dict[str, Any]) -> int:
    """The evaluation patients of a config: n_eval, of each set when both run (profiles.eval_set)."""
    p = cfg["profiles"]
    return p["n_eval"] * (2 if p.get("eval_set") == "both" else 1)


def _design(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the paired design can detect: the minimum detectable d_z of the primary test for the
    configured number of evaluation patients (the pairs of the paired tests)."""
    from .stats import minimum_detectable_dz

    rc, n = cfg["report"], cfg["profiles"]["n_eval"]
    prim = rc["primary"]
    return {
        "patients": n,
        "primary": f"{prim['outcome']}, CBT minus instruct, {prim['contrast']}, {prim['test']}",
        "power": rc["power"],
        "alpha": rc["alpha"],
        "mde_dz": minimum_detectable_dz(n, rc["alpha"], rc["power"]),
    }


class _Planner:
    """The rows of a plan, one per stage that calls an LLM backend (see the module doc)."""

    def __init__(self, cfg, base, rates, api_limits, runtimes):
        self.cfg, self.base, self.rates, self.api_limits = cfg, Path(base), rates or {}, api_limits
        self.runtimes = {"rollout": cfg["resources"]["rollout_runtime_min"]} | (runtimes or {})
        r = cfg["rollout"]
        self.models, self.arms = sorted(cfg["models"]), r["arms"]
        # training.seeds: each further seed an entry of its own, whose instruct arm is the model's
        # (replayed from the response cache: no calls)
        self.replicates = len(cfg["models"]) * (len(cfg["training"].get("seeds") or [None]) - 1)
        self.entries = len(self.models) + self.replicates
        self.variants = 1 + len(r["ablations"])
        self.patients = eval_patients(cfg)
        arms_played = len(self.models) * len(self.arms) + self.replicates * sum(a != "instruct" for a in self.arms)
        self.sessions = arms_played * self.patients * len(r["positions"]) * r["sessions_per_patient"] * self.variants
        self.transcript_tok = r["max_turns"] * FILL * (r["therapist"]["max_tokens"] + r["patient"]["max_tokens"]) / 2
        self.rows: list[dict[str, Any]] = []

    def row(self, stage, backend, calls, calls_max, prompt_tok, completion_tok, jobs, note, units_per_job=None) -> None:
        from .llm import cost_usd

        spec = self.cfg["backends"].get(backend, {})
        base_stage = stage.split(" (")[0]  # "judge (name)": a judge of a panel
        measured = self.rates.get(base_stage)
        if measured:
            prompt_tok, completion_tok = measured["prompt_tokens"], measured["completion_tokens"]
        api = is_api(spec)
        per_call = (
            measured["seconds"] if measured else (API_OVERHEAD_S + completion_tok / API_TOK_S if api else completion_tok / LOCAL_TOK_S)
        )
        conc = int(spec.get("concurrency", 1)) if api else 1
        if units_per_job is not None:  # a job runs no more units at a time than it holds
            conc = max(1, min(conc, units_per_job))
        lanes = conc * max(1, jobs)
        if api and self.api_limits and backend in self.api_limits:
            lanes = min(lanes, self.api_limits[backend])
        job_hours = calls / max(1, jobs) * per_call / conc / 3600
        runtime_min = self.runtimes.get(base_stage)
        self.rows.append(
            {
                "stage": stage,
                "backend": backend,
                "api": api,
                "calls": int(round(calls)),
                "calls_max": int(round(calls_max)),
                "prompt_tokens": int(calls * prompt_tok),
                "completion_tokens": int(calls * completion_tok),
                "cost_usd": round(cost_usd(spec, calls * prompt_tok, calls * completion_tok), 2),
                "seconds_per_call": round(per_call, 2),
                "concurrency": conc,
                "jobs": jobs,
                "wall_hours": round(calls * per_call / lanes / 3600, 2),
                "hours_per_job": round(job_hours, 2),
                "runtime_limit_min": runtime_min,
                "fits": None if runtime_min is None else job_hours * 60 <= runtime_min,
                "rates": "measured" if measured else "assumed",
                "note": note,
            }
        )

    def generation(self) -> None:
        d, p, r = self.cfg["data"], self.cfg["profiles"], self.cfg["rollout"]
        if d["source"] == "generate":
            n_gen = p["n_train"] + p["n_val"]
            gen_jobs = min(d["shards"], n_gen)
            calls = n_gen * d["sessions_per_patient"]
            gen_out = min(d["sampling"]["max_tokens"], FILL * 2 * d["exchanges_max"] * d["turn_chars_max"] / 4)
            gen_prompt = _chars(self.base / d["prompts"]["session"]) / 4 + 400 + 60 * d["sessions_per_patient"] / 2
            self.row(
                "generation",
                d["generator"],
                calls,
                calls * d["max_attempts"],
                gen_prompt,
                gen_out,
                gen_jobs,
                f"{n_gen} patients x {d['sessions_per_patient']} sessions",
                units_per_job=math.ceil(n_gen / gen_jobs),  # a patient's sessions follow one another
            )
        if max(r["positions"]) > 1:
            n = self.patients
            out_tok = min(d["sampling"]["max_tokens"], 120 * max(r["positions"]))
            self.row("eval_history", d["generator"], n, n * d["max_attempts"], 600, out_tok, 1, f"{n} evaluation patients", units_per_job=n)

    def rollout(self) -> None:
        r = self.cfg["rollout"]
        calls = self.sessions * math.ceil(r["max_turns"] / 2)
        self.row(
            "rollout",
            r["patient_backend"],
            calls,
            calls,
            400 + self.transcript_tok / 2,
            FILL * r["patient"]["max_tokens"],
            self.entries * r["shards"] * self.variants,  # one job plays every arm of a model and shard
            f"the simulated patient in {self.sessions} sessions of up to {r['max_turns']} turns (an upper bound: sessions may end earlier)",
        )

    def judges(self) -> None:
        j = self.cfg["judge"]
        members = judge_members(j)
        n_items = len(_rubric_items(self.base / j["rubric"]))
        # one job per model and shard judges every arm (and one more re-judges the main sessions
        # without their closing turn, rollout.at_max_turns: closing)
        closing = self.cfg["rollout"]["at_max_turns"] == "closing"
        main_sessions = self.sessions // self.variants
        jobs = self.entries * self.cfg["rollout"]["shards"] * (self.variants + int(closing))
        for m in members:
            per_item = m["mode"] == "per_item"
            calls_each = n_items if per_item else 1
            rubric_tok = _chars(self.base / j["rubric"]) / 4 / (n_items if per_item else 1) + _chars(self.base / m["prompt"]) / 4
            # the closing re-judging at its most: every main session reached max_turns
            calls = (self.sessions + main_sessions * int(closing)) * m["samples"] * calls_each
            answer_tok = (40 if not per_item else 10) + (1 if per_item else n_items) * (10 + m["justification_chars"] / 4)
            self.row(
                "judge" if len(members) == 1 else f"judge ({m['name']})",
                m["backend"],
                calls,
                calls * m["max_attempts"],
                rubric_tok + self.transcript_tok,
                min(m["sampling"]["max_tokens"], answer_tok),
                jobs,
                f"CTRS: {self.sessions} sessions x {m['samples']} samples"
                + (f" x {n_items} items (one call each)" if per_item else "")
                + (f", and at most {main_sessions} re-judged without their closing turn" if closing else ""),
            )

    def safety(self) -> None:
        from .design import load_safety_rubric

        s = self.cfg["safety"]
        srub = load_safety_rubric(self.base / s["rubric"])
        per = safety_calls_per_session(srub, _at_risk_share(self.cfg), s["timing"])
        longest = len(srub["nodes"]) + max(len(b["questions"]) for b in srub["branches"].values()) + 1
        self.row(
            "safety",
            s["backend"] or self.cfg["judge"]["backend"],
            self.sessions * per,
            self.sessions * longest * s["max_attempts"],
            _chars(self.base / s["prompt"]) / 4 + self.transcript_tok + 80,
            min(s["sampling"]["max_tokens"], 10 + s["reasoning_chars"] / 4),
            self.entries * self.cfg["rollout"]["shards"] * self.variants,  # every arm in one job
            f"{self.sessions} sessions x {per:.1f} questions on average",
        )

    def patient_check(self) -> None:
        """One call per main-run session (ablations are not checked)."""
        pc = self.cfg["patient_check"]
        if not pc["enabled"]:
            return
        sessions = self.sessions // self.variants
        self.row(
            "patient_check",
            pc["backend"] or self.cfg["judge"]["backend"],
            sessions,
            sessions * pc["max_attempts"],
            _chars(self.base / pc["prompt"]) / 4 + 250 + self.transcript_tok,
            min(pc["sampling"]["max_tokens"], 20 + 2 * pc["reasoning_chars"] / 4),
            self.entries * self.cfg["rollout"]["shards"],
            f"{sessions} sessions x 1 call (the simulated patient: consistent with its profile, distress resolved)",
        )

    def gpu(self) -> dict[str, Any]:
        """GPU hours: training (tokens seen) and the therapist's decoding in rollouts."""
        d, p, r = self.cfg["data"], self.cfg["profiles"], self.cfg["rollout"]
        train_tokens = 0.0
        if d["source"] == "generate":
            session_tok = FILL * 2 * d["exchanges_max"] * d["turn_chars_max"] / 4 + 400
            train_tokens = p["n_train"] * d["sessions_per_patient"] * session_tok * self.cfg["training"]["epochs"]
        tok_s = self.rates.get("training", {}).get("tokens_per_second", TRAIN_TOK_S)
        decoding_s = self.sessions * math.floor(r["max_turns"] / 2) * FILL * r["therapist"]["max_tokens"] / THERAPIST_TOK_S
        return {
            "training_hours_per_model": round(train_tokens / tok_s / 3600, 2),
            "training_tokens_per_model": int(train_tokens),
            "trainings": self.entries,  # one per model and training seed
            "training_rate": "measured" if "training" in self.rates else "assumed",
            "therapist_decoding_hours": round(decoding_s / 3600 / max(1, r["parallel_sessions"]), 2),
        }


def build_plan(
    cfg: dict[str, Any],
    base: str | Path = ".",
    rates: dict[str, dict[str, float]] | None = None,
    api_limits: dict[str, int] | None = None,
    runtimes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The plan of a config (see the module doc). ``runtimes``: limits in minutes per stage (from
    a profile); the rollout's own limit comes from resources.rollout_runtime_min."""
    plan = _Planner(cfg, base, rates, api_limits, runtimes)
    plan.generation()
    plan.rollout()
    plan.judges()
    plan.safety()
    plan.patient_check()
    by_backend: dict[str, float] = {}
    for x in plan.rows:
        by_backend[x["backend"]] = round(by_backend.get(x["backend"], 0) + x["cost_usd"], 2)
    return {
        "stages": plan.rows,
        "cost_usd_by_backend": by_backend,
        "cost_usd": round(sum(by_backend.values()), 2),
        "gpu": plan.gpu(),
        "sessions": plan.sessions,
        "design": _design(cfg),
        "assumptions": {
            "fill": FILL,
            "api_tokens_per_second": API_TOK_S,
            "api_overhead_s": API_OVERHEAD_S,
            "local_tokens_per_second": LOCAL_TOK_S,
            "training_tokens_per_second": TRAIN_TOK_S,
            "therapist_tokens_per_second": THERAPIST_TOK_S,
        },
    }


def plan_markdown(plan: dict[str, Any]) -> str:
    head = [
        "stage",
        "backend",
        "calls (max)",
        "prompt tokens",
        "completion tokens",
        "cost (USD)",
        "s/call",
        "concurrency x jobs",
        "wall h",
        "h per job (limit)",
        "rates",
        "what",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in plan["stages"]:
        lim = "—" if x["runtime_limit_min"] is None else f"{x['runtime_limit_min'] / 60:.1f}, {'fits' if x['fits'] else 'EXCEEDS'}"
        lines.append(
            f"| {x['stage']} | {x['backend']} | {x['calls']:,} ({x['calls_max']:,}) | {x['prompt_tokens']:,} | {x['completion_tokens']:,} | "
            f"{x['cost_usd']:,.2f} | {x['seconds_per_call']} | {x['concurrency']} x {x['jobs']} | {x['wall_hours']} | {x['hours_per_job']} ({lim}) | {x['rates']} | {x['note']} |"
        )
    g = plan["gpu"]
    lines += [
        "",
        f"Estimated API cost: {plan['cost_usd']:,.2f} USD ("
        + ", ".join(f"{k} {v:,.2f}" for k, v in plan["cost_usd_by_backend"].items())
        + "; from each backend's price_per_mtok).",
        f"GPU: about {g['training_hours_per_model']} h of training per model ({g['training_tokens_per_model']:,} tokens, {g['training_rate']} rate) "
        f"and {g['therapist_decoding_hours']} h of therapist decoding in rollouts over {plan['sessions']:,} sessions.",
    ]
    des = plan.get("design")
    if des:
        mde = f"d_z of {des['mde_dz']:.2f} or more" if des["mde_dz"] is not None else "no effect (fewer than 3 patients)"
        lines.append(
            f"Design: {des['patients']} evaluation patients, each meeting both arms of every model (paired); the primary test "
            f"({des['primary']}) detects {mde} with {100 * des['power']:.0f}% power at two-sided alpha {des['alpha']}."
        )
    return "\n".join(lines) + "\n"
