"""Grade one probe result: the product, and findings with severity, evidence, reasons and fixes.

Owns: `assess()` (called by the engine for every result) and `evaluate()`. The pieces:
  * `exposure`  — `Exposure` of an address and how it moves a severity;
  * `versions`  — the version-range matcher used for CVEs;
  * `knowledge` — `data/findings.toml` (what findings say, how security types are classified)
                  and `data/cves.toml` (the CVE knowledge base), read once and validated;
  * `rules`     — the table of rules (`RULES`, one small function per finding family);
  * `memo`      — the product and findings of a set of facts, worked out once for every
                  address and desktop name that shares them.

Must not: do I/O (the two data files are read once), probe or contact anything, render text
for a terminal, or import package modules other than data types (`models`, `rfb` constants)
and `fingerprint` (`identify`, and for the memo `desktop_slot` and `shipped`). Remediation is
referenced by id only; the fix guide (`vncaudit.remedies`) turns ids into commands.
"""

from __future__ import annotations

import logging

from vncaudit.assess.exposure import Exposure, exposure_of, shift
from vncaudit.assess.knowledge import Cve, FindingSpec, Knowledge, cves, knowledge, parse_cves
from vncaudit.assess.memo import copied, graded, memoised
from vncaudit.assess.rules import RULES, Context, Offer, Rule, offers
from vncaudit.assess.versions import VersionRange, match_versions, parse_range, parse_version
from vncaudit.fingerprint import desktop_slot, identify, shipped
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
    return memoised(result, product, chosen, chosen is not derived, evaluate_unmemoised, RULES)


def evaluate_unmemoised(
    result: ServiceResult, product: Product, chosen: Exposure, given: bool, host: str
) -> tuple[Finding, ...]:
    """Every rule of `RULES` on `result`, worst first, without the memo (what the memo
    stores; `host` names the service in a failed rule's log line)."""
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


def assess(result: ServiceResult, exposure: Exposure | None = None) -> ServiceResult:
    """A copy of `result` with `product` and `findings` filled (worst first).

    `exposure` says where the service can be reached from; by default it follows from the
    address (`exposure_of(result.host)`). Pure: no I/O beyond reading the data files once.
    """
    derived = exposure_of(result.host)
    chosen = Exposure(exposure) if exposure is not None else derived
    product, findings = graded(result, chosen, chosen is not derived, identify_product,
                               desktop_slot, evaluate_unmemoised, RULES, shipped())
    return copied(result, product=product, findings=findings)
