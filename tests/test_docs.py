"""The README is a front door: short, with every link resolving (to a file of the repository, and
to a heading of it where the link names one); the same holds for the pages under docs/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def broken_links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not fetched here
            continue
        path, _, frag = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{md.name}: {target} (no such file)")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            bad.append(f"{md.name}: {target} (no heading #{frag} in {dest.name})")
    return bad


def test_the_readme_is_a_front_door_of_at_most_300_lines():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    for part in (
        "## The two commands",
        "make demo",
        "make test",
        "## What a run produces",
        "## Run your own study",
        "On SLURM",
        "On a GPU",
    ):
        assert part in text, part
    for page in ("benchmarks", "configuration", "fault-tolerance", "llama-cpp-build", "gpu", "architecture"):
        assert f"(docs/{page}.md" in text, f"the README does not lead to docs/{page}.md"


def test_every_link_of_the_readme_and_the_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = [b for p in pages for b in broken_links(p)]
    assert not bad, bad
    assert len(LINK.findall((ROOT / "README.md").read_text(encoding="utf-8"))) >= 15


def test_the_link_check_finds_a_broken_link_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `code` here\n\n[ok](#some-code-here) [x](b.md) [y](a.md#nope) [z](https://e.org)\n")
    assert broken_links(tmp_path / "a.md") == ["a.md: b.md (no such file)", "a.md: a.md#nope (no heading #nope in a.md)"]
