"""Headless Chromium for the report tests: load a page with the network off, read it back.

Where no Chromium is installed the tests skip with the reason, unless
RUNNER_REQUIRE_BROWSER=1 (CI sets it), which turns the skip into a failure: CI must not
pass a browser test it did not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["chromium", "distinct_colours", "dump_dom", "screenshot"]

# Loopback is never proxied (Chromium bypasses the proxy for it), so a page served on
# 127.0.0.1 loads while everything beyond it stays unreachable.

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No network beyond loopback: no resolver, a dead proxy, and none of the browser's own calls
# home.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
    # Every name unresolvable; IP literals are mapped too, so loopback's is let through.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def chromium() -> str:
    """The browser's path; skips the test (or fails it, under RUNNER_REQUIRE_BROWSER=1)."""
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    reason = "no Chromium on PATH (install Debian's `chromium` package to run the browser tests)"
    if os.environ.get("RUNNER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RUNNER_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _run(page: Path | str, *extra: str, size: tuple[int, int] = (1280, 2200)) -> str:
    binary = chromium()
    with tempfile.TemporaryDirectory(prefix="report-browser-") as profile:
        proc = subprocess.run(
            [
                binary,
                *_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                "--virtual-time-budget=5000",
                *extra,
                page if isinstance(page, str) else page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dump_dom(page: Path | str) -> str:
    """The DOM after the page's scripts ran, as HTML (`page`: a file, or an http URL)."""
    return _run(page, "--dump-dom")


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1280, 2200)) -> Path:
    _run(page, f"--screenshot={png}", size=size)
    assert png.is_file() and png.stat().st_size > 0
    return png


def distinct_colours(png: Path) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not the background) of a screenshot."""
    from PIL import Image

    with Image.open(png) as img:
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 24) or []
    pixels = sum(n for n, _ in colours)
    background = max(n for n, _ in colours)
    return len(colours), 1 - background / pixels
