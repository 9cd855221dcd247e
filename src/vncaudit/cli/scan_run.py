"""Running a scan from the command line: the rich progress bar (redrawn at most every 0.1 s)
and SIGTERM handled like Ctrl-C so the resume command is printed.

Owns: what a terminal shows while a scan runs. Must not: define commands, parse options, run
the scan (`vncaudit.runner`) or render results. `_progress_bar` is looked up through
`vncaudit.cli`, so patching it there works.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vncaudit import cli as _cli
from vncaudit.cli.common import err
from vncaudit.discovery import SynCounters
from vncaudit.engine import Progress as EngineProgress
from vncaudit.models import ServiceResult


def _progress_bar(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.0f}/s"),
        TextColumn("vnc: {task.fields[vnc]}"),
        TextColumn("{task.fields[syn]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@contextlib.contextmanager
def _sigterm_as_interrupt(seen: list[int]) -> Iterator[None]:
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
def _progress(state: EngineProgress, show: bool) -> Iterator[Callable[[ServiceResult], None]]:
    """The progress bar while a scan runs (when `show`): yields the callback that takes each
    result, and draws the last state, the real total, on the way out; then the SYN sender's
    summary line when it sent anything."""
    # Looked up through the package, so a patch of `vncaudit.cli._progress_bar` takes effect.
    bar = _cli._progress_bar(err) if show else None
    try:
        if bar is None:
            yield _ignore
            return
        started = time.monotonic()
        task_id = bar.add_task("scan", total=state.total, rate=0.0, vnc=0, syn="")
        shown = [started]

        def draw() -> None:
            now = shown[0] = time.monotonic()
            bar.update(task_id, completed=state.done,
                       rate=state.done / max(now - started, 1e-6), vnc=state.vnc,
                       syn=_syn_rate(state.syn))

        def update(result: ServiceResult) -> None:
            # The bar redraws a few times a second anyway: thousands of updates a second
            # would cost the scan, not show more.
            if time.monotonic() - shown[0] >= 0.1:
                draw()

        with bar:
            try:
                yield update
            finally:
                draw()
    finally:
        if state.syn is not None and state.syn.sent:
            err.print(syn_summary(state.syn), style="dim", markup=False, soft_wrap=True)


def _ignore(result: ServiceResult) -> None:
    del result


def _syn_rate(counters: SynCounters | None) -> str:
    """The progress bar's SYN column: the rate over the last second, while SYNs go out."""
    if counters is None:
        return ""
    rate = counters.recent_rate()
    return f"SYN {rate / 1000:,.0f}k/s" if rate >= 10_000 else f"SYN {rate:,.0f}/s"


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
