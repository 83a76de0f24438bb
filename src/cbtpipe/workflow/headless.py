"""Headless Chromium as this project starts it (the report and results browser checks, their
tests): no network of its own, a fresh profile each time."""

from __future__ import annotations

import shutil

# Without the background-networking flags Chromium opens connections that a closed network refuses.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None
