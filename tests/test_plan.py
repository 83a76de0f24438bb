"""The plan before the bill: exact call counts from the config, token and time estimates that say
whether they are assumed or measured, runtime limits checked, no key and no network needed."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from snakemake.utils import validate

from cbtpipe.plan import build_plan, measured_rates, plan_markdown, profile_runtimes
from cbtpipe.workflow import SCHEMA, resolve_defaults


def _cfg(root, name):
    cfg = yaml.safe_load((root / name).read_text())
    validate(cfg, str(SCHEMA))
    resolve_defaults(cfg)
    return cfg


def test_the_study_plan_counts_every_call(root):
    plan = build_plan(_cfg(root, "config/study.yaml"), root, runtimes=profile_runtimes(root / "profiles/slurm/profile.yaml"))
    st = {x["stage"]: x for x in plan["stages"]}
    # 3 models x 2 arms x 30 patients x 2 positions x 1 session, main run and 2 ablations; the
    # second training seed adds each model's CBT-tuned arm again (its instruct arm is the model's)
    assert plan["sessions"] == (3 * 2 + 3 * 1) * 30 * 2 * 3
    assert st["generation"]["calls"] == (58 + 6) * 20 and st["generation"]["calls_max"] == (58 + 6) * 20 * 3
    assert st["rollout"]["calls"] == plan["sessions"] * 20  # the patient speaks every other turn of 40
    # 3 samples of every session, and at most every main session again without its closing turn
    assert st["judge"]["calls"] == (plan["sessions"] + plan["sessions"] // 3) * 3
    # 6 entries (3 models x 2 seeds) x 6 shards, both arms in one job
    assert st["judge"]["jobs"] == 6 * 6 * (3 + 1) and st["safety"]["jobs"] == 6 * 6 * 3
    # safety: 12 of 30 patients at risk take gate + triage + 7 questions + timing, the others gate + 1
    assert st["safety"]["calls"] == round(plan["sessions"] * (0.4 * 10 + 0.6 * 2))
    assert all(x["rates"] == "assumed" for x in plan["stages"])
    assert st["generation"]["runtime_limit_min"] == 720 and st["rollout"]["runtime_limit_min"] == 240
    assert plan["cost_usd"] == pytest.approx(sum(plan["cost_usd_by_backend"].values()), abs=0.05) and plan["cost_usd"] > 0
    assert set(plan["cost_usd_by_backend"]) == {"hermes", "deepseek", "gemini"}
    # generation in 4 shards of 16 patients, 4 at a time each: every job well inside its 12 h
    gen = st["generation"]
    assert gen["jobs"] == 4 and gen["concurrency"] == 4 and gen["fits"]
    assert gen["hours_per_job"] == pytest.approx(gen["calls"] / 4 * gen["seconds_per_call"] / 4 / 3600, abs=0.01)


def test_a_shard_runs_no_more_patients_at_a_time_than_it_holds(root):
    cfg = _cfg(root, "config/study.yaml")
    cfg["data"]["shards"] = 64  # one patient a job: its 20 sessions follow one another
    gen = next(x for x in build_plan(cfg, root)["stages"] if x["stage"] == "generation")
    assert gen["jobs"] == 64 and gen["concurrency"] == 1
    assert gen["hours_per_job"] == pytest.approx(20 * gen["seconds_per_call"] / 3600, abs=0.01)


def test_a_job_past_its_limit_is_flagged(root):
    cfg = _cfg(root, "config/study.yaml")
    plan = build_plan(cfg, root, runtimes={"generation": 60})
    gen = next(x for x in plan["stages"] if x["stage"] == "generation")
    assert gen["fits"] is False and "EXCEEDS" in plan_markdown(plan)


def test_measured_rates_replace_the_assumptions(root, tmp_path):
    res = tmp_path / "results"
    (res / "data").mkdir(parents=True)
    (res / "data/generation_stats.json").write_text(
        json.dumps({"llm": {"calls": 4, "prompt_tokens": 4000, "completion_tokens": 2000, "seconds": 40.0}})
    )
    (res / "judge/m").mkdir(parents=True)
    (res / "judge/m/shard00.stats.json").write_text(
        json.dumps({"llm": {"calls": 10, "prompt_tokens": 30000, "completion_tokens": 5000, "seconds": 50.0}})
    )
    rates = measured_rates(res)
    assert rates["generation"] == {"prompt_tokens": 1000, "completion_tokens": 500, "seconds": 10.0}
    plan = build_plan(_cfg(root, "config/study.yaml"), root, rates=rates)
    st = {x["stage"]: x for x in plan["stages"]}
    assert st["generation"]["rates"] == "measured" and st["generation"]["prompt_tokens"] == 1280 * 1000
    assert st["judge"]["seconds_per_call"] == 5.0 and st["safety"]["rates"] == "assumed"


def test_the_plan_tool_needs_no_key_and_no_network(root):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["HTTPS_PROXY"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"  # any network call would fail
    r = subprocess.run(
        [sys.executable, "tools/plan.py", "--configfile", "config/study.yaml", "--profile", "profiles/slurm", "--api-limit", "gemini=8"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| generation | hermes | 1,280 (3,840)" in r.stdout and "Estimated API cost" in r.stdout


def test_the_plan_rule_reads_every_judges_prompt(tmp_path):
    """A panel member with a prompt of its own enters the plan's token estimates, so it is one of
    the plan rule's inputs: editing it makes the plan again."""
    from tests.helpers.workdir import make_workdir, run_snakemake

    wd = make_workdir(tmp_path / "wd")
    (wd / "own_judge.j2").write_text((wd / "resources/prompts/judge.j2").read_text())
    cfg = yaml.safe_load((wd / "config/ci.yaml").read_text())
    cfg["judge"]["panel"][1]["prompt"] = "own_judge.j2"
    (wd / "member.yaml").write_text(yaml.safe_dump(cfg))
    r = run_snakemake(wd, "results/plan/plan.json", "-n", "--configfile", "member.yaml")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    job = out[out.index("rule plan:") :]
    assert "own_judge.j2" in job and "resources/prompts/judge.j2" in job
