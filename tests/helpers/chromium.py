"""Headless Chromium for tests: load a page (its scripts run), return the DOM it built, parsed."""

from __future__ import annotations

import subprocess
import tempfile
from html.parser import HTMLParser

from cbtpipe.workflow import FLAGS, find_chromium

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def chromium() -> str:
    exe = find_chromium()
    if exe:
        return exe
    raise AssertionError("no Chromium on this machine: `make dev` installs it (tools/install_chromium.sh)")


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        out = []
        for n in self.iter():
            if tag and n.tag != tag:
                continue
            if cls and cls not in n.classes:
                continue
            if any(n.attrs.get(k.replace("_", "-")) != v for k, v in attrs.items()):
                continue
            out.append(n)
        return out

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node | None:
        found = self.find_all(tag, cls, **attrs)
        return found[0] if found else None


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def load(url: str, budget_ms: int = 5000) -> Node:
    """The page's DOM after its scripts ran (Chromium's --dump-dom)."""
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={d}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    b = _Builder()
    b.feed(r.stdout)
    return b.root
