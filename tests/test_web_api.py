"""The web service through its HTTP interface (Starlette TestClient on the ASGI app).

Scans go to the hostile farm's fake servers on 127.0.0.1, which the test settings allow-list
explicitly (the default policy refuses loopback). The exposure is set to "public", so 127.0.0.1
stands in for a public host and findings are graded as the world would see them.
"""

from __future__ import annotations

import re
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette nags about httpx; the pinned client is httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from vncaudit.web import Settings, create_app
from vncaudit.web.security import RateLimiter, token_matches
from vncaudit.web.settings import hash_token, new_token

from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)
from servers import free_port

# The Host the service answers by default (allowed_hosts: the localhost names).
LOCAL = "http://localhost"

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

ME = ("127.0.0.1", 40001)
PROXY = ("127.0.0.1", 40002)  # a reverse proxy the settings trust


def settings(tmp_path: Path, **changes: Any) -> Settings:
    base: dict[str, Any] = dict(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                                assume_exposure="public", probe_timeout=2.0, rate_burst=50,
                                rate_per_minute=600)
    base.update(changes)
    return Settings(**base)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path)), base_url=LOCAL, client=ME) as c:
        yield c


def wait_final(client: TestClient, scan_id: str, timeout: float = 20.0,
               **kw: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/scans/{scan_id}", **kw)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] not in ("queued", "running"):
            return body
        assert time.monotonic() < deadline, f"scan {scan_id} did not finish: {body}"
        time.sleep(0.05)


def submit(client: TestClient, target: str, ports: str | int, **kw: Any) -> dict[str, Any]:
    response = client.post("/api/scans", json={"target": target, "ports": str(ports)}, **kw)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/api/scans/{response.json()['id']}"
    body: dict[str, Any] = response.json()
    return body


def test_health_openapi_and_security_headers(client: TestClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    h = response.headers
    assert "default-src 'self'" in h["content-security-policy"]
    assert "frame-ancestors 'none'" in h["content-security-policy"]
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    spec = client.get("/openapi.json").json()
    for path in ("/api/scans", "/api/scans/{scan_id}", "/api/scans/{scan_id}/report.{fmt}",
                 "/api/health"):
        assert path in spec["paths"], path
    docs = client.get("/docs")  # Swagger UI, its assets served here (test_web_deploy)
    assert docs.status_code == 200 and not re.search(r"(src|href)=\"(https?:)?//", docs.text)
    page = client.get("/")
    assert page.status_code == 200
    assert "<script>" not in page.text and "http://" not in page.text.split("<body>")[0]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)  # nothing external


def test_scan_no_auth_server_end_to_end(client: TestClient, hostile_farm: Farm) -> None:  # noqa: F811
    port = hostile_farm.ports["vnc-none"]
    created = submit(client, "127.0.0.1", port)
    assert created["status"] in ("queued", "running", "finished")
    assert created["addresses"] == ["127.0.0.1"]
    body = wait_final(client, created["id"])
    assert body["status"] == "finished"
    assert body["progress"] == {"done": 1, "total": 1}
    assert body["verdict"]["state"] == "open"
    assert body["verdict"]["severity"] == "critical"
    (service,) = body["services"]
    assert service["state"] == "vnc" and service["port"] == port
    assert service["rfb"]["auth_required"] is False
    assert service["rfb"]["desktop_name"] == "farm-none"
    ids = {f["id"]: f["severity"] for f in service["findings"]}
    assert ids.get("no-auth") == "critical"
    fixes = {fix["id"]: fix for fix in service["fix"]}
    assert "set-password" in fixes
    commands = [c for fix in fixes.values() for s in fix["steps"] for c in s["commands"]]
    assert any(str(port) in c for c in commands), commands  # filled with the real port

    # Reports in every format, served from the store.
    js = client.get(f"/api/scans/{body['id']}/report.json")
    assert js.status_code == 200 and js.headers["content-type"].startswith("application/json")
    assert js.json()["services"][0]["port"] == port
    html = client.get(f"/api/scans/{body['id']}/report.html")
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    csp = html.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    script = re.search(r"script-src ([^;]+)", csp)
    assert script and "unsafe" not in script.group(1)
    if "<script>" in html.text:  # the report's one inline script runs, pinned by its hash
        assert "'sha256-" in script.group(1)
    xml = client.get(f"/api/scans/{body['id']}/report.xml")
    assert xml.status_code == 200 and "<nmaprun" in xml.text
    assert client.get(f"/api/scans/{body['id']}/report.pdf").status_code in (404, 422)

    metrics = client.get("/metrics").text
    assert "vncaudit_web_scans_submitted_total 1.0" in metrics
    assert 'vncaudit_web_probes_total{state="vnc"} 1.0' in metrics


def test_closed_and_tarpit_verdicts(client: TestClient, hostile_farm: Farm) -> None:  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    closed = wait_final(client, submit(client, "127.0.0.1", free)["id"])
    assert closed["verdict"]["state"] == "closed"
    assert [s["state"] for s in closed["services"]] == ["closed"]
    assert wait_final(client, submit(client, "127.0.0.1", hostile_farm.ports["ssh"])["id"]
                      )["services"][0]["state"] == "open-not-vnc"


def test_hostname_target_is_scanned_by_its_checked_address(tmp_path: Path,
                                                          hostile_farm: Farm) -> None:  # noqa: F811
    calls: list[str] = []

    def resolver(name: str) -> list[str]:
        calls.append(name)
        return ["127.0.0.1"] if name == "vnc.example.test" else []

    app = create_app(settings(tmp_path, resolver=resolver))
    with TestClient(app, base_url=LOCAL, client=ME) as c:
        body = wait_final(c, submit(c, "VNC.example.test.", hostile_farm.ports["vnc-auth"])["id"])
        assert body["target"] == "vnc.example.test" and body["hostname"] == "vnc.example.test"
        (service,) = body["services"]
        assert service["host"] == "127.0.0.1" and service["hostname"] == "vnc.example.test"
        assert service["rfb"]["auth_required"] is True
        refused = c.post("/api/scans", json={"target": "nothing.example.test", "ports": "5900"})
        assert refused.status_code == 400 and refused.json()["code"] == "unresolvable"
    assert calls == ["vnc.example.test", "nothing.example.test"]


def test_input_errors(client: TestClient) -> None:
    for body, status, code in [
        ({"target": "999999999999", "ports": "5900"}, 400, "bad-target"),
        ({"target": "127.0.0.1", "ports": "65535-"}, 201, None),  # open-ended: one port
        ({"target": "127.0.0.1", "ports": "99999"}, 400, "bad-ports"),
        ({"target": "10.0.0.1", "ports": "5900"}, 403, "address-refused"),
        ({"target": "http://127.0.0.1/"}, 400, "bad-target"),
    ]:
        response = client.post("/api/scans", json=body)
        assert response.status_code == status, (body, response.text)
        if code:
            assert response.json()["code"] == code
    assert client.post("/api/scans", json={"ports": "5900"}).status_code == 422
    assert client.post("/api/scans", content=b"not json").status_code == 422
    assert client.get("/api/scans/s-20990101-000000").status_code == 404


def test_scans_are_private_to_their_requester(tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    app = create_app(settings(tmp_path))
    with TestClient(app, base_url=LOCAL, client=ME) as mine:
        scan_id = submit(mine, "127.0.0.1", hostile_farm.ports["vnc-auth"])["id"]
        wait_final(mine, scan_id)
        assert [s["id"] for s in mine.get("/api/scans").json()] == [scan_id]
        other = TestClient(app, base_url=LOCAL, client=("127.0.0.2", 40002))
        assert other.get(f"/api/scans/{scan_id}").status_code == 404
        assert other.get(f"/api/scans/{scan_id}/report.json").status_code == 404
        assert other.get(f"/scans/{scan_id}").status_code == 404
        assert other.get("/api/scans").json() == []
        assert scan_id not in other.get("/history").text


def test_api_tokens_hashed_at_rest(tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    token = new_token()
    stored = hash_token(token)
    assert token not in stored and token_matches(token, [stored])
    assert not token_matches(token + "x", [stored])
    app = create_app(settings(tmp_path, token_hashes=(hash_token(new_token()), stored)))
    body = {"target": "127.0.0.1", "ports": str(hostile_farm.ports["vnc-auth"])}
    with TestClient(app, base_url=LOCAL, client=ME) as c:
        assert c.get("/api/health").status_code == 200  # liveness stays open
        missing = c.post("/api/scans", json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/api/scans", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert c.get("/metrics").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        scan_id = submit(c, body["target"], body["ports"], headers=auth)["id"]
        assert c.get(f"/api/scans/{scan_id}").status_code == 401
        assert wait_final(c, scan_id, headers=auth)["status"] == "finished"
        assert c.get("/metrics", headers=auth).status_code == 200
        # A token holder sees scans of any requester.
        other = TestClient(app, base_url=LOCAL, client=("127.0.0.3", 40003))
        assert other.get(f"/api/scans/{scan_id}", headers=auth).status_code == 200


def test_rate_limit_per_client(tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    app = create_app(settings(tmp_path, rate_burst=2, rate_per_minute=1))
    body = {"target": "127.0.0.1", "ports": str(hostile_farm.ports["vnc-auth"])}
    with TestClient(app, base_url=LOCAL, client=ME) as c:
        assert [c.post("/api/scans", json=body).status_code for _ in range(3)] == [201, 201, 429]
        limited = c.post("/api/scans", json=body)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
        # Another address has its own bucket (refused by the policy, not the limiter).
        other = TestClient(app, base_url=LOCAL, client=("127.0.0.9", 40009))
        assert other.post("/api/scans", json={**body, "target": "10.0.0.1"}).status_code == 403


def test_token_bucket_refills() -> None:
    limiter = RateLimiter(per_minute=60, burst=2)
    assert [limiter.take("a", now=0.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a", now=0.0) == pytest.approx(1.0)
    assert limiter.take("a", now=1.0) == 0.0
    bounded = RateLimiter(per_minute=60, burst=1, max_clients=3)
    for i in range(10):
        bounded.take(f"c{i}", now=0.0)
    assert len(bounded._buckets) == 3


def test_queue_full_answers_503(tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    app = create_app(settings(tmp_path, workers=1, queue_size=1, probe_timeout=4.0))
    silent = {"target": "127.0.0.1", "ports": str(hostile_farm.ports["silent"])}
    with TestClient(app, base_url=LOCAL, client=ME) as c:
        first = submit(c, silent["target"], silent["ports"])["id"]
        deadline = time.monotonic() + 5
        while c.get(f"/api/scans/{first}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.post("/api/scans", json=silent).status_code == 201  # waits in the queue
        full = c.post("/api/scans", json=silent)
        assert full.status_code == 503 and full.json()["code"] == "queue-full"
        body = wait_final(c, first)
        assert body["services"][0]["state"] == "tarpit"


def test_one_client_cannot_hold_every_worker(tmp_path: Path,
                                             hostile_farm: Farm) -> None:  # noqa: F811
    app = create_app(settings(tmp_path, max_active_per_client=1, probe_timeout=2.0))
    silent = {"target": "127.0.0.1", "ports": str(hostile_farm.ports["silent"])}
    with TestClient(app, base_url=LOCAL, client=ME) as c:
        first = submit(c, silent["target"], silent["ports"])["id"]
        busy = c.post("/api/scans", json=silent)
        assert busy.status_code == 429 and busy.json()["code"] == "too-many-active"
        other = TestClient(app, base_url=LOCAL, client=("127.0.0.7", 40007))
        assert other.post("/api/scans", json=silent).status_code == 201
        wait_final(c, first)
        assert c.post("/api/scans", json=silent).status_code == 201  # done: a new one is fine


def test_scan_deadline_stops_a_long_scan(tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    app = create_app(settings(tmp_path, scan_deadline=1.0, probe_timeout=4.0))
    ports = f"{hostile_farm.ports['vnc-auth']},{hostile_farm.ports['silent']}"
    with TestClient(app, base_url=LOCAL, client=ME) as c:
        t0 = time.monotonic()
        body = wait_final(c, submit(c, "127.0.0.1", ports)["id"])
        assert time.monotonic() - t0 < 3.5  # not the 4 s probe deadline of the silent port
        assert body["status"] == "interrupted" and "deadline" in body["error"]
        assert [s["state"] for s in body["services"]] == ["vnc"]  # what answered is kept


def _csrf(page_text: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page_text)
    assert match
    return match.group(1)


def test_form_csrf_and_result_page(client: TestClient, hostile_farm: Farm) -> None:  # noqa: F811
    port = hostile_farm.ports["vnc-none"]
    data = {"target": "127.0.0.1", "preset": "custom", "ports": str(port)}
    assert client.post("/scans", data=data, follow_redirects=False).status_code == 403
    page = client.get("/")
    assert 'value="5900" checked' in page.text  # 5900 preselected
    assert "VNC 5900-5910" in page.text and "All 65535 ports" in page.text
    assert "127.0.0.1" in page.text  # the requester's address, shown and prefilled
    cookie = client.cookies.get("vncaudit_csrf")
    assert cookie
    forged = client.post("/scans", data={**data, "csrf_token": "0" * 64},
                         follow_redirects=False)
    assert forged.status_code == 403
    ok = client.post("/scans", data={**data, "csrf_token": _csrf(page.text)},
                     follow_redirects=False)
    assert ok.status_code == 303
    scan_id = ok.headers["location"].rsplit("/", 1)[1]
    wait_final(client, scan_id)
    result = client.get(f"/scans/{scan_id}")
    assert result.status_code == 200
    text = result.text
    assert 'data-state="open"' in text and 'data-severity="critical"' in text
    assert "farm-none" in text  # the observed desktop name on the service card
    assert 'data-finding="no-auth"' in text
    assert 'class="fix-commands"' in text and f"{port}" in text
    assert "This is the first scan of 127.0.0.1" in text
    assert "<script>" not in text  # only /static/app.js, no inline script


def test_history_diff_to_previous_scan(client: TestClient) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # first scan: nothing listens there
    first = wait_final(client, submit(client, "127.0.0.1", port)["id"])
    assert first["verdict"]["state"] == "closed"
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4)  # second scan: it accepts and never speaks (a tarpit)
    try:
        second = wait_final(client, submit(client, "127.0.0.1", port)["id"])
    finally:
        listener.close()
    assert second["services"][0]["state"] == "tarpit"
    history = client.get("/history").text
    assert first["id"] in history and second["id"] in history
    assert f"+ 127.0.0.1:{port} appeared" in history
    page = client.get(f"/scans/{second['id']}").text
    assert f'href="/scans/{first["id"]}"' in page and "appeared" in page


def test_scans_of_one_host_on_other_ports_are_not_called_unchanged(
        client: TestClient, hostile_farm: Farm) -> None:  # noqa: F811
    """The previous scan of 127.0.0.1 found VNC on one port; this one probed another port,
    where nothing listens: nothing was compared, so neither page may say "no change"."""
    vnc = hostile_farm.ports["vnc-none"]
    first = wait_final(client, submit(client, "127.0.0.1", vnc)["id"])
    assert first["services"][0]["state"] == "vnc"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    closed = listener.getsockname()[1]
    listener.close()
    second = wait_final(client, submit(client, "127.0.0.1", closed)["id"])
    told = f"? not probed by {second['id']}: 127.0.0.1:{vnc} (found by {first['id']}; " \
           "nothing to compare)"
    page = client.get(f"/scans/{second['id']}").text
    assert "No change" not in page and told in page
    history = client.get("/history").text
    assert "no change since" not in history and told in history


def test_settings_reject_unsafe_configuration(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Settings(allow=("no such network",))
    with pytest.raises(ValueError):
        Settings(token_hashes=("plaintext-token",))
    with pytest.raises(ValueError):
        Settings(assume_exposure="everywhere")
    config = tmp_path / "serve.toml"
    config.write_text('[serve]\nallow = ["127.0.0.1/32"]\nalow = ["0.0.0.0/0"]\n')
    with pytest.raises(ValueError, match="alow"):
        Settings.from_toml(config)
    config.write_text('[serve]\nallow = ["127.0.0.1/32"]\nmax_ports = 11\n')
    loaded = Settings.from_toml(config)
    assert loaded.allow == ("127.0.0.1/32",) and loaded.max_ports == 11


ZONE = """
@ NS ns1
ns1 A 127.0.0.1
vnc A 127.0.0.1
db A 10.0.0.5
"""


def test_domain_with_subdomain_discovery(tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    from dns_server import DnsServer, make_zone

    port = hostile_farm.ports["vnc-none"]
    with DnsServer([make_zone("corp.test", ZONE)], hosts=("127.0.0.1",),
                   axfr={"corp.test": {"127.0.0.1": "allow"}}) as dns:
        app = create_app(settings(tmp_path, allow=("corp.test", "127.0.0.1/32"),
                                  dns_resolver=dns.resolver, dns_axfr_port=dns.port,
                                  dns_timeout=1.0))
        with TestClient(app, base_url=LOCAL, client=ME) as c:
            page = c.get("/")
            assert 'name="subdomains"' in page.text  # offered: a domain is allow-listed
            created = c.post("/api/scans", json={"target": "corp.test", "ports": str(port),
                                                 "subdomains": True})
            assert created.status_code == 201, created.text
            assert created.json()["addresses"] == []  # nothing decided before discovery
            body = wait_final(c, created.json()["id"])
            assert body["status"] == "finished", body
            assert body["addresses"] == ["127.0.0.1"]
            (service,) = body["services"]
            assert service["host"] == "127.0.0.1" and service["state"] == "vnc"
            assert service["hostname"] in ("ns1.corp.test", "vnc.corp.test")
            refused = {r["name"]: r for r in body["refused"]}
            assert refused["db.corp.test"]["address"] == "10.0.0.5"
            assert "private" in refused["db.corp.test"]["reason"]
            html = c.get(f"/scans/{body['id']}").text
            assert "db.corp.test" in html and "not checked (policy)" in html

            other = c.post("/api/scans", json={"target": "other.test", "ports": str(port),
                                               "subdomains": True})
            assert other.status_code == 403 and other.json()["code"] == "discovery-refused"
            ip = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port),
                                            "subdomains": True})
            assert ip.status_code == 400


def test_discovery_refused_by_default_policy(client: TestClient) -> None:
    response = client.post("/api/scans", json={"target": "example.org", "ports": "5900",
                                               "subdomains": True})
    assert response.status_code == 403 and response.json()["code"] == "discovery-refused"
    assert 'name="subdomains"' not in client.get("/").text


def test_forwarded_for_only_from_trusted_proxies(tmp_path: Path) -> None:
    forged = {"X-Forwarded-For": "9.9.9.9, 1.1.1.1"}
    shown = re.compile(r'id="client-address">([^<]+)<')
    with TestClient(create_app(settings(tmp_path)), base_url=LOCAL, client=ME) as c:
        match = shown.search(c.get("/", headers=forged).text)
        assert match and match.group(1) == "127.0.0.1"  # no proxy trusted: header ignored
    app = create_app(settings(tmp_path, trusted_proxies=("127.0.0.0/8",)))
    with TestClient(app, base_url=LOCAL, client=ME) as c:
        match = shown.search(c.get("/", headers=forged).text)
        assert match and match.group(1) == "1.1.1.1"  # right-most hop the proxy wrote
        refused = c.post("/api/scans", json={"target": "9.9.9.9", "ports": "5900"},
                         headers=forged)
        assert refused.status_code == 403 and "(1.1.1.1)" in refused.json()["detail"]
        match = shown.search(c.get("/", headers={"X-Forwarded-For": "1.1.1.1, 127.0.0.5"}).text)
        assert match and match.group(1) == "1.1.1.1"  # trusted hops are skipped


def test_vncaudit_serve_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    import servers

    bad = tmp_path / "bad.toml"
    bad.write_text('[serve]\nalow = ["0.0.0.0/0"]\n')
    run = subprocess.run([sys.executable, "-m", "vncaudit", "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"vncaudit: error: bad settings: {bad}: unknown setting(s): alow"]
    minted = subprocess.run([sys.executable, "-m", "vncaudit", "serve", "--new-token"],
                            capture_output=True, text=True, timeout=60)
    token = minted.stdout.split("token: ")[1].split()[0]
    hashed = minted.stdout.split("hash:  ")[1].split()[0]
    assert hash_token(token) == hashed
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# ops team\n{hashed}\n")

    port = servers.free_port("127.0.0.1")
    db = tmp_path / "serve.db"
    proc = subprocess.Popen([sys.executable, "-m", "vncaudit", "serve", "--port", str(port),
                             "--db", str(db), "--allow", "127.0.0.1/32",
                             "--token-file", str(tokens), "--allow-screenshots"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        http = httpx.Client(trust_env=False, timeout=5)  # loopback: never via a proxy
        deadline = time.monotonic() + 30
        while True:
            try:
                health = http.get(url + "/api/health")
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        assert http.get(url + "/api/scans").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert http.get(url + "/api/scans", headers=auth).json() == []
        assert "vncaudit_web_scans_submitted_total" in http.get(url + "/metrics",
                                                                headers=auth).text
        assert 'name="screenshot"' in http.get(url + "/").text  # --allow-screenshots offers it
    finally:
        proc.terminate()  # our own child, by its handle
        proc.wait(timeout=15)
    assert db.exists()  # the embedded default: a SQLite store at --db


def _png_facts(data: bytes) -> tuple[tuple[int, int], tuple[int, int, int], float]:
    """(size, most frequent colour, its share of the pixels) of a PNG."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    count, colour = max(image.getcolors(maxcolors=1 << 20) or [(0, (0, 0, 0))])
    return image.size, colour, count / (image.width * image.height)


@pytest.mark.realserver
def test_screenshot_of_a_no_auth_server(tmp_path: Path, vnc_server_factory: Any,
                                        paint_root: Any, hostile_farm: Farm) -> None:  # noqa: F811
    vnc = vnc_server_factory("x11vnc-none", desktop="shot-test", geometry=(320, 200))
    paint_root(vnc, "#3366cc")
    protected = hostile_farm.ports["vnc-auth"]
    shots = tmp_path / "shots"
    token = new_token()
    app = create_app(settings(tmp_path, allow_screenshots=True, screenshot_dir=str(shots),
                              token_hashes=(hash_token(token),)))
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app, base_url=LOCAL, client=ME) as mine:
        created = mine.post("/api/scans", headers=auth, json={
            "target": "127.0.0.1", "ports": f"{vnc.port},{protected}", "screenshot": True})
        assert created.status_code == 201, created.text
        scan_id = created.json()["id"]
        body = wait_final(mine, scan_id, headers=auth)
        by_port = {s["port"]: s for s in body["services"]}
        shot = by_port[vnc.port]["extra"]["active"]["screenshot"]
        assert shot["status"] == "ok" and (shot["width"], shot["height"]) == (320, 200)
        assert "path" not in shot  # the server's file system is not the client's business
        url = shot["url"]
        assert url == f"/api/scans/{scan_id}/screenshots/127.0.0.1_{vnc.port}.png"
        kind = by_port[vnc.port]["extra"]["active"]["desktop_kind"]["kind"]
        assert kind == "blank"  # a root painted one colour, nothing on it
        # Never a login attempt where a password is needed: skipped, no picture.
        skipped = by_port[protected]["extra"]["active"]["screenshot"]
        assert skipped["status"] == "skipped" and skipped["url"] is None
        assert "password" in skipped["reason"]
        assert [p.name for p in (shots / scan_id).iterdir()] == [f"127.0.0.1_{vnc.port}.png"]

        png = mine.get(url, headers=auth)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        size, colour, share = _png_facts(png.content)
        # The painted root, all but the pointer x11vnc draws into the framebuffer.
        assert size == (320, 200) and colour == (0x33, 0x66, 0xcc) and share > 0.98, share
        assert mine.get(url).status_code == 401  # the API needs the token like the scan does
        page_url = f"/scans/{scan_id}/screenshots/127.0.0.1_{vnc.port}.png"
        assert mine.get(page_url).content == png.content  # the page's rule: the requester
        page = mine.get(f"/scans/{scan_id}").text
        assert f'src="{page_url}"' in page and 'data-kind="blank"' in page
        assert "Empty screen" in page and "Seen: nothing but its background" in page
        assert "No screenshot: authentication required" in page  # the protected service's card
        assert mine.get(f"/api/scans/{scan_id}/screenshots/nothing.png",
                        headers=auth).status_code == 404
        assert mine.get(f"/scans/{scan_id}/screenshots/..%2Fweb.db").status_code == 404

        other = TestClient(app, base_url=LOCAL, client=("127.0.0.2", 40002))
        assert other.get(page_url).status_code == 404
        assert other.get(url).status_code == 401
        assert other.get(url, headers=auth).status_code == 200  # token holders see all scans

        report = mine.get(f"/api/scans/{scan_id}/report.html", headers=auth)
        embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report.text)
        assert embedded, "the HTML report embeds the screenshot"
        import base64
        assert base64.b64decode(embedded.group(1)) == png.content
        js = mine.get(f"/api/scans/{scan_id}/report.json", headers=auth).text
        assert str(shots) not in js and url in js

    # Off (the embedded default): the field is refused with a clear message, nothing queued.
    with TestClient(create_app(settings(tmp_path / "off")), base_url=LOCAL, client=ME) as off:
        refused = off.post("/api/scans", json={"target": "127.0.0.1", "ports": str(vnc.port),
                                               "screenshot": True})
        assert refused.status_code == 400
        assert refused.json()["code"] == "screenshots-disabled"
        assert "allow_screenshots" in refused.json()["detail"]
        assert off.get("/api/scans").json() == []
        assert 'name="screenshot"' not in off.get("/").text
        spec = off.get("/openapi.json").json()
        field = spec["components"]["schemas"]["ScanCreate"]["properties"]["screenshot"]
        assert field["type"] == "boolean" and field["default"] is False
        assert "/api/scans/{scan_id}/screenshots/{name}" in spec["paths"]
    assert Settings().allow_screenshots is False


def test_diff_to_previous_scan_never_shows_another_clients_scan(tmp_path: Path) -> None:
    """Two clients (behind a trusted proxy) check the same allow-listed target: the second
    client's result page and history must not name or diff the first client's scan."""
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        assume_exposure="public", probe_timeout=2.0, rate_burst=50,
                        rate_per_minute=600, trusted_proxies=("127.0.0.1/32",))
    alice = {"X-Forwarded-For": "198.51.100.10"}
    bob = {"X-Forwarded-For": "198.51.100.20"}
    port = free_port()
    with TestClient(create_app(settings), base_url=LOCAL, client=PROXY) as c:
        def scan(who: dict[str, str]) -> str:
            r = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)},
                       headers=who)
            assert r.status_code == 201, r.text
            scan_id: str = r.json()["id"]
            assert wait_final(c, scan_id, headers=who)["status"] == "finished"
            return scan_id

        a1 = scan(alice)
        a2 = scan(alice)
        b1 = scan(bob)
        # Control: the same client does get the diff to its own previous scan.
        assert f'href="/scans/{a1}"' in c.get(f"/scans/{a2}", headers=alice).text
        page = c.get(f"/scans/{b1}", headers=bob).text
        assert a1 not in page and a2 not in page
        assert "This is the first scan of 127.0.0.1" in page
        history = c.get("/history", headers=bob).text
        assert b1 in history and a1 not in history and a2 not in history
        assert c.get(f"/api/scans/{a2}", headers=bob).status_code == 404


def test_request_bodies_are_capped(tmp_path: Path) -> None:
    """A body over the cap is refused, declared or chunked, before it is read into memory:
    otherwise one client could exhaust the server's memory."""
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        rate_burst=50, rate_per_minute=600)
    big = b'{"target": "127.0.0.1", "ports": "1", "x": "' + b"a" * (2 << 20) + b'"}'
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40003)) as c:
        r = c.post("/api/scans", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "body-too-large"
        assert r.headers["x-content-type-options"] == "nosniff"

        def chunks() -> Any:
            yield b'{"target": "127.0.0.1", "ports": "1", "x": "'
            for _ in range(64):
                yield b"a" * 32768
            yield b'"}'

        r = c.post("/api/scans", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        r = c.post("/scans", content=b"target=" + b"a" * (1 << 20),
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
        port = free_port()
        ok = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)})
        assert ok.status_code == 201, ok.text  # an ordinary request still goes through
        assert wait_final(c, ok.json()["id"])["status"] == "finished"


def test_rate_limit_covers_an_ipv6_clients_whole_64(tmp_path: Path) -> None:
    """An IPv6 client's whole /64 (2^64 source addresses) shares one rate-limit bucket. The
    policy refuses these documentation addresses, so nothing is probed: the rate limit
    answers first."""
    settings = Settings(db_path=str(tmp_path / "web.db"), rate_burst=2, rate_per_minute=1,
                        trusted_proxies=("127.0.0.1/32",))
    with TestClient(create_app(settings), base_url=LOCAL, client=PROXY) as c:
        codes = []
        for i in range(1, 4):
            me = f"2001:db8:1:2::{i}"
            r = c.post("/api/scans", json={"target": me, "ports": "5900"},
                       headers={"X-Forwarded-For": me})
            codes.append(r.status_code)
        assert codes == [403, 403, 429]
        other = "2001:db8:1:3::1"  # another /64 has its own bucket
        r = c.post("/api/scans", json={"target": other, "ports": "5900"},
                   headers={"X-Forwarded-For": other})
        assert r.status_code == 403
        mapped = c.post("/api/scans", json={"target": "192.0.2.1", "ports": "5900"},
                        headers={"X-Forwarded-For": "::ffff:192.0.2.1"})
        plain = [c.post("/api/scans", json={"target": "192.0.2.1", "ports": "5900"},
                        headers={"X-Forwarded-For": "192.0.2.1"}).status_code
                 for _ in range(2)]
        assert mapped.status_code == 403 and plain == [403, 429]  # one bucket for both spellings


def test_public_history_never_publishes_the_operators_cli_scans(tmp_path: Path) -> None:
    """The service opens the CLI's store by default. With public_history on, a CLI scan of
    the operator's own networks stays unreadable by any route, even to one who guesses its
    short id."""
    import subprocess
    import sys

    db = tmp_path / "shared.db"
    port = free_port()
    cli = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "127.0.0.1", "-p",
                          str(port), "--db", str(db), "--all", "-o", "json", "--timeout", "2"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode in (0, 1), cli.stderr
    from vncaudit.store import Store

    store = Store.open(db)
    try:
        (cli_scan,) = store.list_scans()
    finally:
        store.close()
    settings = Settings(db_path=str(db), allow=("127.0.0.1/32",), public_history=True,
                        rate_burst=50, rate_per_minute=600)
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40004)) as c:
        web = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)})
        assert web.status_code == 201
        wait_final(c, web.json()["id"])
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.2", 40005)) as other:
        # The control: public history shows another client's web scan …
        assert other.get(f"/api/scans/{web.json()['id']}").status_code == 200
        # … but never the operator's CLI scan, by any route.
        for path in (f"/api/scans/{cli_scan.id}", f"/api/scans/{cli_scan.id}/report.json",
                     f"/scans/{cli_scan.id}", f"/scans/{cli_scan.id}/status"):
            assert other.get(path).status_code == 404, path
        assert cli_scan.id not in other.get("/history").text


def test_active_scan_cap_covers_an_ipv6_clients_whole_64(tmp_path: Path) -> None:
    """max_active_per_client counts an IPv6 client's whole /64, so one /64 cannot hold every
    worker and the queue. The scans go to a loopback listener that never speaks, so they stay
    running."""
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        probe_timeout=3.0, rate_burst=50, rate_per_minute=600,
                        max_active_per_client=1, trusted_proxies=("127.0.0.1/32",))
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(8)
    port = tarpit.getsockname()[1]
    try:
        with TestClient(create_app(settings), base_url=LOCAL, client=PROXY) as c:
            def submit(me: str) -> int:
                r = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)},
                           headers={"X-Forwarded-For": me})
                return r.status_code

            assert submit("2001:db8:1:2::1") == 201
            assert submit("2001:db8:1:2::2") == 429  # same /64: already has its one scan
            assert submit("2001:db8:1:3::1") == 201  # another /64 is another client
    finally:
        tarpit.close()


def test_a_non_ascii_csrf_token_is_refused_not_a_server_error(tmp_path: Path) -> None:
    """hmac.compare_digest raises TypeError for a non-ASCII str: such a token is a 403 (form
    expired), not a 500."""
    settings = Settings(db_path=str(tmp_path / "web.db"))
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40007),
                    raise_server_exceptions=False) as c:
        c.get("/")  # sets the CSRF cookie
        for token in ("é", "\u202e" * 10, "a" * 64 + "ü"):
            r = c.post("/scans", data={"target": "192.0.2.1", "csrf_token": token},
                       follow_redirects=False)
            assert r.status_code == 403, (token, r.status_code)
            assert "form expired" in r.text


def test_a_lone_surrogate_in_the_json_body_is_a_422_not_a_500(tmp_path: Path) -> None:
    """FastAPI's validation error echoes the input, and "\\udcff" has no UTF-8 encoding: the
    answer is a 422 all the same."""
    import json

    settings = Settings(db_path=str(tmp_path / "web.db"))
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40008),
                    raise_server_exceptions=False) as c:
        for body in ({"target": "\udcff", "ports": "5900"},
                     {"target": "a\ud800.example", "ports": "5900", "subdomains": True},
                     {"target": "192.0.2.1", "ports": "\udcff"}):
            r = c.post("/api/scans", content=json.dumps(body),
                       headers={"content-type": "application/json"})
            assert r.status_code == 422, (body, r.status_code)
            assert r.json()["detail"]
        ok = c.post("/api/scans", json={"target": 5, "ports": "5900"})
        assert ok.status_code == 422 and ok.json()["detail"][0]["loc"] == ["body", "target"]
