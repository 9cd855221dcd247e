"""Unit tests of the sans-IO RFB client from byte fixtures: one test per protocol branch."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vncaudit import rfb
from vncaudit.exceptions import (
    LimitExceededError,
    LocalProtocolError,
    NotRfbError,
    ProtocolError,
    RemoteProtocolError,
)
from vncaudit.models import Capability

from rfb_helpers import (
    banner,
    cap,
    drive_events,
    new_session,
    reason,
    server_init,
    type_list,
    u32,
)


def events_of(client: rfb.RfbClient, data: bytes) -> list[object]:
    client.receive_data(data)
    out = []
    while (ev := client.next_event()) is not rfb.NEED_DATA:
        out.append(ev)
    return out


# -- ProtocolVersion ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("server", "answer"),
    [
        ((3, 3), (3, 3)),
        ((3, 5), (3, 3)),
        ((3, 6), (3, 3)),
        ((3, 4), (3, 3)),
        ((3, 7), (3, 7)),
        ((3, 8), (3, 8)),
        ((3, 14), (3, 3)),
        ((3, 16), (3, 3)),
        ((3, 18), (3, 8)),
        ((3, 889), (3, 8)),
        ((4, 0), (3, 8)),
        ((4, 1), (3, 8)),
        ((5, 0), (3, 8)),
    ],
)
def test_version_answers(server: tuple[int, int], answer: tuple[int, int]) -> None:
    client = rfb.RfbClient()
    (ev,) = events_of(client, banner(*server))
    assert ev == rfb.ServerVersion(banner(*server), server[0], server[1], answer)
    assert client.data_to_send() == b"RFB %03d.%03d\n" % answer
    assert client.state is rfb.State.SECURITY


def test_version_string_keeps_odd_minor() -> None:
    (ev,) = events_of(rfb.RfbClient(), banner(3, 889))
    assert isinstance(ev, rfb.ServerVersion)
    assert ev.version == "3.889"


def test_repeater_version_is_not_answered() -> None:
    client = rfb.RfbClient()
    (ev,) = events_of(client, b"RFB 000.000\n")
    assert ev == rfb.ServerVersion(b"RFB 000.000\n", 0, 0, None)
    assert client.data_to_send() == b""
    assert client.state is rfb.State.CLOSED


def test_banner_in_fragments_and_glued_to_list() -> None:
    client = rfb.RfbClient()
    assert events_of(client, b"RFB 00") == []
    evs = events_of(client, b"3.008\n" + type_list(2))
    assert evs[1] == rfb.SecurityTypes((2,))


@pytest.mark.parametrize("data", [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 400 Bad", b"\x16\x03\x01"])
def test_not_rfb(data: bytes) -> None:
    with pytest.raises(NotRfbError) as info:
        events_of(rfb.RfbClient(), data)
    assert info.value.first_bytes == data


@pytest.mark.parametrize("data", [b"RFB 003.008\r\n", b"RFB 3.8\n12345", b"RFB 240.6\n\0\x02"])
def test_malformed_banner(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed RFB banner"):
        events_of(rfb.RfbClient(), data)


def test_banner_cut_short_by_eof() -> None:
    client = rfb.RfbClient()
    events_of(client, b"RFB 003")
    client.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="unparsed"):
        client.next_event()


def test_close_before_anything_is_connection_closed() -> None:
    client = rfb.RfbClient()
    client.receive_data(b"")
    assert client.next_event() == rfb.ConnectionClosed()


def test_errors_are_sticky() -> None:
    client = rfb.RfbClient()
    with pytest.raises(NotRfbError):
        events_of(client, b"GET / HTTP/1.0\r\n")
    with pytest.raises(NotRfbError):
        client.next_event()
    assert client.state is rfb.State.ERROR


# -- security negotiation --------------------------------------------------------------------

def test_38_list() -> None:
    client = rfb.RfbClient()
    evs = events_of(client, banner() + type_list(19, 2))
    assert evs[1] == rfb.SecurityTypes((19, 2))
    assert client.state is rfb.State.CHOOSE_TYPE


def test_37_list_then_none_goes_straight_to_init() -> None:
    client = rfb.RfbClient()
    events_of(client, banner(3, 7) + type_list(1, 2))
    client.data_to_send()
    client.select_security_type(1)
    assert client.data_to_send() == b"\x01"
    assert client.state is rfb.State.CLIENT_INIT  # no SecurityResult before 3.8


def test_38_failure_reason_is_blacklist() -> None:
    client = rfb.RfbClient()
    evs = events_of(client, banner() + b"\x00" + reason(b"Too many security failures"))
    assert evs[1] == rfb.Failure("Too many security failures", "security",
                                 b"Too many security failures")
    assert evs[1].blacklisted  # type: ignore[attr-defined]
    assert client.state is rfb.State.CLOSED


def test_33_blacklisted_tigervnc() -> None:
    # TigerVNC sends this unsolicited to a blacklisted address, with a forced 3.3 banner.
    data = b"RFB 003.003\n" + u32(0, 26) + b"Too many security failures"
    evs = events_of(rfb.RfbClient(), data)
    assert isinstance(evs[1], rfb.Failure) and evs[1].blacklisted


def test_failure_that_is_not_blacklist() -> None:
    text = b"Server license key is missing, invalid or has expired."
    evs = events_of(rfb.RfbClient(), banner() + b"\x00" + reason(text))
    assert isinstance(evs[1], rfb.Failure) and not evs[1].blacklisted


def test_a_33_form_refusal_after_a_38_banner_is_read_whole() -> None:
    # RealVNC refuses unlicensed connections unasked in the RFB 3.3 form (U32 0, U32 length,
    # text) after whatever banner it sent (nmap-service-probes' NULL-probe matches).
    text = b"VNC Server is not licensed correctly.\n\nConnections will be prohibited until a valid"
    client = rfb.RfbClient()
    evs = events_of(client, banner() + u32(0) + reason(text))
    assert evs[1] == rfb.Failure(text.decode(), "security", text)
    assert client.buffered == 0


def test_an_empty_38_reason_is_read_at_the_close() -> None:
    client = rfb.RfbClient()
    assert [type(e) for e in events_of(client, banner() + b"\x00" + u32(0))] == [
        rfb.ServerVersion]
    client.receive_data(b"")
    assert client.next_event() == rfb.Failure("", "security", b"")


def test_qemu_nul_terminated_reason_is_trimmed_but_kept_raw() -> None:
    evs = events_of(rfb.RfbClient(), banner() + b"\x00" + reason(b"Authentication failed\0"))
    assert evs[1].reason == "Authentication failed"  # type: ignore[attr-defined]
    assert evs[1].raw_reason.endswith(b"\0")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("word", "state"), [(1, rfb.State.CLIENT_INIT),
                                             (2, rfb.State.VNCAUTH_CHALLENGE),
                                             (0xFFFFFFFA, rfb.State.CLOSED)])
def test_33_server_chosen(word: int, state: rfb.State) -> None:
    client = rfb.RfbClient()
    evs = events_of(client, banner(3, 3) + u32(word))
    assert evs[1] == rfb.SecurityTypes((word,), server_chosen=True)
    assert client.state is state


def test_33_vnc_auth_challenge_follows_word() -> None:
    client = rfb.RfbClient()
    evs = events_of(client, banner(3, 3) + u32(2) + bytes(range(16)))
    assert evs[2] == rfb.VncAuthChallenge(bytes(range(16)))
    assert client.state is rfb.State.VNCAUTH_RESPONSE
    client.send_vnc_auth_response(b"\xaa" * 16)
    assert client.state is rfb.State.SECURITY_RESULT


def test_reason_length_cap() -> None:
    client = rfb.RfbClient(rfb.Limits(max_reason_length=100))
    with pytest.raises(LimitExceededError, match="0xFFFFFFFF|4294967295"):
        events_of(client, banner() + b"\x00" + u32(0xFFFFFFFF))


def test_names() -> None:
    assert rfb.security_type_name(2) == "VNC Authentication"
    assert rfb.security_type_name(113) == "MS-Logon II"
    assert rfb.security_type_name(129) == "RA2_256"
    assert rfb.security_type_name(30) == "Apple Remote Desktop (DH)"
    assert rfb.security_type_name(9) == "RealVNC (9)"
    assert rfb.security_type_name(77) == "Unknown (77)"
    assert rfb.vencrypt_subtype_name(2) == "VNC Authentication"
    assert rfb.vencrypt_subtype_name(258) == "TLSVnc"
    assert rfb.vencrypt_subtype_name(999) == "Unknown (999)"
    for n in (*range(256, 268), 1, 2):
        assert not rfb.vencrypt_subtype_name(n).startswith("Unknown")


# -- None, SecurityResult, ServerInit --------------------------------------------------------

def test_none_38_full() -> None:
    data = banner() + type_list(1) + u32(0) + server_init(800, 600, b"x11 desk")
    evs, sent, _ = drive_events([data])
    assert evs[2] == rfb.SecurityResult(0)
    init = evs[3]
    assert isinstance(init, rfb.ServerInit)
    assert (init.width, init.height, init.name, init.pixel_format.depth) == (800, 600,
                                                                            "x11 desk", 24)
    assert sent == b"RFB 003.008\n" + b"\x01" + b"\x01"  # version, select None, shared init


def test_security_result_failure_38_has_reason() -> None:
    client = rfb.RfbClient()
    events_of(client, banner() + type_list(2))
    client.select_security_type(2)
    events_of(client, bytes(16))
    client.send_vnc_auth_response(bytes(16))
    evs = events_of(client, u32(1) + reason(b"Authentication failed"))
    assert evs == [rfb.SecurityResult(1, "Authentication failed")]


def test_security_result_failure_37_has_no_reason() -> None:
    client = rfb.RfbClient()
    events_of(client, banner(3, 7) + type_list(2))
    client.select_security_type(2)
    events_of(client, bytes(16))
    client.send_vnc_auth_response(bytes(16))
    assert events_of(client, u32(1)) == [rfb.SecurityResult(1)]


def test_server_init_name_cap() -> None:
    client = rfb.RfbClient(rfb.Limits(max_name_length=64))
    events_of(client, banner() + type_list(1))
    client.select_security_type(1)
    events_of(client, u32(0))
    client.send_client_init()
    head = server_init(name=b"")[:20] + u32(0xFFFFFFFF)
    with pytest.raises(LimitExceededError, match="desktop name"):
        events_of(client, head)


def test_server_init_latin1_name_is_replaced_not_crashing() -> None:
    evs, _, _ = drive_events([banner() + type_list(1) + u32(0) + server_init(name=b"caf\xe9")])
    assert evs[-1].name == "caf\ufffd"  # type: ignore[attr-defined]


# -- VeNCrypt ----------------------------------------------------------------------------------

def test_vencrypt_subtypes_tigervnc_default() -> None:
    data = banner() + type_list(19, 2) + b"\x00\x02" + b"\x00" + b"\x02" + u32(258, 2)
    evs, sent, _ = drive_events([data])
    assert evs[2] == rfb.VeNCryptSubtypes((0, 2), (258, 2))
    assert sent == b"RFB 003.008\n\x13\x00\x02"  # select 19, answer 0.2, then stop


def test_vencrypt_tlsnone_goes_to_tls_then_result() -> None:
    data = banner() + type_list(19, 19, 2) + b"\x00\x02\x00\x03" + u32(258, 2, 257) + b"\x01"
    after_tls = u32(0) + server_init(name=b"root@vm")
    evs, sent, session = drive_events([data, after_tls])
    assert rfb.StartTls(anonymous=True) in evs
    assert isinstance(evs[-1], rfb.ServerInit)
    assert sent.endswith(u32(257) + b"\x01")
    assert session.facts["vencrypt"].subtypes[2].name == "TLSNone"


def test_vencrypt_old_version_unsupported() -> None:
    client = rfb.RfbClient()
    events_of(client, banner() + type_list(19))
    client.select_security_type(19)
    assert events_of(client, b"\x00\x01") == [
        rfb.Unsupported("VeNCrypt version 0.1 (this client speaks 0.2)")
    ]


def test_vencrypt_ack_refused() -> None:
    client = rfb.RfbClient()
    events_of(client, banner() + type_list(19))
    client.select_security_type(19)
    evs = events_of(client, b"\x00\x02\xff")
    assert isinstance(evs[0], rfb.Unsupported)


# -- Tight -------------------------------------------------------------------------------------

def test_tight_caps_with_tunnel_and_auth() -> None:
    client = rfb.RfbClient()
    events_of(client, banner(3, 7) + type_list(16))
    client.data_to_send()
    client.select_security_type(16)
    data = u32(1) + cap(0, b"TGHT", b"NOTUNNEL") + u32(2) + cap(1, b"STDV", b"NOAUTH__") + cap(
        2, b"STDV", b"VNCAUTH_")
    (ev,) = events_of(client, data)
    assert ev == rfb.TightCapabilities(
        (Capability(0, "TGHT", "NOTUNNEL"),),
        (Capability(1, "STDV", "NOAUTH__"), Capability(2, "STDV", "VNCAUTH_")),
    )
    assert client.data_to_send() == b"\x10" + u32(0)  # NOTUNNEL only because tunnels > 0


def test_tight_zero_auth_proceeds_with_interaction_caps() -> None:
    data = banner() + type_list(16) + u32(0) + u32(0) + u32(0)
    init = server_init(name=b"tight") + b"\x00\x01\x00\x00\x00\x01\x00\x00"
    init += cap(150, b"TGHT", b"FTS_LSDT") + cap(7, b"TGHT", b"TIGHT___")
    evs, sent, _ = drive_events([data, init])
    assert evs[2] == rfb.TightCapabilities((), ())
    last = evs[-1]
    assert isinstance(last, rfb.ServerInit) and last.name == "tight"
    assert last.tight_interaction is not None and len(last.tight_interaction) == 2
    assert sent == b"RFB 003.008\n\x10\x01"  # no NOTUNNEL (no tunnels), then ClientInit


def test_tight_capability_count_cap() -> None:
    client = rfb.RfbClient()
    events_of(client, banner() + type_list(16))
    client.select_security_type(16)
    with pytest.raises(LimitExceededError, match="Tight tunnel count"):
        events_of(client, u32(0x10000))


def test_aten_ikvm_tight_variant_is_its_24_bytes_not_a_tunnel_list() -> None:
    # docs/rfb.md §4.3: a first word above 0x10000 is ATEN's, read whole even when split.
    client = rfb.RfbClient()
    events_of(client, banner() + type_list(16))
    client.select_security_type(16)
    blob = u32(0x7FFFFFFF) + bytes(range(20))
    assert events_of(client, blob[:10]) == []
    assert events_of(client, blob[10:]) == [rfb.AtenTight(blob)]
    assert client.state is rfb.State.ATEN_CREDENTIALS and not client.their_turn
    assert client.data_to_send() == b"RFB 003.008\n\x10"  # no tunnel choice, no credentials
    # More than the 24 bytes before the client spoke: not ATEN, a count over the cap.
    other = rfb.RfbClient()
    events_of(other, banner() + type_list(16))
    other.select_security_type(16)
    with pytest.raises(LimitExceededError, match="Tight tunnel count"):
        events_of(other, blob + bytes(8))


# -- TLS type 18 -------------------------------------------------------------------------------

def test_tls_type_18_inner_list() -> None:
    evs, sent, session = drive_events([banner() + type_list(18), type_list(2)])
    assert rfb.StartTls(anonymous=True) in evs
    assert evs[-1] == rfb.SecurityTypes((2,), inside_tls=True)
    assert [t.id for t in session.facts["tls_inner_types"]] == [2]


# -- local errors ------------------------------------------------------------------------------

def test_local_misuse() -> None:
    client = rfb.RfbClient()
    with pytest.raises(LocalProtocolError):
        client.select_security_type(1)
    events_of(client, banner() + type_list(2))
    with pytest.raises(LocalProtocolError):
        client.select_security_type(300)
    with pytest.raises(LocalProtocolError):
        client.send_client_init()


def test_flood_is_capped() -> None:
    client = rfb.RfbClient(rfb.Limits(max_buffer=1000))
    client.receive_data(b"RFB 003.00")
    client.receive_data(b"x" * 5000)
    assert client.buffered <= 1000
    with pytest.raises(LimitExceededError):
        client.next_event()


# -- properties --------------------------------------------------------------------------------

VALID_TRANSCRIPTS = [
    banner() + type_list(1) + u32(0) + server_init(name=b"abc"),
    banner() + type_list(19, 19, 2) + b"\x00\x02\x00\x03" + u32(258, 2, 257) + b"\x01" + u32(0)
    + server_init(),
    banner(3, 7) + type_list(16) + u32(0) + u32(1) + cap(2, b"STDV", b"VNCAUTH_"),
    banner(3, 3) + u32(0, 26) + b"Too many security failures",
    banner(5, 0) + type_list(13, 5, 6, 130, 192),
    banner(3, 889) + type_list(30, 33, 36),
    banner() + type_list(18) + type_list(1) + u32(0) + server_init(),
]


@given(st.sampled_from(VALID_TRANSCRIPTS), st.data())
def test_fragmentation_does_not_change_events(transcript: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, len(transcript) - 1), max_size=12)))
    chunks = [transcript[a:b] for a, b in zip([0, *cuts], [*cuts, len(transcript)], strict=True)]
    whole, sent_whole, _ = drive_events([transcript])
    pieces, sent_pieces, _ = drive_events(chunks)
    assert pieces == whole
    assert sent_pieces == sent_whole


LIMITS = rfb.Limits(max_reason_length=512, max_name_length=512, max_tight_capabilities=8,
                    max_buffer=4096)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=600), max_size=12), st.sampled_from([b"", b"RFB 003.008\n",
                                                                        b"RFB 003.003\n",
                                                                        b"RFB 003.007\n"]))
def test_arbitrary_bytes_only_protocol_errors(chunks: list[bytes], prefix: bytes) -> None:
    from vncaudit.probe import ProbeOptions

    session = new_session(ProbeOptions(limits=LIMITS))
    try:
        drive_events([prefix, *chunks], session=session)
    except ProtocolError:
        pass
    assert session.client.buffered <= LIMITS.max_buffer
