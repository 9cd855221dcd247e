"""What assess knows, read once from data/findings.toml and data/cves.toml.

Owns: the finding specs (severity, texts, remediation ids, exposure sensitivity), the
classification of security types and Tight capabilities, the standard VNC ports, the CVE
entries and their policy, and the validation of both files. Must not: decide when a finding
applies (that is `rules`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Final

from vncaudit.assess.versions import parse_range
from vncaudit.models import Severity


@dataclass(frozen=True)
class FindingSpec:
    id: str
    severity: Severity
    title: str
    why: str
    remediation: tuple[str, ...]
    exposure_sensitive: bool
    texts: dict[str, str] = field(default_factory=dict)  # variants: title_desktop, why_login …


@dataclass(frozen=True)
class Cve:
    id: str
    title: str
    products: tuple[str, ...]  # lower-case
    also_in: tuple[str, ...]
    affected: tuple[str, ...]
    fixed: str
    severity: Severity
    side: str
    pre_auth: bool
    detectable: str
    check: str
    references: tuple[str, ...]
    verified: bool = False  # the affected range is backed by a source
    note: str = ""


_SIDES: Final = ("server", "viewer", "local")
_CHECKS: Final = ("", "unoffered-none")


@dataclass(frozen=True)
class Knowledge:
    specs: dict[str, FindingSpec]
    classes: dict[int, str]  # security type / VeNCrypt sub-type → class
    tight_classes: dict[int, str]  # Tight auth capability code → class
    standard_ports: tuple[tuple[int, int], ...]
    exposure_text: dict[str, str]
    cves: tuple[Cve, ...]
    possible_severity: Severity
    min_confidence: float
    # Remediations that only make sense for a service reachable from a network (bind it to
    # loopback, firewall it, tunnel to it): left out for one reachable only from this host.
    network_only_fixes: frozenset[str] = frozenset()
    standard_web_ports: tuple[tuple[int, int], ...] = ()
    # SecurityResult reasons that show an approval prompt: (pattern, what it proves).
    approval_reasons: tuple[tuple[re.Pattern[str], str], ...] = ()


def _read(name: str) -> dict[str, Any]:
    text = resources.files("vncaudit").joinpath(f"data/{name}").read_text("utf-8")
    return tomllib.loads(text)


def _parse_cve(d: dict[str, Any]) -> Cve:
    cve = Cve(
        id=str(d["id"]),
        title=str(d["title"]),
        products=tuple(str(p).lower() for p in d.get("products", ())),
        also_in=tuple(str(p).lower() for p in d.get("also_in", ())),
        affected=tuple(str(a) for a in d.get("affected", ())),
        fixed=str(d.get("fixed", "")),
        severity=Severity(d["severity"]),
        side=str(d["side"]),
        pre_auth=bool(d["pre_auth"]),
        detectable=str(d["detectable"]),
        check=str(d.get("check", "")),
        references=tuple(str(r) for r in d.get("references", ())),
        verified=bool(d.get("verified", False)),
        note=str(d.get("note", "")),
    )
    if not re.fullmatch(r"CVE-\d{4}-\d{4,}", cve.id):
        raise ValueError(f"bad CVE id {cve.id!r}")
    if cve.side not in _SIDES:
        raise ValueError(f"{cve.id}: side must be one of {_SIDES}, not {cve.side!r}")
    if cve.check not in _CHECKS:
        raise ValueError(f"{cve.id}: unknown check {cve.check!r}")
    if not cve.products:
        raise ValueError(f"{cve.id}: no product")
    for a in cve.affected:
        try:
            parse_range(a)
        except ValueError as exc:
            raise ValueError(f"{cve.id}: {exc}") from None
    return cve


def parse_cves(doc: dict[str, Any]) -> tuple[tuple[Cve, ...], Severity, float]:
    """The CVE entries and policy of a parsed cves.toml; ValueError names a bad entry."""
    entries = tuple(_parse_cve(d) for d in doc.get("cve", ()))
    ids = [c.id for c in entries]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"duplicate CVE entries: {dupes}")
    policy = doc.get("policy", {})
    return (entries, Severity(policy.get("possible_severity", "info")),
            float(policy.get("min_confidence", 0.6)))


@lru_cache(maxsize=1)
def knowledge() -> Knowledge:
    doc = _read("findings.toml")
    specs: dict[str, FindingSpec] = {}
    for fid, d in doc["finding"].items():
        texts = {k: str(v) for k, v in d.items() if k.startswith(("title_", "why_"))}
        specs[fid] = FindingSpec(fid, Severity(d["severity"]), str(d["title"]), str(d["why"]),
                                 tuple(d.get("remediation", ())),
                                 bool(d.get("exposure_sensitive", False)), texts)
    classes_doc = dict(doc["classes"])
    tight_doc = classes_doc.pop("tight")
    classes = {n: cls for cls, numbers in classes_doc.items() for n in numbers}
    tight = {n: cls for cls, numbers in tight_doc.items() for n in numbers}
    ports = tuple((int(a), int(b)) for a, b in doc["exposure"]["standard_ports"])
    texts = {k: str(v) for k, v in doc["exposure"].items() if isinstance(v, str)}
    entries, possible, min_conf = parse_cves(_read("cves.toml"))
    network_only = frozenset(str(r) for r in doc["exposure"].get("network_only_fixes", ()))
    web_ports = tuple((int(a), int(b)) for a, b in doc["exposure"].get("standard_web_ports", ()))
    approval = tuple((re.compile(str(d["pattern"]), re.IGNORECASE), str(d["note"]))
                     for d in doc.get("approval_reason", ()))
    return Knowledge(specs, classes, tight, ports, texts, entries, possible, min_conf,
                     network_only, web_ports, approval)


def cves() -> tuple[Cve, ...]:
    """Every entry of the CVE knowledge base."""
    return knowledge().cves
