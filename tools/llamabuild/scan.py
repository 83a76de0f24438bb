"""The instruction scan: a built library disassembled, and every instruction outside the portable
baseline (x86-64-v3) listed: AVX-512 and its opmask registers, AMX tiles, VEX-coded VNNI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from .flags import BuildError

# Mnemonics outside x86-64-v3 that are not EVEX-encoded (EVEX is found from the bytes).
AMX = re.compile(r"^(tile\w*|tdp\w+|ldtilecfg|sttilecfg|tcmmi\w+|tcmmr\w+)$")


OPMASK = re.compile(r"^k(mov|and|andn|or|xor|xnor|not|ortest|test|shiftl|shiftr|unpck|add)[bwdq]{1,2}$")


VEX_VNNI = re.compile(r"^vpdp(bu|bs|ws|wu)\w*$")


LEGACY_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3}


_LINE = re.compile(r"^\s*[0-9a-f]+:\t((?:[0-9a-f]{2} )+)\s*\t(?:\{\w+\}\s+)?(\S+)")


def classify(raw: list[int], mnemonic: str) -> str | None:
    """The extension an instruction belongs to, if it is outside the portable baseline."""
    i = 0
    while i < len(raw) and raw[i] in LEGACY_PREFIXES:
        i += 1
    if i < len(raw) and raw[i] == 0x62:  # in 64-bit mode 0x62 is only ever the EVEX prefix
        return "AVX-512 (EVEX)"
    if AMX.match(mnemonic):
        return "AMX"
    if OPMASK.match(mnemonic):
        return "AVX-512 (opmask)"
    if VEX_VNNI.match(mnemonic):
        return "AVX-VNNI"
    return None


def scan_library(path: str | os.PathLike) -> dict[str, dict]:
    """Disassemble a shared library and list instructions outside x86-64-v3, by extension.

    Returns ``{extension: {"count": n, "examples": [mnemonic, ...]}}``; empty means portable."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise BuildError("objdump (GNU binutils) is needed to check the built library; install binutils")
    found: dict[str, dict] = {}
    with subprocess.Popen([objdump, "-d", "-w", str(path)], stdout=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _LINE.match(line)
            if not m:
                continue
            raw = [int(b, 16) for b in m.group(1).split()]
            mnem = m.group(2)
            ext = classify(raw, mnem)
            if ext:
                entry = found.setdefault(ext, {"count": 0, "examples": []})
                entry["count"] += 1
                if mnem not in entry["examples"] and len(entry["examples"]) < 8:
                    entry["examples"].append(mnem)
    if proc.returncode != 0:
        raise BuildError(f"objdump failed on {path} (exit {proc.returncode})")
    return found


def package_libraries(pkg_dir: Path) -> list[Path]:
    """The shared libraries to scan. The CUDA backend's library is left out: its host code is
    compiled by nvcc with the host compiler's defaults (no -march), and its size would make the
    scan take minutes."""
    return sorted(p for p in pkg_dir.rglob("*.so*") if p.is_file() and "ggml-cuda" not in p.name)


def scan_package(pkg_dir: Path) -> dict[str, dict]:
    libs = package_libraries(pkg_dir)
    if not libs:
        raise BuildError(f"no shared libraries under {pkg_dir}: not a llama-cpp-python build")
    return {p.name: r for p in libs if (r := scan_library(p))}


def scan_wheel(wheel: Path) -> dict[str, dict]:
    """Instructions outside the baseline in the wheel's libraries."""
    with tempfile.TemporaryDirectory(prefix="llama-scan-") as d:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if ".so" in Path(name).name:
                    z.extract(name, d)
        return scan_package(Path(d))


def scan_tools(tools: Path, skip: set[str] = frozenset()) -> dict[str, dict]:
    """The tools and the libraries beside them (those also in the package are scanned there)."""
    if not tools.is_dir():
        return {}
    names = {Path(n).name for n in skip}
    todo = [
        p
        for p in sorted(tools.iterdir())
        if p.is_file() and not p.is_symlink() and p.name not in names and "ggml-cuda" not in p.name and p.suffix != ".json"
    ]
    return {f"tools/{p.name}": r for p in todo if (r := scan_library(p))}


def baseline_error(found: dict[str, dict], args: list[str], where: str) -> BuildError:
    lines = [
        f"  {lib}: " + ", ".join(f"{ext} x{v['count']} ({' '.join(v['examples'][:4])})" for ext, v in r.items()) for lib, r in found.items()
    ]
    return BuildError(
        f"{where} contains instructions outside the portable x86-64-v3 baseline:\n"
        + "\n".join(lines)
        + f"\nCMake flags were: {' '.join(args)}\nSuch a build crashes (SIGILL) on CPUs without them."
    )
