"""The typed payloads of `ServiceResult.extra`: their schema-v1 shape, and reading it back.

The shapes pinned here are what reports and store rows hold (result schema v1): a store row
written before the payloads were typed must read back to the same JSON text, and any payload
the types allow must survive `to_dict` → JSON → `from_dict` unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vncaudit.models import ServiceResult, State
from vncaudit.payloads import (
    ActiveChecks,
    AuthCheck,
    BypassCheck,
    DesktopFeatures,
    DesktopVerdict,
    Extras,
    HandshakeRecord,
    HoneypotChecks,
    LocalBinding,
    PasswordAttempt,
    PasswordAudit,
    PayloadHolder,
    ScreenRegion,
    ScreenshotCheck,
    ScreenSize,
    SuspectedHoneypot,
    TlsSession,
    UpgradeAttempt,
    WebFacts,
    WebFrontEnd,
    WebSocketEndpoint,
)


def text(value: Any) -> str:
    return json.dumps(value)


# A store row of a TigerVNC VeNCrypt server scanned with --active-checks --screenshot
# --password --check-passwords (written by vncaudit before the payloads were typed; elapsed
# values shortened).
STORED_EXTRA: dict[str, Any] = {
    "tls": {"version": "TLSv1.2", "cipher": "AECDH-AES256-SHA", "anonymous": True,
            "certificate": False},
    "honeypot_checks": {"unassigned_type_77": "closed", "challenge_random": True,
                        "connections": 2},
    "active": {
        "auth": {"outcome": "ok", "server_version": "3.8", "offered_types": [19, 2],
                 "security_path": ["VNC Authentication"], "security_result": "ok",
                 "reason": None, "desktop_name": "vncaudit-tiger",
                 "framebuffer": {"width": 800, "height": 600, "depth": 24}, "elapsed": 0.0123,
                 "password": "secret12", "password_shown": True},
        "screenshot": {"status": "ok", "path": "/tmp/shots/127.0.0.1_5900.png", "width": 800,
                       "height": 600, "coverage": 1.0, "desktop_name": "vncaudit-tiger",
                       "security_path": ["VNC Authentication"], "outcome": "ok",
                       "reason": None, "encodings": {"ZRLE": 12, "Raw": 1},
                       "bytes_received": 20482, "updates": 2, "elapsed": 0.91},
        "desktop_kind": {"kind": "blank", "confidence": 0.6,
                         "evidence": ["geometry 800x600",
                                      "uniform screen: no window, panel or dialog"],
                         "features": {"background_share_of_border": 1.0,
                                      "foreground_share": 0.0, "components": []}},
        "unoffered_none": {"status": "not-vulnerable",
                           "cves": ["CVE-2006-2369", "CVE-2006-2450"],
                           "offered_types": [19, 2],
                           "evidence": "offered [19, 2], selected 1 (None): server closed "
                                       "the connection",
                           "handshake": {"outcome": "refused", "server_version": "3.8",
                                         "offered_types": [19, 2], "security_path": ["None"],
                                         "security_result": None,
                                         "reason": "server closed the connection",
                                         "desktop_name": None, "framebuffer": None,
                                         "elapsed": 0.0031}},
        "password_audit": {"status": "found", "found": True, "password": "secret12",
                           "password_shown": True, "source": "wordlist", "candidates": 3,
                           "attempts": 1, "max_attempts": 3, "budget": 2,
                           "connections_before": 2, "stop_reason": "password accepted",
                           "security_path": ["VNC Authentication"],
                           "results": [{"attempt": 1, "outcome": "ok", "reason": None,
                                        "elapsed": 0.0101}],
                           "server_init": {"outcome": "ok", "server_version": "3.8",
                                           "offered_types": [19, 2],
                                           "security_path": ["VNC Authentication"],
                                           "security_result": "ok", "reason": None,
                                           "desktop_name": "vncaudit-tiger",
                                           "framebuffer": {"width": 800, "height": 600,
                                                           "depth": 24},
                                           "elapsed": 0.0101},
                           "tried_all": False},
    },
}
WEB_EXTRA: dict[str, Any] = {
    "web": {"transport": "websocket",
            "http": {"kind": "websockify", "server": "WebSockify Python/3.11.2",
                     "title": "Error response", "status": 405, "applet_port": None,
                     "evidence": ["HTTP 405", "Server: WebSockify Python/3.11.2"]},
            "websocket": {"url": "ws://127.0.0.1:6080/websockify", "path": "/websockify",
                          "subprotocol": "binary", "server": None, "frames_received": 8},
            "attempts": [{"path": "/websockify", "status": 404, "error": "upgrade refused: "
                          "HTTP 404 Not Found", "server": "nginx"},
                         {"path": "/", "status": 101}]},
}
ODD_EXTRA: dict[str, Any] = {
    "protocol_guess": "ssh",
    "suspected_honeypot": {"reasons": ["accepted unassigned security type 77"]},
    "web": {"transport": None, "http": {"kind": "none", "error": "no HTTP answer"},
            "websocket": None, "attempts": [{"path": "/websockify", "error": "timed out"}]},
    "active": {"screenshot": {"status": "skipped", "reason": "authentication required"}},
    "local": {"bind": "0.0.0.0", "scope": "public"},
}


def test_stored_rows_read_back_to_the_same_json_text() -> None:
    for extra in (STORED_EXTRA, WEB_EXTRA, ODD_EXTRA, {"active": {"error": "OSError: x"}}):
        read = Extras.from_dict(extra)
        assert text(read.to_dict()) == text(extra)
        row = {**ServiceResult("127.0.0.1", 5900, State.VNC).to_dict(), "extra": extra}
        assert text(ServiceResult.from_dict(row).to_dict()) == text(row)


def test_consumers_read_attributes() -> None:
    extra = Extras.from_dict(STORED_EXTRA)
    assert extra.tls == TlsSession("TLSv1.2", "AECDH-AES256-SHA", True, False)
    assert extra.honeypot_checks == HoneypotChecks(77, "closed", 2, True, None)
    active = extra.active
    assert active is not None and active.auth is not None and active.screenshot is not None
    assert active.auth.handshake.framebuffer == ScreenSize(800, 600, 24)
    assert active.screenshot.taken and active.screenshot.encodings == (("ZRLE", 12), ("Raw", 1))
    assert active.desktop_kind == DesktopVerdict(
        "blank", 0.6, ("geometry 800x600", "uniform screen: no window, panel or dialog"),
        DesktopFeatures(1.0, 0.0, ()))
    assert active.password_audit is not None and active.password_audit.found
    assert active.password_audit.results == (PasswordAttempt(1, "ok", None, 0.0101),)
    assert active.unoffered_none is not None and active.unoffered_none.status == "not-vulnerable"
    web = Extras.from_dict(WEB_EXTRA).web
    assert web is not None and web.servers == ("WebSockify Python/3.11.2", "nginx")
    assert web.attempts[1] == UpgradeAttempt("/", 101)


def test_results_with_payloads_are_hashable_and_compare_by_value() -> None:
    a = ServiceResult.from_dict({**ServiceResult("h", 1, State.VNC).to_dict(),
                                 "extra": STORED_EXTRA})
    b = ServiceResult.from_dict(json.loads(json.dumps(a.to_dict())))
    assert a == b and hash(a) == hash(b)
    assert a != a.with_extra(tls=None)
    assert not Extras() and ServiceResult("h", 1, State.VNC).to_dict().get("extra") is None


def test_each_payload_keeps_the_schema_shape() -> None:
    # Optional keys are left out, in the places reports always had them.
    assert HoneypotChecks(77, "accepted", 3, True, False).to_dict() == {
        "unassigned_type_77": "accepted", "challenge_random": True,
        "challenge_repeated": False, "connections": 3}
    assert list(HoneypotChecks(77, "closed", 1).to_dict()) == ["unassigned_type_77",
                                                               "connections"]
    assert WebFacts("none", error="refused").to_dict() == {"kind": "none", "error": "refused"}
    assert ScreenshotCheck("skipped", "no").to_dict() == {"status": "skipped", "reason": "no"}
    assert list(WebSocketEndpoint("ws://h/", "/", None, None).to_dict()) == [
        "url", "path", "subprotocol", "server"]
    assert DesktopFeatures().to_dict() == {}
    assert ScreenRegion(1, 2, 3, 4).to_dict() == {"x": 1, "y": 2, "width": 3, "height": 4}
    assert LocalBinding("::1", "loopback").to_dict() == {"bind": "::1", "scope": "loopback"}
    assert SuspectedHoneypot(("a",)).to_dict() == {"reasons": ["a"]}
    record = HandshakeRecord("timeout", reason="no result within 15 s")
    assert list(AuthCheck(record, "********", False).to_dict())[-2:] == ["password",
                                                                         "password_shown"]
    assert BypassCheck("not-applicable", ("CVE-2006-2369",)).to_dict()["handshake"] is None
    audit = PasswordAudit("skipped", "builtin", 30, 3, 0, 4)
    assert audit.to_dict()["security_path"] is None and audit.to_dict()["results"] == []
    assert WebFrontEnd().to_dict() == {"transport": None, "http": None, "websocket": None,
                                       "attempts": []}
    assert ActiveChecks(error="x").to_dict() == {"error": "x"}


def test_a_screenshot_for_clients_is_named_by_url_not_by_path() -> None:
    active = Extras.from_dict(STORED_EXTRA).active
    assert active is not None and active.screenshot is not None
    shown = ScreenshotCheck.from_dict({**active.screenshot.to_dict(), "path": None})
    public = type(shown)(**{**{f.name: getattr(shown, f.name) for f in fields(shown)},
                            "url": "/api/x.png", "client_view": True})
    out = public.to_dict()
    assert "path" not in out and list(out)[-1] == "url" and out["url"] == "/api/x.png"
    assert ScreenshotCheck.from_dict(out) == public


@settings(max_examples=300, deadline=None)
@given(st.from_type(Extras))
def test_any_payload_survives_json(extra: Extras) -> None:
    once = json.dumps(extra.to_dict())
    back = Extras.from_dict(json.loads(once))
    assert json.dumps(back.to_dict()) == once
    hash(back)


# How a new payload kind is added (payloads' docstring): a frozen dataclass with
# to_dict/from_dict, and one optional field on a holder (`Extras`, or `ActiveChecks`).


@dataclass(frozen=True)
class NotReprobed:
    facts_from: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"facts_from": self.facts_from, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NotReprobed:
        return cls(d["facts_from"], d["reason"])


@dataclass(frozen=True)
class MoreExtras(PayloadHolder):
    tls: TlsSession | None = None
    not_reprobed: NotReprobed | None = None


def test_one_more_kind_is_one_dataclass_and_one_field() -> None:
    more = MoreExtras(not_reprobed=NotReprobed("2026-01-01T00:00:00Z", "budget spent"))
    doc = {"not_reprobed": {"facts_from": "2026-01-01T00:00:00Z", "reason": "budget spent"}}
    assert more.to_dict() == doc and MoreExtras.from_dict(doc) == more
    assert MoreExtras.from_dict({}) == MoreExtras() and not MoreExtras()
    assert MoreExtras.from_dict({**doc, "written_by_a_newer_version": 1}) == more
