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

Owns: `memoised`, `MEMO` and the marks, and `copied` (the copies grading makes of every
service). Must not: hold rules or grading knowledge (the caller
passes the computation), or change what a finding says: a memoised answer is the computed one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import is_dataclass, replace
from functools import cache
from typing import Any, Final, TypeVar

from vncaudit import display
from vncaudit.assess.exposure import Exposure
from vncaudit.assess.knowledge import knowledge
from vncaudit.models import Finding, Product, ServiceResult

__all__ = ["DESKTOP_MARK", "HOST_MARK", "MEMO", "MEMO_SIZE", "Compute", "Memo", "Plan",
           "copied", "memoised"]

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
        rfb = copied(rfb, desktop_name=DESKTOP_MARK)
        product = _product_with_desktop(product, desktop, DESKTOP_MARK)
    extra = result.extra
    key = (rfb, result.state, result.port, result.error, product, chosen, given, extra)
    plan = MEMO.get(key, rules, knowledge())
    if plan is None:
        if _memo_unsafe((result.rfb, result.state, result.port, result.error, graded, extra)):
            return compute(result, graded, chosen, given, result.host)
        template = replace(result, host=HOST_MARK, rfb=rfb)
        found = compute(template, product, chosen, given, result.host)
        if desktop is not None and not _desktop_only_as_expected(found):
            return compute(result, graded, chosen, given, result.host)
        plan = _plan(found)
        MEMO.put(key, plan)
    return _filled(plan, result.host, desktop)


T = TypeVar("T")


def copied(obj: T, **changes: Any) -> T:
    """`dataclasses.replace(obj, **changes)` for the frozen result types (no `__slots__`, no
    `__post_init__`: checked, else `replace` itself): the fields are copied as they are
    instead of going through `__init__` again, several times faster. Grading copies every
    service and its facts this way."""
    kind = type(obj)
    if kind not in _PLAIN_COPY:
        _PLAIN_COPY[kind] = (is_dataclass(kind) and not hasattr(kind, "__slots__")
                             and not hasattr(kind, "__post_init__"))
    if not _PLAIN_COPY[kind] or not changes.keys() <= obj.__dict__.keys():
        return replace(obj, **changes)  # type: ignore[type-var]
    new = object.__new__(kind)
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


_PLAIN_COPY: dict[type, bool] = {}

HOST_MARK: Final = "{vncaudit:host}"
DESKTOP_MARK: Final = "{vncaudit:desktop}"
_MARK_HEAD: Final = "{vncaudit:"
# The only two ways a desktop name reaches a finding's text: JSON-quoted by a rule
# ("ServerInit read: desktop name \"...\"") and repr()'d in the product's evidence.
_DESKTOP_FORMS: Final = (display.quoted(DESKTOP_MARK), repr(DESKTOP_MARK))
MEMO_SIZE: Final = 4096

MemoKey = tuple[Any, ...]
Plan = tuple[tuple[Finding, bool, bool], ...]
"""A memo entry: each finding with whether it names the address, and the desktop name."""


class Memo:
    """Bounded least-recently-used findings by key (Finding is frozen: safe to share)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[MemoKey, Plan] = {}
        self.lock = threading.Lock()  # the web UI grades from worker threads
        self.made_by: tuple[object, object] | None = None

    def get(self, key: MemoKey, rules: object, kb: object) -> Plan | None:
        with self.lock:
            if self.made_by is None or self.made_by[0] is not rules or self.made_by[1] is not kb:
                # Other rules or other knowledge (tests swap them): earlier answers are void.
                self.data.clear()
                self.made_by = (rules, kb)
            value = self.data.pop(key, None)
            if value is not None:
                self.data[key] = value
            return value

    def put(self, key: MemoKey, value: Plan) -> None:
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


def _plan(findings: tuple[Finding, ...]) -> Plan:
    """Each memoised finding with whether it names the address, and the desktop (the marks
    never overlap, and an address holds no mark: filling one cannot add or remove the
    other), worked out once per memo entry instead of once per service."""
    def names(f: Finding, mark: str) -> bool:
        return mark in f.title or mark in f.why or any(mark in e for e in f.evidence)

    return tuple((f, names(f, HOST_MARK), names(f, DESKTOP_MARK)) for f in findings)


def _filled(plan: Plan, host: str, desktop: str | None) -> tuple[Finding, ...]:
    """The memo's findings with the marks replaced: the address first, then the desktop name
    (so a desktop name that looks like a mark is never replaced itself). A finding that names
    neither is shared as it is (Finding is frozen)."""
    forms: tuple[tuple[str, str], ...] = ()
    if desktop is not None:
        forms = ((_DESKTOP_FORMS[0], display.quoted(desktop)),
                 (_DESKTOP_FORMS[1], repr(desktop)))

    def fill(text: str, with_host: bool, with_desktop: bool) -> str:
        if with_host:
            text = text.replace(HOST_MARK, host)
        if with_desktop and DESKTOP_MARK in text:
            for form, value in forms:
                text = text.replace(form, value)
        return text

    out: list[Finding] = []
    for f, with_host, with_desktop in plan:
        with_desktop = with_desktop and desktop is not None
        if with_host or with_desktop:
            # Built directly: dataclasses.replace costs several times this, once per finding
            # of every service graded.
            f = Finding(f.id, f.severity, fill(f.title, with_host, with_desktop),
                        tuple(fill(e, with_host, with_desktop) for e in f.evidence),
                        fill(f.why, with_host, with_desktop), f.remediation)
        out.append(f)
    return tuple(out)
