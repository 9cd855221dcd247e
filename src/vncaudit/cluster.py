"""Shard a scan over a Dask cluster; every shard runs the normal engine on a worker.

Owns: splitting a `TargetSpace` into shards (`TargetSpace.iter_targets(shard=(i, n))`: zmap's
cyclic-group walk, so shards are disjoint, cover the space exactly and each is spread over the
whole range), running each shard with `engine.iter_results` in its own event loop on a Dask
worker, streaming the results back in batches through a `distributed.Queue`, writing them to the
`Store` on the client as they arrive, recording finished shards in the scan's options (so a
restarted run skips them) and turning a lost worker into a rerun of its shard. `--workers N`
(a `LocalCluster` of N processes on this machine) and `--cluster tcp://host:8786` (an existing
scheduler) share one code path: only `connect()` differs.

Must not: parse RFB, grade, render or print; import typer/rich; write to the store from a
worker (the client process is the single writer of a scan, as the store's design asks).

How the pieces fit (shard count, the queue's messages, shard done, a lost worker, resume, the
connection ledger) is docs/scale.md §1.
"""

# Dask's Client, Queue and LocalCluster are only partly annotated (untyped __init__, get, cancel,
# scatter): calling them is allowed here, and only here.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from vncaudit.budget import (
    GATE_BATCH,
    Decision,
    Ledger,
    ShippedDecisions,
    ShippedGate,
)
from vncaudit.engine import Progress, ScanOptions, iter_results
from vncaudit.exceptions import UsageError, VncAuditError
from vncaudit.models import SILENT_STATES, ServiceResult, State, Target
from vncaudit.store import Store
from vncaudit.store.writer import ResultWriter
from vncaudit.targets import TargetSpace

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

OPTIONS_KEY: Final = "shards"  # scan options entry: {"count": n, "done": "0-3,7"}
MIN_SHARDS: Final = 16  # a lost shard costs at most 1/16 of the scan; enough to balance 2-4 slots
SHARDS_PER_SLOT: Final = 4  # slots = worker threads; more shards than slots evens out the tail
MIN_SHARD_TARGETS: Final = 1024  # below this a shard's start-up cost dominates its work
MAX_SHARD_TARGETS: Final = 1 << 20  # a rerun after a lost worker repeats at most this much
DEFAULT_BATCH_SIZE: Final = 500  # results per queue message (~1 MB of VNC results at most)
DEFAULT_BATCH_INTERVAL: Final = 0.5  # seconds a result may wait on the worker before it is sent
QUEUE_MAXSIZE: Final = 64  # batches held by the scheduler before workers wait for the client
PUT_TIMEOUT: Final = 600.0  # a worker whose client stopped reading gives up after this
POLL_INTERVAL: Final = 0.05  # client-side wait when the queue is empty
SHARD_RETRIES: Final = 2  # reruns of a shard that raised (a lost worker is retried by Dask)


class ClusterError(VncAuditError):
    """The cluster cannot be reached, or its workers cannot run this version of vncaudit."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where shards run: a new `LocalCluster` of `workers` processes, or the scheduler at
    `address` (``tcp://host:8786``). Exactly one of the two."""

    workers: int | None = None
    address: str | None = None
    # Shards run at once per worker process, each in its own thread and event loop. One: two
    # loops in one process share the GIL, and measured here (docs/scale.md) the slower turns
    # made live servers miss their 1 s deadline at 8192 sockets a process; more processes, not
    # more threads, is how to add capacity.
    threads_per_worker: int = 1
    # Dask's own log level (client, and LocalCluster's workers). A failed shard is reported by
    # `ShardedRun.failed` (the CLI prints one line); Dask would log its traceback at ERROR.
    silence_logs: int = logging.CRITICAL

    def __post_init__(self) -> None:
        if (self.workers is None) == (self.address is None):
            raise UsageError("give either --workers N or --cluster tcp://host:port, not both")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be at least 1, not {self.workers}")
        if self.address is not None and "://" not in self.address:
            raise UsageError(f"invalid --cluster address {self.address!r}: "
                             "expected tcp://host:port")
        if self.threads_per_worker < 1:
            raise UsageError("threads per worker must be at least 1")


@dataclass
class ShardedRun:
    """What a sharded run did. `failed` maps shard index to the error that stopped it."""

    scan_id: str
    shards: int
    done: set[int] = field(default_factory=set)  # finished shards, including earlier runs
    ran: int = 0  # shards finished in this run
    skipped: int = 0  # shards finished by an earlier run, not run again
    failed: dict[int, str] = field(default_factory=dict)
    stored: int = 0  # (host, port) verdicts newly written
    duplicates: int = 0  # verdicts received again (a rerun shard) and ignored by the store
    reruns: int = 0  # shard attempts beyond the first (a worker was lost, or a shard raised)
    workers: int = 0
    elapsed: float = 0.0

    @property
    def complete(self) -> bool:
        return len(self.done) == self.shards


def default_shard_count(targets: int, slots: int, concurrency: int = 0) -> int:
    """Shards for a scan of `targets` on `slots` worker threads, each shard running with
    `concurrency` sockets.

    At least `MIN_SHARDS` and `SHARDS_PER_SLOT` per slot (so losing one costs little and the
    last shards do not leave slots idle), but no shard smaller than `MIN_SHARD_TARGETS` or than
    `concurrency` (a shard smaller than its socket budget leaves sockets unused: measured in
    docs/scale.md), and never a shard over `MAX_SHARD_TARGETS` (so a rerun is bounded).
    """
    wanted = max(MIN_SHARDS, SHARDS_PER_SLOT * max(1, slots))
    wanted = min(wanted, max(1, targets // max(MIN_SHARD_TARGETS, concurrency)))
    return max(wanted, math.ceil(targets / MAX_SHARD_TARGETS), 1)


def format_indices(indices: Collection[int]) -> str:
    """Sorted shard indices as ranges, "0-3,7": shards finish roughly in order, so this stays
    short even for tens of thousands of shards."""
    values = sorted(set(indices))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def parse_indices(text: str) -> set[int]:
    """The inverse of `format_indices`."""
    out: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        first, _, last = item.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def shard_state(options: Mapping[str, Any]) -> tuple[int | None, set[int]]:
    """(shard count, finished shards) recorded in a scan's options; (None, set()) if never
    run sharded."""
    entry = options.get(OPTIONS_KEY)
    if not isinstance(entry, Mapping) or "count" not in entry:
        return None, set()
    return int(entry["count"]), parse_indices(str(entry.get("done", "")))


@contextlib.contextmanager
def connect(spec: ClusterSpec) -> Iterator[Client]:
    """A Dask client for `spec`; a LocalCluster is started here and stopped on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # an optional dependency: say how to get it
        raise UsageError("sharded scans (--workers, --cluster) need Dask: install the "
                         "'cluster' extra: pipx install --force '.[cluster]' from the source "
                         "tree (in a venv: pip install '.[cluster]')") from exc
    # Dask logs every worker start and stop at INFO; the scan's own log is what users read.
    dask_log = logging.getLogger("distributed")
    level = dask_log.level
    dask_log.setLevel(spec.silence_logs)
    try:
        if spec.address is not None:
            try:
                # Timeout: Dask's distributed.comm.timeouts.connect (30 s; settable by env,
                # DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s), as for any Dask client.
                client = Client(spec.address)
            except (OSError, TimeoutError) as exc:
                raise ClusterError(
                    f"cannot reach the Dask scheduler at {spec.address}: {exc}"
                ) from exc
            with client:
                yield client
            return
        # Processes, not threads: each shard's event loop then has a core of its own (the GIL),
        # and a worker can be lost without losing the client. Loopback only: nothing of the
        # scanner listens beyond this machine.
        with LocalCluster(
            n_workers=spec.workers,
            threads_per_worker=spec.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server always starts; keep it private
            silence_logs=spec.silence_logs,
        ) as local, Client(local) as client:
            yield client
    finally:
        dask_log.setLevel(level)


def _worker_version() -> str:
    return str(importlib.import_module("vncaudit").__version__)


@dataclass(frozen=True)
class _Workers:
    count: int  # worker processes
    slots: int  # worker threads in all: shards that run at once
    max_threads: int  # threads of the largest worker: shards that share one process


def _check_workers(client: Client) -> _Workers:
    """What the cluster offers; refuses workers that run another vncaudit version (a shard's
    results must mean the same whoever produced them)."""
    versions: dict[str, str] = client.run(_worker_version)
    mine = _worker_version()
    other = {addr: v for addr, v in versions.items() if v != mine}
    if other:
        raise ClusterError(
            f"Dask workers run another vncaudit version ({', '.join(sorted(set(other.values())))}"
            f", this is {mine}); install the same version on every worker"
        )
    threads = [int(w.get("nthreads", 1))
               for w in client.scheduler_info().get("workers", {}).values()] or [1]
    return _Workers(len(threads), max(1, sum(threads)), max(1, max(threads)))


def per_shard_options(options: ScanOptions, slots: int, threads_per_worker: int) -> ScanOptions:
    """The engine options of one shard. `concurrency` stays what one process may hold open (the
    shards running in one worker process share it), and `rate` stays the whole scan's (shared
    by every shard running at once): adding workers must never multiply the load on the
    targets' networks behind the user's back."""
    return dataclasses.replace(
        options,
        concurrency=max(1, options.concurrency // threads_per_worker),
        rate=options.rate / slots if options.rate else None,
    )


# ---------------------------------------------------------------------------------------------
# Worker side


@dataclass(frozen=True)
class ShardJob:
    """Everything one shard needs on a worker (pickled with the task)."""

    space: TargetSpace
    seed: int
    index: int
    count: int
    options: ScanOptions
    assess_results: bool
    queue: str
    exposure: str | None = None  # grade as reachable from here (assess.Exposure)
    batch_size: int = DEFAULT_BATCH_SIZE
    batch_interval: float = DEFAULT_BATCH_INTERVAL
    budget: ShippedDecisions | None = None  # the client's ledger decisions (vncaudit.budget)

    def targets(self, skip: Collection[tuple[str, int]] | None = None) -> Iterable[Target]:
        # A walk, not a generator: the SYN sender reads it in blocks.
        return self.space.walk(self.seed, (self.index, self.count), skip or ())


Sender = Callable[[dict[str, Any]], None]


def _assessor(exposure: str | None) -> Callable[[ServiceResult], ServiceResult]:
    from vncaudit.assess import Exposure, assess

    if exposure is None:
        return assess
    chosen = Exposure(exposure)
    return lambda result: assess(result, exposure=chosen)


async def scan_shard(
    job: ShardJob, send: Sender, skip: Collection[tuple[str, int]] | None = None
) -> int:
    """Probe one shard with the normal engine and `send` its results in batches, then the end
    marker; returns how many targets were probed. `send` blocks (a scheduler round trip), so it
    runs in a thread and the probes in flight keep their deadlines meanwhile."""
    loop = asyncio.get_running_loop()
    attempt = uuid.uuid4().hex[:12]
    grade = _assessor(job.exposure) if job.assess_results else None
    services: list[dict[str, Any]] = []
    marks: list[list[Any]] = []
    sent = 0
    started = loop.time()

    async def flush() -> None:
        nonlocal services, marks, started
        if services or marks:
            message = {"shard": job.index, "attempt": attempt, "services": services,
                       "marks": marks}
            services, marks = [], []
            await loop.run_in_executor(None, send, message)
        started = loop.time()

    # "start" lets the client count reruns (a lost worker's shard starts twice).
    await loop.run_in_executor(None, send, {"shard": job.index, "attempt": attempt,
                                            "start": True})
    gate = ShippedGate(job.budget) if job.budget else None
    async for result in iter_results(job.targets(skip), job.options, gate=gate):
        sent += 1
        if result.state in SILENT_STATES:
            marks.append([result.host, result.port, result.state.value])
        else:
            services.append((grade(result) if grade is not None else result).to_dict())
        # Checked per result: results arrive at least once per probe timeout, so a batch waits
        # at most batch_interval + one timeout.
        if (len(services) + len(marks) >= job.batch_size
                or loop.time() - started >= job.batch_interval):
            await flush()
    await flush()
    await loop.run_in_executor(None, send, {"shard": job.index, "attempt": attempt, "end": sent})
    return sent


def run_shard(job: ShardJob, skip: Collection[tuple[str, int]] | None = None) -> dict[str, Any]:
    """The Dask task: run `scan_shard` in a fresh event loop in this worker thread."""
    from distributed import get_client

    client = get_client()
    scheduler: Any = client.scheduler  # an rpc proxy; None only before the client starts

    def send(message: dict[str, Any]) -> None:
        # The scheduler's queue_put, not a worker-side Queue(): creating a Queue object would
        # re-create (and keep alive) a queue its client already released, and an orphaned
        # shard would scan on into the void. This way it fails on its next send instead.
        client.sync(scheduler.queue_put, name=job.queue, data=message,
                    timeout=PUT_TIMEOUT)

    client.sync(scheduler.queue_qsize, name=job.queue)  # the run is still wanted
    started = time.monotonic()
    probed = asyncio.run(scan_shard(job, send, skip))
    return {"shard": job.index, "probed": probed, "seconds": time.monotonic() - started}


# ---------------------------------------------------------------------------------------------
# Client side


class ShardCollector:
    """Writes what the workers send into the store (through one `ResultWriter`) and records
    finished shards."""

    def __init__(
        self,
        store: Store,
        scan_id: str,
        run: ShardedRun,
        on_result: Callable[[ServiceResult], None] | None,
        progress: Progress | None,
        budget: _BudgetPlan | None = None,
    ) -> None:
        self.store = store
        self.scan_id = scan_id
        self.run = run
        self.on_result = on_result
        self.progress = progress
        self.budget = budget
        self.started: set[int] = set()  # shards that sent a "start" in this run
        self.writer = ResultWriter(store, scan_id, on_stored=self._stored)

    def handle(self, message: Mapping[str, Any]) -> int | None:
        """Store one message; returns the shard index when it was that shard's end marker
        (and the shard is now recorded done), else None."""
        index = int(message["shard"])
        if "start" in message:
            if index in self.started:
                self.run.reruns += 1
                log.info("shard %d started again (attempt %s)", index, message["attempt"])
            self.started.add(index)
            return None
        if "end" in message:
            if index in self.run.done:
                return None  # a second attempt finished too; its results were ignored already
            self.run.done.add(index)
            self.run.ran += 1
            # Same transaction as the results before it, then committed: see the docstring.
            self.store.update_options(self.scan_id, {OPTIONS_KEY: {
                "count": self.run.shards, "done": format_indices(self.run.done)}})
            log.debug("shard %d/%d done (%d targets)", index, self.run.shards, message["end"])
            return index
        marks = [ServiceResult(host, int(port), State(state))
                 for host, port, state in message.get("marks", ())]
        services = [ServiceResult.from_dict(data) for data in message.get("services", ())]
        budget = self.budget
        if budget is not None:
            for result in marks:
                budget.settle(result)
            services = [budget.settle(result) for result in services]
        self.writer.add_many([*marks, *services])
        if budget is not None:
            budget.flush(self.scan_id)
        self.run.duplicates = self.writer.repeated
        return None

    def _stored(self, result: ServiceResult) -> None:
        self.run.stored += 1
        if self.progress is not None:
            self.progress.add(result)
        if self.on_result is not None:
            self.on_result(result)


class _BudgetPlan:
    """The client's side of the connection ledger for a sharded run. Workers write no store,
    so the client admits, before any shard starts, every pair of the scan the ledger has
    connected to before (one intent), ships the decisions with the shards, and records each
    result as it arrives; a pair denied here comes back as a placeholder and is stored as the
    ledger's answer. A pair the ledger has never seen is first contact: the worker connects
    (one connection per pair and scan) and the client records it."""

    def __init__(self, ledger: Ledger, space: TargetSpace, done: Collection[tuple[str, int]]):
        self.ledger = ledger
        seen = [Target(h, p) for h, p in ledger.history()
                if (h, p) not in done and Target(h, p) in space]
        self.admitted: dict[tuple[str, int], Decision] = {}
        for i in range(0, len(seen), GATE_BATCH):
            for decision in ledger.admit(seen[i:i + GATE_BATCH]):
                key = (decision.target.host, decision.target.port)
                self.admitted[key] = decision
        self.decisions = ShippedDecisions(
            frozenset(k for k, d in self.admitted.items() if not d.allowed),
            tuple((*k, d.bind) for k, d in self.admitted.items() if d.allowed and d.bind))
        self._records: list[tuple[Decision, ServiceResult]] = []

    def settle(self, result: ServiceResult) -> ServiceResult:
        key = (result.host, result.port)
        decision = self.admitted.pop(key, None)
        if decision is not None and not decision.allowed:
            note = result.extra.budget
            return self.ledger.answer(decision, note.liveness if note is not None else None)
        self._records.append((decision or self.ledger.unreserved(Target(*key)), result))
        return result

    def flush(self, scan_id: str) -> None:
        if self._records:
            self.ledger.record(self._records, scan_id)
            self._records = []


def scan_sharded(
    space: TargetSpace,
    options: ScanOptions,
    store: Store,
    scan_id: str,
    spec: ClusterSpec,
    *,
    ledger: Ledger | None = None,
    shards: int | None = None,
    assess_results: bool = True,
    exposure: str | None = None,
    on_result: Callable[[ServiceResult], None] | None = None,
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batch_interval: float = DEFAULT_BATCH_INTERVAL,
) -> ShardedRun:
    """Run the scan `scan_id` (already created in `store`) over the cluster `spec`.

    Results are written to `store` as they arrive; `on_result` and `progress` see each newly
    stored verdict. The shard count is `shards`, else the one recorded for this scan, else
    `default_shard_count`; shards recorded done are skipped. Returns a `ShardedRun`; the caller
    decides the scan's final status (`complete` or not). Raises `ClusterError` when the
    cluster cannot be reached or is lost.
    """
    record = store.require_scan(scan_id)
    recorded, done = shard_state(record.options)
    started = time.monotonic()
    with connect(spec) as client:
        workers = _check_workers(client)
        shard_options = per_shard_options(options, workers.slots, workers.max_threads)
        count = recorded or shards or default_shard_count(len(space), workers.slots,
                                                          shard_options.concurrency)
        if recorded is not None and shards is not None and shards != recorded:
            log.warning("scan %s was split into %d shards; keeping that (not %d)",
                        scan_id, recorded, shards)
        if recorded is None:
            store.update_options(scan_id, {OPTIONS_KEY: {"count": count, "done": ""}})
        run = ShardedRun(scan_id, count, done=set(done), skipped=len(done),
                         workers=workers.count)
        log.info("scan %s: %d shards (%d done before) on %d worker threads",
                 scan_id, count, len(done), workers.slots)
        token = uuid.uuid4().hex[:8]  # keys and queue unique per run, even on a shared cluster
        already = store.done_pairs(scan_id)
        plan = _BudgetPlan(ledger, space, already) if ledger is not None else None
        shipped = plan.decisions if plan is not None and plan.decisions else None
        jobs = [ShardJob(space, space.seed, index, count, shard_options, assess_results,
                         f"vncaudit-{scan_id}-{token}", exposure, batch_size, batch_interval,
                         shipped)
                for index in range(count) if index not in done]
        if jobs:
            try:
                _run_jobs(client, jobs, ShardCollector(store, scan_id, run, on_result, progress,
                                                   plan), already)
            except OSError as exc:  # distributed's CommClosedError is one
                raise ClusterError(f"lost the Dask scheduler: {exc}") from exc
    store.flush()
    run.elapsed = time.monotonic() - started
    return run


def _run_jobs(
    client: Client, jobs: list[ShardJob], collector: ShardCollector, already: set[tuple[str, int]]
) -> None:
    """Submit the shards, store what they send until every task has ended, and note in
    `collector.run.failed` the shards that did not finish."""
    from distributed import Future, Queue

    run = collector.run
    queue = Queue(jobs[0].queue, client=client, maxsize=QUEUE_MAXSIZE)
    futures: dict[int, Future[dict[str, Any]]] = {}
    try:
        # Pairs done before (a resume): one copy per worker rather than one per task.
        skip = client.scatter(frozenset(already), broadcast=True, hash=False) if already else None
        for job in jobs:
            futures[job.index] = client.submit(
                run_shard, job, skip, key=f"{job.queue}-shard-{job.index}-of-{job.count}",
                pure=False, retries=SHARD_RETRIES)
        while True:
            messages = queue.get(batch=True)
            for message in messages:
                finished = collector.handle(message)
                if finished is not None and finished in futures:
                    # Its results are in: a worker lost before reporting must not rerun it.
                    futures.pop(finished).cancel()
            if messages:
                continue
            for index, future in list(futures.items()):
                if future.status == "error":
                    run.failed[index] = _describe(future.exception())
                    log.warning("shard %d failed: %s", index, run.failed[index])
                if future.status != "pending":
                    del futures[index]
            if not futures:
                # Every task has ended, and each queued its messages before it did: drain.
                for message in queue.get(batch=True):
                    collector.handle(message)
                break
            time.sleep(POLL_INTERVAL)
    finally:
        if futures:  # interrupted: stop the shards still running
            client.cancel(list(futures.values()), force=True)
        with contextlib.suppress(OSError):
            queue.close()
    for job in jobs:
        if job.index in run.done:
            run.failed.pop(job.index, None)  # it sent its end marker, then failed reporting
        elif job.index not in run.failed:
            run.failed[job.index] = "the shard ended without sending its end marker"


def _describe(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
