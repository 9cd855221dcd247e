"""What a running scan writes while it runs, for pipes and wrappers: `-o jsonl` lines as results
arrive, and the machine-readable progress stream (`--status-file`).

Owns: `ResultLines` (one schema-v1 service per line, written and flushed the moment the engine
hands the result over, so `vncaudit scan ... -o jsonl | jq` shows each as it comes) and
`StatusLines` (JSON lines `start`, `progress` once a second from a timer thread whatever the
probes are doing, `end`; to a file or, for `-`, stderr). Must not: scan, store, or render any
other format; the scan command decides what is streamed.

A reader that goes away (`| head -1`) is not an error: the lines stop and the scan goes on, its
results kept in the store. A file that cannot be written (disk full) is one error line, exit 3.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from vncaudit import report
from vncaudit.basics import SILENT_STATES, Severity
from vncaudit.engine import Progress

if TYPE_CHECKING:
    from vncaudit.models import ServiceResult

if TYPE_CHECKING:
    from vncaudit.report.spool import JsonSpool, Tally

STATUS_INTERVAL = 1.0  # seconds between two progress lines


class StreamWriteError(OSError):
    """A stream's file could not be written (not a reader that left: that is silent)."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class _Lines:
    """Lines to a text stream, each flushed; a closed pipe ends the stream quietly."""

    def __init__(self, stream: IO[str], name: str, owned: bool) -> None:
        self._stream = stream
        self.name = name
        self._owned = owned
        self._lock = threading.Lock()
        self.gone = False  # the reader closed the pipe

    def write(self, line: str) -> None:
        with self._lock:
            if self.gone:
                return
            try:
                self._stream.write(line)
                self._stream.flush()
            except BrokenPipeError:
                self.gone = True
                if not self._owned:
                    # Python flushes stdout again at exit: point it at /dev/null, so that
                    # flush cannot fail with a second broken pipe.
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, self._stream.fileno())
                    os.close(devnull)
            except OSError as exc:
                self.gone = True
                raise StreamWriteError(f"cannot write {self.name}: {exc.strerror or exc}") \
                    from None

    def close(self) -> None:
        if self._owned:
            try:
                self._stream.close()
            except OSError:
                pass


def _open(path: Path | None, default: IO[str], default_name: str) -> _Lines:
    if path is None or str(path) == "-":
        return _Lines(default, default_name, owned=False)
    try:
        # Line-buffered text; a FIFO opens here once its reader is there.
        stream = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
    except OSError as exc:
        raise StreamWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    return _Lines(stream, str(path), owned=True)


class ResultLines:
    """`-o jsonl` while the scan runs: each shown result becomes one line at once."""

    def __init__(self, path: Path | None, include_all: bool) -> None:
        self._out = _open(path, sys.stdout, "stdout")
        self.include_all = include_all
        self.written = 0

    def write(self, result: ServiceResult) -> None:
        if self.include_all or result.state not in SILENT_STATES:
            self._out.write(report.jsonl_line(result))
            self.written += 1

    def write_all(self, results: Iterable[ServiceResult]) -> None:
        for result in results:
            self.write(result)

    def close(self) -> None:
        self._out.close()


class StatusLines:
    """`--status-file`: one JSON object a line, for wrappers.

    {"event": "start", "scan": ID, "total": N, "time": T}
    {"event": "progress", "scan": ID, "done": n, "total": N, "vnc": k, "rate": r,
     "elapsed": s, "time": T}                                     (every second)
    {"event": "end", "scan": ID, "status": "finished"|"interrupted"|"failed", "done": n,
     "total": N, "vnc": k, "shown": m, "findings": {"critical": c, ...}, "elapsed": s,
     "time": T, "resume": "vncaudit scan --resume ID"              (when not finished)}
    """

    def __init__(self, path: Path, scan_id: str, state: Progress,
                 interval: float = STATUS_INTERVAL) -> None:
        self._out = _open(path, sys.stderr, "stderr")
        self.scan_id = scan_id
        self.state = state
        self.interval = interval
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: StreamWriteError | None = None

    def _emit(self, event: str, **fields: Any) -> None:
        line = {"event": event, "scan": self.scan_id, **fields, "time": _now()}
        self._out.write(json.dumps(line, separators=(",", ":")) + "\n")

    def _counts(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self._started
        return {"done": self.state.done, "total": self.state.total, "vnc": self.state.vnc,
                "rate": round(self.state.done / max(elapsed, 1e-6), 1),
                "elapsed": round(elapsed, 3)}

    def start(self) -> None:
        self._emit("start", total=self.state.total)
        self._thread = threading.Thread(target=self._tick, name="vncaudit-status", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._emit("progress", **self._counts())
            except StreamWriteError as exc:
                self.failure = exc
                return

    def end(self, status: str, results: Iterable[ServiceResult] = (), shown: int = 0,
            resume: bool = False, tally: Tally | None = None) -> None:
        """The last line; the findings counted over `results`, or taken from `tally`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        findings = {s.value: 0 for s in sorted(Severity, key=lambda s: -s.rank)}
        for r in results:
            for f in r.findings:
                findings[f.severity.value] += 1
        if tally is not None:
            for severity, count in tally.findings.items():
                findings[severity.value] += count
        extra: dict[str, Any] = {}
        if resume:
            extra["resume"] = f"vncaudit scan --resume {self.scan_id}"
        counts = self._counts()
        counts.pop("rate")
        self._emit("end", status=status, **counts, shown=shown, findings=findings, **extra)
        self._out.close()


class LiveOutput:
    """The scan command's live streams: result lines for `-o jsonl`, status lines for
    `--status-file`; either may be absent.

    A SYN sweep hands its closed and filtered verdicts to the store in bulk, not one result
    each; with --all those lines come when the scan ends (`end`), each verdict once."""

    def __init__(self, output: str, output_file: Path | None, include_all: bool,
                 status_file: Path | None, scan_id: str, state: Progress,
                 spool: JsonSpool | None = None) -> None:
        self.include_all = include_all
        self.state = state
        self.spool = spool  # -o json built as results come (not with --all)
        self.lines = ResultLines(output_file, include_all) if output == "jsonl" else None
        self.status = (StatusLines(status_file, scan_id, state) if status_file is not None
                       else None)
        self._silent_written: set[tuple[str, int]] = set()  # closed/filtered lines so far
        if self.status is not None:
            self.status.start()

    def resumed(self, results: Iterable[ServiceResult]) -> None:
        """What a resumed scan found before: streamed (and spooled) first, so the lines and the
        report are the whole scan. The run itself spools what it finds (`StoredScan.run`)."""
        for result in results:
            if self.spool is not None and result.state not in SILENT_STATES:
                self.spool.add(result)
            self.result(result)

    def result(self, result: ServiceResult) -> None:
        if self.lines is not None:
            self.lines.write(result)
            if self.include_all and result.state in SILENT_STATES:
                self._silent_written.add((result.host, result.port))
        if self.status is not None and self.status.failure is not None:
            raise self.status.failure

    def chain(self, then: Callable[[ServiceResult], None]) -> Callable[[ServiceResult], None]:
        """The streams, then *then* (the progress bar's callback)."""
        def both(result: ServiceResult) -> None:
            self.result(result)
            then(result)
        return both

    def end(self, status: str, results: Iterable[ServiceResult] | None = None) -> None:
        """Close the streams; with --all, first the bulk verdicts not streamed yet (from
        *results*, the store's). The status stream's last line says how the scan ended; a
        failure to write it is left to the line that says why the scan stopped. Without
        *results* (a spooled -o json), the status line counts what the spool was given."""
        if results is None:
            if self.status is not None:
                tally = self.spool.tally if self.spool is not None else None
                try:
                    self.status.end(status, (), tally.shown if tally else 0,
                                    resume=status != "finished", tally=tally)
                except StreamWriteError:
                    if status == "finished":
                        raise
            if self.lines is not None:
                self.lines.close()
            return
        results = list(results)
        if self.lines is not None:
            try:
                if self.include_all and status == "finished":
                    self.lines.write_all(r for r in results if r.state in SILENT_STATES and
                                         (r.host, r.port) not in self._silent_written)
            finally:
                self.lines.close()
        if self.status is not None:
            shown = len(report.visible(results, self.include_all))
            try:
                self.status.end(status, results, shown, resume=status != "finished")
            except StreamWriteError:
                if status == "finished":
                    raise


def check_status_file(path: Path | None, keep: Iterable[Path | str | None]) -> None:
    """--status-file: '-' (stderr), a FIFO, or a file that can be written and is none of the
    command's other files; refused before any packet."""
    from vncaudit.cli.common import fail

    if path is None or str(path) == "-":
        return
    for other in keep:
        if other is not None and str(other) not in ("", "-") and Path(other) == path:
            raise fail(f"--status-file {path}: is also another file of this command; give "
                        "it its own file (or - for stderr)")
    if path.is_fifo():
        return
    if not str(path).strip() or path.is_dir():
        raise fail(f"--status-file {str(path) or repr('')}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise fail(f"--status-file {path}: directory {path.parent} does not exist")
    if not os.access(path if path.exists() else path.parent,
                     os.W_OK if path.exists() else os.W_OK | os.X_OK):
        raise fail(f"--status-file {path}: permission denied")
