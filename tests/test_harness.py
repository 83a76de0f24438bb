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


def test_a_clone_shares_model_weights_and_copies_the_rest(tmp_path):
    """clone_workdir hard-links the weights under results/models and results/gguf (written only as
    new files that replace the old), and copies everything else, weights elsewhere included."""
    from tests.helpers.workdir import clone_workdir

    src = tmp_path / "src"
    files = {
        "results/gguf/m/cbt/m-cbt-f16.gguf": True,
        "results/models/m/cbt/hf/model.safetensors": True,
        "results/models/m/cbt/hf/config.json": False,
        "results/units/train/k/checkpoints/checkpoint-2/adapter_model.safetensors": False,
        "results/data/train.jsonl": False,
    }
    for rel in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    dest = clone_workdir(src, tmp_path / "dest")
    for rel, shared in files.items():
        assert (dest / rel).read_text() == rel
        assert ((dest / rel).stat().st_ino == (src / rel).stat().st_ino) is shared, rel
    # what the pipeline does to an output it makes again: a new file replaces the link
    new = dest / "results/gguf/m/cbt/.m-cbt-f16.gguf.partial"
    new.write_text("new")
    new.replace(dest / "results/gguf/m/cbt/m-cbt-f16.gguf")
    assert (src / "results/gguf/m/cbt/m-cbt-f16.gguf").read_text() == "results/gguf/m/cbt/m-cbt-f16.gguf"
