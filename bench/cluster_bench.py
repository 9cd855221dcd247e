"""Benchmark row for sharded scans: wall time of `vncaudit scan --workers N` on the /16 bench.

Builds the namespace test bed of docs/design.md §4 (needs root): N live fake RFB servers at random
addresses of 198.18.0.0/16, every other address silent, then runs in the scanning namespace, on
the same range and port, each configuration `--repeat` times:

    plain       vncaudit scan (one process, no Dask)
    workers=1   vncaudit scan --workers 1   (LocalCluster, 1 worker process)
    workers=2   vncaudit scan --workers 2   (LocalCluster, 2 worker processes)

and prints wall time (median, min, max), found/expected VNC services and the cluster's own
summary line (shards, reruns). Usage:

    sudo python bench/cluster_bench.py [--live 300] [--timeout 1] [--concurrency 4096]
        [--repeat 3] [--workers 1,2] [--json out.json]

The namespace bed and the fake servers come from tests/test_cluster.py (until tests/netns.py
offers the same), so the benchmark and the tests measure the same thing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_cluster as bedlib  # noqa: E402  (after the path set-up above)

RANGE = "198.18.0.0/16"
PORT = 5900


def run_once(scn: str, args: list[str], db: Path) -> dict[str, Any]:
    cmd = ["ip", "netns", "exec", scn, sys.executable, "-m", "vncaudit", "scan", RANGE,
           "-p", str(PORT), "-o", "json", "--db", str(db), *args]
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    wall = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    doc = json.loads(out.stdout)
    found = sorted(s["host"] for s in doc["services"] if s["state"] == "vnc")
    return {"wall": wall, "found": found, "summary": out.stderr.strip().splitlines()[-1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--no-plain", action="store_true", help="skip the one-process row")
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args()

    hosts = bedlib.live_hosts(RANGE, opts.live, seed=16)
    common = ["--timeout", str(opts.timeout), "--concurrency", str(opts.concurrency)]
    configs: list[tuple[str, list[str]]] = [] if opts.no_plain else [("plain", [])]
    configs += [(f"workers={n}", ["--workers", n]) for n in opts.workers.split(",")]
    rows: list[dict[str, Any]] = []
    with bedlib.netns_bed() as bed, bedlib.fake_servers(PORT, hosts, netns=bed.tgt), \
            tempfile.TemporaryDirectory() as tmp:
        for name, args in configs:
            walls = []
            found_ok = True
            summary: list[str] = []
            for i in range(opts.repeat):
                one = run_once(bed.scn, common + args, Path(tmp) / f"{name}-{i}.db")
                walls.append(one["wall"])
                found_ok &= one["found"] == sorted(hosts)
                summary = one["summary"]
                print(f"  {name} run {i + 1}: {one['wall']:.2f} s, "
                      f"{len(one['found'])}/{len(hosts)} found", file=sys.stderr)
            rows.append({"config": name, "median_s": statistics.median(walls),
                         "min_s": min(walls), "max_s": max(walls), "runs": walls,
                         "found_all": found_ok, "cluster_summary": summary})

    print(f"/16 ({65536} targets, port {PORT}), {opts.live} live fake servers, "
          f"--timeout {opts.timeout} --concurrency {opts.concurrency}, {opts.repeat} runs each")
    print(f"{'config':<11} {'median s':>9} {'min s':>7} {'max s':>7}  found  summary")
    base = rows[0]["median_s"]
    for row in rows:
        ratio = base / row["median_s"]
        print(f"{row['config']:<11} {row['median_s']:9.2f} {row['min_s']:7.2f} "
              f"{row['max_s']:7.2f}  {'all' if row['found_all'] else 'MISSED':5}  "
              f"x{ratio:.2f} vs {rows[0]['config']}  {' '.join(row['cluster_summary'])}")
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
