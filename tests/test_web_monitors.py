"""`serve` running the monitors: the /monitors page and the /api/monitors endpoints (token
auth, in the OpenAPI document), with a fake RFB server as the watched service and a real HTTP
receiver process for the alerts."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from vncaudit.web import Settings, create_app
from vncaudit.web.settings import hash_token, new_token

import netns
import receivers
import servers

pytestmark = [pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
              pytest.mark.timeout(120)]

ME = ("127.0.0.1", 40001)
# The Host the service answers by default (allowed_hosts: the localhost names).
LOCAL = "http://localhost"
TOKEN = new_token()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, receivers.Receiver, int]]:
    port = servers.free_port()
    with netns.fake_servers(port, ["127.0.0.1"]), \
            receivers.http_receiver(tmp_path / "hook.jsonl") as hook:
        config = tmp_path / "monitors.toml"
        config.write_text(f'[monitor.lab]\ntargets = ["127.0.0.1"]\nports = "{port}"\n'
                          f'every = "1h"\nwebhook = ["http://127.0.0.1:{hook.port}/hook"]\n'
                          "timeout = 2\n")
        cfg = Settings(db_path=str(tmp_path / "web.db"), monitors=str(config),
                       token_hashes=(hash_token(TOKEN),))
        with TestClient(create_app(cfg), base_url=LOCAL, client=ME) as client:
            yield client, hook, port


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def wait_cycles(client: TestClient, count: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get("/api/monitors/lab", headers=AUTH).json()
        done = [c for c in body.get("cycles", []) if c["status"] == "finished"
                and c["evaluated"]]
        if len(done) >= count:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def test_serve_runs_the_monitors_and_shows_them(
        served: tuple[TestClient, receivers.Receiver, int]) -> None:
    client, hook, port = served
    body = wait_cycles(client, 1)
    assert body["name"] == "lab" and body["targets"] == ["127.0.0.1"]
    assert body["schedule"] == "every 1h" and body["next_cycle"]
    scan_id = body["cycles"][0]["scan_id"]
    # The alert reached the receiver once, and the API shows it delivered.
    assert len(hook.wait_for("accepted", 1, 20)) == 1
    deadline = time.monotonic() + 10
    while True:
        (alert,) = client.get("/api/monitors/lab/alerts", headers=AUTH).json()
        if alert["deliveries"][0]["state"] == "delivered" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert alert["rules"][0] == "reachable" and alert["port"] == port
    assert alert["deliveries"][0]["state"] == "delivered"
    assert alert["scan_id"] == scan_id
    # Run now: a second cycle, unchanged, raises nothing.
    response = client.post("/api/monitors/lab/run", headers=AUTH)
    assert response.status_code == 202, response.text
    body = wait_cycles(client, 2)
    assert body["cycles"][0]["alerts"] == 0
    assert len(client.get("/api/monitors/lab/alerts", headers=AUTH).json()) == 1
    assert client.post("/api/monitors/nope/run", headers=AUTH).status_code == 404
    # The page, from the operator's own machine.
    page = client.get("/monitors")
    assert page.status_code == 200
    assert 'data-monitor="lab"' in page.text and "VNC newly reachable" in page.text
    assert f"/scans/{scan_id}" in page.text
    assert client.get(f"/scans/{scan_id}").status_code == 200  # the cycle's scan page


def test_monitors_api_needs_a_token_and_is_documented(
        served: tuple[TestClient, receivers.Receiver, int]) -> None:
    client, _, _ = served
    assert client.get("/api/monitors").status_code == 401
    assert client.get("/api/monitors", headers={"Authorization": "Bearer wrong"}
                      ).status_code == 401
    listed = client.get("/api/monitors", headers=AUTH)
    assert listed.status_code == 200 and [m["name"] for m in listed.json()] == ["lab"]
    spec = client.get("/openapi.json").json()
    for path in ("/api/monitors", "/api/monitors/{name}", "/api/monitors/{name}/alerts",
                 "/api/monitors/{name}/run"):
        assert path in spec["paths"], path
    assert spec["paths"]["/api/monitors"]["get"]["security"]


def test_page_and_cycles_hidden_from_other_addresses(tmp_path: Path) -> None:
    cfg = Settings(db_path=str(tmp_path / "web.db"))
    with TestClient(create_app(cfg), base_url=LOCAL, client=("203.0.113.9", 5000)) as client:
        assert client.get("/monitors").status_code == 404
        # Without configured tokens the monitors API is closed, not open.
        response = client.get("/api/monitors")
        assert response.status_code == 403 and "token" in response.json()["detail"]
    with TestClient(create_app(cfg), base_url=LOCAL, client=ME) as client:
        page = client.get("/monitors")
        assert page.status_code == 200 and "No monitors yet" in page.text
        assert client.post("/api/monitors/x/run").status_code == 403


def test_bad_monitors_setting_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "m.toml"
    config.write_text('[monitor.a]\ntargets = ["127.0.0.1"]\nevry = "1h"\n')
    run = subprocess.run([sys.executable, "-m", "vncaudit", "serve", "--monitors", str(config),
                          "--port", str(servers.free_port())], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"vncaudit: error: {config}: [monitor.a]: unknown key 'evry' (did you mean 'every'?)"]
