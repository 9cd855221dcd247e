"""The grading memo: the findings of a set of facts, computed once for every address and
desktop name that shares them.

On a large scan most services differ from another one only by their address and desktop name.
The rules read those only to name them in a text, so the findings are computed once with
`HOST_MARK` / `DESKTOP_MARK` standing in for them (the desktop line of the product too), and
the marks are replaced by each service's own when it is graded. The key is everything else the
rules read (`extra` included: its payloads are frozen and hashable). Never memoised: facts
whose own strings contain a mark (so a replacement only ever hits a stand-in), and findings
that show the desktop mark in any other form than the two known ones (a rule changed: they are
computed directly instead).

Owns: `memoised`, `MEMO` and the marks. Must not: hold rules or grading knowledge (the caller
passes the computation), or change what a finding says: a memoised answer is the computed one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from typing import Any, Final

from vncaudit import display
from vncaudit.assess.exposure import Exposure
from vncaudit.assess.knowledge import knowledge
from vncaudit.models import Finding, Product, ServiceResult

__all__ = ["DESKTOP_MARK", "HOST_MARK", "MEMO", "MEMO_SIZE", "Compute", "Memo", "memoised"]

Compute = Callable[[ServiceResult, Product, Exposure, bool, str], tuple[Finding, ...]]
"""The plain computation: (result, product, exposure, exposure given, address for logs)."""


def memoised(result: ServiceResult, product: Product, chosen: Exposure, given: bool,
             compute: Compute, rules: object) -> tuple[Finding, ...]:
    """`compute(result, product, chosen, given, host)`, from the memo when a service with the
    same facts was graded before (under the same `rules` and knowledge), its address and
    desktop name filled in."""
    if _MARK_HEAD in result.host:
        return compute(result, product, chosen, given, result.host)
    rfb, desktop, graded = result.rfb, None, product
    if rfb is not None and rfb.desktop_name is not None:
        desktop = rfb.desktop_name
        if _MARK_HEAD in desktop:
            return compute(result, product, chosen, given, result.host)
        rfb = replace(rfb, desktop_name=DESKTOP_MARK)
        product = _product_with_desktop(product, desktop, DESKTOP_MARK)
    extra = result.extra
    key = (rfb, result.state, result.port, result.error, product, chosen, given, extra)
    found = MEMO.get(key, rules, knowledge())
    if found is None:
        if _memo_unsafe((result.rfb, result.state, result.port, result.error, graded, extra)):
            return compute(result, graded, chosen, given, result.host)
        template = replace(result, host=HOST_MARK, rfb=rfb)
        found = compute(template, product, chosen, given, result.host)
        if desktop is not None and not _desktop_only_as_expected(found):
            return compute(result, graded, chosen, given, result.host)
        MEMO.put(key, found)
    return _filled(found, result.host, desktop)


HOST_MARK: Final = "{vncaudit:host}"
DESKTOP_MARK: Final = "{vncaudit:desktop}"
_MARK_HEAD: Final = "{vncaudit:"
# The only two ways a desktop name reaches a finding's text: JSON-quoted by a rule
# ("ServerInit read: desktop name \"...\"") and repr()'d in the product's evidence.
_DESKTOP_FORMS: Final = (display.quoted(DESKTOP_MARK), repr(DESKTOP_MARK))
MEMO_SIZE: Final = 4096

MemoKey = tuple[Any, ...]


class Memo:
    """Bounded least-recently-used findings by key (Finding is frozen: safe to share)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[MemoKey, tuple[Finding, ...]] = {}
        self.lock = threading.Lock()  # the web UI grades from worker threads
        self.made_by: tuple[object, object] | None = None

    def get(self, key: MemoKey, rules: object, kb: object) -> tuple[Finding, ...] | None:
        with self.lock:
            if self.made_by is None or self.made_by[0] is not rules or self.made_by[1] is not kb:
                # Other rules or other knowledge (tests swap them): earlier answers are void.
                self.data.clear()
                self.made_by = (rules, kb)
            value = self.data.pop(key, None)
            if value is not None:
                self.data[key] = value
            return value

    def put(self, key: MemoKey, value: tuple[Finding, ...]) -> None:
        with self.lock:
            self.data[key] = value
            if len(self.data) > self.size:
                del self.data[next(iter(self.data))]


MEMO: Final = Memo(MEMO_SIZE)
"""The one memo of this process (the web service grades from several threads: it locks)."""


@cache
def _knowledge_has_mark() -> bool:
    return HOST_MARK in repr(knowledge())


def _memo_unsafe(inputs: tuple[Any, ...]) -> bool:
    # The service's own facts (before any mark was put in), as the rules would read them:
    # repr() keeps printable ASCII as it is, so a mark in any of their strings shows.
    return _knowledge_has_mark() or _MARK_HEAD in repr(inputs)


def _product_with_desktop(product: Product, old: str | None, new: str | None) -> Product:
    """`product` with its "desktop name ..." line (from `fingerprint`) naming `new`."""
    line = f"desktop name {old!r}"
    if line not in product.evidence:
        return product
    fresh = f"desktop name {new!r}"
    return replace(product, evidence=tuple(fresh if e == line else e for e in product.evidence))


def _desktop_only_as_expected(findings: tuple[Finding, ...]) -> bool:
    for f in findings:
        for text in (f.title, f.why, *f.evidence):
            rest = text
            for form in _DESKTOP_FORMS:
                rest = rest.replace(form, "")
            if DESKTOP_MARK in rest:
                return False
    return True


def _filled(findings: tuple[Finding, ...], host: str, desktop: str | None) -> tuple[Finding, ...]:
    """The memo's findings with the marks replaced: the address first, then the desktop name
    (so a desktop name that looks like a mark is never replaced itself)."""
    out = _with_host(findings, host)
    if desktop is None:
        return out
    quoted, shown = display.quoted(desktop), repr(desktop)

    def fill(text: str) -> str:
        if DESKTOP_MARK not in text:
            return text
        return text.replace(_DESKTOP_FORMS[0], quoted).replace(_DESKTOP_FORMS[1], shown)

    return tuple(
        f if not any(DESKTOP_MARK in t for t in (f.title, f.why, *f.evidence))
        else replace(f, title=fill(f.title), why=fill(f.why),
                     evidence=tuple(fill(e) for e in f.evidence))
        for f in out
    )


def _with_host(findings: tuple[Finding, ...], host: str) -> tuple[Finding, ...]:
    out: list[Finding] = []
    for f in findings:
        if HOST_MARK in f.title or HOST_MARK in f.why or any(HOST_MARK in e for e in f.evidence):
            # Built directly: dataclasses.replace costs several times this, once per finding
            # of every service graded.
            f = Finding(f.id, f.severity, f.title.replace(HOST_MARK, host),
                        tuple(e.replace(HOST_MARK, host) for e in f.evidence),
                        f.why.replace(HOST_MARK, host), f.remediation)
        out.append(f)
    return tuple(out)
