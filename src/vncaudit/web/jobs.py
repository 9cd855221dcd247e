"""In-process scan workers of the web service, on top of `vncaudit.engine` and the store.

Owns: the bounded queue of accepted scans, a fixed number of worker tasks that run them on the
app's event loop, live progress per scan, grading each result with the exposure the operator
configured, and writing every result to the app's `Store` as it arrives.

Screenshots (`screenshot` on a job, only when the operator's `allow_screenshots` is on) run
`vncaudit.active.run_active` after each probe exactly as `vncaudit scan --screenshot` does
(shared ClientInit, no input events, the same pixel and time caps), never with a password, so
only services that need no authentication are pictured; the PNGs go to
`screenshot_root()/<scan id>/`, at most `max_screenshots_per_scan` per scan.

Subdomain discovery (a decision with `discover` set, only ever made for an allow-listed
domain) runs here too, before any probe: the domain's hosts are found through DNS, and
`Policy.decide_discovered` checks each address; the refused ones are kept with the scan.

Each job is an ordinary stored scan (`vncaudit.runner.StoredScan`): its settings a `ScanSpec`,
its results written through the store's one `ResultWriter`.

Must not: decide by itself whether a target may be scanned — a `Job` is only ever built from a
policy `Decision`, and the engine is handed exactly the decision's literal addresses (never a
host name to resolve again); talk HTTP; or import FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from vncaudit import __version__
from vncaudit.exceptions import VncAuditError
from vncaudit.models import ServiceResult, State, Target
from vncaudit.payloads import ActiveChecks, ScreenshotCheck
from vncaudit.runner import StoredScan
from vncaudit.spec import ActiveSpec, ScanSpec
from vncaudit.store import Store
from vncaudit.web.metrics import Metrics
from vncaudit.web.policy import Decision, Policy, PolicyError
from vncaudit.web.security import bucket_key
from vncaudit.web.settings import Settings

log = logging.getLogger(__name__)

KEEP_FINISHED = 2000  # finished jobs kept in memory for fast polling; the store has them all


class QueueFullError(VncAuditError):
    """Too many scans are waiting; the client should retry later."""


class TooManyActiveError(VncAuditError):
    """This client already has its share of queued and running scans."""


class JobStatus(StrEnum):
    """queued → running → finished | failed | interrupted."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass
class Job:
    scan: StoredScan
    decision: Decision
    client: str
    total: int
    status: JobStatus = JobStatus.QUEUED
    phase: str = "scanning"  # or "discovering" (subdomain discovery before the scan)
    done: int = 0
    error: str | None = None
    submitted: float = field(default_factory=time.monotonic)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    screenshot: bool = False
    shots: int = 0  # screenshots attempted so far (capped by max_screenshots_per_scan)

    @property
    def scan_id(self) -> str:
        return self.scan.scan_id


PostProbe = Callable[[ServiceResult], Awaitable[ServiceResult]]
SCREENSHOT_API_URL = "/api/scans/{scan_id}/screenshots/{name}"


def screenshot_root(settings: Settings, store: Store) -> Path:
    """Where this instance keeps screenshots: `settings.screenshot_dir`, else a
    "screenshots" folder next to the store (a private temporary one for an in-memory store)."""
    if settings.screenshot_dir:
        return Path(settings.screenshot_dir).expanduser().absolute()
    if store.path is not None:
        return Path(store.path).absolute().parent / "screenshots"
    return Path(tempfile.mkdtemp(prefix="vncaudit-screenshots-"))


class JobManager:
    """Accepts decisions, runs them with `settings.workers` workers, tracks progress."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics,
                 policy: Policy | None = None) -> None:
        self.settings = settings
        self.policy = policy or settings.policy()
        self.store = store
        self.metrics = metrics
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._active: Counter[str] = Counter()  # queued + running scans per client
        self._queue: asyncio.Queue[Job] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.screenshots = screenshot_root(settings, store)

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.settings.queue_size)
        self._tasks = [asyncio.create_task(self._worker(), name=f"scan-worker-{i}")
                       for i in range(self.settings.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for job in self._jobs.values():
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                job.status = JobStatus.INTERRUPTED
                self.store.finish_scan(job.scan_id, "interrupted")
                self._ended(job)
        self.store.flush()

    def submit(self, decision: Decision, client: str, screenshot: bool = False) -> Job:
        """Record the scan in the store and queue it; `QueueFullError` when the queue is full.
        `screenshot` is a request the caller has already checked against the settings."""
        if screenshot and not self.settings.allow_screenshots:
            raise VncAuditError("screenshots are disabled on this service")
        if self._queue is None:
            raise VncAuditError("the scan workers are not running")
        if self._queue.full():
            raise QueueFullError("too many scans are waiting; try again in a minute")
        # Counted like the rate limit (an IPv6 client by its /64), or a /64 is no cap.
        active = self._active[bucket_key(client)]
        if active >= self.settings.max_active_per_client:
            # One client must not hold every worker (say, with "all 65535 ports" scans).
            raise TooManyActiveError(f"you already have {active} scans queued or running; "
                                     "wait until one is done")
        total = len(decision.addresses) * len(decision.ports)
        spec = ScanSpec(
            expressions=decision.addresses, ports=decision.ports_spec,
            timeout=self.settings.probe_timeout,
            concurrency=max(1, min(self.settings.scan_concurrency, total)), web=False,
            exposure=self.settings.assume_exposure, active=ActiveSpec(screenshot=screenshot))
        labels = {"source": "web", "client": client, "target": decision.target,
                  "hostname": decision.hostname, "addresses": list(decision.addresses),
                  "subdomains": decision.discover, "screenshot": screenshot}
        scan = StoredScan.create(self.store, spec, labels=labels, targets=[decision.target],
                                 tool=f"vncaudit {__version__}")
        job = Job(scan, decision, client, total, screenshot=screenshot)
        self._jobs[job.scan_id] = job
        self._active[bucket_key(client)] += 1
        self._queue.put_nowait(job)
        self.metrics.submitted.inc()
        self.metrics.queued.inc()
        self._trim()
        return job

    def get(self, scan_id: str) -> Job | None:
        return self._jobs.get(scan_id)

    def load(self) -> tuple[int, int]:
        """(queued, running) scans right now."""
        queued = self._queue.qsize() if self._queue is not None else 0
        # list(): routes read this from the thread pool while the loop may add jobs.
        running = sum(1 for j in list(self._jobs.values()) if j.status is JobStatus.RUNNING)
        return queued, running

    def _ended(self, job: Job) -> None:
        if not job.ended.is_set():
            job.ended.set()
            key = bucket_key(job.client)
            self._active[key] -= 1
            if self._active[key] <= 0:
                del self._active[key]

    def _trim(self) -> None:
        if len(self._jobs) <= KEEP_FINISHED + 200:
            return  # trim in batches: a full pass per submit would cost O(jobs) each time
        finished = [k for k, j in self._jobs.items() if j.ended.is_set()]
        for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[key]

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            self.metrics.queued.dec()
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one broken scan must not stop the worker
                log.exception("scan %s failed", job.scan_id)
                job.status, job.error = JobStatus.FAILED, f"{type(exc).__name__}: {exc}"
                with contextlib.suppress(Exception):
                    self.store.finish_scan(job.scan_id, "interrupted")
                self.metrics.finished.labels("failed").inc()
            finally:
                self._ended(job)
                self._queue.task_done()

    def _targets(self, job: Job) -> Iterator[Target]:
        for i, address in enumerate(job.decision.addresses):
            for port in job.decision.ports:
                yield Target(address, port, job.decision.name_of(i))

    async def _discover(self, job: Job) -> bool:
        """Find the domain's hosts, let the policy check each address; False when nothing
        may be scanned (the job has then failed with the reason)."""
        from vncaudit.subdomains import discover

        job.phase = "discovering"
        try:
            found = await discover(job.decision.target, resolver=self.settings.dns_resolver,
                                   axfr_port=self.settings.dns_axfr_port,
                                   timeout=self.settings.dns_timeout, concurrency=20)
        except VncAuditError as exc:
            job.status, job.error = JobStatus.FAILED, f"subdomain discovery failed: {exc}"
            self.store.finish_scan(job.scan_id, "interrupted")
            self.metrics.finished.labels("failed").inc()
            return False
        # With the CNAME chain: a name that leads out of the domain is not the domain's host.
        hosts = [(h.name, h.addresses, h.cnames) for h in found.hosts]
        refused: list[dict[str, str]] = []
        try:
            job.decision, refused = self.policy.decide_discovered(job.decision, hosts,
                                                                  job.client)
        except PolicyError as exc:
            job.error = str(exc)
        self.store.update_options(job.scan_id, {
            "expressions": list(job.decision.addresses),
            "addresses": list(job.decision.addresses),
            "names": list(job.decision.names),
            "refused": refused,
            "discovery": found.to_dict(),
        })
        if job.error is not None:
            job.status = JobStatus.FAILED
            self.store.finish_scan(job.scan_id, "interrupted")
            self.metrics.finished.labels("failed").inc()
            return False
        job.total = len(job.decision.addresses) * len(job.decision.ports)
        job.phase = "scanning"
        return True

    def _post_probe(self, job: Job) -> PostProbe | None:
        """The screenshot step after each probe (None when the scan did not ask for one)."""
        if not job.screenshot:
            return None
        from vncaudit import active

        options = active.ActiveOptions(screenshot=True,
                                       screenshot_dir=self.screenshots / job.scan_id)
        cap = self.settings.max_screenshots_per_scan

        def skipped(result: ServiceResult, status: str, reason: str) -> ServiceResult:
            return result.with_extra(active=ActiveChecks(screenshot=ScreenshotCheck(status,
                                                                                    reason)))

        async def post(result: ServiceResult) -> ServiceResult:
            if result.state is not State.VNC or result.rfb is None:
                return result
            if result.rfb.auth_required:
                # The service never takes a password, so it never logs in anywhere.
                return skipped(result, "skipped", "authentication required: screenshots are "
                               "taken only where no password is needed")
            if job.shots >= cap:
                # A target answering RFB on every port must not fill the disk with pictures.
                return skipped(result, "skipped", f"at most {cap} screenshots per scan")
            job.shots += 1
            try:
                # No password is ever given: a protected service is only marked skipped.
                return await active.run_active(result, options)
            except Exception as exc:  # a screenshot must never cost the probe's result
                log.warning("screenshot of %s:%s failed: %s", result.host, result.port, exc)
                return skipped(result, "failed", f"{type(exc).__name__}: {exc}")

        return post

    def _graded(self, job: Job, result: ServiceResult) -> ServiceResult:
        """Grade a result; a screenshot's evidence names it by its URL on this service, while
        the stored result keeps the file's path (the HTML report embeds the file)."""
        grade = job.scan.grader()
        active = result.extra.active
        shot = active.screenshot if active is not None else None
        if active is None or shot is None or not shot.path:
            return grade(result)
        url = SCREENSHOT_API_URL.format(scan_id=job.scan_id, name=Path(shot.path).name)
        graded = grade(result.with_extra(
            active=replace(active, screenshot=replace(shot, path=url))))
        return replace(graded, extra=result.extra)

    async def _run(self, job: Job) -> None:
        job.status = JobStatus.RUNNING
        self.metrics.running.inc()
        started = time.monotonic()

        def probed(result: ServiceResult) -> None:
            job.done += 1
            self.metrics.probes.labels(result.state.value).inc()

        try:
            if job.decision.discover and not await self._discover(job):
                return
            try:
                async with asyncio.timeout(self.settings.scan_deadline):
                    # What was probed is stored; the rest is left, as after an interrupted scan
                    # (the runner marks it so when the deadline stops it).
                    await job.scan.run_async(
                        targets=self._targets(job), post_probe=self._post_probe(job),
                        grade=lambda result: self._graded(job, result), on_result=probed)
            except TimeoutError:
                job.status = JobStatus.INTERRUPTED
                job.error = (f"stopped after the {self.settings.scan_deadline:g} s deadline; "
                             f"{job.done} of {job.total} "
                             f"port{'' if job.total == 1 else 's'} probed")
                self.metrics.finished.labels("interrupted").inc()
                return
            job.status = JobStatus.FINISHED
            self.metrics.finished.labels("finished").inc()
        finally:
            self.metrics.running.dec()
            self.metrics.scan_seconds.observe(time.monotonic() - started)
