"""The check page in a real headless Chromium (Debian's /usr/bin/chromium via Playwright).

Opens the form, submits 127.0.0.1 with the port of a real x11vnc server (no password) plus a
silent hostile-farm port that holds the scan for the probe deadline, watches the live progress
go from 1 of 2 to done, and checks the critical verdict and the fix commands; the
"Take a screenshot" box is ticked, so the x11vnc card shows the server's picture (served by
the service itself, under its CSP) with the login-screen-or-desktop verdict. The service runs
under uvicorn on a free loopback port with 127.0.0.1 allow-listed and assume_exposure="public"
(127.0.0.1 stands in for a public host) and allow_screenshots on. Page screenshots land in
test-artifacts/web/.
Never downloads a browser: without Debian's chromium the test skips (fails under CI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import VncServerFactory

from vncaudit.web import Settings, create_app

from browser import LiveServer, artifacts, launch_chromium
from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)

ARTIFACTS = artifacts("web")


@pytest.fixture
def chromium() -> Iterator[object]:
    yield from launch_chromium()


@pytest.mark.realserver
def test_check_page_in_chromium(tmp_path: Path, vnc_server_factory: VncServerFactory,
                                paint_root: Callable[..., None], hostile_farm: Farm,  # noqa: F811
                                chromium: object) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(chromium, Browser)
    vnc = vnc_server_factory("x11vnc-none", desktop="browser-test", geometry=(640, 480))
    paint_root(vnc, "#2e8b57")
    silent = hostile_farm.ports["silent"]
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        assume_exposure="public", probe_timeout=5.0, allow_screenshots=True,
                        screenshot_dir=str(tmp_path / "shots"))
    with LiveServer(create_app(settings), server_header=False) as live:
        context = chromium.new_context(viewport={"width": 1100, "height": 900})
        page = context.new_page()
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        problems: list[str] = []  # CSP violations and script errors show up here
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))

        page.goto(live.url + "/")
        expect(page.locator("#client-address")).to_have_text("127.0.0.1")
        expect(page.locator('input[name="preset"][value="5900"]')).to_be_checked()
        page.fill("#target", "127.0.0.1")
        page.fill("#ports", f"{vnc.port},{silent}")  # focusing it selects "Custom" (app.js)
        expect(page.locator('input[name="preset"][value="custom"]')).to_be_checked()
        page.check("#screenshot")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "check-form.png"))
        page.click("#submit")

        # Live progress: the x11vnc port answers at once, the silent one holds the scan for
        # the 5 s probe deadline, so the page shows 1 of 2 before it is done.
        page.wait_for_url("**/scans/s-*")
        expect(page.locator("#progress")).to_be_visible()
        expect(page.locator("#progress-total")).to_have_text("2")
        expect(page.locator("#progress-done")).to_have_text("1", timeout=10000)
        assert page.locator("#progress-bar").get_attribute("max") == "2"
        # The banner already tells what answered while the silent port is still pending.
        expect(page.locator("#verdict")).to_have_attribute("data-severity", "critical")
        expect(page.locator("#progress")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "check-progress.png"))

        # Done: the script reloads the page into the result.
        expect(page.locator("#progress")).to_have_count(0, timeout=20000)
        verdict = page.locator("#verdict")
        expect(verdict).to_have_attribute("data-state", "open")
        expect(verdict).to_have_attribute("data-severity", "critical")
        expect(verdict).to_contain_text("critical: No authentication")
        card = page.locator("article.card", has_text=f"127.0.0.1:{vnc.port}")
        expect(card).to_contain_text("browser-test")  # the desktop name x11vnc reported
        expect(card.locator('[data-finding="no-auth"]')).to_be_visible()
        commands = card.locator("pre.fix-commands").first
        expect(commands).to_be_visible()
        expect(commands).to_contain_text(str(vnc.port))
        copy = card.locator("button.copy").first
        expect(copy).to_be_visible()  # unhidden by app.js
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        copy.click()
        expect(copy).to_have_text("Copied")
        assert page.evaluate("navigator.clipboard.readText()") == commands.inner_text()

        # The screenshot: loaded from the service's own origin and decoded at the server's
        # geometry, the painted colour in it, with the desktop verdict next to it.
        image = card.locator("section.screenshot img.shot")
        expect(image).to_be_visible()
        scan_id = page.url.rsplit("/", 1)[1]
        assert (image.get_attribute("src") or "").startswith(f"/scans/{scan_id}/screenshots/")
        natural = image.evaluate("i => i.complete && [i.naturalWidth, i.naturalHeight]")
        assert natural == [640, 480]
        pixel = image.evaluate("""i => { const c = document.createElement('canvas');
            c.width = 1; c.height = 1; const g = c.getContext('2d');
            g.drawImage(i, 600, 400, 1, 1, 0, 0, 1, 1);
            return Array.from(g.getImageData(0, 0, 1, 1).data.slice(0, 3)); }""")
        assert pixel == [0x2e, 0x8b, 0x57]
        expect(card.locator("p.desktop-kind")).to_have_attribute("data-kind", "blank")
        expect(card.locator("p.desktop-kind")).to_contain_text("Empty screen")
        card.screenshot(path=str(ARTIFACTS / "check-screenshot-card.png"))

        shot = ARTIFACTS / "check-result.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10000

        # The HTML report from the API renders under its CSP without a violation.
        page.click("p.reports >> text=html")
        expect(page.locator("body")).to_contain_text(str(vnc.port))
        page.goto(live.url + "/history")
        expect(page.locator("table.history tbody tr")).to_have_count(1)
        context.close()
        assert problems == []

        # Without JavaScript: the running page refreshes itself (<noscript> meta refresh) and
        # the result is complete; the copy buttons stay hidden, the commands are there.
        plain = chromium.new_context(java_script_enabled=False)
        page = plain.new_page()
        page.goto(live.url + "/")
        page.fill("#target", "127.0.0.1")
        page.check('input[name="preset"][value="custom"]')
        page.fill("#ports", f"{vnc.port},{silent}")
        page.click("#submit")
        page.wait_for_url("**/scans/s-*")
        expect(page.locator("#progress")).to_have_count(0, timeout=20000)
        expect(page.locator("#verdict")).to_have_attribute("data-severity", "critical")
        expect(page.locator("pre.fix-commands").first).to_be_visible()
        expect(page.locator("button.copy").first).to_be_hidden()
        plain.close()
        # Every request the page made went to the service itself: no CDN, no external file.
        assert requested and all(u.startswith(live.url + "/") for u in requested), requested
