"""Grade one probe result: the product, and findings with severity, evidence, reasons and fixes.

Owns: `assess()` (called by the engine for every result) and `evaluate()`. The pieces:
  * `exposure`  — `Exposure` of an address and how it moves a severity;
  * `versions`  — the version-range matcher used for CVEs;
  * `knowledge` — `data/findings.toml` (what findings say, how security types are classified)
                  and `data/cves.toml` (the CVE knowledge base), read once and validated;
  * `rules`     — the table of rules (`RULES`, one small function per finding family).

Must not: do I/O (the two data files are read once), probe or contact anything, render text
for a terminal, or import package modules other than data types (`models`, `rfb` constants)
and `fingerprint.identify`. Remediation is referenced by id only; the fix guide
(`vncaudit.remedies`) turns ids into commands.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from functools import cache
from typing import Any, Final

from vncaudit.assess.exposure import Exposure, exposure_of, shift
from vncaudit.assess.knowledge import Cve, FindingSpec, Knowledge, cves, knowledge, parse_cves
from vncaudit.assess.rules import RULES, Context, Offer, Rule, _q, offers
from vncaudit.assess.versions import VersionRange, match_versions, parse_range, parse_version
from vncaudit.fingerprint import identify
from vncaudit.models import Finding, Product, ServiceResult
from vncaudit.payloads import ActiveChecks

log = logging.getLogger(__name__)

__all__ = [
    "RULES",
    "Context",
    "Cve",
    "Exposure",
    "FindingSpec",
    "Knowledge",
    "Offer",
    "Rule",
    "VersionRange",
    "assess",
    "cves",
    "evaluate",
    "exposure_of",
    "knowledge",
    "match_versions",
    "offers",
    "parse_cves",
    "parse_range",
    "parse_version",
    "shift",
]


# --------------------------------------------------------------------------------------------
# Entry point


def _unknown(reason: str) -> Product:
    return Product("unknown", None, 0.0, (reason,))


def identify_product(result: ServiceResult) -> Product:
    """`vncaudit.fingerprint.identify`, or "unknown" should it fail."""
    try:
        return identify(result)
    except Exception:  # a grading bug must not cost the scan its result
        log.exception("fingerprint failed on %s:%d", result.host, result.port)
        return _unknown("product identification failed")


def evaluate(
    result: ServiceResult, product: Product, exposure: Exposure | None = None
) -> tuple[Finding, ...]:
    """The findings for `result` given its product: every rule of `RULES`, worst first."""
    derived = exposure_of(result.host)
    chosen = Exposure(exposure) if exposure is not None else derived
    given = chosen is not derived
    extra = result.extra
    if _MARK_HEAD in result.host:
        return _evaluate(result, product, chosen, given, result.host)
    rfb, desktop, graded = result.rfb, None, product
    if rfb is not None and rfb.desktop_name is not None:
        desktop = rfb.desktop_name
        if _MARK_HEAD in desktop:
            return _evaluate(result, product, chosen, given, result.host)
        rfb = replace(rfb, desktop_name=DESKTOP_MARK)
        product = _product_with_desktop(product, desktop, DESKTOP_MARK)
    key = (rfb, result.state, result.port, result.error, product, chosen, given, extra)
    found = _MEMO.get(key, RULES, knowledge())
    if found is None:
        if _memo_unsafe((result.rfb, result.state, result.port, result.error, graded, extra)):
            return _evaluate(result, graded, chosen, given, result.host)
        template = replace(result, host=HOST_MARK, rfb=rfb)
        found = _evaluate(template, product, chosen, given, result.host)
        if desktop is not None and not _desktop_only_as_expected(found):
            return _evaluate(result, graded, chosen, given, result.host)
        _MEMO.put(key, found)
    return _filled(found, result.host, desktop)


def _evaluate(
    result: ServiceResult, product: Product, chosen: Exposure, given: bool, host: str
) -> tuple[Finding, ...]:
    kb = knowledge()
    ctx = Context(
        result=result,
        product=product,
        exposure=chosen,
        kb=kb,
        offers=tuple(offers(result.rfb, kb)) if result.rfb is not None else (),
        active=result.extra.active or ActiveChecks(),
        exposure_given=given,
    )
    findings: list[Finding] = []
    for name, rule in RULES:
        try:
            findings += rule(ctx)
        except Exception:  # one broken rule must not cost the scan its result
            log.exception("rule %s failed on %s:%d", name, host, result.port)
    findings.sort(key=lambda f: (-f.severity.rank, f.id))
    return tuple(findings)


# --------------------------------------------------------------------------------------------
# Memo: on a large scan most services differ from another one only by their address and
# desktop name. The rules read those only to name them in a text, so the findings of a set of
# facts are computed once with HOST_MARK / DESKTOP_MARK standing in for them (the desktop line
# of the product too), and the marks are replaced by each service's own. The key is
# everything else the rules read (`extra` included: its payloads are frozen and hashable).
# Never memoised: facts whose own strings contain a mark (so a
# replacement only ever hits a stand-in), and findings that show the desktop mark in any
# other form than the two known ones (a rule changed: computed directly instead).

HOST_MARK: Final = "{vncaudit:host}"
DESKTOP_MARK: Final = "{vncaudit:desktop}"
_MARK_HEAD: Final = "{vncaudit:"
# The only two ways a desktop name reaches a finding's text: JSON-quoted by a rule
# ("ServerInit read: desktop name \"...\"") and repr()'d in the product's evidence.
_DESKTOP_FORMS: Final = (_q(DESKTOP_MARK), repr(DESKTOP_MARK))
MEMO_SIZE: Final = 4096

MemoKey = tuple[Any, ...]


class _Memo:
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


_MEMO: Final = _Memo(MEMO_SIZE)


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
    quoted, shown = _q(desktop), repr(desktop)

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
            f = replace(
                f,
                title=f.title.replace(HOST_MARK, host),
                why=f.why.replace(HOST_MARK, host),
                evidence=tuple(e.replace(HOST_MARK, host) for e in f.evidence),
            )
        out.append(f)
    return tuple(out)


def assess(result: ServiceResult, exposure: Exposure | None = None) -> ServiceResult:
    """A copy of `result` with `product` and `findings` filled (worst first).

    `exposure` says where the service can be reached from; by default it follows from the
    address (`exposure_of(result.host)`). Pure: no I/O beyond reading the data files once.
    """
    product = identify_product(result)
    return replace(result, product=product, findings=evaluate(result, product, exposure))
