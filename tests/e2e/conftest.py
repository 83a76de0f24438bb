import pytest

from tests.helpers.workdir import make_workdir, run_snakemake


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    """The CI-sized config run end to end with real components, once per test session."""
    wd = make_workdir(tmp_path_factory.mktemp("ci_run"))
    r = run_snakemake(wd, "--cores", "2", "--configfile", "config/ci.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    return wd
