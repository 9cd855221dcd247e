"""The rules: one small function per finding family, and the table `RULES` that lists them.

Owns: classifying every offered authentication path (`offers`), the `Context` a rule reads
(result, product, exposure, knowledge, active-check outcomes), building a finding from its spec
(moved by exposure where the spec says so), and the rules themselves. Must not: do I/O or
mutate the result; texts and severities come from the knowledge files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from vncaudit import rfb
from vncaudit.assess.exposure import EXPOSURE_STEP, Exposure, shift
from vncaudit.assess.knowledge import Cve, Knowledge, knowledge
from vncaudit.assess.versions import match_versions
from vncaudit.desktop import KIND_WORDS
from vncaudit.display import quoted
from vncaudit.models import Finding, Product, RfbFacts, ServiceResult, Severity, State
from vncaudit.payloads import ActiveChecks

# --------------------------------------------------------------------------------------------
# What the server offers: every authentication path, classified


@dataclass(frozen=True)
class Offer:
    """One way into the server, e.g. VeNCrypt → TLSVnc; `cls` from data/findings.toml."""

    cls: str  # a class of [classes], or "unread" / "tls-unread" / "other"
    label: str  # how the evidence names it
    selected: bool = False  # the probe took this path (SecurityResult/ServerInit are its)
    vncauth_inside: bool = False  # VNC password inside TLS


NO_AUTH: Final = frozenset({"none"})
TLS_NO_AUTH: Final = frozenset({"tls-none", "x509-none"})
ENCRYPTED_WITH_AUTH: Final = frozenset({"strong", "tls-auth", "x509-auth", "sasl-tls"})
WEAK: Final = frozenset({"none", "vncauth", "plaintext", "weak", "unencrypted-session"})
ANONYMOUS_TLS: Final = frozenset({"tls-auth", "tls-unread"})
UNREAD: Final = frozenset({"unread", "tls-unread"})
_VNCAUTH_IN_TLS: Final = frozenset({258, 261})


def _q(text: str) -> str:
    # Server strings (reasons, desktop names) are quoted escaped and bounded: an evidence line
    # is read by a person, and a reason may be 64 KiB of binary.
    return quoted(text)


def offers(facts: RfbFacts, kb: Knowledge | None = None) -> list[Offer]:
    """Every authentication path the facts show, with what it protects."""
    kb = kb or knowledge()
    out: list[Offer] = []
    sel = facts.selected_type
    chosen = " (chosen by the server, RFB 3.3)" if facts.security_types_server_chosen else ""
    for t in facts.security_types:
        if t.id == 16:
            out += _tight_offers(facts, kb, selected=sel == 16)
        elif t.id == 19:
            if facts.vencrypt is None:
                out.append(Offer("unread", "type 19 \"VeNCrypt\": sub-type list not read"))
                continue
            for s in facts.vencrypt.subtypes:
                out.append(Offer(kb.classes.get(s.id, "other"),
                                 "VeNCrypt sub-type " + f"{s.id} {_q(s.name)}",
                                 selected=sel == s.id, vncauth_inside=s.id in _VNCAUTH_IN_TLS))
        elif t.id == 18:
            if facts.tls_inner_types is None:
                out.append(Offer("tls-unread", "type 18 \"TLS\" (anonymous TLS): inner list "
                                 "not read"))
                continue
            main = {m.id for m in facts.security_types}
            for inner in facts.tls_inner_types:
                cls = kb.classes.get(inner.id, "other")
                tls_cls = {"none": "tls-none", "strong": "strong"}.get(cls, "tls-auth")
                # Inside TLS the probe records the inner type it chose as selected_type.
                picked = sel == 18 or (sel == inner.id and sel not in main)
                out.append(Offer(tls_cls, f"type 18 \"TLS\" (anonymous TLS) → inner type "
                                 f"{inner.id} {_q(inner.name)}", selected=picked,
                                 vncauth_inside=inner.id == 2))
        elif t.id == 17:
            out.append(Offer("unread", "type 17 \"Ultra\": UltraVNC's second list not read"))
        else:
            out.append(Offer(kb.classes.get(t.id, "other"), f"type {t.id} {_q(t.name)}{chosen}",
                             selected=sel == t.id or bool(chosen)))
    return out


def _tight_offers(facts: RfbFacts, kb: Knowledge, selected: bool) -> list[Offer]:
    if facts.tight is None:
        return [Offer("unread", "type 16 \"Tight\": capability list not read")]
    if not facts.tight.auth:
        # Zero auth capabilities: the protocol goes on as None (docs/rfb.md §4.2).
        return [Offer("none", "type 16 \"Tight\" with zero authentication capabilities",
                      selected=selected)]
    return [
        Offer(kb.tight_classes.get(c.code, "other"),
              f"type 16 \"Tight\" auth capability {c.code} {_q(c.vendor + ' ' + c.signature)}",
              selected=selected and c.code == 1)
        for c in facts.tight.auth
    ]


# --------------------------------------------------------------------------------------------
# The context every rule reads


_SERVICE_STATES: Final = frozenset({State.VNC, State.BLACKLISTED})


@dataclass(frozen=True)
class Context:
    result: ServiceResult
    product: Product
    exposure: Exposure
    kb: Knowledge
    offers: tuple[Offer, ...]
    active: ActiveChecks  # the opt-in checks' payloads (all None when none ran)
    exposure_given: bool = False  # stated by the caller, not read from the address

    def exposure_reason(self) -> str:
        key = self.exposure.value.replace("-", "_")
        return self.kb.exposure_text[("given_" if self.exposure_given else "") + key]

    @property
    def facts(self) -> RfbFacts | None:
        return self.result.rfb

    @property
    def is_vnc(self) -> bool:
        """Auth rules apply: an RFB server whose security handshake was read."""
        return self.result.state is State.VNC and self.result.rfb is not None

    def of(self, classes: Iterable[str]) -> list[Offer]:
        wanted = frozenset(classes)
        return [o for o in self.offers if o.cls in wanted]

    def finding(
        self,
        fid: str,
        evidence: Sequence[str],
        *,
        spec_id: str | None = None,
        title: str | None = None,
        why: str | None = None,
        severity: Severity | None = None,
        remediation: Sequence[str] | None = None,
    ) -> Finding:
        """Build a finding from its spec; exposure-sensitive ones are moved and say why."""
        spec = self.kb.specs[spec_id or fid]
        sev = severity or spec.severity
        ev = list(evidence)
        if spec.exposure_sensitive:
            step = EXPOSURE_STEP[self.exposure]
            moved = shift(sev, step)
            reason = self.exposure_reason()
            line = f"exposure: {self.exposure.value} ({self.result.host}): {reason}"
            if moved is not sev:
                verb = "raised" if step > 0 else "lowered"
                line += f"; severity {verb} from {sev.value} to {moved.value}"
            ev.append(line)
            sev = moved
        fixes = tuple(remediation if remediation is not None else spec.remediation)
        if self.exposure is Exposure.LOOPBACK:
            fixes = tuple(r for r in fixes if r not in self.kb.network_only_fixes)
        return Finding(fid, sev, title or spec.title, tuple(ev), why or spec.why, fixes)


Rule = Callable[[Context], list[Finding]]


# --------------------------------------------------------------------------------------------
# Rules: authentication


def _offered_line(offers: Sequence[Offer]) -> str:
    return "offered: " + "; ".join(o.label for o in offers)


def _session_facts(facts: RfbFacts, confirmed_by_result: bool) -> list[str]:
    """What reading past the security handshake showed (the proof that no auth is needed)."""
    lines = []
    if facts.security_result == "ok" and confirmed_by_result:
        lines.append("SecurityResult \"ok\" right after selecting it: the session was granted "
                     "without a credential")
    elif facts.security_result == "failed" and confirmed_by_result:
        reason = f": {_q(facts.failure_reason)}" if facts.failure_reason else ""
        lines.append(f"SecurityResult \"failed\"{reason}: offered, but refused this time")
    if facts.framebuffer is not None and confirmed_by_result:
        fb = facts.framebuffer
        name = _q(facts.desktop_name) if facts.desktop_name is not None else "(none)"
        if facts.security_result is None:
            lines.append("ServerInit received without any credential (RFB 3.7 and older send "
                         "no SecurityResult for None)")
        lines.append(f"ServerInit read: desktop name {name}, framebuffer "
                     f"{fb.width}x{fb.height}, depth {fb.depth}")
        if facts.update_answered:
            lines.append(f"a request for one pixel of the screen was answered within "
                         f"{_seconds(facts.update_seconds)}: the session is live, nobody "
                         "was asked")
    return lines


def _seconds(value: float | None) -> str:
    return f"{value:.2g} s" if value is not None else "the probe's wait"


def _granted_at_once(ctx: Context) -> bool:
    """Evidence that nobody was asked: an RFB 3.8 SecurityResult "ok" right after None (a
    server that asks the desktop's user sends it only once the user accepts), an answered
    update request after ServerInit (vino's prompt holds it), or a screenshot taken without a
    password."""
    facts = ctx.facts
    if facts is not None and (facts.security_result == "ok" or facts.update_answered):
        return True
    return ctx.active.screenshot is not None and ctx.active.screenshot.taken


def _approval_signs(ctx: Context) -> tuple[str, list[str]] | None:
    """("asked", evidence) when the server's own reason says it asked the desktop's user,
    ("held", evidence) when it kept the session back after None was selected; else None."""
    facts = ctx.facts
    if facts is None:
        return None
    free = [o for o in ctx.of(NO_AUTH | TLS_NO_AUTH) if o.selected]
    if not free or _granted_at_once(ctx):
        return None
    reason = facts.failure_reason
    if facts.security_result == "failed" and reason:
        for pattern, note in ctx.kb.approval_reasons:
            if pattern.search(reason):
                return "asked", [f"SecurityResult \"failed\" after selecting it: {_q(reason)}",
                                 f"that reason: {note}"]
    return _held(facts, ctx.result.error or "")


# The shortest unanswered wait for an update that counts as a hold: servers answer within a
# round trip (milliseconds on vino without its prompt; docs/rfb.md §1.3).
_HOLD_SECONDS: Final = 1.0


def _held(facts: RfbFacts, error: str) -> tuple[str, list[str]] | None:
    """("held", evidence) when the session was neither granted nor refused: no SecurityResult
    (RFB 3.8) or no ServerInit (3.3/3.7) before the deadline, or ServerInit but no answer to
    the update request (vino's prompt; docs/rfb.md §1.3)."""
    if facts.security_result is not None:
        return None
    fb = facts.framebuffer
    if fb is None:
        waited = "SecurityResult" if facts.client_version == "3.8" else "ServerInit"
        if f"awaiting {waited}" in error:
            return "held", [f"no {waited} after selecting it ({error}): the session was "
                            "neither granted nor refused while the probe waited"]
        return None
    if facts.update_answered is not False:
        return None
    closed = any(n.startswith("connection closed after ServerInit") for n in facts.notes)
    if not closed and (facts.update_seconds or 0.0) < _HOLD_SECONDS:
        return None  # the deadline left too short a wait: a slow link, not yet a hold
    name = _q(facts.desktop_name) if facts.desktop_name is not None else "(none)"
    how = ("the server closed the connection instead" if closed
           else f"no answer within {_seconds(facts.update_seconds)}")
    return "held", [f"ServerInit read without a credential: desktop name {name}, framebuffer "
                    f"{fb.width}x{fb.height}",
                    f"a request for one pixel of the screen was not answered ({how}): the "
                    "session was held, as servers hold it while they ask the desktop's user "
                    "to accept"]


def _active_proof(ctx: Context) -> tuple[list[str], str | None]:
    """Evidence from the opt-in screenshot/desktop checks and the desktop kind, if any."""
    lines: list[str] = []
    shot = ctx.active.screenshot
    if shot is not None and shot.taken:
        where = f", saved to {shot.path}" if shot.path else ""
        lines.append(f"screenshot taken without a password: {shot.width}x{shot.height}{where}")
    kind = ctx.active.desktop_kind
    verdict = kind.kind if kind is not None else None
    if kind is not None and verdict:
        label = KIND_WORDS.get(verdict, KIND_WORDS["unknown"])[0].lower()
        sure = f", confidence {kind.confidence:.0%}" if kind.confidence else ""
        if kind.seen:
            lines.append(f"the screen shows {kind.seen} ({label}{sure})")
        else:
            why = "; ".join(kind.evidence[:3])
            lines.append(f"screen classified as {label}{sure}{': ' + why if why else ''}")
    return lines, verdict if verdict in ("desktop", "login-screen") else None


def rule_no_auth(ctx: Context) -> list[Finding]:
    """None, or Tight without/with NOAUTH: no credential at all (unless the server showed
    that a person must accept the session: `rule_approval_required`)."""
    if not ctx.is_vnc or ctx.facts is None:
        return []
    found = ctx.of(NO_AUTH)
    if not found or _approval_signs(ctx) is not None:
        return []
    ev = [_offered_line(found)]
    ev += _session_facts(ctx.facts, any(o.selected for o in found))
    proof, verdict = _active_proof(ctx)
    ev += proof
    spec = ctx.kb.specs["no-auth"]
    suffix = {"desktop": "_desktop", "login-screen": "_login"}.get(verdict or "", "")
    if not suffix and not _granted_at_once(ctx):
        suffix = "_unconfirmed"  # "nobody is asked" only where the wire showed it
    return [ctx.finding("no-auth", ev, title=spec.texts.get("title" + suffix),
                        why=spec.texts.get("why" + suffix))]


def rule_approval_required(ctx: Context) -> list[Finding]:
    """No credential, but the server asks (or held the session as servers that ask do)."""
    if not ctx.is_vnc:
        return []
    signs = _approval_signs(ctx)
    if signs is None:
        return []
    how, lines = signs
    found = [o for o in ctx.of(NO_AUTH | TLS_NO_AUTH) if o.selected]
    spec = ctx.kb.specs["approval-required"]
    suffix = "_held" if how == "held" else ""
    return [ctx.finding("approval-required", [_offered_line(found), *lines],
                        title=spec.texts.get("title" + suffix),
                        why=spec.texts.get("why" + suffix))]


def rule_tls_no_auth(ctx: Context) -> list[Finding]:
    """VeNCrypt TLSNone/X509None or TLS(18) → None: encrypted, but no credential."""
    if not ctx.is_vnc or ctx.facts is None:
        return []
    found = ctx.of(TLS_NO_AUTH)
    if not found or _approval_signs(ctx) is not None:
        return []
    ev = [_offered_line(found)]
    ev += _session_facts(ctx.facts, any(o.selected for o in found))
    tls = ctx.result.extra.tls
    if tls is not None:
        detail = ", ".join(f"{k} {v}" for k, v in (("version", tls.version),
                                                    ("cipher", tls.cipher)) if v)
        if detail:
            ev.append(f"TLS negotiated: {detail}")
    spec = ctx.kb.specs["tls-no-auth"]
    unconfirmed = not _granted_at_once(ctx) and "why_unconfirmed" in spec.texts
    return [ctx.finding("tls-no-auth", ev,
                        why=spec.texts["why_unconfirmed"] if unconfirmed else None)]


def _offer_rule(fid: str, classes: frozenset[str]) -> Rule:
    """A finding for every offered path of the given classes, with those paths as evidence."""

    def rule(ctx: Context) -> list[Finding]:
        if not ctx.is_vnc:
            return []
        found = ctx.of(classes)
        return [ctx.finding(fid, [_offered_line(found)])] if found else []

    rule.__name__ = f"rule_{fid.replace('-', '_')}"
    rule.__doc__ = f"{fid}: any offered path of class {', '.join(sorted(classes))}."
    return rule


rule_vncauth_plaintext = _offer_rule("vncauth-plaintext", frozenset({"vncauth"}))
rule_plaintext_password = _offer_rule("plaintext-password", frozenset({"plaintext"}))
rule_weak_auth = _offer_rule("weak-auth", frozenset({"weak"}))
rule_unencrypted_session = _offer_rule("unencrypted-session", frozenset({"unencrypted-session"}))
rule_anonymous_tls = _offer_rule("anonymous-tls", ANONYMOUS_TLS)


def rule_vncauth_in_tls(ctx: Context) -> list[Finding]:
    """The VNC password is only used inside TLS (else vncauth-plaintext says more)."""
    if not ctx.is_vnc or ctx.of({"vncauth"}):
        return []
    inside = [o for o in ctx.offers if o.vncauth_inside]
    return [ctx.finding("vncauth-in-tls", [_offered_line(inside)])] if inside else []


def rule_downgrade(ctx: Context) -> list[Finding]:
    """Encrypted, authenticated paths exist, and so do weak ones a client may pick instead."""
    if not ctx.is_vnc:
        return []
    strong, weak = ctx.of(ENCRYPTED_WITH_AUTH), ctx.of(WEAK)
    if not strong or not weak:
        return []
    return [ctx.finding("downgrade", [
        "encrypted: " + "; ".join(o.label for o in strong),
        "also accepted, weaker: " + "; ".join(o.label for o in weak),
    ])]


def rule_auth_unknown(ctx: Context) -> list[Finding]:
    """A sub-list the probe could not read: the grade for that path is open."""
    if not ctx.is_vnc or ctx.facts is None:
        return []
    found = ctx.of(UNREAD)
    if not found or ctx.of(NO_AUTH | TLS_NO_AUTH):
        return []  # nothing to learn: a path without any credential is already known
    ev = [_offered_line(found)]
    ev += [f"probe note: {n}" for n in ctx.facts.notes]
    return [ctx.finding("auth-unknown", ev)]


# --------------------------------------------------------------------------------------------
# Rules: results of active checks (extra.active, only present on explicit flags)


def rule_weak_password_found(ctx: Context) -> list[Finding]:
    audit = ctx.active.password_audit
    if audit is None or not (audit.found or audit.status == "found"):
        return []
    source = {"builtin": "the built-in list", "wordlist": "the given wordlist"}.get(
        audit.source, audit.source)
    ev = [f"password audit: attempt {audit.attempts} of at most {audit.budget} "
          f"accepted a password from {source} (password {_q(str(audit.password))})"]
    if audit.security_path:
        ev.append("authenticated via " + " → ".join(audit.security_path))
    init = audit.server_init
    if init is not None and init.desktop_name is not None:
        ev.append(f"ServerInit read: desktop name {_q(init.desktop_name)}")
    return [ctx.finding("weak-password-found", ev)]


def rule_auth_bypass(ctx: Context) -> list[Finding]:
    check = ctx.active.unoffered_none
    if check is None or check.status != "vulnerable":
        return []
    ev = [f"active check (un-offered None): {check.evidence}"]
    if check.offered_types is not None:
        ev.append(f"offered security types: {list(check.offered_types)}")
    ev.append("matches " + ", ".join(check.cves or ("CVE-2006-2369", "CVE-2006-2450")))
    return [ctx.finding("auth-bypass", ev)]


# --------------------------------------------------------------------------------------------
# Rules: known vulnerabilities


def _product_line(p: Product) -> str:
    version = p.version or "version not visible"
    return f"product: {p.name} ({version}), identification confidence {p.confidence:.2f}"


def rule_known_cves(ctx: Context) -> list[Finding]:
    """Known CVEs of the identified product, one finding each when established; the CVEs
    that only MAY apply (family known, version not) are gathered in one `possible-cves`."""
    p = ctx.product
    if ctx.result.state not in _SERVICE_STATES or p.name == "unknown":
        return []
    name = p.name.lower()
    bypass = ctx.active.unoffered_none.status if ctx.active.unoffered_none else None
    out: list[Finding] = []
    possible: list[Cve] = []
    for cve in ctx.kb.cves:
        if cve.side != "server":
            continue  # viewer-side and local flaws are not visible from a server scan
        if name in cve.products:
            verdict = match_versions(p.version, cve.affected)
        elif name in cve.also_in:
            # The embedded component's version is not the product's: never more than possible.
            verdict = "possible" if cve.affected else None
        else:
            continue
        if verdict is None:
            continue
        confirmed = False
        if cve.check == "unoffered-none" and bypass == "not-vulnerable":
            continue  # the active check ruled it out
        if cve.check == "unoffered-none" and bypass == "vulnerable":
            verdict, confirmed = "affected", True
        if verdict == "affected" and not confirmed and p.confidence < ctx.kb.min_confidence:
            verdict = "possible"
        if verdict == "affected":
            out.append(_known_cve(ctx, cve, confirmed))
        else:
            possible.append(cve)
    if possible:
        out.append(_possible_cves(ctx, possible))
    return out


def _why(cve: Cve) -> str:
    # The KB's `note` records provenance and caveats for maintainers; the range caveat a user
    # needs is already in the evidence ("range not verified by a source").
    why = f"{cve.title}. {cve.detectable}"
    if cve.references:
        why += " See " + " ".join(cve.references)
    return why


def _range_text(cve: Cve) -> str:
    text = ", ".join(cve.affected) + (f"; fixed in {cve.fixed}" if cve.fixed else "")
    return text + ("" if cve.verified else " (range not verified by a source)")


def _known_cve(ctx: Context, cve: Cve, confirmed: bool) -> Finding:
    p = ctx.product
    ev = [_product_line(p), f"affected versions: {_range_text(cve)}"]
    if confirmed:
        ev.append("confirmed by the active un-offered-None check")
    else:
        ev.append(f"version {p.version} lies in an affected range")
    ev += [f"identified by: {e}" for e in p.evidence[:3]]
    return ctx.finding(f"known-cve:{cve.id}", ev, spec_id="known-cve",
                       title=f"{cve.id}: {cve.title}", why=_why(cve), severity=cve.severity)


def _possible_cves(ctx: Context, found: Sequence[Cve]) -> Finding:
    p = ctx.product
    if not p.version:
        reason = "the product version is not visible"
    elif p.confidence < ctx.kb.min_confidence:
        reason = (f"the identification confidence {p.confidence:.2f} is below "
                  f"{ctx.kb.min_confidence:.2f}")
    else:
        reason = f"version {p.version} only partly overlaps the affected ranges"
    ev = [_product_line(p), f"NOT established: {reason}; check the installed version"]
    for cve in found:
        whose = (f"{p.name} embeds the affected component, whose version is not visible; "
                 if p.name.lower() in cve.also_in else "")
        ev.append(f"{cve.id} ({cve.severity.value}{', pre-auth' if cve.pre_auth else ''}): "
                  f"{cve.title}; {whose}affected {_range_text(cve)}")
    ev += [f"identified by: {e}" for e in p.evidence[:3]]
    count = f"{len(found)} known vulnerabilit{'y' if len(found) == 1 else 'ies'}"
    why = ("Some versions of this product have these published vulnerabilities; which version "
           "runs here is not established, so none is claimed: "
           + ", ".join(c.id for c in found)
           + ". Check the installed version against each (the evidence gives the ranges).")
    links = [c.references[0] for c in found if c.references]
    if links:
        why += " References: " + " ".join(links)
    return ctx.finding("possible-cves", ev, spec_id="known-cve",
                       title=f"Possibly affected by {count} of {p.name} (version not established)",
                       why=why, severity=ctx.kb.possible_severity)


# --------------------------------------------------------------------------------------------
# Rules: where and how the service is reachable, and odd servers


def rule_exposed_public(ctx: Context) -> list[Finding]:
    if ctx.result.state not in _SERVICE_STATES or ctx.exposure is not Exposure.PUBLIC:
        return []
    return [ctx.finding("exposed-public", [
        f"VNC answered on {ctx.result.host} port {ctx.result.port}: "
        + ctx.exposure_reason()])]


def _lockout(text: str | None) -> bool:
    low = (text or "").lower()
    return any(r in low for r in rfb.BLACKLIST_REASONS)


def rule_blacklisting_active(ctx: Context) -> list[Finding]:
    facts = ctx.facts
    reason = facts.failure_reason if facts else None
    if ctx.result.state is not State.BLACKLISTED and not _lockout(reason):
        return []
    ev = [f"state {ctx.result.state.value}"]
    if reason:
        ev.append(f"server's reason: {_q(reason)}")
    return [ctx.finding("blacklisting-active", ev)]


def _ranges(ranges: Sequence[tuple[int, int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def rule_nonstandard_port(ctx: Context) -> list[Finding]:
    port = ctx.result.port
    if ctx.result.state not in _SERVICE_STATES:
        return []
    web = ctx.result.extra.web is not None and ctx.result.extra.web.transport == "websocket"
    # Reached through a web front end, the usual ports are the web ones (noVNC's 6080 ...).
    usual = ctx.kb.standard_web_ports if web else ctx.kb.standard_ports
    if any(lo <= port <= hi for lo, hi in usual):
        return []
    how = "RFB over WebSocket answered" if web else "RFB answered"
    return [ctx.finding("nonstandard-port", [f"{how} on port {port} (usual: {_ranges(usual)})"])]


def rule_suspected_honeypot(ctx: Context) -> list[Finding]:
    suspected = ctx.result.extra.suspected_honeypot
    if suspected is None or not suspected.reasons:
        return []
    return [ctx.finding("suspected-honeypot",
                        [f"honeypot signal: {r}" for r in suspected.reasons])]


def rule_malformed_handshake(ctx: Context) -> list[Finding]:
    if ctx.result.state is not State.MALFORMED:
        return []
    ev = [f"state malformed: {ctx.result.error or 'no detail recorded'}"]
    if ctx.facts is not None and ctx.facts.banner:
        ev.insert(0, f"banner {_q(ctx.facts.banner)}")
    return [ctx.finding("malformed-handshake", ev)]


# One row per finding family; order only matters for readability (findings are sorted).
RULES: Final[tuple[tuple[str, Rule], ...]] = (
    ("no-auth", rule_no_auth),
    ("approval-required", rule_approval_required),
    ("tls-no-auth", rule_tls_no_auth),
    ("vncauth-plaintext", rule_vncauth_plaintext),
    ("plaintext-password", rule_plaintext_password),
    ("weak-auth", rule_weak_auth),
    ("unencrypted-session", rule_unencrypted_session),
    ("anonymous-tls", rule_anonymous_tls),
    ("vncauth-in-tls", rule_vncauth_in_tls),
    ("downgrade", rule_downgrade),
    ("auth-unknown", rule_auth_unknown),
    ("weak-password-found", rule_weak_password_found),
    ("auth-bypass", rule_auth_bypass),
    ("known-cve", rule_known_cves),
    ("exposed-public", rule_exposed_public),
    ("blacklisting-active", rule_blacklisting_active),
    ("nonstandard-port", rule_nonstandard_port),
    ("suspected-honeypot", rule_suspected_honeypot),
    ("malformed-handshake", rule_malformed_handshake),
)
