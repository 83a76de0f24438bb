"""Provenance guard: results trace back to params and input hashes, and a config change re-runs
exactly the stage it affects and what depends on it."""

import json

import pytest
import yaml

from cbtpipe.workflow.rule import path_digest
from tests.helpers.workdir import dry_run_jobs, run_snakemake

pytestmark = pytest.mark.faults


def test_every_result_is_traced(ci_run):
    recs = [json.loads(p.read_text()) for p in (ci_run / "results/provenance").glob("*.json")]
    outputs = {}
    for r in recs:
        assert len(r["params_sha256"]) == 64
        assert all(v for v in r["inputs"].values()), r["rule"]
        outputs.update(r["outputs"])
    for sub in (
        "data/transcripts.jsonl",
        "training/smollm2-135m/metrics.json",
        "rollouts/smollm2-135m/cbt/shard00.jsonl",
        "judge/smollm2-135m/instruct/shard00.jsonl",
        "report/report.html",
    ):
        path = f"results/{sub}"
        assert path in outputs, f"no provenance for {path}"
        assert outputs[path] == path_digest(str(ci_run / path))


def _jobs(wd, cfg):
    (wd / "changed.yaml").write_text(yaml.safe_dump(cfg))
    return dry_run_jobs(wd, "changed.yaml")


# one job per stage plays or judges both arms of a model's shard
JUDGED = {"judge": 1, "judge_closing": 1, "safety_statistics": 1, "scores": 1, "statistics": 1, "report": 1, "browser": 1, "all": 1}


@pytest.mark.parametrize(
    "section,key,value,expected",
    [
        # the safety statistics read the CTRS judgements too (the judge's refusals); the closing
        # re-judging follows the judge; the results browser shows sessions, scores and safety answers
        ("judge", "samples", 3, JUDGED),
        (
            "rollout",
            "max_turns",
            5,
            # the rating packet shows the sessions, so new sessions make a new packet
            {"rollout": 1, "safety": 1, "patient_check": 1, "rating_packet": 1, **JUDGED},
        ),
        ("report", "bootstrap", 999, {"statistics": 1, "safety_statistics": 1, "report": 1, "all": 1}),
        ("safety", "reasoning_chars", 30, {"safety": 1, "safety_statistics": 1, "report": 1, "browser": 1, "all": 1}),
    ],
)
def test_config_change_reruns_only_what_it_affects(ci_run, section, key, value, expected):
    cfg = yaml.safe_load((ci_run / "config/ci.yaml").read_text())
    assert _jobs(ci_run, cfg) == {}
    cfg.setdefault(section, {})[key] = value
    assert _jobs(ci_run, cfg) == expected


def test_a_judge_only_backend_change_reruns_only_judging(ci_run):
    """Jobs receive only the backends they call: giving the judge a backend of its own (a copy of
    the shared one with another context size) re-runs judging and what follows, not transcript
    generation or the sessions, whose backends did not change."""
    cfg = yaml.safe_load((ci_run / "config/ci.yaml").read_text())
    assert _jobs(ci_run, cfg) == {}
    shared = cfg["judge"].get("backend", "tiny")
    cfg["backends"]["judge_only"] = dict(cfg["backends"][shared], n_ctx=3072)
    cfg["judge"]["backend"] = "judge_only"
    # the safety judge and the patient check follow the CTRS judge's backend unless they name another
    both = {"safety": 1, "patient_check": 1, **JUDGED}
    assert _jobs(ci_run, cfg) == both
    cfg["safety"] = dict(cfg.get("safety") or {}, backend=shared)
    assert _jobs(ci_run, cfg) == {k: v for k, v in both.items() if k != "safety"}


def test_editing_the_human_ratings_reruns_the_statistics(ci_run, tmp_path):
    """The ratings file is a declared input: editing it (same path, same config) re-runs the
    statistics and the report, and nothing before them."""
    import csv
    import os
    import time

    from tests.helpers.workdir import clone_workdir

    # a copy: the shared run stays as the other tests (and the other test worker) read it
    ci_run = clone_workdir(ci_run, tmp_path / "wd")
    cfg = yaml.safe_load((ci_run / "config/ci.yaml").read_text())
    sid = next(csv.DictReader((ci_run / "results/report/session_totals.csv").read_text().splitlines()))["session_id"]
    ratings = ci_run / "ratings.csv"
    ratings.write_text(f"session_id,item,score\n{sid},agenda,4\n")
    cfg["report"] = dict(cfg.get("report") or {}, human_ratings="ratings.csv")
    (ci_run / "with_ratings.yaml").write_text(yaml.safe_dump(cfg))
    r = run_snakemake(ci_run, "--cores", "2", "--configfile", "with_ratings.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert _jobs(ci_run, cfg) == {}
    time.sleep(1.1)
    ratings.write_text(f"session_id,item,score\n{sid},agenda,5\n")
    os.utime(ratings)
    assert _jobs(ci_run, cfg) == {"statistics": 1, "report": 1, "all": 1}
