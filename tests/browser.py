"""Browser and live-server helpers shared by the tests that drive Debian's Chromium.

Owns: launching /usr/bin/chromium through Playwright with the flags this machine needs
(`--no-sandbox --disable-background-networking`), the skip-or-fail rule when it is absent, the
test-artifacts folder, and a uvicorn server on a free loopback port in a thread. Must not:
download a browser (never `playwright install`) or listen anywhere but 127.0.0.1.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from conftest import in_ci

import servers

CHROMIUM = "/usr/bin/chromium"


def artifacts(sub: str) -> Path:
    """Where a test leaves screenshots for a person to look at (gitignored)."""
    root = Path(os.environ.get("VNCAUDIT_ARTIFACTS",
                               Path(__file__).resolve().parent.parent / "test-artifacts"))
    return root / sub


def launch_chromium(extra_args: Sequence[str] = ()) -> Iterator[Any]:
    """Yield a headless Playwright Browser on Debian's chromium (with *extra_args* on its
    command line); skip without it (fail in CI)."""
    if not Path(CHROMIUM).exists():
        message = f"Debian's chromium is not installed at {CHROMIUM}"
        if in_ci():
            pytest.fail(message + " [CI is set: the browser test must not skip]", pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking",
                                          *extra_args])
        try:
            yield browser
        finally:
            browser.close()


class LiveServer:
    """uvicorn serving an app on a free loopback port, in a thread; stopped on exit."""

    def __init__(self, app: Any, **config: Any) -> None:
        self.port = servers.free_port("127.0.0.1")
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on",
                                                    **config))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
