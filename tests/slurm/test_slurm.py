"""A real single-node SLURM cluster: the CI-sized pipeline's training-to-rollout part through
`snakemake --executor slurm --profile profiles/slurm`.

Needs root (apt-get, daemons). The cluster is brought up by tests/slurm/slurm_up.sh and stopped by
slurm_down.sh, which ends only the daemons it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.workdir import clone_workdir, run_snakemake

pytestmark = pytest.mark.slurm
HERE = Path(__file__).resolve().parent
TARGET = "results/rollouts/smollm2-135m/cbt/shard00.jsonl"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the test cluster needs root (apt-get and the SLURM daemons)")
    state = tmp_path_factory.mktemp("slurm_state")
    env = dict(os.environ, SLURM_TEST_STATE=str(state))
    t0 = time.time()
    r = subprocess.run(["bash", str(HERE / "slurm_up.sh")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    up = time.time() - t0
    print(f"\nSLURM bring-up: {up:.1f} s ({r.stdout.strip()})")
    yield {"up_seconds": up, "env": env}
    d = subprocess.run(["bash", str(HERE / "slurm_down.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert d.returncode == 0, d.stderr


def test_sbatch_gpu_request_is_accepted(cluster):
    r = subprocess.run(["srun", "--gpus=1", "-n1", "bash", "-c", "echo $CUDA_VISIBLE_DEVICES"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


def test_pipeline_through_slurm(cluster, ci_run, tmp_path):
    # Re-run training and everything after it up to the rollout job (both arms), through SLURM.
    wd = clone_workdir(ci_run, tmp_path / "wd")
    shutil.rmtree(wd / "results/units/train", ignore_errors=True)
    args = (
        TARGET,
        "--configfile",
        "config/ci.yaml",
        "--forcerun",
        "train",
        "--executor",
        "slurm",
        "--profile",
        "profiles/slurm",
        "--jobs",
        "4",
        "--slurm-status-command",
        "squeue",
        "--slurm-no-account",
        "--slurm-init-seconds-before-status-checks",
        "2",
    )
    t0 = time.time()
    try:  # a hard timeout that ends the process group (the plugin can hang on status checks)
        r = run_snakemake(wd, *args, timeout=1200)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"snakemake through SLURM did not finish in 1200 s:\n{((e.output or '') + (e.stderr or ''))[-4000:]}")
    slurm_s = time.time() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    for rule in ("train", "merge", "convert_gguf", "quantize_gguf", "rollout"):
        assert f"rule {rule}" in out or f"localrule {rule}" in out, f"{rule} did not run:\n{out[-3000:]}"
    assert "sbatch" in out or "Job " in out
    # The same jobs' times with the local executor (--cores 2), from the CI run's benchmark files.
    local_s = 0.0
    for b in (
        "train/smollm2-135m",
        "merge/smollm2-135m",
        "export/smollm2-135m-cbt-f16",
        "export/smollm2-135m-cbt-Q4_K_M",
        "rollout/smollm2-135m-00",  # one job plays both arms
    ):
        local_s += float((ci_run / "benchmarks" / f"{b}.tsv").read_text().splitlines()[-1].split("\t")[0])
    lines = (wd / TARGET).read_text().splitlines()
    # 2 evaluation patients x course positions 1 and 2
    assert len(lines) == 4 and all(json.loads(line)["turns"] >= 1 for line in lines)
    for rule in ("train", "merge", "convert_gguf", "quantize_gguf", "rollout"):
        # Each job went through sbatch (the plugin names the job's SLURM log; it removes the logs of
        # successful jobs afterwards).
        assert f"slurm_logs/rule_{rule}/" in out, f"{rule} was not submitted to SLURM"
    print(
        f"\nSLURM: train->rollout through SLURM {slurm_s:.1f} s (wall); the same jobs with --cores 2: {local_s:.1f} s "
        f"(sum of benchmark times); bring-up {cluster['up_seconds']:.1f} s"
    )
