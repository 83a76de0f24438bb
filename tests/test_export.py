"""GGUF export with llama.cpp's own converter and quantizer, and logit parity."""

import tarfile

import pytest

from cbtpipe.stages import convert_to_gguf, parity_report, quantize
from cbtpipe.stages.converter import extract_tools, installed_version
from cbtpipe.workflow import PipelineError


@pytest.fixture(scope="module")
def tools(llama_cpp_tools):
    return llama_cpp_tools


def test_tools_come_from_the_installed_version(tools):
    assert (tools / "convert_hf_to_gguf.py").is_file()
    assert (tools / "gguf-py" / "gguf").is_dir()
    assert (tools / "conversion").is_dir()


def test_the_converters_sdist_is_the_locks(monkeypatch, tmp_path):
    """The converter's sdist is checked against the lock's sha256 (the one the build used), or is
    the local copy LLAMA_CPP_SDIST names, as for the build."""
    import subprocess

    from cbtpipe.stages import converter

    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        d = tmp_path / "dl"
        (d / f"llama_cpp_python-{installed_version()}.tar.gz").write_bytes(b"sdist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.delenv("LLAMA_CPP_SDIST", raising=False)
    monkeypatch.setattr(converter.subprocess, "run", fake_run)
    (tmp_path / "dl").mkdir()
    got = converter.fetch_sdist(installed_version(), tmp_path / "dl")
    assert got.name == f"llama_cpp_python-{installed_version()}.tar.gz"
    assert calls[0][-3:] == ["--require-hashes", "-r", str(converter.SDIST_LOCK)]
    assert f"llama-cpp-python=={installed_version()}" in converter.SDIST_LOCK.read_text()
    # a version the lock does not pin is fetched by name (no hash to check it against)
    calls.clear()
    with pytest.raises(PipelineError, match="no llama-cpp-python 0.0.1 sdist"):
        converter.fetch_sdist("0.0.1", tmp_path / "dl")
    assert calls[0][-1] == "llama-cpp-python==0.0.1"
    # an offline copy: no download
    calls.clear()
    local = tmp_path / f"llama_cpp_python-{installed_version()}.tar.gz"
    local.write_bytes(b"local")
    monkeypatch.setenv("LLAMA_CPP_SDIST", str(local))
    (tmp_path / "dl2").mkdir()
    assert converter.fetch_sdist(installed_version(), tmp_path / "dl2").read_bytes() == b"local" and calls == []
    monkeypatch.setenv("LLAMA_CPP_SDIST", str(tmp_path / "llama_cpp_python-0.0.1.tar.gz"))
    with pytest.raises(PipelineError, match="LLAMA_CPP_SDIST=.*not a llama_cpp_python"):
        converter.fetch_sdist(installed_version(), tmp_path / "dl2")


def test_tools_refuse_a_mismatched_sdist(tmp_path):
    fake = tmp_path / "llama_cpp_python-0.0.1.tar.gz"
    with tarfile.open(fake, "w:gz"):
        pass
    with pytest.raises(PipelineError, match="version 0.0.1, but llama-cpp-python"):
        extract_tools(fake, tmp_path / "out", installed_version())


def test_tools_refuse_an_archive_member_that_escapes(tmp_path):
    """A member named to climb out of the target (``conversion/../../..``) is refused and nothing
    is written outside it."""
    import io

    ver = installed_version()
    evil = tmp_path / f"llama_cpp_python-{ver}.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("convert_hf_to_gguf.py", "conversion/../../../escaped.txt"):
            data = b"print('x')\n"
            info = tarfile.TarInfo(f"llama_cpp_python-{ver}/vendor/llama.cpp/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(PipelineError, match="outside .*archive refused"):
        extract_tools(evil, tmp_path / "a" / "b" / "tools", ver)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "a" / "b" / "tools").exists()


def test_convert_quantize_and_parity(tiny_hf, tools, tmp_path):
    f16 = tmp_path / "m-f16.gguf"
    q = tmp_path / "m-Q4_K_M.gguf"
    convert_to_gguf(tiny_hf, f16, tools, "f16")
    quantize(f16, q, "Q4_K_M")
    assert f16.read_bytes()[:4] == b"GGUF" and q.stat().st_size < f16.stat().st_size
    res = parity_report(tiny_hf, {"f16": f16, "Q4_K_M": q}, ["I have been feeling low for weeks.", "Let us set an agenda."])
    assert res["f16"]["top1_agreement"] == 1.0
    assert res["f16"]["max_abs_logit_diff"] < 0.5
    assert res["Q4_K_M"]["top1_agreement"] >= 0.6
    with pytest.raises(PipelineError, match="no quantization type Q9_Z"):
        quantize(f16, tmp_path / "x.gguf", "Q9_Z")


def test_imported_model_matches_source_gguf(tiny_hf, tiny_gguf):
    """The import writes the same model as the GGUF: top-1 agreement with llama.cpp >= 90%."""
    res = parity_report(
        tiny_hf,
        {"src": tiny_gguf},
        [
            "I have been feeling low for weeks and I cannot get out of bed.",
            "When you notice the thought that you are a failure, what goes through your mind?",
        ],
    )
    assert res["src"]["top1_agreement"] >= 0.9
    assert (tiny_hf / "model.safetensors").exists()
    from transformers import AutoTokenizer

    assert "<|im_start|>" in AutoTokenizer.from_pretrained(tiny_hf).chat_template


def _llama_calls(root):
    import ast
    from pathlib import Path

    for f in sorted(Path(root).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else None
                if name == "Llama":
                    yield f"{f}:{node.lineno}", {k.arg for k in node.keywords}


def test_every_llama_context_is_held_to_the_jobs_threads():
    """llama-cpp-python sizes a context's batch thread pool to every CPU of the machine unless told:
    two jobs of one thread each (parity beside parity) then ran 16 times slower, their spinning
    pools sharing two cores. Every context the pipeline opens names both thread counts."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    calls = [c for d in ("src", "scripts") for c in _llama_calls(root / d)]
    assert calls, "no llama.cpp context found: the scan is broken"
    bad = [where for where, kw in calls if not {"n_threads", "n_threads_batch"} <= kw]
    assert not bad, f"llama.cpp contexts without n_threads and n_threads_batch: {bad}"


def test_parity_runs_llama_cpp_on_the_threads_it_is_given(tiny_gguf, monkeypatch):
    import llama_cpp

    from cbtpipe.stages import parity

    seen = []

    class Recording(llama_cpp.Llama):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append((self.context_params.n_threads, self.context_params.n_threads_batch))

    monkeypatch.setattr(llama_cpp, "Llama", Recording)
    out = parity.gguf_logits(tiny_gguf, [[1, 2, 3, 4]], n_threads=1)
    assert seen == [(1, 1)] and out[0].shape[0] == 4
