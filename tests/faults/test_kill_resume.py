"""Kill-and-resume harness: stop a long job (or the whole snakemake) at a moment given by its
observed progress, never by a guessed delay (its unit folder appearing, its first finished unit, a
checkpoint being saved, a partial output appearing), with SIGKILL or with SIGTERM (what SLURM
sends at a time limit); run the same command again, sometimes with other --cores, and check that
the run completes, that no finished unit was computed twice, that no partial output is left
behind, and that the outputs equal those of the uninterrupted CI run.

Run alone with: pytest -m faults tests/faults/test_kill_resume.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import psutil
import pytest

from cbtpipe.stages.checkpoints import CHECKPOINT_MARK
from cbtpipe.workflow.rule import path_digest
from tests.helpers.workdir import SnakemakeRun, clone_workdir, run_snakemake

pytestmark = pytest.mark.faults

M = "smollm2-135m"
# name -> (snakemake rule, target, unit folder or None, script name). Every unit rule's target is
# one job with at least two units at CI size, so a kill at its first finished unit lands before its
# end (the test checks this); the others are one step that writes a partial output first. The CI
# config's three generation patients fall into two shards, 00 holding two of them and 01 one.
RULES = {
    "transcripts": ("transcripts", "results/data/transcripts/shard00.jsonl", "results/units/transcripts", "transcripts.py"),
    "eval_history": ("eval_history", "results/profiles/eval_history.jsonl", "results/units/eval_history", "eval_history.py"),
    "train": ("train", f"results/training/{M}/metrics.json", "results/units/train", "train.py"),
    "rollout": ("rollout", f"results/rollouts/{M}/cbt/shard00.jsonl", f"results/units/rollouts/{M}/cbt", "rollout.py"),
    "judge": ("judge", f"results/judge/{M}/cbt/shard00.jsonl", "results/units/judge", "judge.py"),
    "safety": ("safety", f"results/safety/{M}/cbt/shard00.jsonl", "results/units/safety", "safety.py"),
    "import": ("import_model", f"results/models/{M}/instruct/hf", None, "import_model.py"),
    "merge": ("merge", f"results/models/{M}/cbt/hf", None, "merge.py"),
    "convert": ("convert_gguf", f"results/gguf/{M}/cbt/{M}-cbt-f16.gguf", None, "convert_gguf.py"),
    "quantize": ("quantize_gguf", f"results/gguf/{M}/cbt/{M}-cbt-Q4_K_M.gguf", None, "quantize_gguf.py"),
}
VOLATILE = {
    "seconds",
    "wall_seconds",
    "judge_seconds",
    "cached",
    "unit_dir",
    "sessions_reused",
    "patients_reused",
    "tokens_per_second",
    "completion_tokens_per_second",
    "llm",
    "resumed_from",
    "train_runtime_s",
    "tokens_per_second_mean",
    "created",  # when a call was made
    "first_call",
    "last_call",
}


def strip(obj):
    """Drop timings and other run-dependent fields, keep everything generated."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(x) for x in obj]
    return obj


def load_jsonl(p: Path):
    return [strip(json.loads(line)) for line in p.read_text().splitlines() if line.strip()]


def _job_procs(proc: SnakemakeRun, script: str):
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if any(script in part and ".snakemake/scripts" in part for part in k.cmdline()):
                out.append(k)
        except psutil.NoSuchProcess:
            pass
    return out


def finished_units(units: Path) -> int:
    return sum(len(log.read_text().splitlines()) for log in units.rglob("computed.log"))


def partials(wd: Path) -> list[str]:
    return [str(p.relative_to(wd)) for p in (wd / "results").rglob("*.partial")]


def saving_checkpoint(units: Path) -> bool:
    """A checkpoint folder without its completion mark: the Trainer is writing it."""
    return any(not (d / CHECKPOINT_MARK).exists() for d in units.glob("**/checkpoints/checkpoint-*") if d.name.split("-")[-1].isdigit())


TRIGGERS = {
    "unit folder": lambda wd, units, partial: (wd / units).is_dir() and any((wd / units).iterdir()),
    "first unit": lambda wd, units, partial: finished_units(wd / units) >= 1,
    "checkpoint save": lambda wd, units, partial: saving_checkpoint(wd / units),
    "partial output": lambda wd, units, partial: partial.exists(),
}


def run_with_kill(wd: Path, name: str, trigger: str, whole: bool, sig: signal.Signals, cores: int) -> dict:
    """Stop the job (or the whole snakemake) with ``sig`` the moment ``trigger`` is seen, then
    run the same command again with ``cores``."""
    rule, target, units, script = RULES[name]
    if units:
        shutil.rmtree(wd / units, ignore_errors=True)
    shutil.rmtree(wd / "cache", ignore_errors=True)  # no LLM answer comes from the response cache
    out = wd / target
    partial = out.with_name(f".{out.name}.partial")
    poll = 0.01 if trigger == "checkpoint save" else 0.05

    def args(n):
        # The target goes first: --forcerun and --configfile take several values and would swallow it.
        return (target, "--cores", str(n), "--configfile", "config/ci.yaml", "--rerun-incomplete", "--forcerun", rule)

    p = SnakemakeRun(wd, *args(2))
    seen = TRIGGERS[trigger]
    killed = False
    deadline = time.time() + 900
    while time.time() < deadline and p.poll() is None:
        jobs = _job_procs(p, script)
        if jobs and seen(wd, units, partial):
            if whole:
                os.killpg(p.pid, sig)
            else:
                for j in jobs:
                    j.send_signal(sig)
            killed = True
            break
        time.sleep(poll)
    first = p.wait(timeout=300)
    first_out = first.stdout + first.stderr
    assert killed, f"{name}: the job ended before the kill ({trigger})\n{first_out[-2000:]}"
    if trigger == "checkpoint save":
        # The kill landed inside a save: a checkpoint folder is there without its completion mark.
        cut = [d.name for d in (wd / units).glob("**/checkpoints/checkpoint-*") if not (d / CHECKPOINT_MARK).exists()]
        assert cut, f"{name}: every checkpoint was complete at the kill"
    if not whole:
        assert p.returncode != 0
    if sig == signal.SIGTERM:
        # SIGTERM lets the job clean up: it says so, and leaves no partial output behind.
        assert "stopped by SIGTERM" in first_out or whole, first_out[-3000:]
        assert not partials(wd), f"{name}: SIGTERM left {partials(wd)}"
    # A killed snakemake leaves its lock behind; Snakemake tells the user to --unlock first.
    if whole:
        u = run_snakemake(wd, "--unlock", "--configfile", "config/ci.yaml", timeout=120)
        assert u.returncode == 0, u.stderr[-2000:]
    r = run_snakemake(wd, *args(cores), timeout=900)
    assert r.returncode == 0, f"{name}: resumed run failed\n{(r.stdout + r.stderr)[-4000:]}"
    assert not partials(wd), f"{name}: partial outputs left after the resumed run: {partials(wd)}"
    return {"trigger": trigger, "units": wd / units if units else None}


def unit_counts(units: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for log in units.rglob("computed.log"):
        for line in log.read_text().splitlines():
            if line:
                key = f"{log.parent.name}/{line}"
                counts[key] = counts.get(key, 0) + 1
    return counts


def check_outputs(rule: str, wd: Path, ref: Path) -> None:
    target = RULES[rule][1]
    if RULES[rule][2] is None:  # one output, bit-identical to the uninterrupted run's
        assert path_digest(str(wd / target)) == path_digest(str(ref / target)), f"{rule}: {target} differs"
    elif rule == "train":
        import numpy as np
        from safetensors.numpy import load_file

        a = load_file(wd / "results/training/smollm2-135m/adapter/adapter_model.safetensors")
        b = load_file(ref / "results/training/smollm2-135m/adapter/adapter_model.safetensors")
        assert a.keys() == b.keys()
        # Resuming from a checkpoint is not bit-identical on the CPU (the same steps run in other
        # batches of floating-point work); the adapter must match closely, not exactly.
        for k in a:
            assert a[k].shape == b[k].shape
            np.testing.assert_allclose(a[k], b[k], atol=2e-3)
        ma, mb = (json.loads((d / target).read_text()) for d in (wd, ref))
        assert ma["steps"] == mb["steps"]
        assert ma["train_loss_after"] == pytest.approx(mb["train_loss_after"], rel=2e-2)
    else:
        assert load_jsonl(wd / target) == load_jsonl(ref / target)


K, T = signal.SIGKILL, signal.SIGTERM

# (name, trigger, whole snakemake?, signal, --cores of the resumed run)
CASES = [
    ("transcripts", "first unit", False, K, 2),
    ("transcripts", "unit folder", False, K, 2),
    ("transcripts", "first unit", False, T, 1),
    ("eval_history", "first unit", False, K, 2),
    ("train", "first unit", False, K, 2),
    ("train", "checkpoint save", False, K, 2),
    ("train", "first unit", False, T, 1),
    ("train", "first unit", True, T, 2),
    ("rollout", "first unit", False, K, 2),
    ("rollout", "unit folder", False, K, 2),
    ("rollout", "first unit", False, T, 1),
    ("rollout", "first unit", True, T, 2),
    ("judge", "first unit", False, K, 2),
    ("judge", "unit folder", True, K, 2),
    ("judge", "first unit", False, T, 1),
    ("safety", "first unit", False, K, 2),
    ("import", "partial output", False, K, 2),
    ("import", "partial output", False, T, 1),
    ("merge", "partial output", False, K, 2),
    ("merge", "partial output", True, T, 1),
    ("convert", "partial output", False, K, 2),
    ("convert", "partial output", False, T, 1),
    ("quantize", "partial output", False, K, 2),
    ("quantize", "partial output", True, T, 2),
]


@pytest.mark.parametrize(
    "name,trigger,whole,sig,cores",
    CASES,
    ids=[f"{n}-{t.replace(' ', '_')}-{'snakemake' if w else 'job'}-{s.name}-cores{c}" for n, t, w, s, c in CASES],
)
def test_kill_and_resume(ci_run, tmp_path, harness, name, trigger, whole, sig, cores):
    base = ci_run
    wd = clone_workdir(base, tmp_path / "wd")
    harness.kills += 1
    info = run_with_kill(wd, name, trigger, whole, sig, cores)
    harness.resumed += 1
    if info["units"] is not None:
        counts = unit_counts(info["units"])
        twice = {k: v for k, v in counts.items() if v > 1}
        harness.recomputed += sum(v - 1 for v in twice.values())
        assert not twice, f"{name}: units computed more than once: {twice}"
        assert counts, f"{name}: no unit was recorded"
        if trigger == "first unit":
            # The premise of the trigger: the killed job had units left to do after its first one.
            assert len(counts) >= 2, f"{name}: the job has only {len(counts)} unit(s), so its first finished unit is its last"
    check_outputs(name, wd, base)
