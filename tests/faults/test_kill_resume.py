"""Kill-and-resume harness: SIGKILL a long job (or the whole snakemake) at a moment given by its
observed progress (its unit folder appearing, or its first finished unit), run the same command again, and check that the run completes, that no finished unit was computed
twice, and that the outputs equal those of the uninterrupted CI run.

Run alone with: pytest -m faults tests/faults/test_kill_resume.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.workdir import clone_workdir, snakemake_cmd

pytestmark = pytest.mark.faults

# rule -> (target, unit folder, script name); each job has at least two units at CI size
RULES = {
    "transcripts": ("results/data/transcripts.jsonl", "results/units/transcripts", "transcripts.py"),
    "train": ("results/training/smollm2-135m/metrics.json", "results/units/train", "train.py"),
    "rollout": ("results/rollouts/smollm2-135m/cbt/shard00.jsonl", "results/units/rollouts/smollm2-135m/cbt", "rollout.py"),
    "judge": ("results/judge/smollm2-135m/cbt/shard00.jsonl", "results/units/judge", "judge.py"),
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


def _job_procs(proc: subprocess.Popen, script: str):
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


def run_with_kill(wd: Path, rule: str, seed: int, whole: bool) -> dict:
    """Kill when progress is seen, not after a guessed delay (a faster machine would finish first):
    odd seeds when the first unit is finished, even seeds as soon as the job's unit folder exists
    (the first unit in progress)."""
    target, units, script = RULES[rule]
    shutil.rmtree(wd / units, ignore_errors=True)
    shutil.rmtree(wd / "cache", ignore_errors=True)  # no LLM answer comes from the response cache
    # The target goes first: --forcerun and --configfile take several values and would swallow it.
    cmd = snakemake_cmd(target, "--cores", "2", "--configfile", "config/ci.yaml", "--rerun-incomplete", "--forcerun", rule)
    trigger = "first finished unit" if seed % 2 else "unit folder created"

    def progressed() -> bool:
        if seed % 2:
            return finished_units(wd / units) >= 1
        return (wd / units).is_dir() and any((wd / units).iterdir())

    p = subprocess.Popen(cmd, cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    killed = False
    deadline = time.time() + 900
    while time.time() < deadline and p.poll() is None:
        jobs = _job_procs(p, script)
        if jobs and progressed():
            if whole:
                os.killpg(p.pid, signal.SIGKILL)
            else:
                for j in jobs:
                    j.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    first_out = p.communicate(timeout=300)[0].decode(errors="replace")
    assert killed, f"{rule}: the job ended before the kill ({trigger})\n{first_out[-2000:]}"
    if not whole:
        assert p.returncode != 0
    else:
        # A killed snakemake leaves its lock behind; Snakemake tells the user to --unlock first.
        u = subprocess.run(snakemake_cmd("--unlock", "--configfile", "config/ci.yaml"), cwd=wd, capture_output=True, text=True, timeout=120)
        assert u.returncode == 0, u.stderr[-2000:]
    r = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{rule}: resumed run failed\n{(r.stdout + r.stderr)[-4000:]}"
    return {"trigger": trigger, "units": wd / units}


def unit_counts(units: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for log in units.rglob("computed.log"):
        for line in log.read_text().splitlines():
            if line:
                key = f"{log.parent.name}/{line}"
                counts[key] = counts.get(key, 0) + 1
    return counts


def check_outputs(rule: str, wd: Path, ref: Path) -> None:
    target = RULES[rule][0]
    if rule == "train":
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


@pytest.mark.parametrize(
    "rule,seed,whole",
    [
        ("transcripts", 1, False),
        ("transcripts", 2, False),
        ("train", 1, False),
        ("rollout", 1, False),
        ("rollout", 2, False),
        ("judge", 1, False),
        ("judge", 2, True),
    ],
    ids=lambda x: str(x),
)
def test_kill_and_resume(ci_run, tmp_path, harness, rule, seed, whole):
    base = ci_run
    wd = clone_workdir(base, tmp_path / "wd")
    harness.kills += 1
    info = run_with_kill(wd, rule, seed, whole)
    harness.resumed += 1
    counts = unit_counts(info["units"])
    twice = {k: v for k, v in counts.items() if v > 1}
    harness.recomputed += sum(v - 1 for v in twice.values())
    assert not twice, f"{rule}: units computed more than once: {twice}"
    assert counts, f"{rule}: no unit was recorded"
    check_outputs(rule, wd, base)
