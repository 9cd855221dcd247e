"""Plain data shared by every layer: targets, observed RFB facts, results, findings.

Owns: the frozen dataclasses and enums that flow through the pipeline, and their conversion to
and from the result schema v1 (docs/design.md §7). The payloads of `ServiceResult.extra` are
`payloads`'; `Target`, `State`, `SILENT_STATES`, `Severity` and `SCHEMA_VERSION` are defined in
`basics` (what a scan needs before its first packet) and re-exported here. Must not: do I/O,
import anything of the package but `basics` and `payloads`, or hold protocol logic (that is
`rfb`) or grading knowledge (that is `assess`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# The plain types the sweep needs are `basics`' (the same objects, re-exported here).
from vncaudit.basics import SCHEMA_VERSION as SCHEMA_VERSION
from vncaudit.basics import SILENT_STATES as SILENT_STATES
from vncaudit.basics import Severity as Severity
from vncaudit.basics import State as State
from vncaudit.basics import Target as Target
from vncaudit.payloads import Extras


@dataclass(frozen=True)
class NamedType:
    """A security type or VeNCrypt sub-type: its number and its registered name."""

    id: int
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True)
class Capability:
    """A Tight capability (RFB §7.2.3): code, 4-byte vendor, 8-byte signature."""

    code: int
    vendor: str
    signature: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "vendor": self.vendor, "signature": self.signature}


@dataclass(frozen=True)
class VeNCryptInfo:
    version: str  # "0.2" as the server announced it
    subtypes: tuple[NamedType, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "subtypes": [s.to_dict() for s in self.subtypes]}


@dataclass(frozen=True)
class TightInfo:
    tunnels: tuple[Capability, ...] = ()
    auth: tuple[Capability, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "tunnels": [c.to_dict() for c in self.tunnels],
            "auth": [c.to_dict() for c in self.auth],
        }


@dataclass(frozen=True)
class Framebuffer:
    width: int
    height: int
    depth: int
    bits_per_pixel: int = 0
    big_endian: bool = False
    true_colour: bool = True
    true_colour_flag: int | None = None  # the raw byte (1, or 0xff from LibVNCServer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "depth": self.depth,
            "bits_per_pixel": self.bits_per_pixel,
            "big_endian": self.big_endian,
            "true_colour": self.true_colour,
            "true_colour_flag": self.true_colour_flag,
        }


@dataclass(frozen=True)
class RfbFacts:
    """Everything the handshake told us, in schema-v1 shape."""

    banner: str
    server_version: str | None = None  # "3.8", "3.889", "5.0"; None when unparseable
    client_version: str | None = None  # what we answered, or None if we did not answer
    security_types: tuple[NamedType, ...] = ()
    security_types_server_chosen: bool = False  # RFB 3.3: the server picked one type
    vencrypt: VeNCryptInfo | None = None
    tight: TightInfo | None = None
    tls_inner_types: tuple[NamedType, ...] | None = None  # type 18: list read inside TLS
    failure_reason: str | None = None
    auth_required: bool | None = None
    security_result: str | None = None  # "ok" | "failed"
    desktop_name: str | None = None
    framebuffer: Framebuffer | None = None
    selected_type: int | None = None  # the security type we chose, if any
    notes: tuple[str, ...] = ()  # sub-negotiations that failed, e.g. "anonymous TLS failed"
    # After a ServerInit that no SecurityResult "ok" vouched for (RFB 3.3/3.7 None): whether the
    # one FramebufferUpdateRequest for a pixel was answered (None: not asked), and the seconds
    # until the answer or, unanswered, that the probe waited.
    update_answered: bool | None = None
    update_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "banner": self.banner,
            "server_version": self.server_version,
            "client_version": self.client_version,
            "security_types": [t.to_dict() for t in self.security_types],
            "security_types_server_chosen": self.security_types_server_chosen,
            "vencrypt": self.vencrypt.to_dict() if self.vencrypt else None,
            "tight": self.tight.to_dict() if self.tight else None,
            "tls_inner_types": (
                [t.to_dict() for t in self.tls_inner_types]
                if self.tls_inner_types is not None
                else None
            ),
            "failure_reason": self.failure_reason,
            "auth_required": self.auth_required,
            "security_result": self.security_result,
            "desktop_name": self.desktop_name,
            "framebuffer": self.framebuffer.to_dict() if self.framebuffer else None,
            "selected_type": self.selected_type,
            "notes": list(self.notes),
            "update_answered": self.update_answered,
            "update_seconds": self.update_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RfbFacts:
        def types(items: list[dict[str, Any]] | None) -> tuple[NamedType, ...]:
            return tuple(NamedType(int(i["id"]), str(i["name"])) for i in items or [])

        def caps(items: list[dict[str, Any]] | None) -> tuple[Capability, ...]:
            return tuple(
                Capability(int(i["code"]), str(i["vendor"]), str(i["signature"]))
                for i in items or []
            )

        ven = d.get("vencrypt")
        tight = d.get("tight")
        fb = d.get("framebuffer")
        inner = d.get("tls_inner_types")
        return cls(
            banner=d.get("banner", ""),
            server_version=d.get("server_version"),
            client_version=d.get("client_version"),
            security_types=types(d.get("security_types")),
            security_types_server_chosen=bool(d.get("security_types_server_chosen", False)),
            vencrypt=VeNCryptInfo(ven["version"], types(ven.get("subtypes"))) if ven else None,
            tight=TightInfo(caps(tight.get("tunnels")), caps(tight.get("auth"))) if tight else None,
            tls_inner_types=types(inner) if inner is not None else None,
            failure_reason=d.get("failure_reason"),
            auth_required=d.get("auth_required"),
            security_result=d.get("security_result"),
            desktop_name=d.get("desktop_name"),
            framebuffer=Framebuffer(**fb) if fb else None,
            selected_type=d.get("selected_type"),
            notes=tuple(d.get("notes") or ()),
            update_answered=d.get("update_answered"),
            update_seconds=d.get("update_seconds"),
        )


@dataclass(frozen=True)
class Product:
    name: str  # "unknown" when the facts do not decide
    version: str | None = None
    confidence: float = 0.0
    evidence: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "confidence": self.confidence,
            "evidence": list(self.evidence),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Product:
        return cls(d["name"], d.get("version"), float(d.get("confidence", 0.0)),
                   tuple(d.get("evidence") or ()))


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    title: str
    evidence: tuple[str, ...] = ()
    why: str = ""
    remediation: tuple[str, ...] = ()  # remediation ids, rendered by the fix guide

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity.value,
            "title": self.title,
            "evidence": list(self.evidence),
            "why": self.why,
            "remediation": list(self.remediation),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(d["id"], Severity(d["severity"]), d["title"], tuple(d.get("evidence") or ()),
                   d.get("why", ""), tuple(d.get("remediation") or ()))


@dataclass(frozen=True)
class ServiceResult:
    """The outcome for one (host, port): always produced, whatever happened."""

    host: str
    port: int
    state: State
    rfb: RfbFacts | None = None
    product: Product | None = None
    findings: tuple[Finding, ...] = ()
    transcript_hex: str = ""  # bounded prefix of what the server sent, for evidence
    error: str | None = None
    hostname: str | None = None
    elapsed: float = 0.0  # seconds from connect attempt to verdict
    extra: Extras = Extras()  # what was learnt beyond the handshake (`vncaudit.payloads`)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "state": self.state.value,
            "rfb": self.rfb.to_dict() if self.rfb else None,
            "product": self.product.to_dict() if self.product else None,
            "findings": [f.to_dict() for f in self.findings],
            "evidence": {"transcript_hex": self.transcript_hex},
            "error": self.error,
            "hostname": self.hostname,
            "elapsed": round(self.elapsed, 4),
        }
        if self.extra:
            d["extra"] = self.extra.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServiceResult:
        rfb = d.get("rfb")
        prod = d.get("product")
        return cls(
            host=d["host"],
            port=int(d["port"]),
            state=State(d["state"]),
            rfb=RfbFacts.from_dict(rfb) if rfb else None,
            product=Product.from_dict(prod) if prod else None,
            findings=tuple(Finding.from_dict(f) for f in d.get("findings") or []),
            transcript_hex=(d.get("evidence") or {}).get("transcript_hex", ""),
            error=d.get("error"),
            hostname=d.get("hostname"),
            elapsed=float(d.get("elapsed") or 0.0),
            extra=Extras.from_dict(d.get("extra") or {}),
        )

    def with_extra(self, **payloads: Any) -> ServiceResult:
        """A copy with the named payloads of `extra` set (`Extras` field names)."""
        return replace(self, extra=replace(self.extra, **payloads))

    @property
    def worst_severity(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=lambda s: s.rank)
