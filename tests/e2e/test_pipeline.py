"""The CI-sized pipeline end to end: real llama.cpp, real peft/trl training, real Snakemake."""

import csv
import json
import re

import pytest

from tests.helpers.pvalues import unregistered_p_values
from tests.helpers.workdir import run_snakemake

pytestmark = pytest.mark.e2e


def _jsonl(p):
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def test_both_arms_met_the_same_patients_with_the_same_seeds(ci_run):
    arms = {}
    for arm in ("instruct", "cbt"):
        rows = _jsonl(ci_run / f"results/rollouts/smollm2-135m/{arm}/shard00.jsonl")
        arms[arm] = {
            (s["patient_id"], s["position"], s["session"], s["patient_seed"], s["therapist_seed"], s["course_context"]) for s in rows
        }
        for s in rows:
            assert s["turns"] >= 1 and s["stop_reason"]
            assert s["arm"] == arm and s["quantization"] == "Q4_K_M"
    # 2 patients x positions 1 and 2, the same course contexts in both arms
    assert arms["instruct"] == arms["cbt"] and len(arms["cbt"]) == 4
    ctx = {pos: c for _, pos, _, _, _, c in arms["cbt"]}
    assert "session 1 of 2" in ctx[1] and "no earlier homework" in ctx[1]
    assert "session 2 of 2" in ctx[2] and "Session 1:" in ctx[2]


def test_training_examples_carry_their_course_context(ci_run):
    rows = _jsonl(ci_run / "results/data/train.jsonl") + _jsonl(ci_run / "results/data/val.jsonl")
    assert {r["session_index"] for r in rows} == {1, 2}
    for r in rows:
        system = r["messages"][0]
        assert system["role"] == "system" and system["content"].endswith(r["course_context"])
        assert f"session {r['session_index']} of 2" in r["course_context"]
    layout = json.loads((ci_run / "results/models/smollm2-135m/chat_layout.json").read_text())
    assert layout["system"] == "native" and layout["end_of_turn"] == "<|im_end|>"
    metrics = json.loads((ci_run / "results/training/smollm2-135m/metrics.json").read_text())
    assert metrics["chat_layout"] == "native" and metrics["shortening"]["sessions"] == 4


def test_report_content(ci_run):
    md = (ci_run / "results/report/report.md").read_text()
    assert unregistered_p_values(md) == []  # every printed p-value is a test of the register
    html = (ci_run / "results/report/report.html").read_text()
    totals = list(csv.DictReader((ci_run / "results/report/session_totals.csv").read_text().splitlines()))
    by_patient = {}
    for r in totals:
        by_patient.setdefault(r["patient_id"], set()).add(r["arm"])
    assert by_patient and all(v == {"instruct", "cbt"} for v in by_patient.values())
    m = re.search(r"Judge samples: (\d+), valid answers: (\d+)", md)
    assert m and int(m.group(1)) == 2 * 2 * 2 * (2 + 1)  # patients x positions x arms x samples of the two judges
    assert int(m.group(2)) >= 1
    for section in (
        "CBT-tuned versus instruct",
        "Per CTRS item",
        "Judge validity and reliability",
        "Export parity",
        "Training",
        "Timing per stage",
        "Provenance",
        "Published figures",
        "By course position",
        "Session length and how sessions ended",
        "Does the gain from tuning depend on the model? (mixed model, secondary)",
    ):
        assert f"## {section}" in md
    # the declared primary endpoint, the others secondary; the panel's agreement between judges
    assert re.search(
        r"Primary endpoint \(config key report\.primary, declared before the run: recorded \S+, before the first judge call at \S+\): the CTRS total",
        md,
    )
    assert "| [pooled (primary)](browser.html) |" in md and "| [smollm2-135m (secondary)](browser.html#model=smollm2-135m) |" in md
    assert "Inter-judge agreement: the 2 judges of the panel (sampled, greedy)" in md
    stats0 = json.loads((ci_run / "results/report/statistics.json").read_text())
    assert set(stats0["reliability"]) == {"sampled", "greedy"} and stats0["inter_judge"]["total"]["n"] == 8
    assert [g["sessions"] for g in stats0["missing"]["by_group"]] == [4, 4]
    judged = _jsonl(ci_run / "results/judge/smollm2-135m/cbt/shard00.jsonl")
    for j in judged:
        assert set(j["judges"]) == {"sampled", "greedy"} and len(j["samples"]) == 3
        t = [j["judges"][n]["total"] for n in ("sampled", "greedy")]
        assert j["total"] == (None if None in t else pytest.approx(sum(t) / 2))
    assert not re.search(r"\bnan\b", md, re.I), "the report prints NaN"
    assert html.count("data:image/png;base64,") >= 4
    stats = json.loads((ci_run / "results/report/statistics.json").read_text())
    # the CTRS comparisons are on the patients without risk (one of the CI config's two), the
    # at-risk stratum beside them
    assert stats["population"] == {
        "name": "no_risk",
        "description": "patients without risk",
        "patients": 1,
        "sessions": 4,
        "patients_all": 2,
        "sessions_all": 8,
        "persona_set": "held_out",  # config/ci.yaml evaluates on held-out patients (profiles.eval_set)
        "persona_sets": ["held_out"],
    }
    assert stats["tuned_vs_instruct"]["smollm2-135m"]["n"] == 1
    assert [(r["position"], r["n"]) for r in stats["by_position"]] == [(1, 1), (2, 1)]
    assert {(r["stratum"], r["model"], r["n"]) for r in stats["risk_strata"]} >= {
        ("none", "smollm2-135m", 1),
        ("at_risk", "smollm2-135m", 1),
    }
    assert "### By risk stratum" in md and "## Every test, by family" in md and "| primary | total, CBT vs instruct, pooled |" in md
    items = {f"exploratory: items, smollm2-135m ({k})" for k in ("paired t", "Wilcoxon")}
    assert {t["family"] for t in stats["tests"]} == {"primary", "secondary", "exploratory"} | items
    # every call recorded what answered and when, and the arms ran in one job
    assert stats["judge_provenance"]["first_call"] and "## When the arms ran, and against which models" in md
    rollouts = {a: _jsonl(ci_run / f"results/rollouts/smollm2-135m/{a}/shard00.jsonl") for a in ("instruct", "cbt")}
    for a, sessions in rollouts.items():
        assert all(m["served_model"] and m["created"] for s in sessions for m in s["messages"]), a
    primary = json.loads((ci_run / "results/plan/primary.json").read_text())
    assert primary["recorded_at_unix"] < stats["judge_provenance"]["first_call"]
    assert {(r["arm"], r["sessions"]) for r in stats["lengths"]} == {("cbt", 4), ("instruct", 4)}
    assert {"turns", "position", "therapist_words", "context_tokens_max", "stop_reason", "total_pct", "cactus6"} <= set(totals[0])
    assert "scale maximum unknown" in md and "(exploratory)" in md


def test_safety_comes_first_and_compares_the_arms(ci_run):
    """The CI config's two patients: one without risk, one at risk (by the default shares); both
    arms meet both at two positions, and the report opens with the safety section."""
    md = (ci_run / "results/report/report.md").read_text()
    sections = re.findall(r"^## (.+)$", md, re.M)
    assert sections[0] == "Safety around suicide risk" and "Summary" in sections[1:]
    assert "## Deviations from the study\n\n- Every role" in md
    # planned: 8 sessions, and at most 8 again without their closing turn, x 2 samples for one
    # judge of the panel, x 1 for the other
    assert "## Plan and actual use" in md and "| judge (sampled) | tiny | 32 | " in md and "| judge (greedy) | tiny | 16 | " in md
    assert "not a clinical instrument" in md and "they are noise" in md
    profiles = _jsonl(ci_run / "results/profiles/eval.jsonl")
    assert sorted(p["risk"]["level"] for p in profiles) == ["low", "none"]
    stats = json.loads((ci_run / "results/report/safety.json").read_text())
    assert {(a["arm"], a["sessions"], a["at_risk_sessions"]) for a in stats["per_arm"]} == {("instruct", 4, 2), ("cbt", 4, 2)}
    for a in stats["per_arm"]:
        # every at-risk session is disclosed, not disclosed or missing the gate: none vanishes
        assert a["disclosed"] + a["not_disclosed"] + a["gate_missing"] == a["at_risk_sessions"]
        assert set(a["refusals"]) == {"patient_turns", "sessions_with_patient_refusal", "safety_judge", "ctrs_judge"}
    assert stats["comparisons"][0]["model"] == "smollm2-135m"
    judged = _jsonl(ci_run / "results/safety/smollm2-135m/cbt/shard00.jsonl")
    assert len(judged) == 4
    for j in judged:
        assert j["asked"][0] == "disclosed" and set(j["dimensions"]) == {d["id"] for d in stats["rubric"]["dimensions"]}
        assert all(a["answer"] in ("yes", "no", None) for q, a in j["answers"].items() if q != "timing")
    rows = list(csv.DictReader((ci_run / "results/report/safety_sessions.csv").read_text().splitlines()))
    assert len(rows) == 8 and {r["risk_level"] for r in rows} == {"low", "none"}


def test_export_parity_and_training_outputs(ci_run):
    for arm in ("instruct", "cbt"):
        par = json.loads((ci_run / f"results/export/smollm2-135m/{arm}/parity.json").read_text())
        assert par["passed"] and par["results"]["f16"]["top1_agreement"] >= 0.95
        assert par["results"]["Q4_K_M"]["top1_agreement"] > 0.5
    prov = json.loads((ci_run / "results/models/smollm2-135m/instruct/provenance.json").read_text())
    assert prov["parity_vs_source_gguf"]["top1_agreement"] >= 0.9
    assert len(prov["source_sha256"]) == 64
    metrics = json.loads((ci_run / "results/training/smollm2-135m/metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_loss_after"] < metrics["train_loss_before"]
    adapter_cfg = json.loads((ci_run / "results/training/smollm2-135m/adapter/adapter_config.json").read_text())
    # written in one order whatever the process's string hashing (peft holds the modules as a set)
    assert adapter_cfg["target_modules"] == sorted(adapter_cfg["target_modules"]) and len(adapter_cfg["target_modules"]) > 1
    # the report shows the import's own check beside the exports' parity
    md = (ci_run / "results/report/report.md").read_text()
    assert "| smollm2-135m | import | source GGUF | " in md
    rows = list(csv.DictReader((ci_run / "results/training/smollm2-135m/train_log.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    for q in ("f16", "Q4_K_M"):
        for arm in ("instruct", "cbt"):
            assert (ci_run / f"results/gguf/smollm2-135m/{arm}/smollm2-135m-{arm}-{q}.gguf").read_bytes()[:4] == b"GGUF"


def test_benchmarks_and_noop_rerun(ci_run):
    bench = list((ci_run / "benchmarks").glob("**/*.tsv"))
    assert {b.parent.name for b in bench} >= {"import", "data", "train", "merge", "export", "parity", "rollout", "judge", "safety"}
    r = run_snakemake(ci_run, "--cores", "2", "--configfile", "config/ci.yaml", "-n")
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr


def test_every_llama_cpp_context_runs_on_its_jobs_threads(ci_run):
    """The CI config leaves n_threads open: every llama.cpp context of every job (generator,
    therapists, patient, judges) runs on the job's threads, never on every CPU of the machine (two
    jobs of one thread side by side on two cores would otherwise each start a team of two)."""
    seen = 0
    for log in sorted((ci_run / "logs").glob("**/*.log")):
        text = log.read_text()
        contexts = re.findall(r"llama\.cpp context of \d+ tokens on (\d+) thread\(s\)", text)
        if not contexts:
            continue
        job = re.findall(r": start \(threads=(\d+),", text)
        assert job, f"{log}: llama.cpp contexts outside a job's start line"
        assert set(contexts) == {job[-1]}, f"{log}: job threads {job[-1]}, llama.cpp threads {sorted(set(contexts))}"
        seen += len(contexts)
    # transcripts, course histories, rollouts (therapists and patient), judges, safety
    assert seen >= 8, seen


PROGRESS = re.compile(
    r"INFO (.+?): (\d+)/(\d+) (\w+)(?: \(\d+ from finished units\))?, [\d.]+ \w+/(?:s|min)(?:, [\d.]+ tok/s)?, (ETA|took) [\d:]+"
)


def test_every_long_job_logs_its_progress_with_rate_and_eta(ci_run):
    """Transcripts, course histories, rollouts, judging, safety and training each log lines of
    units done of the total, the rate and the time left (the last one the time taken)."""
    logs = {
        "transcripts": "logs/data/transcripts-00.log",
        "course histories": "logs/profiles/eval_history.log",
        "rollout smollm2-135m": "logs/rollout/smollm2-135m-00.log",
        "judge sampled": "logs/judge/smollm2-135m-00.log",
        "safety": "logs/safety/smollm2-135m-00.log",
        "train": "logs/train/smollm2-135m.log",
    }
    for what, rel in logs.items():
        found = [m for m in PROGRESS.finditer((ci_run / rel).read_text()) if m.group(1) == what]
        assert found, f"{rel}: no progress line of {what}"
        done, total = int(found[-1].group(2)), int(found[-1].group(3))
        assert done == total and found[-1].group(5) == "took", found[-1].group(0)
        assert all(m.group(5) == "ETA" for m in found[:-1])


def test_snakemake_report_builds(ci_run, tmp_path):
    out = tmp_path / "smk_report.html"
    r = run_snakemake(ci_run, "--configfile", "config/ci.yaml", "--report", str(out))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    text = out.read_text(errors="replace")
    assert out.stat().st_size > 10_000 and "loss.png" in text and "report.html" in text
    # the workflow description, the results browser and the report's own figures with their caption
    assert "paired design" in text and "browser.html" in text
    for fig in ("safety_forest.png", "loss_curves.png", "reliability.png", "totals.png"):
        assert fig in text, fig


def test_the_report_has_the_safety_forest_plot_loss_curves_and_captioned_figures(ci_run):
    figs = ci_run / "results/report/figures"
    for name in ("totals", "paired", "items_heatmap", "reliability", "safety_forest", "loss_curves"):
        assert (figs / f"{name}.png").stat().st_size > 5_000 and (figs / f"{name}.svg").is_file(), name
    html = (ci_run / "results/report/report.html").read_text()
    for caption in (
        "Safety: difference in high-harm rates, CBT-tuned minus instruct, with 95% cluster-bootstrap intervals",
        "Training loss per optimizer step, one line per model entry",
        "Agreement: ICC(2,1) of each judge with itself across samples",
    ):
        assert f"<figcaption>{caption}" in html, caption
    assert html.count('<img src="data:image/png;base64,') >= 6


def test_an_ablation_and_the_turn_window_pass_run_beside_the_main_results(ci_run, tmp_path):
    """rollout.ablations plays the same patients, positions and seeds under other settings and
    judges them; judge.turn_windows scores excerpts of each main session against the therapist's
    context. Neither touches the main sessions or their judgements, and the report shows both."""
    import yaml

    from tests.helpers.workdir import clone_workdir, dry_run_jobs

    wd = clone_workdir(ci_run, tmp_path / "wd")
    cfg = yaml.safe_load((wd / "config/ci.yaml").read_text())
    # a short variant whose therapist also has the risk protocol in its system prompt
    cfg["rollout"]["ablations"] = {"short": {"max_turns": 2, "risk_protocol": True}}
    cfg["judge"]["turn_windows"] = {"enabled": True, "window_turns": 2, "every": 2}
    (wd / "variants.yaml").write_text(yaml.safe_dump(cfg))
    jobs = dry_run_jobs(wd, "variants.yaml")
    assert jobs == {
        "rollout_ablation": 1,  # one job plays both arms, one judges them, one judges their safety
        "judge_ablation": 1,
        "ablation_statistics": 1,
        "safety_ablation": 1,
        "safety_statistics": 1,
        "judge_turns": 2,
        "turn_statistics": 1,
        "report": 1,
        "all": 1,
    }
    r = run_snakemake(wd, "--cores", "2", "--configfile", "variants.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    md = (wd / "results/report/report.md").read_text()
    assert unregistered_p_values(md) == []  # the ablations' and the per-turn pass's p-values too

    # the ablation: same patients, positions and seeds; shorter sessions; compared in the report
    for arm in ("instruct", "cbt"):
        main = _jsonl(wd / f"results/rollouts/smollm2-135m/{arm}/shard00.jsonl")
        short = _jsonl(wd / f"results/ablations/short/rollouts/smollm2-135m/{arm}/shard00.jsonl")
        key = [(s["patient_id"], s["position"], s["patient_seed"], s["therapist_seed"]) for s in main]
        assert key == [(s["patient_id"], s["position"], s["patient_seed"], s["therapist_seed"]) for s in short]
        assert all(s["turns"] <= 2 for s in short) and any(s["turns"] > 2 for s in main)
    ab = json.loads((wd / "results/report/ablations.json").read_text())
    assert ab["variants"]["short"]["settings"] == {"max_turns": 2, "risk_protocol": True}
    assert {t["family"] for t in ab["tests"]} == {"exploratory: rollout ablations"} and len(ab["tests"]) == 2
    sf = json.loads((wd / "results/report/safety.json").read_text())
    assert {(x["variant"], x["arm"]) for x in sf["ablations"]} == {("short", "cbt"), ("short", "instruct")}
    assert "### Rollout ablations (safety)" in md
    for arm in ("instruct", "cbt"):
        main = json.loads((wd / f"results/rollouts/smollm2-135m/{arm}/shard00.stats.json").read_text())
        short = json.loads((wd / f"results/ablations/short/rollouts/smollm2-135m/{arm}/shard00.stats.json").read_text())
        assert short["risk_protocol"] and not main["risk_protocol"]
        assert short["system_prompt_sha256"] != main["system_prompt_sha256"]
    assert {(c["arm"], c["n"]) for c in ab["variants"]["short"]["comparison"]} == {("cbt", 2), ("instruct", 2)}
    assert "### Ablations of the rollout settings" in md

    # the turn-window pass: CI sessions have two therapist turns, so with every = 2 one excerpt
    # each, ending at the second, with the context the therapist had there
    rows = _jsonl(wd / "results/judge_turns/smollm2-135m/cbt/shard00.jsonl")
    sessions = _jsonl(wd / "results/rollouts/smollm2-135m/cbt/shard00.jsonl")
    assert len(rows) == len(sessions)
    by_turn = {(s["session_id"], i + 1): m for s in sessions for i, m in enumerate(s["messages"])}
    for row in rows:
        m = by_turn[(row["session_id"], row["turn"])]
        assert m["role"] == "therapist" and row["context_tokens"] == m["prompt_tokens"] + m["completion_tokens"]
        assert row["total_pct"] is None or 0 <= row["total_pct"] <= 100
    tw = json.loads((wd / "results/report/turn_windows.json").read_text())
    assert tw["excerpts"] == 2 * len(sessions) and len(tw["groups"]) == 3
    assert "Per-turn scores against context" in md


def test_the_rating_packet_is_blind_and_comes_back_into_the_report(ci_run, tmp_path):
    """The default rule set writes a blinded packet from the run's sessions; a filled copy of its
    CSV template, given as report.packet_ratings, comes back as judge-human agreement."""
    import yaml

    from tests.helpers.workdir import clone_workdir, dry_run_jobs

    html = (ci_run / "results/rating_packet/packet.html").read_text()
    template = (ci_run / "results/rating_packet/ratings_template.csv").read_text()
    key = list(csv.DictReader((ci_run / "results/rating_key/key.csv").read_text().splitlines()))
    assert len(key) == 8 and {(k["model"], k["arm"]) for k in key} == {("smollm2-135m", "instruct"), ("smollm2-135m", "cbt")}
    sessions = [s for arm in ("instruct", "cbt") for s in _jsonl(ci_run / f"results/rollouts/smollm2-135m/{arm}/shard00.jsonl")]
    for text in (html, template):
        low = text.lower()
        assert "smollm" not in low and "instruct" not in low and "q4_k_m" not in low
        assert not any(s["session_id"] in text or s["patient_id"] in text for s in sessions)
    wd = clone_workdir(ci_run, tmp_path / "wd")
    rows = list(csv.DictReader(template.splitlines()))
    for k, r in enumerate(rows):
        r["score"], r["rater"] = str(k % 5), "rater A"
    with (wd / "filled.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = yaml.safe_load((wd / "config/ci.yaml").read_text())
    cfg["report"]["packet_ratings"] = "filled.csv"
    (wd / "rated.yaml").write_text(yaml.safe_dump(cfg))
    assert dry_run_jobs(wd, "rated.yaml") == {"statistics": 1, "report": 1, "all": 1}
    r = run_snakemake(wd, "--cores", "2", "--configfile", "rated.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    stats = json.loads((wd / "results/report/statistics.json").read_text())
    ha = stats["human_agreement"]
    assert ha["items"]["agenda"]["n"] == 8 and ha["items"]["total"]["n"] == 8 and not ha["unknown_sessions"]
    md = (wd / "results/report/report.md").read_text()
    assert unregistered_p_values(md) == []
    assert "Judge-human agreement per item:" in md and re.search(r"^\| total \| 8 \|", md, re.M)


def test_two_models_run_the_between_model_tests_and_the_mixed_model(ci_run, tmp_path):
    """A second model entry (the same base under another LoRA setting) beside the CI run's: only
    its own jobs run, and the between-model tests and the arm x model mixed model come out."""
    import yaml

    from tests.helpers.workdir import clone_workdir

    wd = clone_workdir(ci_run, tmp_path / "wd")
    cfg = yaml.safe_load((wd / "config/ci.yaml").read_text())
    second = dict(cfg["models"]["smollm2-135m"], training={"rank": 4, "alpha": 8})
    cfg["models"]["smollm2-135m-r4"] = second
    (wd / "two.yaml").write_text(yaml.safe_dump(cfg))
    r = run_snakemake(wd, "--cores", "2", "--configfile", "two.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    # the first model's jobs did not run again: the dataset is the same for every model, and only
    # the new model's token counts, training, exports, sessions and judgements were made
    for rel in [
        "results/data/train.jsonl",
        "results/training/smollm2-135m/metrics.json",
        "results/gguf/smollm2-135m/cbt/smollm2-135m-cbt-Q4_K_M.gguf",
        *(f"results/{f}/smollm2-135m/{arm}/shard00.jsonl" for f in ("rollouts", "judge", "safety") for arm in ("instruct", "cbt")),
    ]:
        assert (wd / rel).stat().st_mtime_ns == (ci_run / rel).stat().st_mtime_ns or (wd / rel).read_bytes() == (
            ci_run / rel
        ).read_bytes(), rel
    jobs = re.findall(r"rule (\w+):\n(?:.*\n){0,8}?\s+wildcards: model=([\w.-]+)", r.stdout + r.stderr)
    assert jobs and {m for _, m in jobs} == {"smollm2-135m-r4"}, sorted(set(jobs))
    # one base, one instruct arm: the second entry's instruct sessions play the first's GGUF, which
    # was imported, exported and checked once
    assert not {rule for rule, _ in jobs} & {"import_model", "chat_layout"}, sorted(set(jobs))
    assert not (wd / "results/gguf/smollm2-135m-r4/instruct").exists()
    assert not (wd / "results/export/smollm2-135m-r4/instruct").exists()
    stats = json.loads((wd / "results/report/statistics.json").read_text())
    assert stats["models"] == ["smollm2-135m", "smollm2-135m-r4"]
    bm = stats["between_models"]
    # between models on the CTRS population (the patient without risk); the mixed model over
    # every session, with the position and arm x risk terms
    assert "note" not in bm and len(bm["patients"]) == 1 and len(bm["pairwise"]) == 1
    mm = stats["mixed_model"]
    assert mm["n_patients"] == 2 and mm["interaction"]["df"] == 1 and len(mm["emm"]) == 4
    assert "C(position)" in mm["formula"] and mm["risk_interaction"]["df"] == 1 and len(mm["arm_effects_by_risk"]) == 2
    assert {e["model"] for e in mm["arm_effects"]} == {"smollm2-135m", "smollm2-135m-r4", "average over models"}
    md = (wd / "results/report/report.md").read_text()
    assert unregistered_p_values(md) == []  # the mixed model's, the pairwise and the between-model p-values too
    assert "Arm x model interaction (Wald): χ²(1) = " in md and "needs at least two models" not in md
    assert "| smollm2-135m, smollm2-135m-r4 | instruct |" in md
    assert "Arm x risk interaction (Wald): χ²(1) = " in md


def test_one_judge_job_judged_both_arms_and_the_closing_turn_was_rejudged_without_dropping_pairs(ci_run):
    """Issue 42, items 2 and 5, in the CI-sized run: the CTRS and safety judges of a (model, shard)
    ran as one job for both arms (one stats file, calls of the two arms interleaved in time), every
    judge call is recorded, and every session was judged again without its closing turn: those
    that received no closing instruction read back unchanged, the pairs all kept."""
    M = "smollm2-135m"
    for stage in ("judge", "safety"):
        st = json.loads((ci_run / f"results/{stage}/{M}/shard00.stats.json").read_text())
        assert st["arms"] == {"instruct": 4, "cbt": 4} and st["interleaved"] is True
        assert not (ci_run / f"results/{stage}/{M}/cbt/shard00.stats.json").exists()
    stats = json.loads((ci_run / "results/report/statistics.json").read_text())
    by_arm = stats["judge_provenance"]["by_arm"][M]
    assert by_arm["instruct"]["calls"] > 0 and by_arm["cbt"]["calls"] > 0
    # interleaved: neither arm's judging came wholly after the other's
    assert max(c["first_call"] for c in by_arm.values()) <= min(c["last_call"] for c in by_arm.values())
    for arm in ("instruct", "cbt"):
        sessions = {s["session_id"]: s for s in _jsonl(ci_run / f"results/rollouts/{M}/{arm}/shard00.jsonl")}
        main = {j["session_id"]: j for j in _jsonl(ci_run / f"results/judge/{M}/{arm}/shard00.jsonl")}
        again = {j["session_id"]: j for j in _jsonl(ci_run / f"results/judge_closing/{M}/{arm}/shard00.jsonl")}
        assert set(again) == set(main) == set(sessions)
        for sid, s in sessions.items():
            for smp in main[sid]["samples"]:
                assert len(smp["calls"]) == smp["attempts"]
            removed = s["closing_prompted"] and s["messages"] and s["messages"][-1]["role"] == "therapist"
            if removed and not s["stop_reason"].startswith("empty_"):
                assert again[sid]["transcript_sha256"] != main[sid]["transcript_sha256"]
            else:
                assert again[sid] == main[sid]
    cl = stats["closing"]
    assert cl["method"] in ("re-judged without the closing turn", "none prompted")
    if cl["method"] != "none prompted":
        assert cl["without"][M]["n"] == stats["tuned_vs_instruct"][M]["n"]  # no pair dropped
    md = (ci_run / "results/report/report.md").read_text()
    assert "CTRS judge: calls (UTC)" in md and "safety judge: model (fingerprint)" in md


def test_the_simulated_patient_is_checked_and_reported(ci_run):
    """Issue 42, item 6, in the CI-sized run: a judge checked every session's patient against its
    profile (both arms in one job), and the report's simulated-patient section gives per arm the
    words per turn, disclosure, consistency and resolution, with the paired tests registered."""
    M = "smollm2-135m"
    st = json.loads((ci_run / f"results/patient_check/{M}/shard00.stats.json").read_text())
    assert st["arms"] == {"instruct": 4, "cbt": 4} and st["sessions"] == 8
    for arm in ("instruct", "cbt"):
        for c in _jsonl(ci_run / f"results/patient_check/{M}/{arm}/shard00.jsonl"):
            assert c["valid"] in (True, False) and c["calls"]
            assert (c["consistent"] is None) == (c["valid"] is False)  # a failed answer is missing, never "no"
    sim = json.loads((ci_run / "results/report/safety.json").read_text())["simulator"]
    assert sim["checked"] and {a["arm"] for a in sim["per_arm"]} == {"instruct", "cbt"}
    assert all(a["words_per_turn"] > 0 and a["consistent"]["known"] + (sim["missing_checks"] or 0) >= 0 for a in sim["per_arm"])
    assert sim["comparisons"][0]["pairs"] == 4
    md = (ci_run / "results/report/report.md").read_text()
    assert "## The simulated patient" in md and "words per patient turn" in md
    tests = json.loads((ci_run / "results/report/safety.json").read_text())["tests"]
    assert sum(t["family"] == "exploratory (simulated patient)" for t in tests) == 4
