"""Benchmark: the cost per service of writing results, `ResultWriter` against bare store calls.

    python bench/writer_bench.py [--services 10000] [--rounds 5] [--silent 0.0]

Builds N graded results from the recorded transcripts (tests/transcripts), each at its own
address, a fraction `--silent` of them closed instead, then writes them into a fresh store
file per round, three ways:

    store-batches   Store.add_results / mark_done_many in lists of 256 / 1,024 (what a caller
                    that batches by hand costs: the floor for any writer)
    writer          ResultWriter.add, one call per result (what the runner does)
    writer-telling  ResultWriter with on_stored (what the cluster client does)

and prints CPU microseconds per service (process time; best of `--rounds`), so a change to the
writer shows its own cost, apart from the probe and grading. No network: nothing is sent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from vncaudit.assess import assess  # noqa: E402
from vncaudit.models import SILENT_STATES, ServiceResult, State  # noqa: E402
from vncaudit.store import Store  # noqa: E402
from vncaudit.store.writer import ResultWriter  # noqa: E402


def recorded() -> list[ServiceResult]:
    from vncaudit.exceptions import RemoteProtocolError
    from vncaudit.probe import ProbeOptions

    from rfb_helpers import drive_events, new_session

    out = []
    for path in sorted((ROOT / "tests" / "transcripts").glob("*.json")):
        doc = json.loads(path.read_text())
        chunks = [bytes.fromhex(e["hex"]) for e in doc["exchanges"] if e["dir"] == "s2c"]
        cv = doc["client_version"]
        version = (int(cv[:3]), int(cv[4:])) if cv else None
        session = new_session(ProbeOptions(client_version=version))
        try:
            drive_events(chunks, session=session)
        except RemoteProtocolError:
            pass
        out.append(session.result(0.0))
    return out


def services(n: int, silent: float) -> list[ServiceResult]:
    base = [r for r in recorded() if r.state is State.VNC]
    out = []
    quiet = int(n * silent)
    for i in range(n):
        host = f"198.18.{i >> 8 & 0xFF}.{i & 0xFF}"
        if i < quiet:
            out.append(ServiceResult(host, 5900, State.CLOSED))
        else:
            out.append(assess(replace(base[i % len(base)], host=host, port=5900 + i % 5)))
    return out


def store_batches(store: Store, scan_id: str, results: list[ServiceResult]) -> None:
    marks: list[tuple[str, int, State]] = []
    found: list[ServiceResult] = []
    for r in results:
        if r.state in SILENT_STATES:
            marks.append((r.host, r.port, r.state))
            if len(marks) >= 1024:
                store.mark_done_many(scan_id, marks)
                marks = []
        else:
            found.append(r)
            if len(found) >= 256:
                store.add_results(scan_id, found)
                found = []
    store.mark_done_many(scan_id, marks)
    store.add_results(scan_id, found)


def writer(store: Store, scan_id: str, results: list[ServiceResult]) -> None:
    with ResultWriter(store, scan_id) as w:
        for r in results:
            w.add(r)


def writer_telling(store: Store, scan_id: str, results: list[ServiceResult]) -> None:
    seen: list[ServiceResult] = []
    with ResultWriter(store, scan_id, on_stored=seen.append) as w:
        for r in results:
            w.add(r)


WAYS: dict[str, Callable[[Store, str, list[ServiceResult]], None]] = {
    "store-batches": store_batches, "writer": writer, "writer-telling": writer_telling}


def measure(way: Callable[[Store, str, list[ServiceResult]], None],
            results: list[ServiceResult]) -> float:
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "b.db") as store:
        scan_id = store.create_scan(["198.18.0.0/16"], "5900-5904", {})
        started = time.process_time()
        way(store, scan_id, results)
        store.flush()
        spent = time.process_time() - started
        assert len(store.done_pairs(scan_id)) == len(results)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--silent", type=float, default=0.0,
                        help="fraction of closed pairs among the services (0 to 1)")
    opts = parser.parse_args()
    results = services(opts.services, opts.silent)
    best: dict[str, float] = {}
    for _ in range(opts.rounds):  # interleaved, so load on a shared machine hits all alike
        for name, way in WAYS.items():
            spent = measure(way, results)
            best[name] = min(best.get(name, spent), spent)
    for name, spent in best.items():
        print(f"{name:16s} {spent / len(results) * 1e6:7.1f} µs per service "
              f"({spent:.2f} s CPU for {len(results):,})")


if __name__ == "__main__":
    main()
