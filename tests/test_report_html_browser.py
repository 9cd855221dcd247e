"""The HTML report in a real headless Chromium (Debian's /usr/bin/chromium via Playwright).

* A real scan: an x11vnc server (no password) showing a real X session (twm + xterm), scanned
  by the CLI with `--screenshot -o html --output-file`; the page is opened from disk and must
  show the severity summary (the same counts as the JSON of the same scan, worst first), the
  fix commands of the fix guide with working copy buttons, the embedded screenshot at the
  server's geometry and the login-or-desktop verdict — and make NO request but the file
  itself (no CSS, font, image or script from anywhere).
* Hostile strings: a desktop name full of markup stays text (no dialog, no request, no
  element), and with JavaScript off the page still reads (commands shown, no dead buttons).

Screenshots of the pages land in test-artifacts/report/ (gitignored) for a person to look at.
Never downloads a browser: without Debian's chromium the tests skip (fail under CI).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import xsession
from conftest import VncServerFactory, _unavailable
from test_report import META, replayed

from vncaudit import remedies, report
from vncaudit.models import ServiceResult
from vncaudit.report import html

import servers
from browser import artifacts, launch_chromium

ARTIFACTS = artifacts("report")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    yield from launch_chromium()


class Watched:
    """A page with every request, dialog and console error recorded."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path: Path) -> str:
        url = path.resolve().as_uri()
        self.page.goto(url, wait_until="load")
        return url


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.realserver
def test_report_of_a_real_scan_in_chromium(
    chromium: Any, vnc_server_factory: VncServerFactory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    gone = xsession.missing("twm", "xterm", "xwininfo")
    if gone:
        _unavailable(servers.ServerUnavailable("x session", gone))
    srv = vnc_server_factory("x11vnc-none", geometry=(1024, 768), desktop="lab-desktop")
    session = xsession.start_session(srv, tmp_path, wm="twm",
                                     terminals=[("-geometry", "90x24+60+80")])
    db = tmp_path / "store.db"
    page_file = tmp_path / "out" / "report.html"
    page_file.parent.mkdir()
    try:
        out = run_cli("scan", "127.0.0.1", "-p", str(srv.port), "--screenshot", "-o", "html",
                      "--output-file", str(page_file), "--db", str(db), "--timeout", "5")
    finally:
        session.stop()
    assert out.returncode == 0, out.stderr
    (scan,) = json.loads(run_cli("results", "--db", str(db), "-o", "json").stdout)
    doc = json.loads(run_cli("results", scan["id"], "--db", str(db), "-o", "json").stdout)
    (svc,) = doc["services"]
    result = ServiceResult.from_dict(svc)
    assert result.findings, "assess found nothing on a server without a password"
    kind = svc["extra"]["active"]["desktop_kind"]["kind"]

    context = chromium.new_context(viewport={"width": 1280, "height": 900},
                                   permissions=["clipboard-read", "clipboard-write"])
    try:
        watched = Watched(context)
        url = watched.open(page_file)
        page = watched.page

        # The summary: the JSON's counts per severity, worst first.
        boxes = page.locator(".sev-box")
        expect(boxes.first).to_be_visible()
        assert boxes.evaluate_all("els => els.map(e => e.dataset.severity)") == [
            "critical", "high", "medium", "low", "info"]
        for sev in ("critical", "high", "medium", "low", "info"):
            expected = sum(f["severity"] == sev for f in svc["findings"])
            expect(page.locator(f'.sev-box[data-severity="{sev}"] .n')).to_have_text(
                str(expected))
        worst = result.worst_severity
        assert worst is not None
        expect(page.locator(".verdict")).to_contain_text(html.SEVERITY_LABEL[worst])

        # The first fix: the guide's commands for this host and port, with a copy button.
        fixes = remedies.remedies_for(result)
        first = next(s for s in fixes[0].steps if s.commands)
        code = page.locator(".fix details[open] pre code").first
        expect(code).to_be_visible()
        expect(code).to_have_text("\n".join(first.commands))
        assert str(srv.port) in "\n".join(c for f in fixes for s in f.steps for c in s.commands)
        button = page.locator(".fix details[open] button.copy").first
        expect(button).to_be_visible()  # the hashed inline script ran under the CSP
        button.click()
        expect(button).to_have_text("Copied")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == "\n".join(first.commands)

        # The screenshot, embedded, at the server's geometry, and the verdict.
        img = page.locator(".proof img")
        expect(img).to_be_visible()
        assert img.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]") == [
            True, 1024, 768]
        assert img.get_attribute("src", timeout=1000).startswith("data:image/png;base64,")
        expect(page.locator("[data-verdict]")).to_contain_text(html.DESKTOP_VERDICT[kind][0])

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report-real-scan.png"), full_page=True)
        assert watched.requests == [url], watched.requests
        assert watched.errors == [] and watched.dialogs == []
    finally:
        context.close()


HOSTILE_NAME = '<script>alert(1)</script><img src="x" onerror="alert(2)">\u202egnp.exe'


def test_hostile_strings_stay_text_in_chromium(chromium: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from vncaudit.assess import assess

    x11 = assess(replayed("x11vnc-none-38", 5901))
    assert x11.rfb is not None
    hostile = replace(x11, rfb=replace(x11.rfb, desktop_name=HOSTILE_NAME),
                      hostname="<b>x</b>.test")
    others = [assess(replayed(n, 5902 + i)) for i, n in
              enumerate(["tigervnc-default-38", "xtightvnc-38", "tigervnc-blacklisted"])]
    page_file = tmp_path / "hostile.html"
    page_file.write_text(report.render("html", META, [hostile, *others]))

    for js in (True, False):
        context = chromium.new_context(viewport={"width": 1280, "height": 900},
                                       java_script_enabled=js)
        try:
            watched = Watched(context)
            url = watched.open(page_file)
            page = watched.page
            name = page.locator("dt", has_text="Desktop name").locator(
                "xpath=following-sibling::dd[1]")
            expect(name).to_have_text(html.shown(HOSTILE_NAME))
            assert page.locator("img").count() == 0  # no server string became an element
            assert page.locator("b", has_text="x").count() == 0
            expect(page.locator("article.card")).to_have_count(4)
            commands = page.locator(".fix details[open] pre code").first
            expect(commands).to_be_visible()  # the fix reads without JavaScript too
            hidden = page.locator("button.copy").evaluate_all(
                "els => els.map(e => e.hidden)")
            assert hidden and hidden == [not js] * len(hidden)  # no dead buttons without JS
            if js:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "report-hostile.png"), full_page=True)
            assert watched.dialogs == [] and watched.requests == [url], watched.requests
            assert watched.errors == []
        finally:
            context.close()


def test_fix_guide_of_two_unknown_services_is_short_in_chromium(
    chromium: Any, tmp_path: Path
) -> None:
    """Two services of an unidentified product, one reachable from a network and one bound to
    loopback: each gets the steps that fit it, the candidates' own steps folded (closed
    <details>), and the page stays a few screens long."""
    from playwright.sync_api import expect

    from vncaudit.assess import assess

    network = assess(replace(replayed("tigervnc-none-38", 5901), host="198.51.100.7"))
    loopback = assess(replace(replayed("tigervnc-none-38", 5902), host="127.0.0.1"))
    for r in (network, loopback):
        assert r.product is not None and r.product.name == "unknown", r.product
    page_file = tmp_path / "two-unknown.html"
    page_file.write_text(report.render("html", META, [network, loopback]))
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    try:
        watched = Watched(context)
        watched.open(page_file)
        page = watched.page
        cards = page.locator("article.card")
        expect(cards).to_have_count(2)
        folded = page.locator("details.candidate")
        assert folded.count() >= 2
        assert all(not o for o in folded.evaluate_all("els => els.map(e => e.open)"))
        # Loopback: no firewall, no tunnel, no "listen on localhost only" for it.
        fix_text = [cards.nth(i).locator(".fix").inner_text() for i in range(2)]
        lo = next(t for i, t in enumerate(fix_text)
                  if "127.0.0.1" in cards.nth(i).locator("h2, h3").first.inner_text())
        for never in ("ufw", "iptables", "nft ", "ssh -N -L", "listen on localhost only"):
            assert never not in lo, (never, lo)
        height = page.evaluate("document.documentElement.scrollHeight")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report-two-unknown.png"), full_page=True)
        assert height < 4500, height  # every product's steps unfolded made 6,354 px
        candidate = folded.first
        candidate.locator("summary").click()
        expect(candidate.locator("pre code").first).to_be_visible()
    finally:
        context.close()
