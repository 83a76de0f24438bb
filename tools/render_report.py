"""Look at the HTML report as a person would: render it in headless Chromium and check that
every figure loaded.

    python tools/render_report.py results/report/report.html --png results/report/report_screenshot.png

Needs Chromium (Debian: apt-get install chromium). Prints how many images the page has and how
many rendered with a non-zero natural size, and writes a full-page screenshot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cbtpipe.workflow import FLAGS, find_chromium

CHECK = """
<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.title = 'IMAGES ' + JSON.stringify({total: imgs.length, loaded: ok});
});
</script>
"""


def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        sys.exit("Chromium not found: apt-get install chromium")
    return exe


def render(html: Path, png: Path | None) -> dict:
    exe = chromium()
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe.html"
        probe.write_text(html.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
        prof = Path(d) / "profile"
        dom = subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={prof}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        start = dom.find("<title>IMAGES ")
        counts = json.loads(dom[start + len("<title>IMAGES ") : dom.find("</title>", start)]) if start >= 0 else {"total": 0, "loaded": 0}
        if png:
            subprocess.run(
                [exe, *FLAGS, f"--user-data-dir={prof}", "--window-size=1200,5200", f"--screenshot={png}", html.resolve().as_uri()],
                capture_output=True,
                timeout=120,
                check=True,
            )
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("html", type=Path)
    ap.add_argument("--png", type=Path)
    a = ap.parse_args()
    counts = render(a.html, a.png)
    print(f"figures: {counts['loaded']} of {counts['total']} loaded")
    if counts["total"] == 0 or counts["loaded"] != counts["total"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
