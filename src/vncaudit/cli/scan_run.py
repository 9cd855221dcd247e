"""Running a scan from the command line: the rich progress bar (redrawn at most every 0.1 s),
the local and the sharded (cluster) run, and SIGTERM handled like Ctrl-C so the resume command
is printed.

Owns: driving the engine with progress. Must not: define commands, parse options or render
results. `_progress_bar` is looked up through `vncaudit.cli`, so patching it there works.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

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
from vncaudit.cli.common import (
    err,
)
from vncaudit.discovery import Marks, SynCounters
from vncaudit.engine import Progress as EngineProgress
from vncaudit.engine import ScanOptions, scan_async
from vncaudit.engine import run as run_loop
from vncaudit.models import ServiceResult, Target
from vncaudit.store import Store

if TYPE_CHECKING:
    from vncaudit.budget import Ledger, ScanGate
    from vncaudit.cluster import ClusterSpec
    from vncaudit.targets import TargetSpace


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


def _run_with_progress(
    pending: Iterable[Target],
    options: ScanOptions,
    state: EngineProgress,
    show: bool,
    on_result: Callable[[ServiceResult], None],
    on_marks: Callable[[Marks], None] | None = None,
    gate: ScanGate | None = None,
) -> None:
    # Looked up through the package, as before the split, so a patch of
    # `vncaudit.cli._progress_bar` still takes effect.
    bar = _cli._progress_bar(err) if show else None

    async def run() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        task_id = bar.add_task("scan", total=state.total, rate=0.0, vnc=0,
                               syn="") if bar else None
        shown = [started]

        def draw() -> None:
            if bar is not None and task_id is not None:
                now = loop.time()
                shown[0] = now
                bar.update(task_id, completed=state.done,
                           rate=state.done / max(now - started, 1e-6), vnc=state.vnc,
                           syn=_syn_rate(state.syn))

        def update(result: ServiceResult) -> None:
            on_result(result)
            # The bar redraws a few times a second anyway: thousands of updates a second
            # would cost the scan, not show more.
            if bar is not None and loop.time() - shown[0] >= 0.1:
                draw()

        await scan_async(pending, options, on_result=update, progress=state, collect=False,
                         on_marks=on_marks, gate=gate)
        draw()

    try:
        if bar is None:
            run_loop(run())
        else:
            with bar:
                run_loop(run())
    finally:
        if state.syn is not None and state.syn.sent:
            err.print(syn_summary(state.syn), style="dim", markup=False, soft_wrap=True)


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


def _run_sharded(
    space: TargetSpace,
    options: ScanOptions,
    store: Store,
    scan_id: str,
    spec: ClusterSpec,
    state: EngineProgress,
    show: bool,
    ledger: Ledger | None = None,
    on_result: Callable[[ServiceResult], None] | None = None,
    quiet: bool = False,
) -> None:
    """--workers / --cluster: the same scan, sharded over Dask (vncaudit.cluster), which
    stores the results itself (`on_result` sees each stored one); raises VncAuditError when
    shards are left unfinished."""
    import contextlib
    import time

    from vncaudit import cluster

    bar = _cli._progress_bar(err) if show else None  # via the package: see _run_with_progress
    started = time.monotonic()
    task_id = bar.add_task("scan", total=state.total, rate=0.0, vnc=0,
                           syn="") if bar else None

    def update(result: ServiceResult) -> None:
        if on_result is not None:
            on_result(result)
        if bar is not None and task_id is not None:
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(task_id, completed=state.done, rate=state.done / elapsed, vnc=state.vnc)

    with bar if bar is not None else contextlib.nullcontext():
        run = cluster.scan_sharded(space, options, store, scan_id, spec, on_result=update,
                                   progress=state, ledger=ledger)
    if not quiet:
        err.print(f"{run.shards} shards ({run.ran} run now, {run.skipped} done before) on "
                  f"{run.workers} workers in {run.elapsed:.1f} s; {run.reruns} reruns, "
                  f"{run.duplicates} repeated verdicts ignored", style="dim", markup=False,
                  soft_wrap=True)
    if run.failed:
        index, why = sorted(run.failed.items())[0]
        raise cluster.ClusterError(f"{len(run.failed)} of {run.shards} shards did not finish "
                                   f"(shard {index}: {why}); resume with: vncaudit scan "
                                   f"--resume {scan_id} --workers N")
