"""`ResultWriter`: one scan's verdicts into the store, in batches.

Owns: buffering results as they arrive and writing them with one `executemany` per batch
(silent pairs as ``done`` marks, a sweep's bulk `Marks` as packed rows, the rest as full
results), the batch limits, and telling which verdicts were new (a rerun shard sends some
again: the store keeps the first). Every writer of scan results (the runner, the web jobs,
the cluster client) goes through it.
Must not: grade, print, or decide when a scan ends.

A verdict still in the buffer when the process is killed is simply probed again on resume:
`done` only ever holds what was written (docs/design.md, "The store: schema, writes,
durability").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from vncaudit.basics import SILENT_STATES, State
from vncaudit.store.database import Store

if TYPE_CHECKING:
    from vncaudit.discovery import Marks
    from vncaudit.models import ServiceResult

MAX_MARKS: Final = 1024  # silent pairs per write (three columns each: cheap)
MAX_RESULTS: Final = 256  # full results per write (~3 KB of JSON each)
MAX_AGE: Final = 0.5  # seconds the oldest buffered verdict may wait, checked on each add


class ResultWriter:
    """Buffers one scan's results and writes them in batches; a context manager that writes
    what is left on exit. Not thread-safe: one writer per scan, used from one thread.

    `on_stored`, when given, sees every verdict the store newly recorded (a repeated one, for
    a pair already done, is counted in `repeated` instead); without it the batch path never
    asks which ones were new. Closed and filtered pairs reach it as bare results.
    """

    def __init__(
        self,
        store: Store,
        scan_id: str,
        *,
        on_stored: Callable[[ServiceResult], None] | None = None,
        max_marks: int = MAX_MARKS,
        max_results: int = MAX_RESULTS,
        max_age: float = MAX_AGE,
    ) -> None:
        self.store = store
        self.scan_id = scan_id
        self.on_stored = on_stored
        self.max_marks = max_marks
        self.max_results = max_results
        self.max_age = max_age
        self.stored = 0  # verdicts newly recorded by this writer
        self.repeated = 0  # verdicts the store already had (first write wins)
        self._marks: list[tuple[str, int, State]] = []
        self._packed: list[Marks] = []
        self._packed_count = 0
        self._results: list[ServiceResult] = []
        self._texts: list[str | None] = []  # each result's row JSON, when the caller had it
        self._since = time.monotonic()

    def add(self, result: ServiceResult, text: str | None = None) -> None:
        """Buffer one verdict; writes the batch when it is full or old. `text`: the result's
        `to_dict()` as `jsontext.dumps_compact` writes it, when the caller made it already
        (`jsontext.dumps_both`, for the report as well)."""
        if result.state in SILENT_STATES:
            self._marks.append((result.host, result.port, result.state))
        else:
            self._results.append(result)
            self._texts.append(text)
        if (len(self._marks) >= self.max_marks or len(self._results) >= self.max_results
                or time.monotonic() - self._since >= self.max_age):
            self.flush()

    def add_marks(self, marks: Marks) -> None:
        """Buffer the closed or filtered verdicts a discovery sweep gives in bulk: written as
        they came (one packed row, no row per pair), or, when `on_stored` must see each
        verdict, one mark each."""
        if self.on_stored is None:
            self._packed.append(marks)
            self._packed_count += len(marks)
        else:
            state = marks.state
            self._marks.extend((host, port, state) for host, port in marks.pairs)
        if (len(self._marks) + self._packed_count >= self.max_marks
                or time.monotonic() - self._since >= self.max_age):
            self.flush()

    def add_many(self, results: Iterable[ServiceResult]) -> None:
        """Buffer many verdicts and write them now (a batch that arrived whole)."""
        for result in results:
            if result.state in SILENT_STATES:
                self._marks.append((result.host, result.port, result.state))
            else:
                self._results.append(result)
                self._texts.append(None)
        self.flush()

    @property
    def pending(self) -> int:
        """Verdicts buffered and not yet written."""
        return len(self._marks) + self._packed_count + len(self._results)

    def flush(self, *, commit: bool = False) -> None:
        """Write what is buffered into the store's open batch (with `commit`, commit that
        batch too: for a pause in the results, so a reader sees them)."""
        marks, results, packed, texts = self._marks, self._results, self._packed, self._texts
        self._marks, self._results, self._packed, self._texts = [], [], [], []
        self._packed_count = 0
        self._since = time.monotonic()
        if self.on_stored is None:
            stored = self.store.mark_done_many(self.scan_id, marks) if marks else 0
            for bulk in packed:  # never recorded before: the sweep skipped recorded pairs
                self.stored += self.store.mark_done_packed(self.scan_id, bulk.state, bulk.keys)
            if results:
                stored += self.store.add_results(self.scan_id, results, texts)
            self.stored += stored
            self.repeated += len(marks) + len(results) - stored
        else:
            self._flush_telling(marks, results, texts)
        if commit:
            self.store.flush()

    def _flush_telling(self, marks: list[tuple[str, int, State]],
                       results: list[ServiceResult], texts: list[str | None]) -> None:
        assert self.on_stored is not None
        from vncaudit.models import ServiceResult  # with the first batch, not at import

        new_marks = self.store.mark_done_each(self.scan_id, marks) if marks else []
        new_results = (self.store.add_results_each(self.scan_id, results, texts) if results
                       else [])
        for (host, port, state), new in zip(marks, new_marks, strict=True):
            self._count(ServiceResult(host, port, state), new)
        for result, new in zip(results, new_results, strict=True):
            self._count(result, new)

    def _count(self, result: ServiceResult, new: bool) -> None:
        if not new:
            self.repeated += 1
            return
        self.stored += 1
        assert self.on_stored is not None
        self.on_stored(result)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
