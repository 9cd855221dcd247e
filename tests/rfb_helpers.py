"""In-memory drivers for the sans-IO RFB client: build server byte streams, run the client.

The driver uses the probe's own decision logic (`probe.Session`) so tests exercise exactly the
choices a real probe makes, without sockets. TLS is modelled as the identity transform: after
`StartTls` the following bytes are taken to be the decrypted stream.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vncaudit import rfb
from vncaudit.exceptions import RemoteProtocolError
from vncaudit.models import Target
from vncaudit.probe import ProbeOptions, Session


def banner(major: int = 3, minor: int = 8) -> bytes:
    return b"RFB %03d.%03d\n" % (major, minor)


def type_list(*types: int) -> bytes:
    return bytes([len(types), *types])


def reason(text: bytes) -> bytes:
    return struct.pack(">I", len(text)) + text


def u32(*values: int) -> bytes:
    return struct.pack(f">{len(values)}I", *values)


def cap(code: int, vendor: bytes, signature: bytes) -> bytes:
    return struct.pack(">I4s8s", code, vendor, signature)


def server_init(width: int = 1024, height: int = 768, name: bytes = b"desk") -> bytes:
    pf = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    return struct.pack(">HH", width, height) + pf + struct.pack(">I", len(name)) + name


def new_session(options: ProbeOptions | None = None) -> Session:
    return Session(Target("127.0.0.1", 5900), options or ProbeOptions())


def drive_events(
    chunks: Iterable[bytes], options: ProbeOptions | None = None, session: Session | None = None
) -> tuple[list[object], bytes, Session]:
    """Feed chunks one by one as a probe would; return (events, client bytes sent, session)."""
    session = session or new_session(options)
    client = session.client
    events: list[object] = []
    sent = bytearray()
    stopped = False
    for chunk in [*chunks, b""]:
        if stopped or not client.their_turn:
            break
        client.receive_data(chunk)
        while True:
            event = client.next_event()
            if event is rfb.NEED_DATA:
                break
            events.append(event)
            if isinstance(event, rfb.StartTls):
                client.tls_established()
                continue
            if not session.on_event(event):  # type: ignore[arg-type]
                client.close()
                stopped = True
                break
        sent += client.data_to_send()
    sent += client.data_to_send()
    return events, bytes(sent), session


def replayed_session(transcript: Path) -> tuple[Session, dict[str, Any]]:
    """A recorded real-server transcript (tests/transcripts/*.json) fed to a probe `Session`
    with the recorded client version; returns the session and the transcript document."""
    doc = json.loads(transcript.read_text())
    chunks = [bytes.fromhex(e["hex"]) for e in doc["exchanges"] if e["dir"] == "s2c"]
    cv = doc["client_version"]
    session = new_session(ProbeOptions(client_version=(int(cv[:3]), int(cv[4:])) if cv else None))
    try:
        drive_events(chunks, session=session)
    except RemoteProtocolError:
        pass  # the recording stopped where the probe would have gone on (e.g. into TLS)
    return session, doc
