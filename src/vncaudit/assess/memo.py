"""The grading memo: the findings of a set of facts, computed once for every address and
desktop name that shares them.

On a large scan most services differ from another one only by their address and desktop name.
The rules read those only to name them in a text, so the findings are computed once with
`HOST_MARK` / `DESKTOP_MARK` standing in for them (the desktop line of the product too), and
the marks are replaced by each service's own when it is graded. The key is everything else the
rules read (`extra` included: its payloads are frozen and hashable). Never memoised: facts
whose own strings contain a mark (so a replacement only ever hits a stand-in), and findings
that show the desktop mark in any other form than the two known ones (a rule changed: they are
computed directly instead). In front of it, `graded` keeps the product with the findings
under the same facts (the desktop name counted as the product memo counts it), so a service
graded like one before is not identified again.

Owns: `memoised`, `graded`, `MEMO`, `GRADED` and the marks, and `copied` (the copies grading
makes of every service). Must not: hold rules, grading or product knowledge (the caller
passes the computations), or change what a finding or a product says: a memoised answer is
the computed one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import is_dataclass, replace
from functools import cache
from typing import Any, Final, Generic, TypeVar

from vncaudit import display
from vncaudit.assess.exposure import Exposure
from vncaudit.assess.knowledge import knowledge
from vncaudit.models import Finding, Product, ServiceResult

__all__ = ["DESKTOP_MARK", "GRADED", "HOST_MARK", "MEMO", "MEMO_SIZE", "Compute", "DesktopSlot",
           "Identify", "Memo", "Plan", "copied", "graded", "memoised"]

Compute = Callable[[ServiceResult, Product, Exposure, bool, str], tuple[Finding, ...]]
"""The plain computation: (result, product, exposure, exposure given, address for logs)."""


def memoised(result: ServiceResult, product: Product, chosen: Exposure, given: bool,
             compute: Compute, rules: object) -> tuple[Finding, ...]:
    """`compute(result, product, chosen, given, host)`, from the memo when a service with the
    same facts was graded before (under the same `rules` and knowledge), its address and
    desktop name filled in."""
    return _memoised(result, product, chosen, given, compute, rules)[0]


def _memoised(result: ServiceResult, product: Product, chosen: Exposure, given: bool,
              compute: Compute, rules: object) -> tuple[tuple[Finding, ...], Plan | None]:
    """`memoised`, and the memo's plan it filled in (None: computed directly, not memoised)."""
    if _MARK_HEAD in result.host:
        return compute(result, product, chosen, given, result.host), None
    rfb, desktop, graded = result.rfb, None, product
    if rfb is not None and rfb.desktop_name is not None:
        desktop = rfb.desktop_name
        if _MARK_HEAD in desktop:
            return compute(result, product, chosen, given, result.host), None
        rfb = copied(rfb, desktop_name=DESKTOP_MARK)
        product = _product_with_desktop(product, desktop, DESKTOP_MARK)
    extra = result.extra
    key = (rfb, result.state, result.port, result.error, product, chosen, given, extra)
    plan = MEMO.get(key, rules, knowledge())
    if plan is None:
        if _memo_unsafe((result.rfb, result.state, result.port, result.error, graded, extra)):
            return compute(result, graded, chosen, given, result.host), None
        template = replace(result, host=HOST_MARK, rfb=rfb)
        found = compute(template, product, chosen, given, result.host)
        if desktop is not None and not _desktop_only_as_expected(found):
            return compute(result, graded, chosen, given, result.host), None
        plan = _plan(found)
        MEMO.put(key, plan)
    return _filled(plan, result.host, desktop), plan


Identify = Callable[[ServiceResult], Product]
DesktopSlot = Callable[[str], Hashable]


def graded(result: ServiceResult, chosen: Exposure, given: bool, identify: Identify,
           desktop_slot: DesktopSlot, compute: Compute, rules: object, signatures: object
           ) -> tuple[Product, tuple[Finding, ...]]:
    """(`identify(result)`, `memoised(...)` of that product): from `GRADED` when a service
    with the same facts was graded before (the same `rules`, knowledge and product
    `signatures`), without identifying the product again; its address and desktop name
    filled in. The desktop name counts for the product only through `desktop_slot` (the
    product memo's own rule) and shows in it only as `fingerprint`'s "desktop name '...'"
    line, replaced like the findings' stand-in."""
    rfb, desktop, slot = result.rfb, None, None
    if rfb is not None and rfb.desktop_name is not None:
        desktop = rfb.desktop_name
        if _MARK_HEAD in desktop:
            product = identify(result)  # never memoised (see the module docstring)
            return product, memoised(result, product, chosen, given, compute, rules)
        rfb = copied(rfb, desktop_name=DESKTOP_MARK)
        slot = desktop_slot(desktop)
    if _MARK_HEAD in result.host:
        product = identify(result)
        return product, memoised(result, product, chosen, given, compute, rules)
    key = (rfb, result.state, result.port, result.error, chosen, given, result.extra, slot)
    hit = GRADED.get(key, rules, knowledge(), signatures)
    if hit is not None:
        shown, kept = hit
        product = shown if desktop is None else \
            _product_with_desktop(shown, DESKTOP_MARK, desktop)
        return product, _filled(kept, result.host, desktop)
    product = identify(result)
    findings, plan = _memoised(result, product, chosen, given, compute, rules)
    if plan is not None:
        marked = product if desktop is None else \
            _product_with_desktop(product, desktop, DESKTOP_MARK)
        # Only a product that shows the desktop name nowhere but in the stand-in's line: it is
        # then the same for every name of this slot.
        if desktop is None or (
                not any(desktop in text for text in (marked.name, marked.version or "",
                                                     *marked.evidence))
                and _product_with_desktop(marked, DESKTOP_MARK, desktop) == product):
            GRADED.put(key, (marked, plan))
    return product, findings


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

V = TypeVar("V")
MemoKey = tuple[Any, ...]
Plan = tuple[tuple[Finding, bool, bool], ...]
"""A memo entry: each finding with whether it names the address, and the desktop name."""


class Memo(Generic[V]):
    """Bounded least-recently-used values by key (frozen values: safe to share)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[MemoKey, V] = {}
        self.lock = threading.Lock()  # the web UI grades from worker threads
        self.made_by: tuple[object, ...] | None = None

    def get(self, key: MemoKey, *made_by: object) -> V | None:
        """The value of `key`, if it was put under the same `made_by` objects (the rules, the
        knowledge, ...: compared by identity)."""
        with self.lock:
            seen = self.made_by
            if seen is None or len(seen) != len(made_by) or any(
                    a is not b for a, b in zip(seen, made_by, strict=True)):
                # Other rules or other knowledge (tests swap them): earlier answers are void.
                self.data.clear()
                self.made_by = made_by
            value = self.data.pop(key, None)
            if value is not None:
                self.data[key] = value
            return value

    def put(self, key: MemoKey, value: V) -> None:
        with self.lock:
            self.data[key] = value
            if len(self.data) > self.size:
                del self.data[next(iter(self.data))]


MEMO: Final = Memo[Plan](MEMO_SIZE)
"""The findings memo of this process (the web service grades from several threads: it locks)."""

GRADED: Final = Memo[tuple[Product, Plan]](MEMO_SIZE)
"""Product and findings by the facts of a service, the product's desktop line a stand-in:
a service graded like one before skips the product memo's look-up (`graded`)."""


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
