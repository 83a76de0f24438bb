"""The test harness itself: what the other tests rely on when they run Snakemake."""

import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.workdir import run_snakemake


def test_a_timed_out_snakemake_takes_its_jobs_with_it(tmp_path):
    """The tests' Snakemake runner: on a timeout, no job it started lives on."""
    (tmp_path / "Snakefile").write_text('rule sleep:\n    output: "done"\n    shell: "echo $$ > pid; sleep 300; touch {output}"\n')
    # long enough for Snakemake to start the job on a busy machine, far shorter than the job
    with pytest.raises(subprocess.TimeoutExpired) as e:
        run_snakemake(tmp_path, "--cores", "1", timeout=20)
    assert (tmp_path / "pid").exists(), f"the job had not started when the timeout came:\n{e.value.stderr}"
    pid = int((tmp_path / "pid").read_text())
    time.sleep(0.5)
    stat = Path(f"/proc/{pid}/stat")
    # gone, or dead and waiting for its parent to reap it (state Z)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
