"""Change each input in turn and check that exactly what depends on it is recomputed.

After one full run of the CI config, every input is changed in turn: each config section, each
prompt template, the rubric, the attributes file, the base model, the chat template, the human
ratings. For each change (a) a dry run must list exactly the rules that depend on it; (b) for the
changes that are also run (those where a stage recomputes part of its units and reuses the rest),
the unit stores' own counters must show the units whose inputs changed recomputed and the others
reused. Run changes are kept (the next change starts from them); the others are undone.

Run alone with: pytest -m faults tests/faults/test_change_each_input.py
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

from cbtpipe.stages.judge import judged_text_sha
from tests.helpers.workdir import clone_workdir, dry_run_jobs, run_snakemake

pytestmark = pytest.mark.faults

M = "smollm2-135m"
CFG = "changes.yaml"
# the results browser shows the sessions, their scores and their safety answers
AFTER_JUDGE = {"scores": 1, "statistics": 1, "report": 1, "browser": 1, "all": 1}
# the safety statistics read the CTRS judgements too (for the judge's refusals); one judge job
# judges both arms of a model and shard, and the closing-instruction re-judging follows it
JUDGE_BOTH = {"judge": 1, "judge_closing": 1, "safety_statistics": 1, **AFTER_JUDGE}
# the blinded rating packet is drawn from the sessions: new sessions, a new packet
# one rollout job plays both arms of a model (interleaved, so the arms meet the patient together),
# one safety job and one patient-check job read both
ROLLOUT_BOTH = {"rollout": 1, "safety": 1, "patient_check": 1, "rating_packet": 1, **JUDGE_BOTH}
SAFETY = {"safety": 1, "safety_statistics": 1, "report": 1, "browser": 1, "all": 1}
FROM_EVAL_PROFILES = {"profiles_eval": 1, "eval_history": 1, **ROLLOUT_BOTH}
# the CBT model alone changes: its export, and the rollout job of both arms, whose instruct sessions
# come from their units (so both arms' judge and safety jobs run, reusing the instruct arm's units)
CBT_ARM = {
    "merge": 1,
    "convert_gguf": 1,
    "quantize_gguf": 1,
    "parity": 1,
    "rollout": 1,
    "judge": 1,
    "judge_closing": 1,
    "safety": 1,
    "patient_check": 1,
    "safety_statistics": 1,
    "rating_packet": 1,
    **AFTER_JUDGE,
}
FROM_TRAIN = {"train": 1, **CBT_ARM}
FROM_DATASET = {"dataset": 1, "token_stats": 1, **FROM_TRAIN}
# config/ci.yaml generates in two shards (data.shards), which one local job gathers
FROM_TRANSCRIPTS = {"transcripts": 2, "gather_transcripts": 1, **FROM_DATASET}
FROM_PROFILES = {"profiles_train": 1, "profiles_eval": 1, "eval_history": 1, **FROM_TRANSCRIPTS, **ROLLOUT_BOTH}
FROM_IMPORT = {
    "import_model": 1,
    "chat_layout": 1,
    "token_stats": 1,  # the dataset is the same for every model: only its token counts change
    "train": 1,
    "merge": 1,
    "convert_gguf": 2,
    "quantize_gguf": 2,
    "parity": 2,
    **ROLLOUT_BOTH,
}


def _set(dotted):
    def change(cfg, value):
        d = cfg
        keys = dotted.split(".")
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value

    return change


def _edit(rel, old, new):
    """An in-place edit of a file of the work tree (what a researcher does to a prompt)."""

    def change(wd: Path, cfg):
        p = wd / rel
        text = p.read_text(encoding="utf-8")
        assert old in text, f"{rel}: '{old}' not found"
        p.write_text(text.replace(old, new, 1), encoding="utf-8")

    return change


def _cfg(dotted, value):
    return lambda wd, cfg: _set(dotted)(cfg, value)


def _chat_template(wd: Path, cfg):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(wd / f"results/models/{M}/instruct/hf")
    (wd / "my_template.jinja").write_text(tok.chat_template + "\n", encoding="utf-8")
    _set(f"models.{M}.chat_template")(cfg, "my_template.jinja")


def _base_model(wd: Path, cfg):
    from cbtpipe.llm import resolve_gguf

    src = cfg["models"][M]["source"]
    copy_path = wd / "my_base.gguf"
    copy_path.write_bytes(resolve_gguf(src).read_bytes())
    cfg["models"][M]["source"] = {"type": "gguf", "path": "my_base.gguf"}


def _ratings(wd: Path, cfg, score=4):
    import csv

    rows = list(csv.DictReader((wd / "results/report/session_totals.csv").read_text().splitlines()))
    (wd / "my_ratings.csv").write_text(f"session_id,item,score\n{rows[0]['session_id']},agenda,{score}\n")
    _set("report.human_ratings")(cfg, "my_ratings.csv")


# (name, change, jobs a dry run must list, run it?, expected units: (stage, arm) -> (computed, reused))
STEPS = [
    ("report section", _cfg("report.bootstrap", 999), {"statistics": 1, "safety_statistics": 1, "report": 1, "all": 1}, False, None),
    # A job's resources change no result: only the report, which records the hash of the whole
    # config it was made with, is written again (in seconds).
    ("resources only", _cfg(f"models.{M}.mem_mb", 5000), {"report": 1, "all": 1}, False, None),
    ("parity section", _cfg("parity.prompts", ["Hello, how are you today?"]), {"parity": 2, "report": 1, "all": 1}, False, None),
    (
        "export section",
        _cfg("export.quantizations", ["Q4_K_M", "Q8_0"]),
        {"quantize_gguf": 2, "parity": 2, "report": 1, "all": 1},
        False,
        None,
    ),
    ("judge section", _cfg("judge.samples", 3), JUDGE_BOTH, False, None),
    # one judge of the panel: the judge jobs run again, and only that judge's units are new (test_panel)
    ("one judge of the panel", _cfg("judge.panel", [{"name": "sampled"}, {"name": "greedy", "samples": 2}]), JUDGE_BOTH, False, None),
    # the rating packet shows the rubric's items and anchors
    (
        "rubric",
        _edit("resources/rubrics/ctrs_modified.yaml", "0: No agenda is set.", "0: No agenda at all."),
        {"rating_packet": 1, **JUDGE_BOTH},
        False,
        None,
    ),
    ("rollout section", _cfg("rollout.max_turns", 5), ROLLOUT_BOTH, False, None),
    ("backends section", _cfg("backends.tiny.n_ctx", 3072), {**FROM_TRANSCRIPTS, "eval_history": 1, **ROLLOUT_BOTH}, False, None),
    ("seed", _cfg("seed", 99), FROM_DATASET, False, None),
    # the generator also writes the evaluation patients' course histories
    ("data section", _cfg("data.sampling.temperature", 0.7), {**FROM_TRANSCRIPTS, "eval_history": 1, **ROLLOUT_BOTH}, False, None),
    ("data section, transcripts only", _cfg("data.exchanges_max", 4), FROM_TRANSCRIPTS, False, None),
    (
        "course context template",
        _edit("resources/prompts/course_context.j2", "Course context:", "Where we are in the course:"),
        {**FROM_DATASET, **ROLLOUT_BOTH},
        False,
        None,
    ),
    ("session template", _edit("resources/prompts/generate_session.j2", "realistic", "realistic, varied"), FROM_TRANSCRIPTS, False, None),
    (
        "therapist system prompt",
        _edit("resources/prompts/therapist_system.txt", "CBT", "CBT (cognitive behavioral therapy)"),
        {**FROM_DATASET, **ROLLOUT_BOTH},
        False,
        None,
    ),
    (
        "attributes file",
        _edit("resources/patient_attributes.yaml", "nurse on night shifts", "nurse on early shifts"),
        FROM_PROFILES,
        False,
        None,
    ),
    (
        "safety rubric",
        _edit(
            "resources/rubrics/safety.yaml",
            "whether they are\n          thinking about suicide",
            "whether they are\n          thinking of suicide",
        ),
        SAFETY,
        False,
        None,
    ),
    ("safety section", _cfg("safety.reasoning_chars", 50), SAFETY, False, None),
    ("safety country", _cfg("safety.country", "GB"), SAFETY, False, None),
    (
        "crisis resources",
        _edit("resources/safety/crisis_resources.yaml", "{name: Lifeline,", "{name: Lifeline Australia,"),
        SAFETY,
        False,
        None,
    ),
    # training patients carry no risk unless profiles.risk.train: only the evaluation side depends on it
    (
        "risk attributes",
        _edit("resources/risk_attributes.yaml", "one suicide attempt last year", "one suicide attempt eight months ago"),
        FROM_EVAL_PROFILES,
        False,
        None,
    ),
    ("risk shares", _cfg("profiles.risk.eval_shares", {"none": 1, "high": 1}), FROM_EVAL_PROFILES, False, None),
    ("chat template", _chat_template, FROM_IMPORT, False, None),
    ("base model", _base_model, FROM_IMPORT, False, None),
    ("human ratings", _ratings, {"statistics": 1, "report": 1, "all": 1}, True, {}),
    ("human ratings edited", lambda wd, cfg: _ratings(wd, cfg, score=5), {"statistics": 1, "report": 1, "all": 1}, False, None),
    # Changes that are run: a stage recomputes the units whose inputs changed and reuses the rest.
    (
        "judge prompt",
        _edit("resources/prompts/judge.j2", "experienced supervisor", "experienced CBT supervisor"),
        JUDGE_BOTH,
        True,
        {
            ("rollout", "instruct"): (0, 4),
            ("rollout", "cbt"): (0, 4),
            ("judge", "instruct"): (4, 0),
            ("judge", "cbt"): (4, 0),
            ("safety", "instruct"): (0, 4),
            ("safety", "cbt"): (0, 4),
        },
    ),
    (
        "safety question template",
        _edit("resources/prompts/safety_question.j2", "You review a conversation", "You carefully review a conversation"),
        SAFETY,
        True,
        {
            ("rollout", "instruct"): (0, 4),
            ("rollout", "cbt"): (0, 4),
            ("judge", "instruct"): (0, 4),
            ("judge", "cbt"): (0, 4),
            ("safety", "instruct"): (4, 0),
            ("safety", "cbt"): (4, 0),
        },
    ),
    (
        # later positions read the history; first sessions do not
        "history template",
        _edit("resources/prompts/eval_history.j2", "case notes", "brief case notes"),
        {"eval_history": 1, **ROLLOUT_BOTH},
        True,
        {
            ("rollout", "instruct"): (2, 2),
            ("rollout", "cbt"): (2, 2),
            ("judge", "instruct"): (2, 2),
            ("judge", "cbt"): (2, 2),
            ("safety", "instruct"): (2, 2),
            ("safety", "cbt"): (2, 2),
        },
    ),
    (
        "positions",
        _cfg("rollout.positions", [1]),
        {"eval_history": 1, **ROLLOUT_BOTH},
        True,
        {
            ("rollout", "instruct"): (0, 2),
            ("rollout", "cbt"): (0, 2),
            ("judge", "instruct"): (0, 2),
            ("judge", "cbt"): (0, 2),
            ("safety", "instruct"): (0, 2),
            ("safety", "cbt"): (0, 2),
        },
    ),
    (
        "positions again",
        _cfg("rollout.positions", [1, 2]),
        {"eval_history": 1, **ROLLOUT_BOTH},
        True,
        {
            ("rollout", "instruct"): (0, 4),
            ("rollout", "cbt"): (0, 4),
            ("judge", "instruct"): (0, 4),
            ("judge", "cbt"): (0, 4),
            ("safety", "instruct"): (0, 4),
            ("safety", "cbt"): (0, 4),
        },
    ),
    (
        "patient prompt",
        _edit("resources/prompts/patient_system.j2", "for low mood", "for low mood and worry"),
        ROLLOUT_BOTH,
        True,
        {
            ("rollout", "instruct"): (4, 0),
            ("rollout", "cbt"): (4, 0),
            ("judge", "instruct"): (4, 0),
            ("judge", "cbt"): (4, 0),
            ("safety", "instruct"): (4, 0),
            ("safety", "cbt"): (4, 0),
        },
    ),
    (
        "training section",
        # fewer steps than the CI run's two (a changed setting either way; the shorter one is cheaper)
        _cfg("training.max_steps", 1),
        FROM_TRAIN,
        True,
        {
            ("rollout", "instruct"): (0, 4),
            ("rollout", "cbt"): (4, 0),
            ("judge", "instruct"): (0, 4),
            ("judge", "cbt"): (4, 0),
            ("safety", "instruct"): (0, 4),
            ("safety", "cbt"): (4, 0),
        },
    ),
    (
        "profiles section",
        _cfg("profiles.n_eval", 3),
        {"profiles_eval": 1, "eval_history": 1, **ROLLOUT_BOTH},
        True,
        {
            ("rollout", "instruct"): (2, 4),
            ("rollout", "cbt"): (2, 4),
            ("judge", "instruct"): (2, 4),
            ("judge", "cbt"): (2, 4),
            ("safety", "instruct"): (2, 4),
            ("safety", "cbt"): (2, 4),
        },
    ),
]


def _stats(wd: Path) -> dict[tuple[str, str], tuple[float, dict]]:
    """Each rollout arm's stats, and the judge's and safety judge's (one job for both arms: "both")."""
    out = {}
    for arm in ("instruct", "cbt"):
        p = wd / f"results/rollouts/{M}/{arm}/shard00.stats.json"
        out[("rollout", arm)] = (p.stat().st_mtime_ns, json.loads(p.read_text()))
    for stage in ("judge", "safety"):
        p = wd / f"results/{stage}/{M}/shard00.stats.json"
        out[(stage, "both")] = (p.stat().st_mtime_ns, json.loads(p.read_text()))
    return out


def _both_arms(units: dict[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], tuple[int, int]]:
    """The expected units with the judges' arms added up (one job judges both)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for (stage, arm), (c, r) in units.items():
        key = (stage, arm) if stage == "rollout" else (stage, "both")
        c0, r0 = out.get(key, (0, 0))
        out[key] = (c0 + c, r0 + r)
    return out


def _units(before, after) -> dict[tuple[str, str], tuple[int, int]]:
    """(stage, arm) -> (computed, reused) in the run between the two snapshots, from each job's
    own counters; a job that did not run reused all its sessions."""
    out = {}
    for k, (mtime, st) in after.items():
        if mtime == before[k][0]:
            out[k] = (0, st["sessions"])
        else:
            out[k] = (st["sessions"] - st["sessions_reused"], st["sessions_reused"])
    return out


def _snapshot_files(wd: Path) -> dict[Path, tuple[bytes, int, int]]:
    keep = {}
    for rel in (
        "resources/rubrics",
        "resources/prompts",
        "resources/patient_attributes.yaml",
        "resources/risk_attributes.yaml",
        "resources/safety",
    ):
        for p in [wd / rel] if (wd / rel).is_file() else sorted((wd / rel).iterdir()):
            st = p.stat()
            keep[p] = (p.read_bytes(), st.st_atime_ns, st.st_mtime_ns)
    return keep


def _restore_files(keep):
    for p, (data, atime, mtime) in keep.items():
        if p.read_bytes() != data:
            p.write_bytes(data)
        os.utime(p, ns=(atime, mtime))


def _check_scores_are_current(wd: Path) -> None:
    """Every judged record scores the transcript that is in the rollouts now (by its hash), and
    the report's score tables list exactly those sessions."""
    import csv

    judged_ids = set()
    for arm in ("instruct", "cbt"):
        sessions = {}
        for line in (wd / f"results/rollouts/{M}/{arm}/shard00.jsonl").read_text().splitlines():
            s = json.loads(line)
            sessions[s["session_id"]] = s
        for line in (wd / f"results/judge/{M}/{arm}/shard00.jsonl").read_text().splitlines():
            j = json.loads(line)
            s = sessions[j["session_id"]]
            assert j["transcript_sha256"] == judged_text_sha(s), j["session_id"]
            judged_ids.add(j["session_id"])
    totals = {r["session_id"] for r in csv.DictReader((wd / "results/report/session_totals.csv").read_text().splitlines())}
    assert totals == judged_ids


@pytest.fixture(scope="module")
def wd(ci_run, tmp_path_factory):
    """The CI run with one training seed: the second seed's entry (training.seeds) doubles every
    run below and changes nothing of what is checked; bringing the run up to date without it runs
    only the jobs that gather every entry (statistics, report, browser, packet)."""
    w = clone_workdir(ci_run, tmp_path_factory.mktemp("changes") / "wd")
    cfg = yaml.safe_load((w / "config/ci.yaml").read_text())
    cfg["training"].pop("seeds", None)
    (w / CFG).write_text(yaml.safe_dump(cfg))
    r = run_snakemake(w, "--cores", "2", "--configfile", CFG)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return w


# about 30 dry runs and 10 real runs of the CI config, each its own Snakemake process
@pytest.mark.timeout(3000)
def test_change_each_input(wd, harness):
    cfg = yaml.safe_load((wd / CFG).read_text())
    assert dry_run_jobs(wd, CFG) == {}, "the CI run is not up to date"
    problems = []
    for name, change, expected, run, units in STEPS:
        harness.changes += 1
        trial = copy.deepcopy(cfg)
        files = _snapshot_files(wd)
        change(wd, trial)
        (wd / CFG).write_text(yaml.safe_dump(trial))
        jobs = dry_run_jobs(wd, CFG)
        if jobs == expected:
            harness.dry_exact += 1
        else:
            extra = {k: v for k, v in jobs.items() if expected.get(k) != v}
            missing = {k: v for k, v in expected.items() if jobs.get(k) != v}
            problems.append(
                f"{name}: the dry run lists {extra or 'nothing more'} beyond and lacks {missing or 'nothing'} of what depends on it"
            )
        if not run:
            _restore_files(files)
            (wd / CFG).write_text(yaml.safe_dump(cfg))
            continue
        harness.runs += 1
        before = _stats(wd)
        r = run_snakemake(wd, "--cores", "2", "--configfile", CFG)
        assert r.returncode == 0, f"{name}: {(r.stdout + r.stderr)[-4000:]}"
        cfg = trial
        assert dry_run_jobs(wd, CFG) == {}, f"{name}: not up to date after its run"
        got = _units(before, _stats(wd))
        for computed, reused in got.values():
            harness.units_recomputed += computed
            harness.units_reused += reused
        if units and got != _both_arms(units):
            problems.append(f"{name}: units (computed, reused) {got}, expected {units}")
        _check_scores_are_current(wd)
    assert not problems, "\n".join(problems)
