"""Unit tests of vncaudit.assess: every rule (positive and negative), exposure, the CVE matcher.

Facts come from REAL recorded handshakes (`tests/transcripts/*.json`, replayed through the
probe's own decision logic as in `test_rfb_fuzz.py`) wherever a server of that kind was
recorded, and from `RfbFacts` built by hand for security types no test server offers.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vncaudit import assess as A
from vncaudit.models import (
    Capability,
    Finding,
    Framebuffer,
    NamedType,
    Product,
    RfbFacts,
    ServiceResult,
    Severity,
    State,
    TightInfo,
    VeNCryptInfo,
)
from vncaudit.payloads import (
    ActiveChecks,
    BypassCheck,
    DesktopVerdict,
    Extras,
    PasswordAudit,
    ScreenshotCheck,
)
from vncaudit.rfb import security_type_name, vencrypt_subtype_name

from rfb_helpers import replayed_session

TRANSCRIPTS = Path(__file__).parent / "transcripts"
PRIVATE = "192.168.7.20"  # graded at base severity (a network address); never contacted
PUBLIC = "8.8.8.8"  # only a string here: assess does no I/O
BRIEF_REMEDY_IDS = {
    "firewall-block", "firewall-allowlist", "ssh-tunnel", "vpn-only", "bind-localhost",
    "set-password", "enable-encryption", "disable-unused", "update-product",
    "disable-ipv6-listener",
}


# -- building results -------------------------------------------------------------------------


def replay(name: str, host: str = PRIVATE, port: int = 5901, **extra: Any) -> ServiceResult:
    """The probe's result for a recorded real-server transcript, as seen on `host`."""
    session, doc = replayed_session(TRANSCRIPTS / f"{name}.json")
    after = [e for e in doc.get("after_init", ()) if e["dir"] == "s2c"]
    if after and session.update_check_due:  # the recorded answer to one update request
        session.update_asked()
        session.update_seen(any(e["hex"] for e in after), any(e["closed"] for e in after))
    result = session.result(0.0)
    if after and result.rfb is not None and result.rfb.update_answered is False:
        result = replace(result, rfb=replace(result.rfb, update_seconds=after[-1]["waited_s"]))
    return replace(result, host=host, port=port,
                   extra=Extras.from_dict({**result.extra.to_dict(), **extra}))


def facts(*types: int, vencrypt: tuple[int, ...] | None = None,
          tight: tuple[int, ...] | None = None, inner: tuple[int, ...] | None = None,
          **kw: Any) -> RfbFacts:
    return RfbFacts(
        banner="RFB 003.008\n", server_version="3.8", client_version="3.8",
        security_types=tuple(NamedType(t, security_type_name(t)) for t in types),
        vencrypt=(VeNCryptInfo("0.2", tuple(NamedType(s, vencrypt_subtype_name(s))
                                             for s in vencrypt))
                  if vencrypt is not None else None),
        tight=(TightInfo((), tuple(Capability(c, "STDV", "X") for c in tight))
               if tight is not None else None),
        tls_inner_types=(tuple(NamedType(t, security_type_name(t)) for t in inner)
                         if inner is not None else None),
        **kw,
    )


def service(f: RfbFacts | None, host: str = PRIVATE, port: int = 5900,
            state: State = State.VNC, **extra: Any) -> ServiceResult:
    return ServiceResult(host=host, port=port, state=state, rfb=f, extra=Extras.from_dict(extra))


def grade(result: ServiceResult, exposure: A.Exposure | None = None,
          product: Product | None = None) -> tuple[Finding, ...]:
    return A.evaluate(result, product or Product("unknown"), exposure)


def ids(findings: tuple[Finding, ...]) -> set[str]:
    return {f.id for f in findings}


def one(findings: tuple[Finding, ...], fid: str) -> Finding:
    found = [f for f in findings if f.id == fid]
    assert len(found) == 1, (fid, [f.id for f in findings])
    return found[0]


def text(f: Finding) -> str:
    return "\n".join(f.evidence)


AUTH_IDS = {"no-auth", "tls-no-auth", "vncauth-plaintext", "plaintext-password", "weak-auth",
            "unencrypted-session", "anonymous-tls", "vncauth-in-tls", "downgrade",
            "auth-unknown"}


# -- no authentication ------------------------------------------------------------------------


def test_no_auth_confirmed_by_security_result_on_real_tigervnc() -> None:
    f = one(grade(replay("tigervnc-none-38")), "no-auth")
    assert f.severity is Severity.CRITICAL
    ev = text(f)
    assert 'type 1 "None"' in ev
    assert "the session was granted without a credential" in ev
    assert 'desktop name "tiger-none"' in ev and "640x480" in ev
    assert f.why and "set-password" in f.remediation


def test_no_auth_rfb33_confirmed_by_server_init_without_security_result() -> None:
    f = one(grade(replay("x11vnc-none-33")), "no-auth")
    assert f.severity is Severity.CRITICAL
    assert "chosen by the server" in text(f)
    assert "ServerInit received without any credential" in text(f)
    assert "the session was granted without a credential" not in text(f)  # 3.3 sends none


def test_no_auth_offered_but_not_read_is_not_called_confirmed() -> None:
    f = one(grade(service(facts(1, 2))), "no-auth")
    assert f.severity is Severity.CRITICAL
    assert "confirmed" not in text(f)


def test_no_auth_refused_security_result_is_reported_as_such() -> None:
    r = service(facts(1, selected_type=1, security_result="failed", failure_reason="busy"))
    ev = text(one(grade(r), "no-auth"))
    assert 'SecurityResult "failed": "busy"' in ev and "confirmed" not in ev


def test_tight_noauth_and_zero_capabilities_are_no_auth() -> None:
    assert "no-auth" in ids(grade(service(facts(16, tight=(1,)))))
    zero = one(grade(service(facts(16, tight=()))), "no-auth")
    assert "zero authentication capabilities" in text(zero)


def test_no_auth_absent_where_a_password_is_required() -> None:
    for name in ("tigervnc-vncauth-38", "x11vnc-password-38", "xtightvnc-38",
                 "tigervnc-default-38"):
        assert not ids(grade(replay(name))) & {"no-auth", "tls-no-auth"}, name


def test_no_auth_text_follows_the_desktop_kind() -> None:
    live = replay("x11vnc-none-38", active={"desktop_kind": {
        "kind": "desktop", "confidence": 0.9, "evidence": ["3 windows with title bars"]},
        "screenshot": {"status": "ok", "width": 640, "height": 480, "path": "/tmp/x.png"}})
    f = one(grade(live), "no-auth")
    assert "full control of a logged-in desktop" in f.title
    assert "screen classified as live desktop, confidence 90%" in text(f)
    assert "3 windows" in text(f)  # a stored verdict without words: its evidence
    assert "screenshot taken without a password: 640x480, saved to /tmp/x.png" in text(f)
    login = replay("x11vnc-none-38", active={"desktop_kind": {"kind": "login-screen",
                                                              "confidence": 0.8}})
    f = one(grade(login), "no-auth")
    assert "login screen" in f.title and "password guessing" in f.why
    worded = replay("x11vnc-none-38", active={"desktop_kind": {
        "kind": "desktop", "confidence": 0.5, "seen": "a program's window with no window "
        "manager around it", "evidence": ["geometry 640x480"]}})
    assert ("the screen shows a program's window with no window manager around it (live "
            "desktop, confidence 50%)") in text(one(grade(worded), "no-auth"))
    plain = one(grade(replay("x11vnc-none-38")), "no-auth")
    assert "logged-in" not in plain.title and "login screen" not in plain.title


# -- encrypted without authentication ---------------------------------------------------------


def test_vencrypt_tlsnone_on_real_tigervnc_is_critical() -> None:
    f = one(grade(replay("tigervnc-vencrypt-38")), "tls-no-auth")
    assert f.severity is Severity.CRITICAL
    assert 'VeNCrypt sub-type 257 "TLSNone"' in text(f)


def test_tls_no_auth_confirmed_when_the_probe_completed_it() -> None:
    r = service(facts(19, vencrypt=(257, 258), selected_type=257, security_result="ok",
                      desktop_name="d", framebuffer=Framebuffer(800, 600, 24)),
                tls={"version": "TLSv1.2", "cipher": "ADH-AES256-GCM-SHA384"})
    ev = text(one(grade(r), "tls-no-auth"))
    assert "the session was granted without a credential" in ev
    assert "TLSv1.2" in ev and "800x600" in ev


def test_x509none_and_anonymous_tls_inner_none_are_tls_no_auth() -> None:
    assert "tls-no-auth" in ids(grade(service(facts(19, vencrypt=(260,)))))
    found = grade(service(facts(18, inner=(1,))))
    assert "tls-no-auth" in ids(found) and "no-auth" not in ids(found)


def test_anonymous_tls_inner_none_confirmed_through_the_inner_selection() -> None:
    r = service(facts(18, inner=(1, 2), selected_type=1, security_result="ok"))
    found = grade(r)
    assert "the session was granted without a credential" in text(one(found, "tls-no-auth"))
    assert "inner type 2" in text(one(found, "anonymous-tls"))
    assert "no-auth" not in ids(found)


def test_tls_no_auth_absent_for_tls_with_a_password() -> None:
    assert "tls-no-auth" not in ids(grade(service(facts(19, vencrypt=(258, 261)))))


# -- weak and plaintext authentication ----------------------------------------------------------


@pytest.mark.parametrize("name", ["tigervnc-vncauth-38", "tigervnc-vncauth-33",
                                  "x11vnc-password-38", "xtightvnc-38", "xtightvnc-33"])
def test_vncauth_without_encryption_is_high(name: str) -> None:
    f = one(grade(replay(name)), "vncauth-plaintext")
    assert f.severity is Severity.HIGH
    assert "VNC Authentication" in text(f)
    assert "DES" in f.why and "8 characters" in f.why and "offline" in f.why


def test_vncauth_through_tight_and_vencrypt_subtype_2() -> None:
    assert "Tight\" auth capability 2" in text(one(grade(replay("xtightvnc-38")),
                                                   "vncauth-plaintext"))
    f = one(grade(service(facts(19, vencrypt=(2,)))), "vncauth-plaintext")
    assert 'VeNCrypt sub-type 2 "VNC Authentication"' in text(f)


def test_vncauth_inside_tls_only_is_not_plaintext() -> None:
    found = grade(service(facts(19, vencrypt=(258,))))
    assert "vncauth-plaintext" not in ids(found)
    assert one(found, "vncauth-in-tls").severity is Severity.LOW
    assert one(found, "anonymous-tls").severity is Severity.MEDIUM
    x509 = grade(service(facts(19, vencrypt=(261,))))
    assert ids(x509) == {"vncauth-in-tls"}  # X.509: authenticated server, nothing else to say


def test_plaintext_password_only_for_vencrypt_plain() -> None:
    f = one(grade(service(facts(19, vencrypt=(256,)))), "plaintext-password")
    assert f.severity is Severity.HIGH and "Plain" in text(f)
    assert "plaintext-password" not in ids(grade(service(facts(19, vencrypt=(262,)))))
    assert "plaintext-password" not in ids(grade(service(facts(19, vencrypt=(259,)))))


@pytest.mark.parametrize("number", [30, 113])
def test_weak_schemes(number: int) -> None:
    assert one(grade(service(facts(number))), "weak-auth").severity is Severity.HIGH


def test_ra2ne_is_unencrypted_session_and_ra2_is_clean() -> None:
    assert one(grade(service(facts(6))), "unencrypted-session").severity is Severity.MEDIUM
    assert grade(service(facts(5, 13))) == ()  # RSA-AES only: nothing to report
    assert not ids(grade(service(facts(30)))) & {"unencrypted-session", "no-auth"}


# -- downgrade ----------------------------------------------------------------------------------


def test_downgrade_on_real_tigervnc_default() -> None:
    found = grade(replay("tigervnc-default-38"))
    f = one(found, "downgrade")
    assert f.severity is Severity.MEDIUM
    assert "TLSVnc" in f.evidence[0] and "VNC Authentication" in f.evidence[1]
    assert "vncauth-plaintext" in ids(found)  # the weak path is graded on its own too


def test_downgrade_from_ra2_and_none_but_not_without_an_encrypted_path() -> None:
    assert "downgrade" in ids(grade(service(facts(5, 2))))
    assert "downgrade" in ids(grade(service(facts(13, 1))))
    assert "downgrade" not in ids(grade(service(facts(19, vencrypt=(258, 261)))))
    assert "downgrade" not in ids(grade(replay("tigervnc-vncauth-38")))
    # TLSNone is encrypted but has no credential to protect: not a downgrade target
    assert "downgrade" not in ids(grade(service(facts(19, vencrypt=(257, 2)))))


# -- unread sub-negotiations ---------------------------------------------------------------------


def test_auth_unknown_when_a_sub_list_was_not_read() -> None:
    f = one(grade(service(facts(19, 2, notes=("anonymous TLS failed",)))), "auth-unknown")
    assert f.severity is Severity.INFO
    assert "sub-type list not read" in text(f) and "anonymous TLS failed" in text(f)
    assert "auth-unknown" in ids(grade(service(facts(17))))
    # anonymous TLS (18) whose inner list was not read: both facts are reported
    assert {"auth-unknown", "anonymous-tls"} <= ids(grade(service(facts(18))))


def test_auth_unknown_absent_when_no_auth_is_already_known_or_all_was_read() -> None:
    assert "auth-unknown" not in ids(grade(replay("xtightvnc-none-38")))
    assert "auth-unknown" not in ids(grade(replay("tigervnc-default-38")))


# -- exposure ------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", A.Exposure.LOOPBACK), ("127.9.9.9", A.Exposure.LOOPBACK),
    ("::1", A.Exposure.LOOPBACK), ("[::1]", A.Exposure.LOOPBACK),
    ("::ffff:127.0.0.1", A.Exposure.LOOPBACK),
    ("0.0.0.0", A.Exposure.ALL_INTERFACES), ("::", A.Exposure.ALL_INTERFACES),
    ("10.1.2.3", A.Exposure.PRIVATE), ("172.16.0.5", A.Exposure.PRIVATE),
    ("192.168.1.1", A.Exposure.PRIVATE), ("fd00::5", A.Exposure.PRIVATE),
    ("fe80::1%eth0", A.Exposure.PRIVATE), ("198.18.0.7", A.Exposure.PRIVATE),
    ("8.8.8.8", A.Exposure.PUBLIC), ("2001:4860:4860::8888", A.Exposure.PUBLIC),
    ("::ffff:8.8.8.8", A.Exposure.PUBLIC),
    ("vnc.example.com", A.Exposure.UNKNOWN), ("", A.Exposure.UNKNOWN),
])
def test_exposure_of(host: str, expected: A.Exposure) -> None:
    assert A.exposure_of(host) is expected


def test_loopback_lowers_no_auth_one_step_and_says_why() -> None:
    f = one(grade(replay("tigervnc-none-38", host="127.0.0.1")), "no-auth")
    assert f.severity is Severity.HIGH
    assert "reachable only from this host" in text(f)
    assert "lowered from critical to high" in text(f)


def test_public_raises_auth_findings_and_adds_exposed_public() -> None:
    found = grade(replay("tigervnc-vncauth-38", host=PUBLIC))
    f = one(found, "vncauth-plaintext")
    assert f.severity is Severity.CRITICAL and "raised from high to critical" in text(f)
    exposed = one(found, "exposed-public")
    assert exposed.severity is Severity.MEDIUM and PUBLIC in text(exposed)
    assert "firewall-allowlist" in exposed.remediation
    critical = one(grade(replay("tigervnc-none-38", host=PUBLIC)), "no-auth")
    assert critical.severity is Severity.CRITICAL  # already the top; stays there


def test_all_interfaces_counts_as_exposed_and_explicit_exposure_wins() -> None:
    r = replay("x11vnc-none-38", host="127.0.0.1")
    f = one(grade(r, A.Exposure.ALL_INTERFACES), "no-auth")
    assert f.severity is Severity.CRITICAL and "bound to all interfaces" in text(f)
    assert one(grade(r, A.Exposure.PRIVATE), "no-auth").severity is Severity.CRITICAL
    assert one(grade(r), "no-auth").severity is Severity.HIGH
    as_text = one(grade(r, "all-interfaces"), "no-auth")  # type: ignore[arg-type]
    assert as_text.severity is Severity.CRITICAL
    public = grade(replay("tigervnc-vncauth-38", host="127.0.0.1"), A.Exposure.PUBLIC)
    assert one(public, "vncauth-plaintext").severity is Severity.CRITICAL
    assert "exposed-public" in ids(public)


def test_a_given_exposure_claims_nothing_about_the_address() -> None:
    # 127.0.0.1 standing in for a public host (the web service's assume_exposure): the
    # evidence must not call a loopback address globally routable.
    found = grade(replay("tigervnc-vncauth-38", host="127.0.0.1"), A.Exposure.PUBLIC)
    for fid in ("vncauth-plaintext", "exposed-public"):
        evidence = text(one(found, fid))
        assert "globally routable" not in evidence
        assert "exposure given by the caller" in evidence
    # Read from a public address, it says so.
    assert "globally routable" in text(one(grade(replay("tigervnc-vncauth-38", host=PUBLIC)),
                                           "exposed-public"))


def test_exposure_does_not_move_findings_that_are_not_about_reach() -> None:
    for host in ("127.0.0.1", PRIVATE, PUBLIC):
        found = grade(replay("tigervnc-default-38", host=host))
        assert one(found, "downgrade").severity is Severity.MEDIUM
        assert one(found, "anonymous-tls").severity is Severity.MEDIUM


def test_exposed_public_absent_on_private_and_for_non_vnc() -> None:
    assert "exposed-public" not in ids(grade(replay("tigervnc-none-38")))
    assert grade(service(None, host=PUBLIC, state=State.CLOSED)) == ()
    assert "exposed-public" in ids(grade(replay("tigervnc-blacklisted", host=PUBLIC)))


# -- blacklisting, port, odd servers -------------------------------------------------------------


def test_blacklisting_on_real_tigervnc_lockout() -> None:
    found = grade(replay("tigervnc-blacklisted"))
    f = one(found, "blacklisting-active")
    assert f.severity is Severity.INFO
    assert '"Too many security failures"' in text(f)
    assert not ids(found) & AUTH_IDS  # no list was read: nothing to grade


def test_blacklisting_from_a_failure_reason_and_not_from_other_reasons() -> None:
    locked = service(facts(failure_reason="Too many authentication failures"))
    assert "blacklisting-active" in ids(grade(locked))
    other = service(facts(failure_reason="Your licence has expired"))
    assert "blacklisting-active" not in ids(grade(other))


def test_nonstandard_port() -> None:
    f = one(grade(replay("tigervnc-vncauth-38", port=15952)), "nonstandard-port")
    assert f.severity is Severity.INFO and "port 15952" in text(f)
    for port in (5800, 5810, 5900, 5901, 5999):
        assert "nonstandard-port" not in ids(grade(replay("tigervnc-vncauth-38", port=port)))
    assert grade(service(None, port=15952, state=State.OPEN_NOT_VNC)) == ()


@pytest.mark.parametrize("state", [State.CLOSED, State.FILTERED, State.TARPIT,
                                   State.OPEN_NOT_VNC])
def test_non_vnc_states_get_no_findings(state: State) -> None:
    assert grade(service(None, port=12345, state=state)) == ()


def test_malformed_gets_only_an_info_finding_even_after_a_list() -> None:
    r = replace(service(facts(1, 2), state=State.MALFORMED),
                error="incomplete message at the deadline")
    found = grade(r)
    assert ids(found) == {"malformed-handshake"}
    f = found[0]
    assert f.severity is Severity.INFO and "incomplete message" in text(f)
    assert "RFB 003.008" in text(f)


def test_suspected_honeypot_is_info_and_needs_reasons() -> None:
    reasons = ["every security type from 1 to 30 offered"]
    r = service(facts(*range(1, 31)), suspected_honeypot={"reasons": reasons})
    f = one(grade(r), "suspected-honeypot")
    assert f.severity is Severity.INFO and reasons[0] in text(f)
    assert "suspected-honeypot" not in ids(grade(replay("tigervnc-none-38")))


# -- active checks (extra.active, read from their JSON shape) -------------------------------------


def test_weak_password_found() -> None:
    audit = {"status": "found", "found": True, "password": "********", "source": "builtin",
             "attempts": 2, "budget": 3, "security_path": ["VNC Authentication"],
             "server_init": {"desktop_name": "tiger-vncauth"}}
    f = one(grade(replay("tigervnc-vncauth-38", active={"password_audit": audit})),
            "weak-password-found")
    assert f.severity is Severity.CRITICAL
    assert "attempt 2 of at most 3" in text(f) and '"********"' in text(f)
    assert "from the built-in list" in text(f)
    assert 'desktop name "tiger-vncauth"' in text(f)
    for status in ("not-found", "skipped", "stopped"):
        miss = {**audit, "status": status, "found": False}
        r = replay("tigervnc-vncauth-38", active={"password_audit": miss})
        assert "weak-password-found" not in ids(grade(r))


def test_auth_bypass_from_the_unoffered_none_check() -> None:
    check = {"status": "vulnerable", "cves": ["CVE-2006-2369", "CVE-2006-2450"],
             "offered_types": [2], "evidence": "offered [2], selected 1 (None): ServerInit"}
    f = one(grade(replay("tigervnc-vncauth-38", active={"unoffered_none": check})),
            "auth-bypass")
    assert f.severity is Severity.CRITICAL
    assert "selected 1 (None)" in text(f) and "CVE-2006-2369" in text(f)
    safe = {**check, "status": "not-vulnerable"}
    assert "auth-bypass" not in ids(grade(replay("tigervnc-vncauth-38",
                                                 active={"unoffered_none": safe})))


# -- known CVEs (the product is given; identification is vncaudit.fingerprint's job) -----------


REALVNC_411 = Product("RealVNC", "4.1.1", 0.9, ("banner RFB 003.008",))


def test_known_cve_when_product_and_version_match() -> None:
    f = one(grade(replay("tigervnc-vncauth-38"), product=REALVNC_411), "known-cve:CVE-2006-2369")
    assert f.severity is Severity.CRITICAL
    assert "RealVNC (4.1.1)" in text(f) and "4.1.0 - 4.1.1" in text(f)
    assert "update-product" in f.remediation and "https://" in f.why


def test_no_cve_for_a_fixed_version_or_another_product() -> None:
    fixed = Product("RealVNC", "4.1.2", 0.9)
    assert not any(i.endswith("CVE-2006-2369") for i in ids(
        grade(replay("tigervnc-vncauth-38"), product=fixed)))
    assert not any("cve" in i for i in ids(grade(replay("tigervnc-vncauth-38"))))
    assert not any("cve" in i for i in ids(grade(service(None, state=State.CLOSED),
                                                 product=REALVNC_411)))


def test_family_only_is_possible_not_known() -> None:
    family = Product("RealVNC", None, 0.7)
    found = grade(replay("tigervnc-vncauth-38"), product=family)
    assert not any(i.startswith("known-cve") for i in ids(found))
    f = one(found, "possible-cves")
    assert f.severity is Severity.INFO
    assert "NOT established: the product version is not visible" in text(f)
    assert f.title.startswith("Possibly affected by 1 known vulnerability of RealVNC")
    assert "CVE-2006-2369 (critical, pre-auth)" in text(f)
    unsure = Product("RealVNC", "4.1.1", 0.3)
    f = one(grade(replay("tigervnc-vncauth-38"), product=unsure), "possible-cves")
    assert "confidence 0.30 is below" in text(f)
    partial = Product("RealVNC", "4.1", 0.9)  # 4.1.x: 4.1.0/4.1.1 are affected, 4.1.2 is not
    f = one(grade(replay("tigervnc-vncauth-38"), product=partial), "possible-cves")
    assert "only partly overlaps" in text(f)


def test_embedded_component_is_possible_and_gathered_in_one_finding() -> None:
    found = grade(replay("x11vnc-password-38"), product=Product("x11vnc", "0.9.16", 0.9))
    f = one(found, "possible-cves")
    lines = [e for e in f.evidence if e.startswith("CVE-")]
    assert len(lines) >= 5 and any(e.startswith("CVE-2006-2450") for e in lines)
    assert all("embeds the affected component" in e for e in lines)
    assert "range not verified" in text(f)  # unverified entries say so
    assert "https://" in f.why


def test_active_check_confirms_or_rules_out_the_bypass_cves() -> None:
    family = Product("RealVNC", None, 0.7)
    ruled_out = replay("tigervnc-vncauth-38", active={"unoffered_none": {
        "status": "not-vulnerable", "evidence": "closed"}})
    assert not any("cve" in i for i in ids(grade(ruled_out, product=family)))
    proven = replay("tigervnc-vncauth-38", active={"unoffered_none": {
        "status": "vulnerable", "evidence": "ServerInit received"}})
    found = grade(proven, product=family)
    f = one(found, "known-cve:CVE-2006-2369")
    assert f.severity is Severity.CRITICAL and "confirmed by the active" in text(f)
    assert "possible-cves" not in ids(found)


# -- version ranges ----------------------------------------------------------------------------


def test_parse_version() -> None:
    assert A.parse_version("4.1.1") == (4, 1, 1)
    assert A.parse_version("v1.12") == (1, 12)
    assert A.parse_version("5.x") == (5,)
    assert A.parse_version("E4.4.2") == (4, 4, 2)
    for bad in ("", "abc", "1..2", "4.1-beta"):
        with pytest.raises(ValueError):
            A.parse_version(bad)


@pytest.mark.parametrize(("spec", "inside", "outside"), [
    ("4.1.0 - 4.1.1", ["4.1.0", "4.1.1", "4.1.1.9"], ["4.0.9", "4.1.2", "5"]),
    ("<= 1.7", ["0.0.90", "1.7", "1.7.1"], ["1.8", "1.10.1"]),
    ("< 0.9.13", ["0.9.12", "0.9.0", "0.7.1"], ["0.9.13", "0.9.14", "1.0"]),
    (">= 2.0, < 2.8.84", ["2.0", "2.8.83", "2.8.8"], ["1.3.10", "2.8.84", "2.9"]),
    ("> 1.3", ["1.4", "2"], ["1.3", "1.3.10"]),
    ("== 0.7.1", ["0.7.1", "0.7.1.2"], ["0.7.0", "0.7.2", "0.6"]),
    ("0.7.1", ["0.7.1"], ["0.7.0"]),
    ("*", ["0.1", "99"], []),
])
def test_parse_range(spec: str, inside: list[str], outside: list[str]) -> None:
    r = A.parse_range(spec)
    for v in inside:
        assert r.contains(A.parse_range(v)), (spec, v)
    for v in outside:
        assert not r.overlaps(A.parse_range(v)), (spec, v)


def test_parse_range_rejects_garbage() -> None:
    for bad in ("latest", ">= x", "1.2 -", "~1.2"):
        with pytest.raises(ValueError):
            A.parse_range(bad)


def test_match_versions() -> None:
    affected = ["4.1.0 - 4.1.1"]
    assert A.match_versions("4.1.1", affected) == "affected"
    assert A.match_versions("4.1.2", affected) is None
    assert A.match_versions("4.1", affected) == "possible"  # 4.1.x: some are, some are not
    assert A.match_versions(None, affected) == "possible"
    assert A.match_versions("build 1234", affected) == "possible"  # unreadable: anything
    assert A.match_versions("4.0-4.6", affected) == "possible"  # a range from the banner
    assert A.match_versions("5.3+", affected) is None
    assert A.match_versions("5.0 - 5.3", ["< 6"]) == "affected"
    assert A.match_versions(None, ["*"]) == "affected"  # every version is affected
    assert A.match_versions("1.0", []) is None  # range unknown: say nothing
    assert A.match_versions("0.9.12", ["< 0.9.13", ">= 1.0, < 1.1"]) == "affected"


def test_severity_shift_is_clamped() -> None:
    assert A.shift(Severity.CRITICAL, 1) is Severity.CRITICAL
    assert A.shift(Severity.INFO, -1) is Severity.INFO
    assert A.shift(Severity.HIGH, 1) is Severity.CRITICAL
    assert A.shift(Severity.CRITICAL, -1) is Severity.HIGH


# -- the whole: assess() ------------------------------------------------------------------------


def test_assess_fills_product_and_sorted_findings_and_keeps_the_rest() -> None:
    r = replay("tigervnc-default-38", port=15953)
    out = A.assess(r)
    assert out.product is not None and out.product.name
    ranks = [f.severity.rank for f in out.findings]
    assert ranks == sorted(ranks, reverse=True)
    assert replace(out, product=None, findings=()) == r
    assert ServiceResult.from_dict(json.loads(json.dumps(out.to_dict()))) == out


def test_every_finding_carries_evidence_why_and_known_remediation_ids() -> None:
    try:
        from vncaudit.remedies import REMEDY_IDS
        known = set(REMEDY_IDS)
    except ImportError:
        known = BRIEF_REMEDY_IDS
    for spec in A.knowledge().specs.values():
        assert set(spec.remediation) <= known, spec.id
    active = {"password_audit": {"status": "found", "found": True},
              "unoffered_none": {"status": "vulnerable", "evidence": "x"}}
    for path in sorted(TRANSCRIPTS.glob("*.json")):
        for host in ("127.0.0.1", PRIVATE, PUBLIC):
            r = replay(path.stem, host=host, port=15900, active=active)
            for f in A.evaluate(r, REALVNC_411):
                assert f.evidence and all(f.evidence), (path.stem, f.id)
                assert f.why and f.title, (path.stem, f.id)
                assert set(f.remediation) <= known, (path.stem, f.id)


def test_a_failing_rule_costs_only_its_own_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: A.Context) -> list[Finding]:
        raise RuntimeError("bug")

    rules = tuple((n, broken if n == "downgrade" else r) for n, r in A.RULES)
    monkeypatch.setattr(A, "RULES", rules)
    found = grade(replay("tigervnc-default-38"))
    assert "downgrade" not in ids(found) and "vncauth-plaintext" in ids(found)


# -- the CVE knowledge base (data/cves.toml) ----------------------------------------------------


FAMILIES = {"tigervnc", "tightvnc", "realvnc", "ultravnc", "x11vnc", "libvncserver", "turbovnc",
            "macos screen sharing", "qemu", "virtualbox", "novnc/websockify"}
KB = {c.id: c for c in A.cves()}


def test_every_cve_entry_parses_and_is_complete() -> None:
    assert len(KB) == len(A.cves()) >= 30
    for cve in A.cves():
        assert set(cve.products) | set(cve.also_in) <= FAMILIES, cve.id
        assert cve.title and cve.detectable and cve.note, cve.id
        assert cve.references and all(r.startswith("https://") for r in cve.references), cve.id
        for spec in cve.affected:
            A.parse_range(spec)
    required = {"CVE-2006-2369", "CVE-2006-2450", "CVE-2018-20019", "CVE-2018-20020",
                "CVE-2018-20748", "CVE-2019-15681", "CVE-2019-15678", "CVE-2019-15679",
                "CVE-2019-15680", "CVE-2019-8287", "CVE-2018-15361", "CVE-2019-8280",
                "CVE-2019-15691", "CVE-2019-15695", "CVE-2023-6377", "CVE-2020-29074",
                "CVE-2017-13872"}
    assert required <= set(KB)


@pytest.mark.parametrize(("cve_id", "product", "inside", "outside"), [
    ("CVE-2006-2369", "RealVNC", ["4.1.0", "4.1.1"], ["4.0", "4.1.2", "5.3"]),
    ("CVE-2006-2450", "LibVNCServer", ["0.7.1"], ["0.7.0", "0.8", "0.9.14"]),
    ("CVE-2014-6054", "LibVNCServer", ["0.9.9", "0.9.1"], ["0.9.10", "0.9.14"]),
    ("CVE-2018-7225", "LibVNCServer", ["0.9.11"], ["0.9.12", "0.9.14"]),
    ("CVE-2018-6307", "LibVNCServer", ["0.9.11"], ["0.9.12"]),
    ("CVE-2018-15127", "LibVNCServer", ["0.9.12"], ["0.9.13"]),
    ("CVE-2018-20749", "LibVNCServer", ["0.9.12"], ["0.9.13"]),
    ("CVE-2018-20750", "LibVNCServer", ["0.9.12"], ["0.9.13"]),
    ("CVE-2019-15681", "LibVNCServer", ["0.9.12", "0.9.11"], ["0.9.13", "0.9.14"]),
    ("CVE-2016-10207", "TigerVNC", ["1.7", "1.7.1", "1.3.1"], ["1.8.0", "1.12.0"]),
    ("CVE-2019-15694", "TigerVNC", ["1.10.0", "1.9"], ["1.10.1", "1.12.0"]),
    ("CVE-2019-15695", "TigerVNC", ["1.10.0"], ["1.10.1"]),
    ("CVE-2019-15683", "TurboVNC", ["2.2.2", "2.1"], ["2.2.3", "3.0"]),
    ("CVE-2024-42049", "TightVNC", ["2.8.83", "2.0.4"], ["2.8.84", "1.3.10"]),
    ("CVE-2018-15361", "UltraVNC", ["1.2.2.4"], ["1.2.3.0", "1.4"]),
    ("CVE-2019-8280", "UltraVNC", ["1.2.1"], ["1.2.3.0"]),
    ("CVE-2017-13872", "macOS Screen Sharing", ["10.13.0", "10.13.1"], ["10.12.6", "10.14"]),
])
def test_graded_cve_ranges(cve_id: str, product: str, inside: list[str],
                           outside: list[str]) -> None:
    r = replay("tigervnc-vncauth-38")
    for version in inside:
        found = grade(r, product=Product(product, version, 0.9))
        f = one(found, f"known-cve:{cve_id}")
        assert f.severity is KB[cve_id].severity and version in text(f)
    for version in outside:
        found = grade(r, product=Product(product, version, 0.9))
        assert f"known-cve:{cve_id}" not in ids(found), version
        possible = [f for f in found if f.id == "possible-cves"]
        assert not any(cve_id in text(f) for f in possible), version


@pytest.mark.parametrize("cve", [c for c in A.cves() if c.side != "server" or not c.affected],
                         ids=lambda c: c.id)
def test_viewer_local_and_rangeless_entries_never_become_findings(cve: A.Cve) -> None:
    r = replay("tigervnc-vncauth-38")
    for name in cve.products:
        for version in (None, *[s.split(" ")[-1] for s in cve.affected]):
            product = Product(next(f for f in FAMILIES if f == name), version, 0.9)
            assert not any(cve.id in i for i in ids(grade(r, product=product)))


@pytest.mark.parametrize("cve", [c for c in A.cves() if c.side == "server" and c.affected],
                         ids=lambda c: c.id)
def test_graded_entries_are_possible_for_the_family_without_a_version(cve: A.Cve) -> None:
    r = replay("tigervnc-vncauth-38")
    for name in (*cve.products, *cve.also_in):
        f = one(grade(r, product=Product(name, None, 0.9)), "possible-cves")
        assert f.severity is Severity.INFO
        [line] = [e for e in f.evidence if e.startswith(cve.id + " ")]
        assert ("range not verified" in line) is not cve.verified
        assert cve.id in f.why


def test_parse_cves_rejects_bad_entries() -> None:
    good = {"id": "CVE-2000-0001", "title": "t", "products": ["RealVNC"], "affected": ["< 1"],
            "severity": "high", "side": "server", "pre_auth": False, "detectable": "no"}
    assert A.parse_cves({"cve": [good]})[0][0].id == "CVE-2000-0001"
    for bad in ({"id": "CVE-1"}, {"side": "client"}, {"affected": ["soon"]},
                {"severity": "severe"}, {"products": []}, {"check": "guess"}):
        with pytest.raises((ValueError, KeyError)):
            A.parse_cves({"cve": [{**good, **bad}]})
    with pytest.raises(ValueError, match="duplicate"):
        A.parse_cves({"cve": [good, good]})


# -- robustness: no rule raises on any facts or payloads -----------------------------------------


_TYPES = [0, 1, 2, 5, 6, 13, 16, 17, 18, 19, 21, 22, 30, 113, 129, 130, 192, 255]
_SUBS = [1, 2, 256, 257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 300]


def _any(payload: type, **fixed: Any) -> st.SearchStrategy[Any]:
    """Any value of a payload type (every field drawn), with some fields' strategies given."""
    hints = get_type_hints(payload)
    drawn = {f.name: st.from_type(hints[f.name]) for f in fields(payload)}
    return st.builds(payload, **{**drawn, **fixed})


_STATUS = st.sampled_from(["ok", "found", "not-found", "vulnerable", "not-vulnerable",
                           "skipped", "failed"])
_KIND = st.sampled_from(["desktop", "login-screen", "blank", "unknown", ""])
_ACTIVE = _any(ActiveChecks, screenshot=st.none() | _any(ScreenshotCheck, status=_STATUS),
               desktop_kind=st.none() | _any(DesktopVerdict, kind=_KIND),
               unoffered_none=st.none() | _any(BypassCheck, status=_STATUS),
               password_audit=st.none() | _any(PasswordAudit, status=_STATUS))


@st.composite
def _results(draw: st.DrawFn) -> tuple[ServiceResult, Product]:
    types = draw(st.lists(st.one_of(st.sampled_from(_TYPES), st.integers(0, 255)),
                          max_size=6, unique=True))
    f = facts(
        *types,
        vencrypt=draw(st.none() | st.tuples(*[st.sampled_from(_SUBS)] * draw(
            st.integers(0, 4)))),
        tight=draw(st.none() | st.lists(st.sampled_from([1, 2, 19, 20, 129, 130]),
                                        max_size=3).map(tuple)),
        inner=draw(st.none() | st.lists(st.sampled_from(_TYPES), max_size=3).map(tuple)),
        selected_type=draw(st.none() | st.sampled_from(_TYPES + _SUBS)),
        security_result=draw(st.sampled_from([None, "ok", "failed"])),
        failure_reason=draw(st.none() | st.sampled_from(["Too many security failures", "x"])),
        desktop_name=draw(st.none() | st.text(max_size=8)),
        framebuffer=draw(st.none() | st.just(Framebuffer(640, 480, 24))),
        security_types_server_chosen=draw(st.booleans()) and len(types) == 1,
        notes=tuple(draw(st.lists(st.text(max_size=5), max_size=2))),
    )
    extra = replace(draw(st.from_type(Extras)), active=draw(st.none() | _ACTIVE))
    r = ServiceResult(host=draw(st.sampled_from(["127.0.0.1", PRIVATE, PUBLIC, "::", "h.example"])),
                      port=draw(st.integers(1, 65535)), state=draw(st.sampled_from(list(State))),
                      rfb=draw(st.none() | st.just(f)), extra=extra)
    product = Product(draw(st.sampled_from(["unknown", "RealVNC", "LibVNCServer", "x11vnc",
                                            "TigerVNC", "TightVNC", "UltraVNC"])),
                      draw(st.none() | st.sampled_from(["4.1.1", "0.9.12", "1.3", ">= 5.3",
                                                        "2", "junk", ""])),
                      draw(st.floats(0, 1)))
    return r, product


@settings(max_examples=300, deadline=None)
@given(_results())
def test_no_rule_raises_and_findings_keep_their_promises(case: tuple[ServiceResult, Product],
                                                         ) -> None:
    result, product = case
    for exposure in (None, A.Exposure.LOOPBACK, A.Exposure.PUBLIC):
        ctx = A.Context(result, product, exposure or A.exposure_of(result.host), A.knowledge(),
                        tuple(A.offers(result.rfb)) if result.rfb else (),
                        result.extra.active or ActiveChecks())
        found: list[Finding] = []
        for _name, rule in A.RULES:
            found += rule(ctx)  # raises straight into the test: no guard here
        for f in found:
            assert f.evidence and all(isinstance(e, str) and e for e in f.evidence), f.id
            assert isinstance(f.severity, Severity) and f.title and f.why
        if result.state is not State.VNC:
            assert not ids(tuple(found)) & AUTH_IDS


# -- a person must accept: approval-gated sessions (TigerVNC QueryConnect, vino's prompt) ----


@pytest.mark.parametrize(("name", "reason"), [
    ("x0vncserver-queryconnect-38", "Connection rejected by local user"),
    ("tigervnc-queryconnect-38", "The attempt to prompt the user to accept the connection "
                                 "failed"),
    ("tigervnc-queryconnect-novncconfig-38", "Unable to query the local user to accept the "
                                             "connection."),
])
def test_a_query_reason_is_its_own_finding_not_no_auth(name: str, reason: str) -> None:
    found = grade(replay(name))
    assert "no-auth" not in ids(found)
    f = one(found, "approval-required")
    assert f.title == "No password, but a person at the desktop must accept each connection"
    assert f'SecurityResult "failed" after selecting it: "{reason}"' in text(f)
    assert "that reason: TigerVNC" in text(f)
    assert "nobody is asked" not in f.why and "clicking Accept" in f.why
    assert f.severity is Severity.HIGH  # a private address: the base severity
    assert one(grade(replay(name), A.Exposure.PUBLIC), "approval-required").severity \
        is Severity.CRITICAL


def test_a_session_held_before_the_security_result_is_graded_held() -> None:
    held = replace(service(facts(1, selected_type=1)),
                   error="deadline of 5 s reached while awaiting SecurityResult")
    found = grade(held)
    assert "no-auth" not in ids(found)
    f = one(found, "approval-required")
    assert "held the session" in f.title
    assert "no SecurityResult after selecting it (deadline of 5 s" in text(f)


def test_nobody_is_asked_only_where_the_wire_showed_it() -> None:
    granted = one(grade(replay("tigervnc-none-38")), "no-auth")
    assert "nobody is asked" in granted.why
    # RFB 3.7: ServerInit comes even from vino while it holds the session for its prompt.
    for name in ("tigervnc-none-37", "x11vnc-none-33"):
        f = one(grade(replay(name)), "no-auth")
        assert "nobody is asked" not in f.why and "was not seen" in f.why, name
        assert f.title == "No authentication offered: the server asks no password of " \
                          "whoever connects", name  # not "gets the desktop": not seen
    vino = one(grade(replay("vino-noprompt-37")), "tls-no-auth")
    assert "was not seen" not in vino.why
    assert "answered within" in text(vino) and "nobody was asked" in text(vino)


def test_vino_holding_the_update_for_its_prompt_is_graded_held() -> None:
    """vino's default prompt: ServerInit comes (RFB 3.7), the update request never does."""
    found = grade(replay("vino-37"))
    assert not {"no-auth", "tls-no-auth"} & ids(found), ids(found)
    f = one(found, "approval-required")
    assert "held the session" in f.title and "nobody is asked" not in f.why
    assert "ServerInit read without a credential: desktop name \"root@vm\"" in text(f)
    assert "was not answered (no answer within 3 s)" in text(f)
    # A probe deadline that left only a short wait proves nothing either way.
    short = replace(replay("vino-37"), rfb=replace(replay("vino-37").rfb, update_seconds=0.3))
    assert "approval-required" not in ids(grade(short))
    assert "was not seen" in one(grade(short), "tls-no-auth").why
    # The same server without the prompt answers at once: no-auth, nobody asked.
    assert "approval-required" not in ids(grade(replay("vino-noprompt-plain-37")))


def test_a_3_7_server_that_never_sends_server_init_is_held() -> None:
    f37 = replace(facts(1, selected_type=1), banner="RFB 003.007\n", server_version="3.7",
                  client_version="3.7")
    held = replace(service(f37),
                   error="deadline of 5 s reached while awaiting ServerInit")
    f = one(grade(held), "approval-required")
    assert "no ServerInit after selecting it (deadline of 5 s" in text(f)
    # A deadline before anything was selected is no sign of a prompt.
    early = replace(service(replace(f37, selected_type=None)),
                    error="deadline of 5 s reached while awaiting security types")
    assert "approval-required" not in ids(grade(early))
