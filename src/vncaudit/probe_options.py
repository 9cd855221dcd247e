"""How to probe one (host, port): `ProbeOptions` (the one deadline, the buffer limits, what may
be selected), re-exported by `vncaudit.probe`.

Owns: the options record only. It lives apart from the probe so that a scan can be set up and
its first packet sent before the probe, the RFB parser and the result types are imported (they
come with the first answer). Must not: probe, parse RFB, or import `rfb`/`pump` at module
level (the limits' defaults are `rfb`'s, the selection is `pump`'s, both looked up when used).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vncaudit.pump import Selection
    from vncaudit.rfb import Limits


@dataclass(frozen=True)
class ProbeOptions:
    """How to probe. `timeout` is the one deadline for the whole probe, connect included."""

    timeout: float = 5.0
    limits: Limits | None = None  # None: `rfb.Limits()`, the parser's defaults
    transcript_limit: int = 4096
    read_server_init: bool = True  # select an offered no-auth type, read SecurityResult+ServerInit
    # After a ServerInit with no SecurityResult "ok" before it, how long to wait for the answer
    # to one FramebufferUpdateRequest (within `timeout`); 0: do not ask.
    update_wait: float = 2.0
    tls: bool = True  # do the TLS step of type 18 and VeNCrypt TLSNone/X509None
    client_version: tuple[int, int] | None = None  # override the answer (tests, quirk checks)

    @functools.cached_property
    def selection(self) -> Selection:
        """What the probe may select: offered no-auth paths only, never a password (made
        once per options: every probe asks)."""
        from vncaudit.pump import Selection

        return Selection(no_auth=self.read_server_init, tls=self.tls)
