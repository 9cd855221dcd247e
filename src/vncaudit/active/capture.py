"""Screenshots: one full framebuffer update as PNG, and what the picture shows.

Owns: `screenshot` (`--screenshot`: shared ClientInit, full update requests until every pixel
is painted, then incremental ones until the server is quiet), `Screenshot` and its payload
(`ScreenshotCheck`), PNG encoding (Pillow, imported only when a picture is taken), safe file
names and saving, and `desktop_kind` / `desktop_verdict` (login screen or live desktop, through
`desktop.classify_desktop`).

Must not: send input events (KeyEvent/PointerEvent), decode framebuffer bytes itself (that is
`framebuffer`), or accept a framebuffer over `max_pixels`.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field
from pathlib import Path

from vncaudit import framebuffer as fb
from vncaudit import rfb
from vncaudit.active.handshake import Handshake, connect_and_handshake
from vncaudit.active.transport import Connector
from vncaudit.desktop import DesktopKind, classify_desktop
from vncaudit.models import Target
from vncaudit.payloads import DesktopFeatures, DesktopVerdict, ScreenshotCheck
from vncaudit.pump import RfbPump


@dataclass
class Screenshot:
    """A screenshot and its facts; `png` is None when none could be taken."""

    handshake: Handshake
    png: bytes | None = None
    rgb: bytes | None = None  # packed RGB, for `desktop_kind`
    width: int = 0
    height: int = 0
    coverage: float = 0.0
    encodings: dict[str, int] = field(default_factory=dict)
    bytes_received: int = 0
    updates: int = 0
    error: str | None = None

    def check(self, path: str | None = None) -> ScreenshotCheck:
        """The payload; `path` is where the PNG was saved (None: not saved)."""
        si = self.handshake.server_init
        return ScreenshotCheck(
            status="ok" if self.png is not None else "failed",
            path=path,
            width=self.width,
            height=self.height,
            coverage=round(self.coverage, 4),
            desktop_name=si.name if si else None,
            security_path=tuple(self.handshake.security_path),
            outcome=self.handshake.outcome,
            reason=self.error or self.handshake.reason,
            encodings=tuple(self.encodings.items()),
            bytes_received=self.bytes_received,
            updates=self.updates,
            elapsed=round(self.handshake.elapsed, 4),
        )


def encode_png(rgb: bytes, width: int, height: int) -> bytes:
    from PIL import Image  # Pillow is only needed when a screenshot is actually taken

    image = Image.frombytes("RGB", (width, height), rgb)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def screenshot_filename(target: Target) -> str:
    """A file name for a target's screenshot that is safe on every filesystem (IPv6 too)."""
    host = "".join(c if c.isalnum() or c in ".-" else "_" for c in target.host)
    return f"{host}_{target.port}.png"


def save_screenshot(png: bytes, directory: str | Path, target: Target) -> Path:
    path = Path(directory) / screenshot_filename(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


async def screenshot(
    target: Target,
    password: str | None = None,
    *,
    timeout: float = 15.0,
    max_pixels: int = fb.FramebufferLimits.max_pixels,
    max_requests: int = 8,
    settle: float = 0.75,
    connector: Connector | None = None,
) -> Screenshot:
    """One full framebuffer update as PNG (`--screenshot`).

    Only where no authentication is required, or with `password` (VNC Authentication, also
    inside VeNCrypt TLSVnc or Tight). ClientInit is shared; no input event is ever sent. The
    image is taken when every pixel has been painted, or at the deadline with what arrived
    (`coverage` < 1). After the full picture, incremental updates are applied until the server
    has been quiet for `settle` seconds (at most `max_requests` requests in all), because some
    servers first send a stale copy. `max_pixels` caps the framebuffer we accept to decode.
    """
    limits = fb.FramebufferLimits(max_pixels=max_pixels)
    shot = Screenshot(Handshake())

    try:
        shot.handshake = await connect_and_handshake(
            target,
            password=password,
            none_policy="if-offered",
            timeout=timeout,
            connector=connector,
            after=lambda pump, h: _grab(pump, h, shot, limits, max_requests, settle),
        )
    except ValueError as exc:  # a pixel format the parser refuses
        shot.error = str(exc)
    h = shot.handshake
    if shot.rgb is not None and shot.coverage > 0:
        shot.png = encode_png(shot.rgb, shot.width, shot.height)
        if h.outcome != "ok":
            shot.error = f"partial image ({shot.coverage:.0%} painted): {h.outcome}: {h.reason}"
            h.outcome = "ok"
    return shot


async def _grab(
    pump: RfbPump, h: Handshake, shot: Screenshot, limits: fb.FramebufferLimits,
    max_requests: int, settle: float,
) -> None:
    """After ServerInit: request the full picture, apply updates into `shot` (see
    `screenshot`)."""
    si = h.server_init
    assert si is not None
    parser = fb.FramebufferParser(si.width, si.height, fb.CANONICAL_FORMAT, limits)
    shot.width, shot.height = si.width, si.height
    await pump.send(
        fb.set_pixel_format()
        + fb.set_encodings()
        + fb.framebuffer_update_request(0, 0, si.width, si.height)
    )
    requests = 1
    pending = pump.take_trailing()
    settling = False  # the full picture is in; now only late changes are awaited
    try:
        while True:
            if pending:
                parser.receive_data(pending)
            event = parser.next_event()
            pending = b""
            if event is rfb.NEED_DATA:
                if not settling:
                    pending = await pump.read()
                else:
                    try:
                        async with asyncio.timeout(settle):
                            pending = await pump.read()
                    except TimeoutError:
                        return  # nothing changed within `settle`: the picture is current
                if not pending:
                    parser.receive_data(b"")
                continue
            if isinstance(event, fb.DesktopResized):
                shot.width, shot.height = event.width, event.height
            elif isinstance(event, fb.UpdateComplete):
                cv = parser.canvas
                if requests >= max_requests:
                    return
                if event.coverage < 1.0:
                    # Some servers split a full update; ask for all of it again.
                    await pump.send(fb.framebuffer_update_request(0, 0, cv.width, cv.height))
                elif settle > 0:
                    # x11vnc stops polling the screen while no viewer is connected and
                    # first sends what it saw last; ask for changes until it is quiet.
                    settling = True
                    await pump.send(
                        fb.framebuffer_update_request(0, 0, cv.width, cv.height, True)
                    )
                else:
                    return
                requests += 1
    finally:
        shot.coverage = parser.canvas.coverage
        shot.encodings = dict(parser.encodings_seen)
        shot.bytes_received = parser.bytes_received
        shot.updates = parser.updates
        shot.width, shot.height = parser.canvas.width, parser.canvas.height
        shot.rgb = parser.canvas.to_rgb()


def desktop_kind(shot: Screenshot) -> DesktopKind:
    """Login screen or live desktop, from a screenshot plus the desktop name and geometry."""
    si = shot.handshake.server_init
    return classify_desktop(
        shot.rgb or b"", shot.width, shot.height, desktop_name=si.name if si else None
    )


def desktop_verdict(shot: Screenshot) -> DesktopVerdict:
    """`desktop_kind` as the payload of `extra.active.desktop_kind`."""
    kind = desktop_kind(shot)
    return DesktopVerdict(kind.kind, round(kind.confidence, 2), kind.evidence,
                          DesktopFeatures.from_dict(kind.features), kind.seen)
