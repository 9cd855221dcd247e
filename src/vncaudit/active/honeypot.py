"""The honeypot checks: what an emulator does that a real product never does.

Owns: `check_honeypot` (`--active-checks`): an unassigned security type selected, and VNC
Authentication challenges read (never answered) and compared, each on a connection of its own;
`UNASSIGNED_TYPE`, and the reasons the checks add to the probe's one-connection signals
(`probe.honeypot_signals`).

Must not: answer a challenge, run where the probe read no security-type list (RFB 3.3, or a
failed conversation), or grade (the `suspected-honeypot` finding is `assess`'s). Lockout-aware:
an honest server costs one or two connections, a suspicious one three.
"""

from __future__ import annotations

import asyncio
from typing import Final

from vncaudit import rfb
from vncaudit.active.transport import ByteWriter, Connector, close_writer, tcp_connector
from vncaudit.exceptions import LocalProtocolError, RemoteProtocolError
from vncaudit.models import RfbFacts, Target
from vncaudit.payloads import HoneypotChecks
from vncaudit.pump import RfbPump

UNASSIGNED_TYPE: Final = 77  # IANA 36-127 is unassigned; no product answers 77 with success


def _not_random(challenge: bytes) -> bool:
    """A VNC challenge no random source gives: 16 printable ASCII bytes (p < 2e-7, vnclowpot
    sends "AAAAAAAAAAAAAAAA") or at most 4 distinct byte values."""
    return all(32 <= b < 127 for b in challenge) or len(set(challenge)) <= 4


async def check_honeypot(
    target: Target,
    facts: RfbFacts,
    *,
    timeout: float = 10.0,
    connector: Connector | None = None,
) -> tuple[HoneypotChecks, tuple[str, ...]] | None:
    """The checks' outcomes and the reasons to suspect a honeypot they found; None when the
    facts give nothing to select against (RFB 3.3: the server chose; no list read).

    1. Select an unassigned type (77): real servers close or fail it; a server that says "ok"
       accepts anything. 2. If VNC Authentication is offered, read one challenge (never
       answered): a canned one is not random. These two run side by side, so an honest server
       costs two connections (one when 2 is not offered). 3. Only if either looked fake, one
       more challenge: the same one twice is a replayed handshake.
    (Un-offered None, CVE-2006-2369/2450, is `check_unoffered_none`'s job, not repeated.)
    """
    if facts.security_types_server_chosen or not facts.security_types:
        return None
    offered = {t.id for t in facts.security_types}
    tries = [_try_type(target, UNASSIGNED_TYPE, timeout, connector)]
    if 2 in offered:
        tries.append(_try_type(target, 2, timeout, connector))
    outcomes = await asyncio.gather(*tries)
    reasons: list[str] = []
    accepted = outcomes[0][0] == "accepted"
    if accepted:
        reasons.append(f"accepted unassigned security type {UNASSIGNED_TYPE}")
    first = outcomes[1][1] if len(outcomes) > 1 else None
    random: bool | None = None
    repeated: bool | None = None
    if first is not None:
        random = not _not_random(first)
        if not random:
            reasons.append(f"VNC authentication challenge is not random ({first!r})")
        if accepted or not random:
            _, second = await _try_type(target, 2, timeout, connector)
            if second is not None:
                repeated = first == second
                if repeated:
                    reasons.append(
                        f"the same VNC authentication challenge on two connections "
                        f"({first.hex()})"
                    )
    connections = len(outcomes) + (repeated is not None)
    checks = HoneypotChecks(UNASSIGNED_TYPE, outcomes[0][0], connections, random, repeated)
    return checks, tuple(reasons)


async def _try_type(
    target: Target, number: int, timeout: float, connector: Connector | None
) -> tuple[str, bytes | None]:
    """One connection selecting `number`: ('accepted'|'refused'|..., VNC challenge or None)."""
    writer: ByteWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await (connector or tcp_connector)(target)
            pump = RfbPump(reader, writer, rfb.RfbClient())
            while True:
                event = await pump.next_event()
                if event is None:
                    return "unsupported", None
                if isinstance(event, rfb.ServerVersion):
                    if event.client_version is None:
                        return "not answered", None
                elif isinstance(event, rfb.SecurityTypes):
                    if event.server_chosen:
                        return "server chose the type", None
                    pump.client.select_security_type(number)
                else:
                    return _outcome(event)
    except TimeoutError:
        return "no answer", None
    except RemoteProtocolError as exc:
        return ("closed" if "closed" in str(exc) else f"error: {exc}"), None
    except (OSError, LocalProtocolError) as exc:
        return f"error: {exc}", None
    finally:
        if writer is not None:
            await close_writer(writer)


def _outcome(event: rfb.Event) -> tuple[str, bytes | None]:
    """What the server did with the selected type, from the event that ends the connection."""
    if isinstance(event, rfb.VncAuthChallenge):
        return "challenge", event.challenge
    if isinstance(event, rfb.SecurityResult):
        return ("accepted" if event.ok else "refused"), None
    if isinstance(event, rfb.ServerInit):
        return "accepted", None
    if isinstance(event, rfb.Failure):
        return "refused", None
    if isinstance(event, rfb.ConnectionClosed):
        return "closed", None
    return "unsupported", None
