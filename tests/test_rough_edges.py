"""What a new user hits first: the summary line, narrow terminals, unreadable server text, the
words of errors and messages (the command line, the web pages and the API say the same thing).

The CLI runs as a subprocess (`python -m vncaudit`) with COLUMNS set, the web service through
its ASGI app or as `vncaudit serve` itself; scans go to the hostile farm's fake servers and to
real servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette nags about httpx; the pinned client is httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from vncaudit.web import Settings, create_app
from vncaudit.web.policy import InvalidTarget, Policy, TargetRefused

import servers
from hostile import BINARY_REASON, Farm, hostile_farm  # noqa: F401  (hostile_farm: a fixture)

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
ROOT = Path(__file__).resolve().parent.parent


def vncaudit(*args: str, columns: int = 80, timeout: float = 120, db: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "dumb"}
    if db is not None:
        env["VNCAUDIT_DB"] = str(db)
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- 7. the summary line when the report goes to a file ------------------------------------------


@pytest.mark.realserver
def test_report_to_a_file_still_says_what_happened_and_why_the_exit_code(
        vnc_server_factory: Any, tmp_path: Path) -> None:
    srv = vnc_server_factory("x11vnc-none")
    report = tmp_path / "report.json"
    run = vncaudit("scan", "127.0.0.1", "-p", str(srv.port), "-o", "json", "--output-file",
                   str(report), "--fail-on", "high", db=tmp_path / "s.db")
    assert run.returncode == 1, run.stderr
    assert run.stdout == ""
    [line] = [ln for ln in run.stderr.splitlines() if ln.strip()]
    doc = json.loads(report.read_text())
    assert line.startswith(f"scan {doc['scan']['id']}: 1 port probed, 1 VNC (1 high")
    assert f"report (json) written to {report}" in line
    assert line.endswith("; exit 1: 1 finding at high or worse (--fail-on high)")
    # Without a failing finding: the same line, no exit reason, exit 0.
    calm = vncaudit("scan", "127.0.0.1", "-p", str(closed_port()), "-o", "json",
                    "--output-file", str(report), "--fail-on", "high", db=tmp_path / "s.db")
    assert calm.returncode == 0, calm.stderr
    assert "0 VNC" in calm.stderr and "exit 1" not in calm.stderr
    assert "1 port probed" in calm.stderr  # one port, not "1 ports"


# -- 8. ids and addresses are never broken, at 80 and 100 columns --------------------------------


def _words_unbroken(text: str, words: list[str]) -> None:
    for word in words:
        assert word in text, (word, text)


@pytest.mark.realserver
@pytest.mark.parametrize("columns", [80, 100])
def test_tables_never_break_ids_or_addresses(vnc_server_factory: Any, tmp_path: Path,
                                             columns: int) -> None:
    db = tmp_path / "s.db"
    srv = vnc_server_factory("x11vnc-none")
    ids = []
    for target in ("127.0.0.1", "::1"):
        run = vncaudit("scan", target, "-p", f"{srv.port},{closed_port()}", "--all",
                       "--no-fix", columns=columns, db=db)
        assert run.returncode == 0, run.stderr
        found = re.search(r"scan (s-\S+):", run.stderr)
        assert found is not None, run.stderr
        ids.append(found.group(1))
        assert all(len(line) <= columns for line in run.stdout.splitlines()), run.stdout
        _words_unbroken(run.stdout, [target, str(srv.port)])
    listed = vncaudit("results", columns=columns, db=db)
    assert listed.returncode == 0, listed.stderr
    assert all(len(line) <= columns for line in listed.stdout.splitlines())
    _words_unbroken(listed.stdout, ids)
    local = vncaudit("check", "127.0.0.1", "--only-port", str(srv.port), columns=columns)
    _words_unbroken(local.stdout, ["127.0.0.1", str(srv.port)])


# -- 9. a binary failure reason: escaped and bounded everywhere ----------------------------------


def test_binary_reason_is_escaped_and_bounded_everywhere(hostile_farm: Farm,  # noqa: F811
                                                         tmp_path: Path) -> None:
    port = hostile_farm.ports["reason-binary"]
    db = tmp_path / "s.db"
    run = vncaudit("scan", "127.0.0.1", "-p", str(port), "--all", "--no-fix", columns=100,
                   db=db)
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout and "\x07" not in run.stdout
    assert "characters)" in run.stdout  # cut, and it says so
    # No line is mostly reason: the table cell and evidence lines stay short.
    assert max(len(line) for line in run.stdout.splitlines()) <= 100
    assert sum("\\x" in line for line in run.stdout.splitlines()) < 12
    scan_id = re.search(r"scan (s-\S+):", run.stderr).group(1)  # type: ignore[union-attr]
    html = vncaudit("results", scan_id, "-o", "html", db=db).stdout
    assert "\x1b" not in html and "owned\x07" not in html
    reason_cells = re.findall(r"Server&#39;s reason.*?</dd>|Server's reason.*?</dd>", html,
                              re.S)
    assert reason_cells and all(len(c) < 1200 for c in reason_cells), reason_cells[:1]
    # The data formats keep every byte: JSON is data, not a view.
    doc = json.loads(vncaudit("results", scan_id, "-o", "json", db=db).stdout)
    reason = doc["services"][0]["rfb"]["failure_reason"]
    assert reason == BINARY_REASON.decode("utf-8", errors="replace")
    # The web page shows the same bounded text.
    app = create_app(Settings(db_path=str(db), allow=("127.0.0.1/32",)))
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 40001)) as client:
        created = client.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)})
        assert created.status_code == 201, created.text
        web_id = created.json()["id"]
        deadline = time.monotonic() + 20
        while client.get(f"/api/scans/{web_id}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        page = client.get(f"/scans/{web_id}").text
    assert "\x1b" not in page and "characters)" in page


# -- 10. a URL or HOST:PORT: the same words on the command line and in the API ------------------


@pytest.mark.parametrize(("target", "cli", "api"), [
    ("vnc://127.0.0.1:5901", "give the host, not a URL (127.0.0.1 -p 5901)",
     'give the host, not a URL (target "127.0.0.1", ports "5901")'),
    ("127.0.0.1:5901", "a port goes in -p, not after the host (127.0.0.1 -p 5901)",
     'a port goes in ports, not after the host (target "127.0.0.1", ports "5901")'),
    ("[::1]:5901", "a port goes in -p, not after the host (::1 -p 5901)",
     'a port goes in ports, not after the host (target "::1", ports "5901")'),
])
def test_url_and_host_port_get_the_same_words(target: str, cli: str, api: str,
                                              tmp_path: Path) -> None:
    run = vncaudit("scan", target)
    assert run.returncode == 2 and cli in run.stderr, run.stderr
    with pytest.raises(InvalidTarget) as info:
        Policy.build().decide(target, "5900", "198.51.100.7")
    assert api in str(info.value) and "IPv6 address" not in str(info.value)
    app = create_app(Settings(db_path=str(tmp_path / "w.db")))
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 40001)) as client:
        answer = client.post("/api/scans", json={"target": target, "ports": "5900"})
    assert answer.status_code == 400 and api in answer.json()["detail"], answer.text


# -- 12. the README's serve example works on one machine ----------------------------------------


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = servers.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vncaudit", "serve", "--port", str(port),
                             "--db", str(tmp_path / f"serve-{port}.db"), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while not servers.is_listening(port, [proc.pid]):
        assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
        time.sleep(0.1)
    return proc, port


def test_readme_serve_examples_say_what_a_test_on_one_machine_needs(tmp_path: Path) -> None:
    import httpx

    readme = (ROOT / "README.md").read_text()
    one_machine = [ln for ln in readme.splitlines()
                   if ln.startswith("vncaudit serve --allow 127.0.0.1/32")]
    assert len(one_machine) >= 2  # in the quick start and in the web service section
    assert "cannot check\nanything from the machine it runs on" in readme \
        or "cannot check anything from the machine it runs on" in readme.replace("\n", " ")
    target = {"target": "127.0.0.1", "ports": str(closed_port())}
    for args, status in (((), 403), (("--allow", "127.0.0.1/32"), 201)):
        proc, port = _serve(tmp_path, *args)
        try:
            answer = httpx.post(f"http://127.0.0.1:{port}/api/scans", json=target, timeout=10)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)
        assert answer.status_code == status, answer.text
        if status == 403:
            assert "127.0.0.1 is loopback and not allow-listed" in answer.json()["detail"]


# -- 13. words ------------------------------------------------------------------------------------


def test_serve_help_shows_the_config_table_name() -> None:
    run = vncaudit("serve", "--help", columns=120)
    assert "(a [serve] table; see README)" in " ".join(run.stdout.split()), run.stdout


def test_a_name_resolving_to_loopback_reads_as_a_sentence() -> None:
    policy = Policy.build(resolve=lambda name: ["127.0.0.1"])
    with pytest.raises(TargetRefused) as info:
        policy.decide("evil.example", "5900", "198.51.100.7")
    assert str(info.value).endswith(
        "evil.example resolves to 127.0.0.1, which is loopback and not allow-listed")


def test_index_note_has_a_space_after_the_policy(tmp_path: Path) -> None:
    app = create_app(Settings(db_path=str(tmp_path / "w.db"), allow_screenshots=True,
                              screenshot_dir=str(tmp_path / "shots")))
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 40001)) as client:
        page = client.get("/").text
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "checked against the policy. A screenshot takes" in text


def test_one_port_is_one_port_in_the_web_progress(hostile_farm: Farm,  # noqa: F811
                                                  tmp_path: Path) -> None:
    """While a one-port scan runs (a server that never speaks holds it for the deadline), the
    page says "0 of 1 port probed"."""
    app = create_app(Settings(db_path=str(tmp_path / "w.db"), allow=("127.0.0.1/32",),
                              probe_timeout=3.0))
    with TestClient(app, base_url="http://localhost", client=("127.0.0.1", 40001)) as client:
        created = client.post("/api/scans", json={
            "target": "127.0.0.1", "ports": str(hostile_farm.ports["silent"])})
        assert created.status_code == 201, created.text
        page = client.get(f"/scans/{created.json()['id']}").text
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "of 1 port probed" in text and "of 1 ports" not in text


# -- 14. a web front end on any port; 6080 is a usual one ----------------------------------------


@pytest.mark.realserver
def test_websockify_on_any_port_is_read_through_its_websocket(vnc_server_factory: Any,
                                                             tmp_path: Path) -> None:
    from test_websocket import NOVNC, websockify

    backend = vnc_server_factory("x11vnc-none", desktop="behind-websockify")
    web = NOVNC if Path(NOVNC, "vnc.html").exists() else None
    with websockify(backend, web, tmp_path / "websockify.log") as front:
        assert front.port not in (6080, 6901, 80, 443, 8080, 8443) and not (
            5800 <= front.port <= 5803)
        run = vncaudit("scan", "127.0.0.1", "-p", str(front.port), "-o", "json", "--timeout",
                       "2", db=tmp_path / "s.db")
    assert run.returncode == 0, run.stderr
    [svc] = json.loads(run.stdout)["services"]
    assert svc["state"] == "vnc", svc
    assert svc["extra"]["web"]["transport"] == "websocket"
    assert svc["rfb"]["desktop_name"] == "behind-websockify"
    assert svc["product"]["name"] == "noVNC/websockify"
    [port] = [f for f in svc["findings"] if f["id"] == "nonstandard-port"]
    assert port["evidence"][0].startswith(
        f"RFB over WebSocket answered on port {front.port} (usual: 6080, 6901, 5800-5810")


def test_novnc_default_port_is_not_nonstandard() -> None:
    from vncaudit.assess import assess
    from vncaudit.models import NamedType, RfbFacts, ServiceResult, State

    facts = RfbFacts("RFB 003.008\n", "3.8", "3.8", (NamedType(2, "VNC Authentication"),),
                     auth_required=True)
    from vncaudit.payloads import Extras, WebFrontEnd

    web = Extras(web=WebFrontEnd(transport="websocket"))
    for port, nonstandard in ((6080, False), (6901, False), (17706, True)):
        graded = assess(ServiceResult("127.0.0.1", port, State.VNC, rfb=facts, extra=web))
        assert ("nonstandard-port" in {f.id for f in graded.findings}) is nonstandard, port
    # Plain RFB on 6080 is still unusual: the web list is for web front ends.
    plain = assess(ServiceResult("127.0.0.1", 6080, State.VNC, rfb=facts))
    assert "nonstandard-port" in {f.id for f in plain.findings}


def test_a_held_session_is_not_called_open_to_anyone_and_counts_are_english() -> None:
    """A server that held the session (approval-required) has no password, but neither the web
    card nor the HTML report may say "anyone can connect"; the banner counts in English."""
    from vncaudit import report
    from vncaudit.assess import assess
    from vncaudit.models import Framebuffer, NamedType, RfbFacts, ServiceResult, State
    from vncaudit.web.views import service_facts, verdict

    held = RfbFacts("RFB 003.007\n", "3.7", "3.7", (NamedType(1, "None"),), auth_required=False,
                    selected_type=1, desktop_name="root@vm",
                    framebuffer=Framebuffer(800, 600, 24, 32, False, True),
                    update_answered=False, update_seconds=2.0)
    graded = assess(ServiceResult("127.0.0.1", 5900, State.VNC, rfb=held))
    assert "approval-required" in {f.id for f in graded.findings}
    [auth] = [v for k, v in service_facts(graded) if k == "Authentication"]
    assert auth.startswith("NONE — no password, but the session was not handed out at once")
    html = report.render("html", report.ScanMeta("s-x", "2026-01-01T00:00:00+00:00", None,
                                                 ["127.0.0.1"], "5900", "vncaudit"), [graded])
    assert "not handed out at once" in html and "anyone can connect" not in html
    granted = assess(ServiceResult("127.0.0.1", 5901, State.VNC, rfb=replace(
        held, update_answered=True, update_seconds=0.01)))
    assert dict(service_facts(granted))["Authentication"] == "NONE — no password needed"
    assert verdict([graded], True).text.startswith("Open: 1 VNC service reachable")
    assert verdict([graded, granted], True).text.startswith("Open: 2 VNC services reachable")
    closed = [ServiceResult("127.0.0.1", p, State.CLOSED) for p in (1, 2)]
    assert verdict(closed[:1], True).text == "Closed: the port refused the connection"
    assert verdict(closed, True).text == "Closed: 2 ports refused the connection"
