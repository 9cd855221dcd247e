"""The assess memo (`vncaudit.assess.memo`) and the product memo under it give exactly what
the plain computation gives.

`vncaudit.fingerprint` keeps the product decided for a set of facts (a desktop name counted
by the patterns it matches), and `vncaudit.assess` the findings of a set of facts with the
address and the desktop name left out (stand-ins replaced by each service's own). These
tests grade neighbouring facts on different addresses, warm and cold, and compare with the
uncached computation (`fingerprint._identify`, `assess._evaluate`), including facts that
contain the stand-ins themselves, desktop names that need quoting, `extra` payloads that
differ in one value or carry a stand-in, and exposures given by the caller.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vncaudit import assess as A
from vncaudit import fingerprint as F
from vncaudit.assess import memo as M
from vncaudit.models import Framebuffer, NamedType, ServiceResult, State
from vncaudit.payloads import ActiveChecks, DesktopVerdict, Extras, SuspectedHoneypot
from vncaudit.rfb import security_type_name

from rfb_helpers import replayed_session

TRANSCRIPTS = Path(__file__).parent / "transcripts"


def _replayed(name: str) -> ServiceResult:
    session, _ = replayed_session(TRANSCRIPTS / name)
    return session.result(0.0)


RECORDED = [_replayed(p.name) for p in sorted(TRANSCRIPTS.glob("*.json"))]


HOSTS = st.sampled_from([
    "8.8.8.8", "192.168.7.20", "127.0.0.1", "0.0.0.0", "::1", "2001:db8::5", "::ffff:8.8.4.4",
    "fe80::1%eth0", "vnc.example.org", M.HOST_MARK, f"a{M.HOST_MARK}b", "198.18.3.4",
])


TEXT = st.sampled_from([
    "", "LibVNCServer", "fake 198.18.0.1", "host:1", M.HOST_MARK, f"x {M.HOST_MARK}",
    "Too many authentication failures.  Client temporarily blocked", "VirtualBox",
    "license key is missing", "8.8.8.8", M.DESKTOP_MARK, f"'{M.DESKTOP_MARK}'",
    f'"{M.DESKTOP_MARK}"', "it's \"quoted\"\n", "desktop name 'x'",
]) | st.text(max_size=12)


EXTRA = st.sampled_from([
    {}, {"suspected_honeypot": {"reasons": ["security types listed more than once: [2]"]}},
    {"suspected_honeypot": {"reasons": [M.HOST_MARK]}}, {"tls": {"version": "TLSv1.3"}},
    {"active": {"unoffered_none": {"status": "vulnerable"}}},
    {"active": {"unoffered_none": {"status": "not-vulnerable"}}},
    {"active": {"desktop_kind": {"kind": "desktop", "confidence": 0.8, "evidence": ["a"]}}},
    {"active": {"desktop_kind": {"kind": "desktop", "confidence": 0.9, "evidence": ["a"]}}},
    {"web": {"http": {"server": "WebSockify Python/3.11", "kind": "novnc"}}},
]).map(Extras.from_dict)


@st.composite
def results(draw: st.DrawFn) -> ServiceResult:
    base = draw(st.sampled_from(RECORDED))
    rfb = base.rfb
    if rfb is not None and draw(st.booleans()):
        rfb = replace(rfb, desktop_name=draw(TEXT))  # e.g. the stand-in itself
    elif rfb is not None and draw(st.booleans()):
        types = draw(st.lists(st.sampled_from([1, 2, 5, 16, 18, 19, 30, 33, 13]), max_size=4))
        rfb = replace(
            rfb,
            security_types=tuple(NamedType(t, security_type_name(t)) for t in types),
            desktop_name=draw(st.none() | TEXT),
            failure_reason=draw(st.none() | TEXT),
            framebuffer=draw(st.none() | st.just(Framebuffer(1024, 768, 24, 32, False, True,
                                                             draw(st.sampled_from([1, 255]))))),
        )
    return replace(
        base, rfb=rfb, port=draw(st.sampled_from([5900, 5901, 443, 6080])),
        state=draw(st.sampled_from([base.state, State.VNC, State.BLACKLISTED,
                                    State.MALFORMED])),
        error=draw(st.none() | TEXT), extra=draw(EXTRA),
    )


def _clear() -> None:
    M.MEMO.data.clear()
    M.GRADED.data.clear()
    F.shipped().memo.data.clear()


def _reference(result: ServiceResult, exposure: A.Exposure | None) -> ServiceResult:
    """The plain computation: no memo anywhere."""
    product = F.identify_unmemoised(F.facts_of(result), result.rfb is None, F.shipped())
    derived = A.exposure_of(result.host)
    chosen = A.Exposure(exposure) if exposure is not None else derived
    findings = A.evaluate_unmemoised(result, product, chosen, chosen is not derived, result.host)
    return replace(result, product=product, findings=findings)


@st.composite
def neighbours(draw: st.DrawFn) -> tuple[ServiceResult, ServiceResult]:
    """Two results that differ in one thing the memo must tell apart (or in nothing)."""
    a = draw(results())
    what = draw(st.sampled_from(["same", "desktop", "failure", "error", "port", "state",
                                 "extra", "types", "framebuffer"]))
    rfb = a.rfb
    if what == "same":
        return a, a
    if what in ("desktop", "failure", "types", "framebuffer") and rfb is not None:
        if what == "desktop":
            rfb = replace(rfb, desktop_name=draw(st.none() | TEXT))
        elif what == "failure":
            rfb = replace(rfb, failure_reason=draw(st.none() | TEXT))
        elif what == "types":
            types = draw(st.lists(st.sampled_from([1, 2, 5, 16, 18, 19, 30, 33]), max_size=3))
            rfb = replace(rfb, security_types=tuple(NamedType(t, security_type_name(t))
                                                    for t in types))
        else:
            rfb = replace(rfb, framebuffer=None if rfb.framebuffer else
                          Framebuffer(800, 600, 24, 32, False, True, 255))
        return a, replace(a, rfb=rfb)
    if what == "error":
        return a, replace(a, error=draw(st.none() | TEXT))
    if what == "port":
        return a, replace(a, port=draw(st.sampled_from([5900, 5901, 443, 6080])))
    if what == "state":
        return a, replace(a, state=draw(st.sampled_from(list(State))))
    return a, replace(a, extra=draw(EXTRA))


@pytest.mark.slow  # 400 examples: about 15 s
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(neighbours(), HOSTS, HOSTS, st.none() | st.sampled_from(list(A.Exposure)))
def test_memoised_grading_equals_the_plain_computation(
    pair: tuple[ServiceResult, ServiceResult], first: str, second: str,
    exposure: A.Exposure | None,
) -> None:
    a, b = pair
    _clear()
    warm = A.assess(replace(a, host=first), exposure)  # fills the memos
    got = A.assess(replace(b, host=second), exposure)  # served from them where keys agree
    want = _reference(replace(b, host=second), exposure)
    assert got.product == want.product
    assert got.findings == want.findings
    assert warm == _reference(replace(a, host=first), exposure)
    _clear()
    assert A.assess(replace(b, host=second), exposure).findings == want.findings


def test_the_memo_is_used_and_the_address_is_each_services_own() -> None:
    _clear()
    recorded = next(r for r in RECORDED if r.rfb is not None and r.rfb.desktop_name is None)
    a = A.assess(replace(recorded, host="8.8.8.8"))
    b = A.assess(replace(recorded, host="1.1.1.1"))
    assert len(M.MEMO.data) == 1  # one key for both addresses
    texts = [e for f in b.findings for e in f.evidence]
    assert any("1.1.1.1" in t for t in texts)
    assert not any("8.8.8.8" in t or M.HOST_MARK in t for t in texts)
    assert [f.id for f in a.findings] == [f.id for f in b.findings]


def test_swapped_rules_void_the_memo(monkeypatch: Any) -> None:
    _clear()
    recorded = next(r for r in RECORDED if r.rfb is not None)
    before = A.assess(recorded).findings
    assert before
    monkeypatch.setattr(A, "RULES", ())
    assert A.assess(recorded).findings == ()


def _both_ways(a: ServiceResult, b: ServiceResult) -> None:
    """Grade `a` (filling the memo), then `b`; `b` must come out as the plain computation."""
    _clear()
    A.assess(a)
    got = A.assess(b)
    want = _reference(b, None)
    assert (got.product, got.findings) == (want.product, want.findings)


def test_facts_holding_the_stand_in_are_never_memoised() -> None:
    none38 = next(r for r in RECORDED if r.rfb is not None and r.rfb.desktop_name is not None)
    assert none38.rfb is not None
    odd = replace(none38, rfb=replace(none38.rfb, desktop_name=f"desk {M.HOST_MARK}"))
    _both_ways(replace(odd, host="8.8.8.8"), replace(odd, host="10.1.2.3"))
    texts = [e for f in A.assess(replace(odd, host="10.1.2.3")).findings for e in f.evidence]
    assert any(M.HOST_MARK in t for t in texts)  # the server's own text, kept as it was
    broken = replace(none38, state=State.MALFORMED, error=f"bad {M.HOST_MARK}")
    _both_ways(replace(broken, host="8.8.8.8"), replace(broken, host="10.1.2.3"))


def test_payloads_that_differ_in_one_value_get_their_own_findings() -> None:
    base = next(r for r in RECORDED if r.rfb is not None)
    two = base.with_extra(suspected_honeypot=SuspectedHoneypot(("a", "b")))
    one = base.with_extra(suspected_honeypot=SuspectedHoneypot(("a",)))
    _both_ways(two, one)
    _both_ways(one, two)
    sure = base.with_extra(active=ActiveChecks(desktop_kind=DesktopVerdict("desktop", 0.9)))
    unsure = base.with_extra(active=ActiveChecks(desktop_kind=DesktopVerdict("desktop", 0.8)))
    _both_ways(sure, unsure)


def test_copied_is_dataclasses_replace() -> None:
    from vncaudit.models import Finding, Product, Severity

    for base in RECORDED:
        assert base.rfb is not None
        full = replace(base, product=Product("x", "1", 0.5, ("e",)), hostname="h.example",
                       error="e", elapsed=1.25,
                       findings=(Finding("f", Severity.HIGH, "t", ("ev",), "w", ("r",)),))
        for changes in ({"product": None, "findings": ()}, {"host": "10.0.0.1"}):
            got = M.copied(full, **changes)
            assert got == replace(full, **changes) and got.to_dict() == replace(
                full, **changes).to_dict() and type(got) is ServiceResult
            assert hash(got) == hash(replace(full, **changes))
        rfb = M.copied(base.rfb, desktop_name=M.DESKTOP_MARK)
        assert rfb == replace(base.rfb, desktop_name=M.DESKTOP_MARK) and base.rfb.desktop_name \
            != M.DESKTOP_MARK
    with pytest.raises(TypeError):  # a field the type does not have: replace's own error
        M.copied(RECORDED[0], nonsense=1)


def test_a_service_graded_like_one_before_is_not_identified_again(monkeypatch: Any) -> None:
    """`GRADED` keeps the product with the findings: the second service with the same facts
    (another address, another desktop name matching the same patterns) skips the product
    look-up, and still comes out as the plain computation, with its own address and name."""
    base = next(r for r in RECORDED if r.rfb is not None and r.rfb.desktop_name is not None)
    assert base.rfb is not None
    one = replace(base, host="8.8.8.8", rfb=replace(base.rfb, desktop_name="fake 198.18.0.1"))
    two = replace(base, host="1.1.1.1", rfb=replace(base.rfb, desktop_name="fake 198.18.7.9"))
    assert F.desktop_slot("fake 198.18.0.1") == F.desktop_slot("fake 198.18.7.9")
    _clear()
    calls: list[str] = []
    identify = A.identify_product

    def counted(result: ServiceResult) -> Any:
        calls.append(result.host)
        return identify(result)

    monkeypatch.setattr(A, "identify_product", counted)
    first, second = A.assess(one), A.assess(two)
    assert calls == ["8.8.8.8"] and len(M.GRADED.data) == 1
    for got, result in ((first, one), (second, two)):
        want = _reference(result, None)
        assert (got.product, got.findings) == (want.product, want.findings)
    assert second.product is not None
    shown = " ".join(second.product.evidence) + " ".join(
        e for f in second.findings for e in (f.title, f.why, *f.evidence))
    assert "198.18.0.1" not in shown and "8.8.8.8" not in shown and M.DESKTOP_MARK not in shown
    # Another exposure is another entry: the product look-up runs again.
    A.assess(two, A.Exposure.PRIVATE)
    assert calls == ["8.8.8.8", "1.1.1.1"]
