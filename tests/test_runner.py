"""vncaudit.spec, vncaudit.runner and the store's ResultWriter: a stored scan run from the library
alone (as `vncaudit watch` and the web jobs run one), interrupted and resumed; the spec's stored
form, including the unversioned one earlier stores hold; which verdicts the writer calls new.

Targets are loopback addresses (127.86.0.0/16): one fake RFB server where a test needs one,
every other address refuses at once.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from vncaudit.discovery import Mode
from vncaudit.exceptions import UsageError
from vncaudit.models import ServiceResult, State
from vncaudit.runner import ScanFinishedError, StoredScan
from vncaudit.spec import SPEC_VERSION, ActiveSpec, ScanSpec
from vncaudit.store import Store
from vncaudit.store.writer import ResultWriter

LIVE = "127.86.0.5"


@asynccontextmanager
async def rfb_server(host: str = LIVE, *, silent: str | None = None) -> AsyncIterator[int]:
    """A fake RFB 3.8 server offering None and VNC auth on `host`; on `silent` (another
    address, same port) a server that accepts and never says a word."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if writer.get_extra_info("sockname")[0] == silent:
                await reader.read(1)
                return
            writer.write(b"RFB 003.008\n")
            await reader.readexactly(12)
            writer.write(b"\x02\x01\x02")  # None, VNC Authentication
            await writer.drain()
            if await reader.readexactly(1) == b"\x01":
                writer.write(struct.pack(">I", 0))  # SecurityResult: ok
                await reader.readexactly(1)  # ClientInit
                name = b"lab desktop"
                writer.write(struct.pack(">HH", 1024, 768) + bytes(16)
                             + struct.pack(">I", len(name)) + name)
                await writer.drain()
            await asyncio.wait_for(reader.read(1), 2)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    port: int = server.sockets[0].getsockname()[1]
    servers = [server]
    if silent is not None:
        servers.append(await asyncio.start_server(handle, silent, port))
    try:
        yield port
    finally:
        for s in servers:
            s.close()


def test_a_scan_run_from_the_library_alone(tmp_path: Path) -> None:
    async def main() -> None:
        async with rfb_server() as port:
            with Store.open(tmp_path / "v.db") as store:
                spec = ScanSpec(expressions=("127.86.0.0/29",), ports=str(port), timeout=2,
                                web=False)
                scan = StoredScan.create(store, spec, labels={"source": "watch",
                                                              "monitor": "lab"})
                assert scan.remaining == 8
                seen: list[ServiceResult] = []
                record = await scan.run_async(on_result=seen.append)
                results = store.results(scan.scan_id, include_closed=True)
        assert record.status == "finished" and record.counts["done"] == 8
        assert len(seen) == 8
        vnc = [r for r in results if r.state is State.VNC]
        assert [(r.host, r.port) for r in vnc] == [(LIVE, port)]
        assert vnc[0].rfb is not None and vnc[0].rfb.auth_required is False
        assert "no-auth" in {f.id for f in vnc[0].findings}  # graded on the way in
        assert {r.state for r in results} == {State.VNC, State.CLOSED}
        assert record.options["source"] == "watch" and record.options["monitor"] == "lab"
        stored = ScanSpec.from_options(record.options)
        assert stored == replace(spec, seed=stored.seed) and stored.seed is not None

    asyncio.run(main())


def test_a_stopped_run_keeps_what_it_saw_and_a_resume_does_only_the_rest(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with rfb_server() as port:
            with Store.open(tmp_path / "v.db") as store:
                spec = ScanSpec(expressions=("127.86.0.0/24",), ports=str(port), timeout=2,
                                rate=400, web=False)
                scan = StoredScan.create(store, spec)
                seen: list[ServiceResult] = []

                def on_result(result: ServiceResult) -> None:
                    seen.append(result)
                    if len(seen) == 60:
                        task.cancel()

                task = asyncio.ensure_future(scan.run_async(on_result=on_result))
                with pytest.raises(asyncio.CancelledError):
                    await task
                record = store.require_scan(scan.scan_id)
                assert record.status == "interrupted"
                # Everything handed out was written, nothing else.
                done = store.done_pairs(scan.scan_id)
                assert done == {(r.host, r.port) for r in seen}

                again = StoredScan.resume(store, scan.scan_id)
                assert again.spec == scan.spec and again.remaining == 256 - len(done)
                rest: list[ServiceResult] = []
                record = await again.run_async(on_result=rest.append)
                assert record.status == "finished" and record.counts["done"] == 256
                assert not {(r.host, r.port) for r in rest} & done
                with pytest.raises(ScanFinishedError, match="already finished"):
                    StoredScan.resume(store, scan.scan_id)

    asyncio.run(main())


def test_verdicts_are_committed_while_the_results_pause(tmp_path: Path) -> None:
    """The writer's batch is written and committed after `max_age` even when no further
    result arrives to trigger it (here: the last target is silent until its deadline)."""
    silent = "127.86.0.6"

    async def main() -> None:
        async with rfb_server(silent=silent) as port:
            with Store.open(tmp_path / "v.db") as store:
                spec = ScanSpec(expressions=(LIVE, silent), ports=str(port), timeout=3,
                                web=False)
                scan = StoredScan.create(store, spec)
                first = asyncio.Event()
                task = asyncio.ensure_future(scan.run_async(
                    on_result=lambda r: first.set(), max_age=0.2))
                await asyncio.wait_for(first.wait(), 5)
                await asyncio.sleep(0.8)
                assert not task.done()  # the silent one is still being waited for
                with Store.open(tmp_path / "v.db") as reader:  # another connection
                    assert reader.done_pairs(scan.scan_id) == {(LIVE, port)}
                await task

    asyncio.run(main())


def test_the_writer_tells_new_verdicts_from_repeated_ones(tmp_path: Path) -> None:
    with Store.open(tmp_path / "v.db") as store:
        scan_id = store.create_scan(["127.86.1.0/30"], "5900", ScanSpec().to_options())
        batch = [ServiceResult(f"127.86.1.{i}", 5900, State.CLOSED) for i in range(3)]
        batch.append(ServiceResult("127.86.1.3", 5900, State.TARPIT))
        stored: list[ServiceResult] = []
        with ResultWriter(store, scan_id, on_stored=stored.append) as writer:
            writer.add_many(batch[:2])
            writer.add_many(batch)  # two of them again, as a rerun shard sends them
        assert stored == batch and writer.stored == 4 and writer.repeated == 2
        plain = ResultWriter(store, scan_id)
        with plain:
            for result in batch:
                plain.add(result)
            assert plain.pending == 4  # under every limit: still buffered
        assert plain.stored == 0 and plain.repeated == 4
        assert len(store.results(scan_id, include_closed=True)) == 4


# -- the spec and its stored form ------------------------------------------------------------

# What `vncaudit scan` stored before settings were versioned (a real record's options).
UNVERSIONED = {
    "expressions": ["127.86.2.0/28"], "ports": "5900,5901", "input_files": [], "nmap_xml": [],
    "masscan": [], "excludes": ["127.86.2.1"], "exclude_files": [], "allow_special": False,
    "resolved": {"lab.example": ["127.86.2.9"]}, "timeout": 2.0, "concurrency": 64,
    "rate": 500.0, "discovery_mode": "connect", "retries": None, "no_init": True,
    "seed": 1234567,
}


def test_the_unversioned_stored_form_reads_back() -> None:
    spec = ScanSpec.from_options(UNVERSIONED)
    assert spec == ScanSpec(
        expressions=("127.86.2.0/28",), ports="5900,5901", excludes=("127.86.2.1",),
        resolved=(("lab.example", ("127.86.2.9",)),), seed=1234567, timeout=2.0,
        concurrency=64, rate=500.0, discovery=Mode.CONNECT, no_init=True)
    assert spec.web and not spec.active.enabled  # as such a scan ran then
    again = ScanSpec.from_options(json.loads(json.dumps(spec.to_options())))
    assert again == spec and spec.to_options()["spec_version"] == SPEC_VERSION


def test_specs_refuse_what_cannot_run() -> None:
    with pytest.raises(UsageError, match="newer vncaudit"):
        ScanSpec.from_options({**UNVERSIONED, "spec_version": SPEC_VERSION + 1})
    with pytest.raises(UsageError, match="cannot be read"):
        ScanSpec.from_options({**UNVERSIONED, "timeout": "soon"})
    for bad, needle in ((dict(timeout=float("inf")), "--timeout"), (dict(rate=0.0), "--rate"),
                        (dict(concurrency=0), "--concurrency"), (dict(ports="70000"), "70000"),
                        (dict(retries=-1), "--retries"), (dict(exposure="moon"), "moon"),
                        (dict(discovery="ping"), "ping")):
        with pytest.raises(UsageError, match=needle):
            ScanSpec(**bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--check-passwords"):
        ActiveSpec(wordlist="words.txt")


def test_a_password_is_never_stored_and_a_resume_asks_for_it_again(tmp_path: Path) -> None:
    with Store.open(tmp_path / "v.db") as store:
        spec = ScanSpec(expressions=("127.86.3.1",), ports="5900", web=False,
                        active=ActiveSpec(uses_password=True, screenshot=True))
        scan = StoredScan.create(store, spec, password="s3cret-pw")
        store.finish_scan(scan.scan_id, "interrupted")
        assert b"s3cret-pw" not in (tmp_path / "v.db").read_bytes()
        with pytest.raises(UsageError, match="--password"):
            StoredScan.resume(store, scan.scan_id)
        again = StoredScan.resume(store, scan.scan_id, password="s3cret-pw")
        assert again.active.password == "s3cret-pw" and again.active.screenshot
        assert again.engine_options().post_probe is not None  # the stored active checks run
        plain = StoredScan.create(store, ScanSpec(expressions=("127.86.3.1",), web=False))
        assert plain.engine_options().post_probe is None


def test_cli_resumes_a_scan_stored_in_the_unversioned_form(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    options = {**UNVERSIONED, "expressions": ["127.86.4.0/28"], "excludes": [],
               "resolved": {}, "ports": "5900", "no_init": False}
    with Store.open(db) as store:
        scan_id = store.create_scan(["127.86.4.0/28"], "5900", options)
        store.mark_done_many(scan_id, [(f"127.86.4.{i}", 5900, State.CLOSED) for i in range(5)])
        store.finish_scan(scan_id, "interrupted")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "--resume", scan_id,
                          "--db", str(db), "-o", "json", "--all"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["scan"]["id"] == scan_id and len(doc["services"]) == 16
    assert time.monotonic() - started < 60
    with Store.open(db) as store:
        record = store.require_scan(scan_id)
        assert record.status == "finished" and record.counts["done"] == 16
        assert "spec_version" not in record.options  # the record is left as it was written


def test_the_post_probe_step_is_skipped_only_where_it_has_nothing_to_do(tmp_path: Path) -> None:
    """With web detection on (the default) a silent or non-RFB answer may be a web front end
    and goes through the post-probe step; a VNC service of a scan without active checks does
    not. With active checks, every VNC service does."""
    vnc = ServiceResult("127.86.5.1", 5900, State.VNC)
    tarpit = ServiceResult("127.86.5.1", 5901, State.TARPIT)
    not_vnc = ServiceResult("127.86.5.1", 5902, State.OPEN_NOT_VNC)
    with Store.open(tmp_path / "v.db") as store:
        web = StoredScan.create(store, ScanSpec(expressions=("127.86.5.1",))).engine_options()
        assert web.post_probe is not None and web.post_probe_wanted is not None
        assert [web.post_probe_wanted(r) for r in (vnc, tarpit, not_vnc)] == [False, True, True]
        active = StoredScan.create(store, ScanSpec(
            expressions=("127.86.5.1",), web=False,
            active=ActiveSpec(screenshot=True))).engine_options()
        assert active.post_probe_wanted is not None
        assert [active.post_probe_wanted(r) for r in (vnc, tarpit, not_vnc)] == [True, False,
                                                                                False]
        plain = StoredScan.create(store, ScanSpec(expressions=("127.86.5.1",), web=False))
        assert plain.engine_options().post_probe_wanted is None

        async def own(result: ServiceResult) -> ServiceResult:
            return result

        # A caller's own step sees every result: only the spec's own step is known here.
        assert StoredScan.create(store, ScanSpec(expressions=("127.86.5.1",))).engine_options(
            own).post_probe_wanted is None
