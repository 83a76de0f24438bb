"""The test harness itself: what the other tests rely on when they run Snakemake."""

import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.workdir import run_snakemake


def test_a_timed_out_snakemake_takes_its_jobs_with_it(tmp_path):
    """The tests' Snakemake runner: on a timeout, no job it started lives on."""
    (tmp_path / "Snakefile").write_text('rule sleep:\n    output: "done"\n    shell: "echo $$ > pid; sleep 60; touch {output}"\n')
    with pytest.raises(subprocess.TimeoutExpired):
        run_snakemake(tmp_path, "--cores", "1", timeout=8)
    pid = int((tmp_path / "pid").read_text())
    time.sleep(0.5)
    stat = Path(f"/proc/{pid}/stat")
    # gone, or dead and waiting for its parent to reap it (state Z)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
