"""Benchmark: one monitor cycle over 1,000 addresses x 5 ports in the namespace test bed, and
the delay from the cycle's end to its alerts' arrival at a real webhook receiver.

Builds the bed of tests/netns.py (needs root): fake RFB servers (tests/netns.py) on every port
5900-5904 of `--live` of the 1,000 monitored addresses in 198.18.0.0/16, the other addresses
silent. The receiver (tests/receivers.py, a separate process) runs in the scanning namespace on
127.0.0.1. Each cycle is `Watcher.run_once` in a fresh process in the scanning namespace, as a
systemd timer or cron would run `vncaudit watch --once`:

    cycle 1   baseline: every live service is "newly reachable" (a burst of alerts)
    cycle 2   nothing changed: no alert
    cycle 3   `--change` addresses stopped and as many new ones started: their alerts only

Printed per cycle: wall time of the cycle (scan + evaluation), peak RSS of the process, alerts,
whether they went as one digest (more than `--digest-threshold`, the monitors' default 20), and
the delay from the end of the scan to the arrival of the first and of the last message at the
receiver (goal: < 5 s for a change cycle).

    sudo python bench/watch_bench.py                      # 1000 x 5, 900 live, 10 changed
    sudo python bench/watch_bench.py --digest-threshold 0 # every alert on its own
    sudo python bench/watch_bench.py --json watch.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import netns  # noqa: E402  (after the path set-up above)

PORTS = [5900, 5901, 5902, 5903, 5904]


def driver(opts: argparse.Namespace) -> None:
    """One `--once` run in this process (inside the scanning namespace); prints JSON."""
    import asyncio

    from vncaudit.store import Store
    from vncaudit.watch import Watcher
    from vncaudit.watch.config import (
        AlertRules,
        Monitor,
        ScanSettings,
        WatchConfig,
        WebhookChannel,
    )
    from vncaudit.watch.schedule import Schedule

    hosts = Path(opts.hosts).read_text().split()
    monitor = Monitor("bench", tuple(hosts), f"{PORTS[0]}-{PORTS[-1]}", Schedule(every=3600),
                      AlertRules.from_names(["reachable", "no-auth", "severity", "cve", "gone"]),
                      (WebhookChannel("webhook:bench", opts.url, b"bench-secret"),),
                      ScanSettings(timeout=opts.timeout, concurrency=opts.concurrency),
                      digest_threshold=opts.digest_threshold)
    with Store.open(opts.db) as store:
        watcher = Watcher(store, WatchConfig((monitor,)))
        watcher.start()
        try:
            started = time.time()
            (outcome,) = asyncio.run(watcher.run_once(deliver_within=60))
        finally:
            watcher.stop()
        with store.reading("bench") as conn:
            states = dict(conn.execute("SELECT state, count(*) FROM done WHERE scan_id = ? "
                                       "GROUP BY state", (outcome.scan_id,)).fetchall())
            for state, n in conn.execute("SELECT state, sum(count) FROM done_packed WHERE "
                                         "scan_id = ? GROUP BY state", (outcome.scan_id,)):
                states[state] = states.get(state, 0) + n  # a SYN sweep's bulk verdicts
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"states": states, "started": started, "scan_end": outcome.scan_finished_at,
                      "queued": outcome.finished_at, "elapsed": outcome.elapsed,
                      "alerts": len(outcome.alerts), "services": outcome.services,
                      "digest": outcome.digests[0].count if outcome.digests else None,
                      "probed": outcome.probed, "status": outcome.status,
                      "rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
                      "done": time.time()}))


def run_cycle(bed: netns.Bed, opts: argparse.Namespace, tmp: Path, url: str,
              receiver_log: Path) -> dict[str, Any]:
    before = len(_arrivals(receiver_log))
    cmd = ["ip", "netns", "exec", bed.scn, sys.executable, str(Path(__file__).resolve()),
           "--driver", "--hosts", str(tmp / "hosts.txt"), "--db", str(tmp / "watch.db"),
           "--url", url, "--timeout", str(opts.timeout), "--concurrency",
           str(opts.concurrency), "--digest-threshold", str(opts.digest_threshold)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if run.returncode != 0:
        raise RuntimeError(f"watch cycle failed: {run.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    arrivals = _arrivals(receiver_log)[before:]
    if arrivals:
        doc["first_alert_delay_s"] = min(arrivals) - doc["scan_end"]
        doc["last_alert_delay_s"] = max(arrivals) - doc["scan_end"]
    doc["arrived"] = len(arrivals)
    return doc


def _arrivals(log: Path) -> list[float]:
    if not log.exists():
        return []
    return [e["time"] for e in map(json.loads, log.read_text().splitlines())
            if e["event"] == "accepted"]


def _receiver(bed: netns.Bed, log: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(["ip", "netns", "exec", bed.scn, sys.executable,
                             str(ROOT / "tests" / "receivers.py"), "http", "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2:
        proc.kill()
        raise RuntimeError("receiver did not start")
    return proc, int(line[1])


def bench(opts: argparse.Namespace) -> dict[str, Any]:
    monitored = netns.live_hosts("198.18.0.0/16", opts.addresses, seed=1500)
    live = monitored[: opts.live]
    spare = monitored[opts.live:]
    changed = live[: opts.change]
    after = live[opts.change:] + spare[: opts.change]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cycles: list[dict[str, Any]] = []
    with netns.netns_bed() as bed, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "hosts.txt").write_text("\n".join(monitored) + "\n")
        log = tmp / "receiver.jsonl"
        receiver, port = _receiver(bed, log)
        url = f"http://127.0.0.1:{port}/hook"
        try:
            with netns.fake_servers(PORTS, live, netns=bed.tgt):
                for name in ("baseline", "unchanged"):
                    cycles.append({"cycle": name, **run_cycle(bed, opts, tmp, url, log)})
                    print(f"  {name}: {_line(cycles[-1])}", file=sys.stderr)
            with netns.fake_servers(PORTS, after, netns=bed.tgt):
                cycles.append({"cycle": f"{opts.change} addresses changed",
                               **run_cycle(bed, opts, tmp, url, log)})
                print(f"  changed: {_line(cycles[-1])}", file=sys.stderr)
        finally:
            receiver.terminate()
            receiver.wait(10)
    return {"addresses": opts.addresses, "ports": len(PORTS), "live": opts.live,
            "changed": len(changed), "expected_change_alerts": 2 * len(changed) * len(PORTS),
            "cycles": cycles, "cpus": os.cpu_count(),
            "load": Path("/proc/loadavg").read_text().split()[:3]}


def _line(c: dict[str, Any]) -> str:
    delay = (f"first message after {c['first_alert_delay_s']:.2f} s, last after "
             f"{c['last_alert_delay_s']:.2f} s" if c.get("arrived") else "nothing arrived")
    sent = " (as one digest)" if c.get("digest") else ""
    return (f"{c['elapsed']:.2f} s, {c['states']}, {c['probed']} ports, {c['services']} VNC, "
            f"{c['alerts']} alerts{sent}, {c['arrived']} arrived, {c['rss_mb']:.0f} MB RSS, "
            f"{c['cpu_s']:.1f} s CPU; {delay}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=1000)
    parser.add_argument("--live", type=int, default=900)
    parser.add_argument("--change", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=2048)
    parser.add_argument("--digest-threshold", type=int, default=20,
                        help="the monitor's digest_threshold (0: every alert on its own)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hosts", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.driver:
        driver(opts)
        return
    problem = netns.netns_problem()
    if problem:
        raise SystemExit(f"watch_bench: {problem}")
    result = bench(opts)
    for c in result["cycles"]:
        print(f"{c['cycle']:>24}: {_line(c)}")
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
