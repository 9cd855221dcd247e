"""Running a scan from the command line: the rich progress bar (redrawn at most every 0.1 s)
and SIGTERM handled like Ctrl-C so the resume command is printed.

Owns: what a terminal shows while a scan runs. Must not: define commands, parse options, run
the scan (`vncaudit.runner`) or render results.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from vncaudit.cli.common import err
from vncaudit.discovery import SynCounters
from vncaudit.engine import Progress as EngineProgress

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from vncaudit.models import ServiceResult


def progress_bar(console: Console) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        # "scanning", or while SYNs go out what the sender does (`syn_progress`): in the
        # label's place, so the counts stay whole at 80 columns.
        TextColumn("[bold]{task.fields[what]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f}/s"),
        TextColumn("vnc: {task.fields[vnc]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextlib.contextmanager
def sigterm_as_interrupt(seen: list[int]) -> Iterator[None]:
    """While a scan runs, SIGTERM (kill, systemd, timeout(1)) stops it the way Ctrl-C does:
    what is done is stored, the scan is marked interrupted and the resume command printed,
    instead of dying with the scan left "running". A handler someone else set is kept."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        seen.append(signum)
        # The SIGINT path is the one that stops the event loop cleanly (asyncio.Runner).
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def scan_progress(state: EngineProgress,
              show: bool | Callable[[], bool]) -> Iterator[Callable[[ServiceResult], None]]:
    """The progress bar while a scan runs (when `show`, or what it returns): redrawn from
    `state` ten times a second by a thread of its own (so SYN marks, which come in bulk and
    not as results, move it too), ending on the last state, the real total; then the SYN
    sender's summary line when it sent anything. Yields the per-result callback (nothing to do
    there now). The bar, and rich, come 0.2 s after the start: a scan sends its first packets
    first."""
    stop = threading.Event()
    bar = _Bar(state, show)
    thread = threading.Thread(target=bar.run, args=(stop,), name="vncaudit-progress",
                              daemon=True)
    thread.start()
    try:
        try:
            yield _ignore
        finally:
            stop.set()
            thread.join()
            bar.finish()
    finally:
        if state.syn is not None and state.syn.sent:
            err.print(syn_summary(state.syn), style="dim", markup=False, soft_wrap=True)


class _Bar:
    """The rich progress bar over an engine `Progress`, made on first draw if `show` says so."""

    START = 0.2  # seconds before the bar appears
    EVERY = 0.1  # seconds between redraws

    def __init__(self, state: EngineProgress, show: bool | Callable[[], bool]) -> None:
        self.state = state
        self.show = show
        self.started = time.monotonic()
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.decided = False

    def run(self, stop: threading.Event) -> None:
        if stop.wait(self.START):
            return
        while True:
            self.draw()
            if not self.bar or stop.wait(self.EVERY):
                return

    def draw(self) -> None:
        if not self.decided:
            self.decided = True
            if self.show() if callable(self.show) else self.show:
                self.bar = progress_bar(err)
                self.bar.start()
                self.task = self.bar.add_task("scan", total=self.state.total, rate=0.0, vnc=0,
                                              what="scanning")
        if self.bar is None or self.task is None:
            return
        state = self.state
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.bar.update(self.task, completed=state.done, rate=state.done / elapsed,
                        vnc=state.vnc, what=_label(state.syn))

    def finish(self) -> None:
        """The last state, the real total (a scan shorter than START gets it too)."""
        self.draw()
        if self.bar is not None:
            self.bar.stop()


def _ignore(result: ServiceResult) -> None:
    del result


def _per_second(rate: float) -> str:
    return f"{rate / 1000:,.0f}k" if rate >= 10_000 else f"{rate:,.0f}"


def syn_progress(counters: SynCounters | None, now: float | None = None) -> str:
    """The progress bar's SYN column while SYNs go out: the rate over the last second ("of"
    the cap when the machine sends slower than asked; short, for 80 columns), and the packets
    the kernel refused (sent again) or the interface dropped, once there are any."""
    if counters is None:
        return ""
    rate = counters.recent_rate(now)
    if 0 < rate < 0.9 * counters.asked:
        text = f"SYN {_per_second(rate)} of {_per_second(counters.asked)}/s"
    else:
        text = f"SYN {_per_second(rate)}/s"
    if counters.refused:
        text += f", {counters.refused:,} refused"
    if counters.dropped:
        text += f", {counters.dropped:,} dropped"
    return text


def _label(counters: SynCounters | None) -> str:
    text = syn_progress(counters)
    return text if text and text != "SYN 0/s" else "scanning"


def syn_summary(counters: SynCounters) -> str:
    """One line on what the SYN sender did: the rate it reached against the cap, and every
    packet the kernel refused, rejected or dropped (none is lost silently)."""
    rate = counters.send_rate
    line = f"syn: {counters.sent:,} SYNs sent"
    span = counters.fresh_done - counters.started
    if span > 0 and not rate:
        line += f" in {span:.2f} s (asked {counters.asked:,.0f}/s)"
    if rate:
        line += f" at {rate:,.0f}/s (asked {counters.asked:,.0f}/s"
        line += "; this machine sent no faster)" if rate < 0.9 * counters.asked else ")"
    line += (f"; {counters.refused:,} refused for lack of buffer space (sent again), "
             f"{counters.dropped:,} dropped by the outgoing interface")
    if counters.failed:
        line += f", {counters.failed:,} rejected by the kernel (filtered, with the reason)"
    return line
