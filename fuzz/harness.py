"""The fuzz target, free of atheris: `check(data)` runs one input and asserts the invariants.

Input layout: byte 0 = flags, byte 1 = fragmentation seed, the rest = what the server sends.

flags bits 0-1: prefix glued before the stream (none, RFB 3.8, 3.7 or 3.3 banner);
bit 2: do not read ServerInit (no None selection); bit 3: no TLS step; bit 4: tiny limits;
bits 5-6: the client version we answer with (the server's choice, 3.3, 3.7, 3.8).

Invariants (each violation raises AssertionError or lets the unexpected exception through):
1. the sans-IO client and the probe's decision logic raise nothing but RemoteProtocolError;
2. the client never buffers more than `Limits.max_buffer` bytes;
3. cutting the same stream into other chunks gives the same events, the same bytes sent and
   the same error (for streams that fit in the buffer cap);
4. whatever was read becomes a `ServiceResult` whose schema dict survives JSON and
   `from_dict` (the honeypot check runs inside `result()`);
5. etiquette (docs/design.md "Probing etiquette"): no-auth types are selected only when
   offered, a SecurityResult "ok" only follows such a selection, and nothing is ever sent after
   a VNC challenge.

`tests/test_rfb_fuzz.py` replays `fuzz/corpus/` and `fuzz/regressions/` through this function, so
every finding stays a regression test without atheris installed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from vncaudit import rfb
from vncaudit.exceptions import RemoteProtocolError
from vncaudit.models import ServiceResult, Target
from vncaudit.probe import ProbeOptions, _Session

PREFIXES = (b"", b"RFB 003.008\n", b"RFB 003.007\n", b"RFB 003.003\n")
SMALL = rfb.Limits(max_reason_length=64, max_name_length=64, max_tight_capabilities=4,
                   max_buffer=512)


@dataclass
class Outcome:
    events: list[object]
    sent: bytes
    error: tuple[str, str] | None
    session: _Session


VERSIONS = (None, (3, 3), (3, 7), (3, 8))


def options_for(flags: int) -> ProbeOptions:
    return ProbeOptions(
        read_server_init=not flags & 4,
        tls=not flags & 8,
        limits=SMALL if flags & 16 else rfb.Limits(),
        client_version=VERSIONS[(flags >> 5) & 3],
    )


def drive(chunks: list[bytes], options: ProbeOptions) -> Outcome:
    """Run the probe's decision logic over chunks, TLS as the identity (like rfb_helpers)."""
    session = _Session(Target("127.0.0.1", 5900), options)
    client = session.client
    events: list[object] = []
    sent = bytearray()
    error: tuple[str, str] | None = None
    challenge_at: int | None = None
    try:
        for chunk in [*chunks, b""]:
            if not client.their_turn:
                break
            if chunk:
                session.record(chunk)
            client.receive_data(chunk)
            assert client.buffered <= options.limits.max_buffer
            stop = False
            while True:
                event = client.next_event()
                if isinstance(event, rfb._NeedData):
                    break
                events.append(event)
                if isinstance(event, rfb.VncAuthChallenge):
                    sent += client.data_to_send()
                    challenge_at = len(sent)
                if isinstance(event, rfb.StartTls):
                    sent += client.data_to_send()
                    client.tls_established()
                    continue
                if not session.on_event(event):
                    client.close()
                    stop = True
                    break
            sent += client.data_to_send()
            if stop:
                break
    except RemoteProtocolError as exc:
        error = (type(exc).__name__, str(exc))
        sent += client.data_to_send()  # queued before the error (a probe would not write it)
    assert client.buffered <= options.limits.max_buffer
    if challenge_at is not None:
        assert len(sent) <= challenge_at, "sent bytes after a VNC challenge"
    return Outcome(events, bytes(sent), error, session)


def split(stream: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks: list[bytes] = []
    i = 0
    while i < len(stream):
        n = rng.choice((1, 1, 2, 3, 4, 7, 12, 16, 64, 300))
        chunks.append(stream[i : i + n])
        i += n
    return chunks


def check(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, body = data[0], data[1], data[2:]
    options = options_for(flags)
    stream = PREFIXES[flags & 3] + body
    whole = drive([stream], options)
    if len(stream) <= options.limits.max_buffer:
        pieces = drive(split(stream, seed), options)
        assert pieces.events == whole.events, (pieces.events, whole.events)
        assert pieces.sent == whole.sent, (pieces.sent, whole.sent)
        assert pieces.error == whole.error, (pieces.error, whole.error)
    session = whole.session
    if whole.error is not None:
        session.error = whole.error[1]
    result = session.result(0.0)
    doc = result.to_dict()
    again = ServiceResult.from_dict(json.loads(json.dumps(doc)))
    assert again.to_dict() == json.loads(json.dumps(doc))
    facts = result.rfb
    if facts is not None:
        offered = {t.id for t in facts.security_types}
        inner = {t.id for t in facts.tls_inner_types or ()}
        subtypes = {s.id for s in facts.vencrypt.subtypes} if facts.vencrypt else set()
        if facts.selected_type == 1:
            assert 1 in offered | inner, "selected None that was not offered"
        if facts.selected_type in (257, 260):
            assert facts.selected_type in subtypes, "selected a VeNCrypt sub-type not offered"
        if facts.security_result == "ok":
            assert facts.selected_type in (1, 16, 257, 260), facts.selected_type
