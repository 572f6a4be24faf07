"""Debian's Chromium, headless, as Playwright (PyPI) drives it for the browser tests and the bench:
the system's binary, no browser download. The flags are ENVIRONMENT.md's: without the
background-networking ones Chromium keeps reaching out of this closed machine."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


async def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium browser of ``async_playwright()``."""
    return await playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                            args=CHROMIUM_FLAGS)
