"""Load: 200 concurrent scan submissions to the API under uvicorn, loopback only, bounded.

Each submission scans one port of a hostile-farm server on 127.0.0.1 (allow-listed for this
test). Asserts: every submit answers 201, no scan is lost (all 200 finish, each with exactly its
one result, in the API and in the store), no error anywhere. The submit call's latency (p50,
p95, max) is printed and written to test-artifacts/web/load.json: a report, not a speed goal.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from vncaudit.store import Store
from vncaudit.web import Settings, create_app

from browser import LiveServer, artifacts
from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)

REQUESTS = 200
ARTIFACTS = artifacts("web")
# Servers that answer at once, well-behaved and hostile: the scan count, not probe deadlines,
# is what is measured.
BEHAVIOURS = ("vnc-none", "vnc-auth", "http", "ssh", "banner-then-rst", "count255-garbage",
              "name-4g", "tight-huge", "reason-huge", "honeypot-any", "realvnc-4.1.1")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


async def _load(url: str, ports: list[int]) -> tuple[list[float], list[dict[str, Any]],
                                                     float]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0,
                                 trust_env=False) as client:
        start = asyncio.Event()

        async def one(i: int) -> tuple[float, httpx.Response]:
            await start.wait()
            t0 = time.perf_counter()
            response = await client.post("/api/scans", json={"target": "127.0.0.1",
                                                             "ports": str(ports[i])})
            return time.perf_counter() - t0, response

        tasks = [asyncio.create_task(one(i)) for i in range(REQUESTS)]
        await asyncio.sleep(0.05)
        wall0 = time.perf_counter()
        start.set()  # all 200 at once
        done = await asyncio.gather(*tasks)
        wall = time.perf_counter() - wall0
        latencies = [t for t, _ in done]
        bad = [(r.status_code, r.text[:200]) for _, r in done if r.status_code != 201]
        assert not bad, bad[:5]
        created = [r.json() for _, r in done]

        # Every scan must finish; poll them all, bounded in time.
        pending = {c["id"] for c in created}
        finals: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 90
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} scans never finished"
            for scan_id in list(pending):
                body = (await client.get(f"/api/scans/{scan_id}")).json()
                if body["status"] not in ("queued", "running"):
                    finals[scan_id] = body
                    pending.discard(scan_id)
            await asyncio.sleep(0.1)
        return latencies, [finals[c["id"]] for c in created], wall


def test_200_concurrent_submits(tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    ports = [hostile_farm.ports[BEHAVIOURS[i % len(BEHAVIOURS)]] for i in range(REQUESTS)]
    db = tmp_path / "web.db"
    settings = Settings(db_path=str(db), allow=("127.0.0.1/32",), assume_exposure="public",
                        probe_timeout=5.0, rate_burst=REQUESTS, rate_per_minute=6000,
                        workers=8, queue_size=REQUESTS,
                        max_active_per_client=REQUESTS)
    with LiveServer(create_app(settings), backlog=1024) as live:
        t0 = time.perf_counter()
        latencies, finals, submit_wall = asyncio.run(_load(live.url, ports))
        total = time.perf_counter() - t0
        with httpx.Client(trust_env=False) as http:
            health = http.get(live.url + "/api/health").json()
            metrics = http.get(live.url + "/metrics").text

    assert [f["status"] for f in finals] == ["finished"] * REQUESTS
    for final, port in zip(finals, ports, strict=True):
        assert final["progress"] == {"done": 1, "total": 1}, final
        assert [(s["host"], s["port"]) for s in final["services"]] == [("127.0.0.1", port)]
        assert final["error"] is None
    by_port = {f["services"][0]["port"]: f["services"][0]["state"] for f in finals}
    assert by_port[hostile_farm.ports["vnc-none"]] == "vnc"
    assert by_port[hostile_farm.ports["http"]] == "open-not-vnc"
    assert health["queued"] == 0 and health["running"] == 0
    assert f"vncaudit_web_scans_submitted_total {float(REQUESTS)}" in metrics
    assert 'vncaudit_web_scans_finished_total{status="finished"} 200.0' in metrics

    # No lost scan in the store either: 200 finished web scans, one result each.
    with Store.open(db) as store:
        scans = [s for s in store.list_scans(limit=1000) if s.options.get("source") == "web"]
        assert len(scans) == REQUESTS
        assert {s.status for s in scans} == {"finished"}
        assert all(s.counts["done"] == 1 and s.counts["results"] == 1 for s in scans)

    stats = {
        "requests": REQUESTS,
        "errors": 0,
        "lost_scans": 0,
        "submit_latency_s": {
            "p50": round(statistics.median(latencies), 4),
            "p95": round(percentile(latencies, 95), 4),
            "max": round(max(latencies), 4),
        },
        "submit_wall_s": round(submit_wall, 3),
        "all_finished_wall_s": round(total, 3),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(f"\nweb load: {json.dumps(stats)}")
