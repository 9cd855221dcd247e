"""The delivery worker: takes due rows from the outbox and sends them, at least once.

Owns: the loop that wakes when alerts are queued (or a retry is due), sends each pending
delivery through its channel (`channels.deliver`), and records the outcome (`records`):
delivered, or retried with back-off (10 s doubling to 1 h, the receiver's Retry-After
honoured), or failed after a week. Channels are independent; within one channel deliveries
go in order, and when one fails the channel's other due rows wait for the same back-off
instead of each timing out in turn. Must not: scan, evaluate rules, or ever let a receiver's
fault (an exception, a hang) reach the watcher: a scan never waits for a delivery.

At least once, never lost: a row leaves `pending` only after its outcome is committed, so a
process killed during a delivery sends it again on restart, with the same idempotency key.
A cycle's digest is one row like an alert's: retried, recorded and given up on as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from vncaudit.exceptions import VncAuditError
from vncaudit.watch.channels import Outcome, deliver, webhook_client
from vncaudit.watch.config import Channel, WebhookChannel
from vncaudit.watch.records import Delivery, Message, MonitorDb

log = logging.getLogger(__name__)

IDLE_WAKE = 60.0  # seconds: look at the outbox at least this often (another process's rows)


class Deliverer:
    """Delivers the outbox of one store through the configured channels."""

    def __init__(self, db: MonitorDb, channels: Mapping[str, Channel],
                 stdout: TextIO | None = None,
                 on_outcome: Callable[[Delivery, Message, Outcome], None] | None = None) -> None:
        self.db = db
        self.channels = dict(channels)
        self.stdout = stdout
        self.on_outcome = on_outcome
        self._wake = asyncio.Event()
        self._busy: dict[str, asyncio.Task[int]] = {}
        self._clients: dict[str, Any] = {}

    def wake(self) -> None:
        """New rows were queued: look now."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver forever (until cancelled). Each channel has its own task, so a slow
        receiver holds back only its own deliveries."""
        try:
            while True:
                try:
                    self.start_due()
                    wait = self._wait_time()
                except VncAuditError as exc:  # the store is busy or gone: try again later
                    log.warning("outbox: %s", exc)
                    wait = 5.0
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            await self._cancel_busy()
            await self.close()

    def _wait_time(self) -> float:
        due = self.db.next_due(exclude=tuple(self._busy))
        if due is None:
            return IDLE_WAKE
        return min(max(due - time.time(), 0.05), IDLE_WAKE)

    async def _cancel_busy(self) -> None:
        tasks = list(self._busy.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def drain(self, within: float) -> int:
        """Deliver what is due, and retries that fall due within `within` seconds (for
        `--once`); what still fails stays queued for the next run. Returns how many rows
        were delivered."""
        deadline = time.time() + within
        delivered = 0
        try:
            while True:
                self.start_due()
                if self._busy:
                    results = await asyncio.gather(*self._busy.values())
                    delivered += sum(results)
                    continue
                due = self.db.next_due()
                if due is None or due > deadline:
                    return delivered
                await asyncio.sleep(max(due - time.time(), 0.05))
        finally:
            await self._cancel_busy()
            await self.close()

    def start_due(self) -> None:
        """Start a task for each channel with due rows that has none running."""
        rows = self.db.due(time.time(), exclude=tuple(self._busy))
        by_channel: dict[str, list[tuple[Delivery, Message]]] = {}
        for delivery, alert in rows:
            by_channel.setdefault(delivery.channel, []).append((delivery, alert))
        for name, items in by_channel.items():
            task = asyncio.create_task(self._channel(name, items), name=f"deliver {name}")
            self._busy[name] = task
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[int]) -> None:
        for name, busy in list(self._busy.items()):
            if busy is task:
                del self._busy[name]
        self._wake.set()

    async def _channel(self, name: str, items: list[tuple[Delivery, Message]]) -> int:
        channel = self.channels.get(name)
        delivered = 0
        for index, (delivery, alert) in enumerate(items):
            if channel is None:
                why = f"channel {name} is no longer configured"
                self.db.drop_channel(delivery, why)
                self._report(delivery, alert, Outcome(False, why))
                continue
            try:
                outcome = await deliver(channel, alert, self.stdout, self._client(channel))
            except Exception as exc:  # a bug in a channel must not stop the others
                log.exception("outbox: delivery through %s failed", name)
                outcome = Outcome(False, f"internal error: {type(exc).__name__}: {exc}")
            if outcome.delivered:
                self.db.delivered(delivery.id)
                delivered += 1
                self._report(delivery, alert, outcome)
                continue
            now = time.time()
            recorded = self.db.failed_attempt(delivery, outcome.error or "failed",
                                              outcome.retry_after, now)
            self._report(recorded, alert, outcome)
            # The receiver is down or refusing: the rest of its rows wait as long.
            self.db.postpone([d.id for d, _ in items[index + 1:]], recorded.next_attempt)
            break
        return delivered

    def _client(self, channel: Channel) -> Any:
        if not isinstance(channel, WebhookChannel):
            return None
        client = self._clients.get(channel.name)
        if client is None:
            try:
                client = webhook_client(channel)
            except (OSError, ssl.SSLError):
                return None  # post_webhook reports the bad ca_file itself
            self._clients[channel.name] = client
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()

    def _report(self, delivery: Delivery, alert: Message, outcome: Outcome) -> None:
        # INFO: the watcher turns failures into its own status lines (`on_outcome`).
        if outcome.delivered:
            log.info("outbox: %s %s delivered to %s", alert.label, alert.key,
                     delivery.channel)
        else:
            log.info("outbox: %s %s to %s not delivered (%s): %s", alert.label, alert.key,
                     delivery.channel, delivery.state, outcome.error)
        if self.on_outcome is not None:
            self.on_outcome(delivery, alert, outcome)
