"""The sans-IO framebuffer parser: Raw, CopyRect, Zlib, pseudo-encodings, caps, hostile input."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vncaudit import framebuffer as fb
from vncaudit.exceptions import LimitExceededError, RemoteProtocolError
from vncaudit.rfb import NEED_DATA, PixelFormat


def rect(x: int, y: int, w: int, h: int, encoding: int, body: bytes = b"") -> bytes:
    return struct.pack(">HHHHi", x, y, w, h, encoding) + body


def update(*rects: bytes, count: int | None = None) -> bytes:
    return struct.pack(">BxH", 0, len(rects) if count is None else count) + b"".join(rects)


def bgrx(r: int, g: int, b: int) -> bytes:
    return bytes((b, g, r, 0))


def events(parser: fb.FramebufferParser) -> list[object]:
    out: list[object] = []
    while True:
        ev = parser.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)


def test_client_messages() -> None:
    assert fb.set_pixel_format() == bytes.fromhex("000000002018000100ff00ff00ff100800000000")
    assert fb.set_encodings([6, 1, 0, -223]) == bytes.fromhex(
        "02000004000000060000000100000000ffffff21"
    )
    assert fb.framebuffer_update_request(0, 0, 800, 600) == bytes.fromhex("03000000000003200258")
    assert fb.framebuffer_update_request(1, 2, 3, 4, incremental=True)[1] == 1


def test_raw_fills_the_canvas_even_when_fed_byte_by_byte() -> None:
    p = fb.FramebufferParser(4, 2)
    red, blue = bgrx(255, 0, 0), bgrx(0, 0, 255)
    data = update(rect(0, 0, 4, 1, fb.RAW, red * 4), rect(0, 1, 4, 1, fb.RAW, blue * 4))
    seen: list[object] = []
    for i in range(len(data)):
        p.receive_data(data[i : i + 1])
        seen += events(p)
    assert seen == [fb.UpdateComplete(2, 1.0)]
    assert p.canvas.to_rgb() == b"\xff\x00\x00" * 4 + b"\x00\x00\xff" * 4
    assert p.encodings_seen == {"Raw": 2}


def test_partial_coverage_is_reported() -> None:
    p = fb.FramebufferParser(4, 4)
    p.receive_data(update(rect(0, 0, 2, 2, fb.RAW, bgrx(1, 2, 3) * 4)))
    assert events(p) == [fb.UpdateComplete(1, 0.25)]


def test_copyrect_with_overlap() -> None:
    p = fb.FramebufferParser(3, 1)
    pixels = bgrx(1, 1, 1) + bgrx(2, 2, 2) + bgrx(3, 3, 3)
    p.receive_data(update(rect(0, 0, 3, 1, fb.RAW, pixels)))
    p.receive_data(update(rect(1, 0, 2, 1, fb.COPY_RECT, struct.pack(">HH", 0, 0))))
    assert len(events(p)) == 2
    assert p.canvas.to_rgb() == bytes([1, 1, 1, 1, 1, 1, 2, 2, 2])


def test_zlib_uses_one_stream_for_the_whole_connection() -> None:
    z = zlib.compressobj()
    first = z.compress(bgrx(9, 8, 7) * 4) + z.flush(zlib.Z_SYNC_FLUSH)
    second = z.compress(bgrx(1, 2, 3) * 4) + z.flush(zlib.Z_SYNC_FLUSH)
    p = fb.FramebufferParser(2, 4)
    p.receive_data(update(rect(0, 0, 2, 2, fb.ZLIB, struct.pack(">I", len(first)) + first)))
    p.receive_data(update(rect(0, 2, 2, 2, fb.ZLIB, struct.pack(">I", len(second)) + second)))
    assert [type(e) for e in events(p)] == [fb.UpdateComplete, fb.UpdateComplete]
    assert p.canvas.to_rgb() == bytes([9, 8, 7]) * 4 + bytes([1, 2, 3]) * 4


def test_zlib_bomb_is_bounded() -> None:
    bomb = zlib.compress(b"\0" * 10_000_000)
    p = fb.FramebufferParser(2, 2)
    p.receive_data(update(rect(0, 0, 2, 2, fb.ZLIB, struct.pack(">I", len(bomb)) + bomb)))
    with pytest.raises(RemoteProtocolError, match="expected 16"):
        events(p)


def test_other_pixel_formats_are_converted() -> None:
    rgb565 = PixelFormat(16, 16, False, True, 31, 63, 31, 11, 5, 0)
    p = fb.FramebufferParser(2, 1, rgb565)
    pixels = struct.pack("<HH", 31 << 11, 63 << 5)  # pure red, pure green
    p.receive_data(update(rect(0, 0, 2, 1, fb.RAW, pixels)))
    events(p)
    assert p.canvas.to_rgb() == bytes([255, 0, 0, 0, 255, 0])


def test_pseudo_encodings_and_other_messages() -> None:
    p = fb.FramebufferParser(2, 2)
    p.receive_data(b"\x02")  # Bell
    p.receive_data(b"\x03\0\0\0" + struct.pack(">I", 5) + b"hello")  # clipboard: skipped
    p.receive_data(b"\x01\0" + struct.pack(">HH", 0, 1) + b"\0" * 6)
    p.receive_data(
        update(rect(0, 0, 3, 1, fb.DESKTOP_SIZE), rect(0, 0, 0, 0, fb.LAST_RECT), count=0xFFFF)
    )
    assert events(p) == [
        fb.Bell(),
        fb.ServerCutText(5),
        fb.ColourMapEntries(0, 1),
        fb.DesktopResized(3, 1),
        fb.UpdateComplete(1, 0.0),
    ]
    assert (p.canvas.width, p.canvas.height) == (3, 1)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (update(rect(1, 0, 2, 1, fb.RAW, b"\0" * 8)), "outside"),
        (update(rect(0, 0, 1, 1, 16)), "unrequested encoding 16"),
        (update(rect(0, 0, 1, 1, fb.COPY_RECT, struct.pack(">HH", 5, 5))), "source"),
        (update(rect(0, 0, 20000, 20000, fb.DESKTOP_SIZE)), "exceeds the cap"),
        (b"\x03\0\0\0" + struct.pack(">I", 1 << 30), "cut text"),
        (b"\x07", "unknown server message type 7"),
    ],
)
def test_hostile_input_is_refused(data: bytes, error: str) -> None:
    p = fb.FramebufferParser(2, 2)
    p.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=error):
        events(p)


def test_screen_size_is_capped() -> None:
    with pytest.raises(LimitExceededError):
        fb.FramebufferParser(5000, 5000)
    with pytest.raises(LimitExceededError):
        fb.FramebufferParser(100, 100, limits=fb.FramebufferLimits(max_pixels=100))


def test_eof_inside_an_update_is_an_error() -> None:
    p = fb.FramebufferParser(2, 2)
    p.receive_data(update(rect(0, 0, 2, 2, fb.RAW, b"\0" * 5)))
    p.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed"):
        events(p)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_never_escapes_as_another_exception(data: bytes) -> None:
    p = fb.FramebufferParser(8, 8, limits=fb.FramebufferLimits(max_pixels=64))
    p.receive_data(data)
    p.receive_data(b"")
    try:
        events(p)
    except RemoteProtocolError:
        pass
