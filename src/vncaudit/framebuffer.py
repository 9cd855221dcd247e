"""Sans-IO RFB framebuffer: client messages for one screenshot and a FramebufferUpdate parser.

Owns: the builders for SetPixelFormat (rfbproto §7.5.1) and SetEncodings (§7.5.2), with
`rfb`'s FramebufferUpdateRequest (§7.5.3) at hand under the same name; a parser for the
server-to-client messages (§7.6: FramebufferUpdate, SetColourMapEntries, Bell, ServerCutText)
that decodes the Raw (§7.7.1), CopyRect (§7.7.2) and Zlib (encoding 6) rectangles and the
DesktopSize/LastRect pseudo-encodings into a `Canvas`; and the size caps that keep a hostile
server from making us allocate or inflate without bound.

Must not: touch a socket, a clock, asyncio or Pillow (PNG writing is `active`'s), and never
build input events (KeyEvent/PointerEvent): a screenshot must not change what is on the screen.
Like `rfb`, the caller feeds `receive_data()` and pulls events from `next_event()` until
`NEED_DATA`. Every length is checked against `FramebufferLimits` before bytes are buffered or
inflated for it. The clipboard text a server pushes (ServerCutText) is skipped, not kept.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from vncaudit.exceptions import LimitExceededError, RemoteProtocolError
from vncaudit.rfb import NEED_DATA, NeedData, PixelFormat
from vncaudit.rfb import framebuffer_update_request as framebuffer_update_request

# Encoding numbers (rfbproto §7.7, §7.8; IANA "RFB encoding types").
RAW: Final = 0
COPY_RECT: Final = 1
ZLIB: Final = 6
LAST_RECT: Final = -224
DESKTOP_SIZE: Final = -223

ENCODING_NAMES: Final[dict[int, str]] = {
    RAW: "Raw",
    COPY_RECT: "CopyRect",
    ZLIB: "Zlib",
    LAST_RECT: "LastRect",
    DESKTOP_SIZE: "DesktopSize",
}

# What we ask for, most preferred first. Zlib keeps a remote screenshot small; every server
# must support Raw; CopyRect costs nothing to decode.
DEFAULT_ENCODINGS: Final = (ZLIB, COPY_RECT, RAW, DESKTOP_SIZE, LAST_RECT)

# The pixel format we request: 32-bit little-endian true colour 0x00RRGGBB, i.e. bytes B,G,R,X.
# Raw rectangles in this format are copied row by row with no per-pixel work.
CANONICAL_FORMAT: Final = PixelFormat(
    bits_per_pixel=32,
    depth=24,
    big_endian=False,
    true_colour=True,
    red_max=255,
    green_max=255,
    blue_max=255,
    red_shift=16,
    green_shift=8,
    blue_shift=0,
)

_PIXEL_FORMAT: Final = struct.Struct(">BBBBHHHBBB3x")
_RECT_HEADER: Final = struct.Struct(">HHHHi")


# --------------------------------------------------------------------------------------------
# Client-to-server messages


def set_pixel_format(pf: PixelFormat = CANONICAL_FORMAT) -> bytes:
    """SetPixelFormat (message type 0)."""
    return b"\x00\x00\x00\x00" + _PIXEL_FORMAT.pack(
        pf.bits_per_pixel,
        pf.depth,
        int(pf.big_endian),
        int(pf.true_colour),
        pf.red_max,
        pf.green_max,
        pf.blue_max,
        pf.red_shift,
        pf.green_shift,
        pf.blue_shift,
    )


def set_encodings(encodings: Iterable[int] = DEFAULT_ENCODINGS) -> bytes:
    """SetEncodings (message type 2); encodings are signed 32-bit numbers."""
    values = list(encodings)
    return struct.pack(f">BxH{len(values)}i", 2, len(values), *values)


# --------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class UpdateComplete:
    """One FramebufferUpdate message has been applied to the canvas."""

    rectangles: int
    coverage: float  # fraction of the canvas painted so far (0..1)


@dataclass(frozen=True)
class DesktopResized:
    width: int
    height: int


@dataclass(frozen=True)
class Bell:
    pass


@dataclass(frozen=True)
class ServerCutText:
    length: int  # the text itself is skipped: it is a user's clipboard


@dataclass(frozen=True)
class ColourMapEntries:
    first: int
    count: int


FramebufferEvent = UpdateComplete | DesktopResized | Bell | ServerCutText | ColourMapEntries


@dataclass(frozen=True)
class FramebufferLimits:
    """Caps on what a server may make us allocate, buffer or inflate."""

    max_width: int = 16384
    max_height: int = 16384
    max_pixels: int = 3840 * 2160  # 4K UHD: 33 MB as BGRX, plus a 1-byte coverage mask
    max_rectangles: int = 65536  # per FramebufferUpdate
    max_cut_text: int = 1 << 20
    max_colour_map_entries: int = 256
    max_compressed: int = 64 << 20  # one Zlib rectangle's compressed length


# --------------------------------------------------------------------------------------------
# Canvas


class Canvas:
    """The screen as 4 bytes per pixel (B, G, R, X) plus a mask of pixels painted so far."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(width * height * 4)
        self._mask = bytearray(width * height)

    @property
    def coverage(self) -> float:
        total = self.width * self.height
        return 1.0 if total == 0 else (total - self._mask.count(0)) / total

    def put_rows(self, x: int, y: int, width: int, height: int, data: bytes | bytearray) -> None:
        """Copy `width*height` canonical pixels (row-major) into the rectangle at (x, y)."""
        stride = self.width * 4
        row_bytes = width * 4
        view = memoryview(data)
        for row in range(height):
            start = (y + row) * stride + x * 4
            self.pixels[start : start + row_bytes] = view[row * row_bytes : (row + 1) * row_bytes]
            m = (y + row) * self.width + x
            self._mask[m : m + width] = b"\x01" * width

    def copy_rect(self, sx: int, sy: int, x: int, y: int, width: int, height: int) -> None:
        """CopyRect: the source is read completely before writing, so overlaps are safe."""
        stride = self.width * 4
        row_bytes = width * 4
        rows = [
            bytes(self.pixels[(sy + r) * stride + sx * 4 : (sy + r) * stride + sx * 4 + row_bytes])
            for r in range(height)
        ]
        self.put_rows(x, y, width, height, b"".join(rows))

    def to_rgb(self) -> bytes:
        """The canvas as packed RGB, 3 bytes per pixel, row-major (what Pillow's "RGB" takes)."""
        out = bytearray(self.width * self.height * 3)
        out[0::3] = self.pixels[2::4]
        out[1::3] = self.pixels[1::4]
        out[2::3] = self.pixels[0::4]
        return bytes(out)


def is_canonical(pf: PixelFormat) -> bool:
    """True when pixels in `pf` are already B,G,R,X bytes (the depth field does not matter)."""
    return (
        pf.bits_per_pixel == 32
        and not pf.big_endian
        and pf.true_colour
        and (pf.red_max, pf.green_max, pf.blue_max) == (255, 255, 255)
        and (pf.red_shift, pf.green_shift, pf.blue_shift) == (16, 8, 0)
    )


def _to_canonical(data: bytes | bytearray, pf: PixelFormat) -> bytes:
    """Convert true-colour pixels of any 8/16/32-bit format to canonical B,G,R,X bytes."""
    size = pf.bits_per_pixel // 8
    order: Literal["big", "little"] = "big" if pf.big_endian else "little"
    out = bytearray(len(data) // size * 4)

    def scale(value: int, maximum: int) -> int:
        return 0 if maximum == 0 else (value * 255 + maximum // 2) // maximum

    cache: dict[int, bytes] = {}
    o = 0
    for i in range(0, len(data) - size + 1, size):
        v = int.from_bytes(data[i : i + size], order)
        quad = cache.get(v)
        if quad is None:
            r = scale((v >> pf.red_shift) & pf.red_max, pf.red_max)
            g = scale((v >> pf.green_shift) & pf.green_max, pf.green_max)
            b = scale((v >> pf.blue_shift) & pf.blue_max, pf.blue_max)
            quad = bytes((b, g, r, 0))
            cache[v] = quad
        out[o : o + 4] = quad
        o += 4
    return bytes(out)


# --------------------------------------------------------------------------------------------
# Parser


class _Continue:
    """Internal: a header or rectangle was consumed; keep parsing."""


_CONTINUE: Final = _Continue()


class FramebufferParser:
    """Server-to-client messages after ServerInit, applied to a `Canvas`.

    `pixel_format` is the format the server sends in: the one we set with SetPixelFormat
    (normally `CANONICAL_FORMAT`), or the ServerInit one if we did not set any.
    """

    def __init__(
        self,
        width: int,
        height: int,
        pixel_format: PixelFormat = CANONICAL_FORMAT,
        limits: FramebufferLimits | None = None,
    ) -> None:
        self.limits = limits or FramebufferLimits()
        if not pixel_format.true_colour:
            raise ValueError("colour-map pixel formats are not decoded; request true colour")
        if pixel_format.bits_per_pixel not in (8, 16, 32):
            raise ValueError(f"bits per pixel {pixel_format.bits_per_pixel} is not 8, 16 or 32")
        self.pixel_format = pixel_format
        self._bpp = pixel_format.bits_per_pixel // 8
        self._convert = not is_canonical(pixel_format)
        self._check_size(width, height, "ServerInit")
        self.canvas = Canvas(width, height)
        self._buf = bytearray()
        self._rects_left = 0  # rectangles still to read in the current update; -1: until LastRect
        self._rects_done = 0
        self._in_update = False
        self._zlib = zlib.decompressobj()
        self.encodings_seen: dict[str, int] = {}
        self.bytes_received = 0
        self.updates = 0
        self._eof = False

    # -- feeding -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        self.bytes_received += len(data)
        self._buf += data

    def next_event(self) -> FramebufferEvent | NeedData:
        """The next event, or NEED_DATA. Raises RemoteProtocolError on bad or oversized input."""
        while True:
            event = self._parse_rect() if self._in_update else self._parse_message()
            if isinstance(event, _Continue):
                continue
            if event is NEED_DATA and self._eof:
                raise RemoteProtocolError(
                    f"connection closed with {len(self._buf)} unparsed framebuffer bytes"
                    if self._buf
                    else "connection closed during the framebuffer update"
                )
            return event

    # -- helpers -------------------------------------------------------------------------

    def _check_size(self, width: int, height: int, what: str) -> None:
        lim = self.limits
        if width > lim.max_width or height > lim.max_height or width * height > lim.max_pixels:
            raise LimitExceededError(
                f"{what} size {width}x{height} exceeds the cap "
                f"({lim.max_width}x{lim.max_height}, {lim.max_pixels} pixels)"
            )

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _pixels(self, raw: bytes | bytearray) -> bytes | bytearray:
        return _to_canonical(raw, self.pixel_format) if self._convert else raw

    # -- messages ------------------------------------------------------------------------

    def _parse_message(self) -> FramebufferEvent | NeedData | _Continue:
        if not self._buf:
            return NEED_DATA
        kind = self._buf[0]
        if kind == 0:  # FramebufferUpdate: U8 type, U8 pad, U16 number-of-rectangles
            if len(self._buf) < 4:
                return NEED_DATA
            (count,) = struct.unpack_from(">H", self._buf, 2)
            del self._buf[:4]
            # 0xFFFF with LastRect means "until a LastRect rectangle" (tightvnc extension).
            self._rects_left = -1 if count == 0xFFFF else count
            self._rects_done = 0
            self._in_update = True
            return _CONTINUE
        if kind == 1:  # SetColourMapEntries: U8 pad, U16 first, U16 count, count * 6 bytes
            if len(self._buf) < 6:
                return NEED_DATA
            first, count = struct.unpack_from(">HH", self._buf, 2)
            if count > self.limits.max_colour_map_entries:
                raise LimitExceededError(f"colour map of {count} entries exceeds the cap")
            if len(self._buf) < 6 + 6 * count:
                return NEED_DATA
            del self._buf[: 6 + 6 * count]
            return ColourMapEntries(first, count)
        if kind == 2:
            del self._buf[:1]
            return Bell()
        if kind == 3:  # ServerCutText: 3 pad, U32 length, text
            if len(self._buf) < 8:
                return NEED_DATA
            (length,) = struct.unpack_from(">I", self._buf, 4)
            if length > self.limits.max_cut_text:
                raise LimitExceededError(f"cut text of {length} bytes exceeds the cap")
            if len(self._buf) < 8 + length:
                return NEED_DATA
            del self._buf[: 8 + length]
            return ServerCutText(length)
        raise RemoteProtocolError(f"unknown server message type {kind}")

    def _finish_update(self) -> UpdateComplete:
        self._in_update = False
        self.updates += 1
        return UpdateComplete(self._rects_done, self.canvas.coverage)

    def _parse_rect(self) -> FramebufferEvent | NeedData | _Continue:
        if self._rects_left == 0:
            return self._finish_update()
        if len(self._buf) < _RECT_HEADER.size:
            return NEED_DATA
        x, y, w, h, encoding = _RECT_HEADER.unpack_from(self._buf, 0)
        if self._rects_done >= self.limits.max_rectangles:
            raise LimitExceededError(
                f"more than {self.limits.max_rectangles} rectangles in one update"
            )
        if encoding == LAST_RECT:
            del self._buf[: _RECT_HEADER.size]
            self._count(encoding)
            self._rects_left = 0
            return self._finish_update()
        if encoding == DESKTOP_SIZE:
            del self._buf[: _RECT_HEADER.size]
            self._count(encoding)
            self._check_size(w, h, "DesktopSize")
            self.canvas = Canvas(w, h)
            self._rect_done()
            return DesktopResized(w, h)
        if encoding in (RAW, COPY_RECT, ZLIB):
            cw, ch = self.canvas.width, self.canvas.height
            if x + w > cw or y + h > ch:
                raise RemoteProtocolError(
                    f"rectangle {w}x{h}+{x}+{y} lies outside the {cw}x{ch} framebuffer"
                )
        if encoding == RAW:
            need = w * h * self._bpp
            if len(self._buf) < _RECT_HEADER.size + need:
                return NEED_DATA
            del self._buf[: _RECT_HEADER.size]
            self.canvas.put_rows(x, y, w, h, self._pixels(self._take(need)))
        elif encoding == COPY_RECT:
            if len(self._buf) < _RECT_HEADER.size + 4:
                return NEED_DATA
            sx, sy = struct.unpack_from(">HH", self._buf, _RECT_HEADER.size)
            if sx + w > self.canvas.width or sy + h > self.canvas.height:
                raise RemoteProtocolError(f"CopyRect source {w}x{h}+{sx}+{sy} outside the screen")
            del self._buf[: _RECT_HEADER.size + 4]
            self.canvas.copy_rect(sx, sy, x, y, w, h)
        elif encoding == ZLIB:
            if len(self._buf) < _RECT_HEADER.size + 4:
                return NEED_DATA
            (length,) = struct.unpack_from(">I", self._buf, _RECT_HEADER.size)
            if length > self.limits.max_compressed:
                raise LimitExceededError(f"Zlib rectangle of {length} bytes exceeds the cap")
            if len(self._buf) < _RECT_HEADER.size + 4 + length:
                return NEED_DATA
            del self._buf[: _RECT_HEADER.size + 4]
            compressed = self._take(length)
            need = w * h * self._bpp
            try:
                # max_length bounds the inflation: a zlib bomb yields at most `need` bytes.
                raw = self._zlib.decompress(compressed, need)
            except zlib.error as exc:
                raise RemoteProtocolError(f"bad Zlib rectangle: {exc}") from exc
            if len(raw) != need or self._zlib.unconsumed_tail:
                raise RemoteProtocolError(
                    f"Zlib rectangle inflated to {len(raw)} bytes, expected {need}"
                )
            self.canvas.put_rows(x, y, w, h, self._pixels(raw))
        else:
            # A server may only use encodings we asked for (§7.5.2).
            raise RemoteProtocolError(f"rectangle with unrequested encoding {encoding}")
        self._count(encoding)
        self._rect_done()
        return _CONTINUE

    def _count(self, encoding: int) -> None:
        name = ENCODING_NAMES.get(encoding, str(encoding))
        self.encodings_seen[name] = self.encodings_seen.get(name, 0) + 1

    def _rect_done(self) -> None:
        self._rects_done += 1
        if self._rects_left > 0:
            self._rects_left -= 1
