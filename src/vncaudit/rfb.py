"""Sans-IO RFB client handshake: bytes in, events out (RFC 6143 §7.1-§7.3, rfbproto §7.2).

Owns: the client side of the RFB handshake as a state machine — ProtocolVersion (§7.1.1),
security negotiation for 3.3 and 3.7+ (§7.1.2), SecurityResult (§7.1.3), the VeNCrypt (§7.2.4)
and Tight (§7.2.3) sub-negotiations, the nested list of the TLS type (18), VNC Authentication's
challenge (§7.2.2), ClientInit/ServerInit (§7.3.1-§7.3.2), the registry of type names, and the
FramebufferUpdateRequest (§7.5.3) that asks whether a session is live.

Must not: touch a socket, a clock, asyncio or TLS. Like h11's `Connection`, the caller feeds
`receive_data()`, pulls events with `next_event()` until `NEED_DATA`, writes whatever
`data_to_send()` returns, and after ServerInit takes `trailing_data` (`pump.RfbPump` is that
caller for every connection of the package). Every length the server announces is checked
against `Limits` before anything is buffered for it, so hostile input costs at most
`Limits.max_buffer` bytes.
Decisions (which type to select, whether to authenticate) belong to the caller; only replies
the protocol mandates (client version, VeNCrypt 0.2, Tight NOTUNNEL) are queued automatically.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass
from typing import Final

from vncaudit.exceptions import (
    LimitExceededError,
    LocalProtocolError,
    NotRfbError,
    RemoteProtocolError,
)
from vncaudit.models import Capability

# --------------------------------------------------------------------------------------------
# Registry (IANA RFB security types, rfbproto §7.2; vendor numbers from docs/rfb.md)

SECURITY_TYPE_NAMES: Final[dict[int, str]] = {
    0: "Invalid",
    1: "None",
    2: "VNC Authentication",
    5: "RA2",
    6: "RA2ne",
    7: "SSPI",
    8: "SSPIne",
    13: "RA2r",
    16: "Tight",
    17: "Ultra",
    18: "TLS",
    19: "VeNCrypt",
    20: "SASL",
    21: "MD5 hash authentication",
    22: "xvp",
    23: "Secure Tunnel",
    24: "Integrated SSH",
    30: "Apple Remote Desktop (DH)",
    31: "Apple (31)",
    32: "Apple (32)",
    33: "Apple RSA-AES",
    34: "Apple (34)",
    35: "Apple (35)",
    36: "Apple SRP",
    104: "UltraVNC SCPrompt",
    105: "UltraVNC SessionSelect",
    112: "MS-Logon I",
    113: "MS-Logon II",
    114: "UltraVNC SecureVNC plugin (old)",
    115: "UltraVNC SecureVNC plugin",
    116: "UltraVNC ClientInitExtraMsgSupport (old)",
    117: "UltraVNC ClientInitExtraMsgSupport",
    118: "MS-Logon III",
    129: "RA2_256",
    130: "RA2ne_256",
    133: "RA2r_256",
    192: "RealVNC (192)",
    0xFFFFFFFA: "UltraVNC MS-Logon (legacy)",
}

# 263/264 are swapped between rfbproto and QEMU/LibVNCServer/nmap (docs/rfb.md §3.2). QEMU is
# the one server that sends them, and it sends 264 over anonymous TLS: its numbering is used.
VENCRYPT_SUBTYPE_NAMES: Final[dict[int, str]] = {
    256: "Plain",
    257: "TLSNone",
    258: "TLSVnc",
    259: "TLSPlain",
    260: "X509None",
    261: "X509Vnc",
    262: "X509Plain",
    263: "X509SASL",
    264: "TLSSASL",
    265: "Ident",
    266: "TLSIdent",
    267: "X509Ident",
}

VENCRYPT_TLS_SUBTYPES: Final = frozenset({257, 258, 259, 260, 261, 262, 263, 264, 266, 267})
VENCRYPT_NO_AUTH_SUBTYPES: Final = frozenset({257, 260})

# Reasons servers give when they have locked our address out (TigerVNC/RealVNC 4, TurboVNC,
# UltraVNC's misspelt one); matched case-insensitively as substrings.
BLACKLIST_REASONS: Final = (
    "too many security failures",
    "too many authentication failures",
    "rejected to many attempts",
    "client temporarily blocked",
)


def security_type_name(number: int) -> str:
    """Registered name of a security type; vendor blocks named by owner; else 'Unknown (n)'."""
    if number in SECURITY_TYPE_NAMES:
        return SECURITY_TYPE_NAMES[number]
    if 3 <= number <= 15 or 128 <= number <= 255:
        return f"RealVNC ({number})"
    if 30 <= number <= 35:
        return f"Apple ({number})"
    return f"Unknown ({number})"


def vencrypt_subtype_name(number: int) -> str:
    """VeNCrypt sub-type name; plain type numbers (<256) inside the list keep their type name."""
    if number in VENCRYPT_SUBTYPE_NAMES:
        return VENCRYPT_SUBTYPE_NAMES[number]
    if number < 256:
        return security_type_name(number)
    return f"Unknown ({number})"


def client_version_for(major: int, minor: int) -> tuple[int, int] | None:
    """The version a client should answer with (docs/rfb.md §1.1), or None if we must not answer.

    3.3-3.6 and UltraVNC's legacy 3.14/3.16 (its 3.4/3.6 plus 10) speak 3.3; 3.7 is 3.7; 3.8 and
    everything above it that is RFB-shaped (3.889 Apple, 4.x RealVNC, 5.0 VNC Connect) gets 3.8,
    as noVNC and libvncclient do. 0.0 is the UltraVNC repeater, which wants an ID, not a version.
    """
    if major == 3:
        if minor in (14, 16) or minor <= 6:
            return (3, 3)
        if minor == 7:
            return (3, 7)
        return (3, 8)
    if major >= 4:
        return (3, 8)
    return None


def format_version(major: int, minor: int) -> str:
    return f"{major}.{minor}"


# --------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class ServerVersion:
    raw: bytes
    major: int
    minor: int
    client_version: tuple[int, int] | None  # what was queued in reply; None: not answered

    @property
    def version(self) -> str:
        return format_version(self.major, self.minor)


@dataclass(frozen=True)
class SecurityTypes:
    types: tuple[int, ...]
    server_chosen: bool = False  # RFB 3.3: the server decided (one U32)
    inside_tls: bool = False  # the nested list of type 18 (TLS)


@dataclass(frozen=True)
class Failure:
    """The server refused the connection and said why (count 0 / 3.3 word 0)."""

    reason: str
    stage: str  # "security" | "vencrypt" | "tight"
    raw_reason: bytes = b""

    @property
    def blacklisted(self) -> bool:
        low = self.reason.lower()
        return any(text in low for text in BLACKLIST_REASONS)


@dataclass(frozen=True)
class Unsupported:
    """The server wants something this client does not speak; the caller should close."""

    reason: str


@dataclass(frozen=True)
class VncAuthChallenge:
    challenge: bytes


@dataclass(frozen=True)
class VeNCryptSubtypes:
    version: tuple[int, int]
    subtypes: tuple[int, ...]


@dataclass(frozen=True)
class TightCapabilities:
    tunnels: tuple[Capability, ...]
    auth: tuple[Capability, ...]


@dataclass(frozen=True)
class AtenTight:
    """ATEN iKVM's variant of the Tight type (docs/rfb.md §4.3): after the selection of 16 it
    sends 24 bytes of its own, no tunnel list, then waits for a 24-byte user name and a 24-byte
    password. The client stops here: it never sends credentials."""

    blob: bytes


@dataclass(frozen=True)
class StartTls:
    """Wrap the transport in TLS now, then call `tls_established()` and keep feeding."""

    anonymous: bool  # TLS type 18 and VeNCrypt TLS* use anonymous DH; X509* a certificate


@dataclass(frozen=True)
class SecurityResult:
    status: int  # 0 ok, 1 failed, 2 too many attempts (Tight)
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True)
class PixelFormat:
    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int
    # The raw byte: the spec says non-zero means true colour; LibVNCServer sends 0xff (its
    # TRUE is -1), TigerVNC and QEMU send 1, and that difference names the server family.
    true_colour_flag: int = 1


@dataclass(frozen=True)
class ServerInit:
    width: int
    height: int
    pixel_format: PixelFormat
    name: str
    raw_name: bytes = b""
    tight_interaction: tuple[Capability, ...] | None = None  # only after the Tight type


@dataclass(frozen=True)
class ConnectionClosed:
    """The server closed at a message boundary."""


class NeedData(enum.Enum):
    """The type of `NEED_DATA`: `next_event()` can go no further on the bytes it was fed."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

Event = (
    ServerVersion
    | SecurityTypes
    | Failure
    | Unsupported
    | VncAuthChallenge
    | VeNCryptSubtypes
    | TightCapabilities
    | AtenTight
    | StartTls
    | SecurityResult
    | ServerInit
    | ConnectionClosed
)


# --------------------------------------------------------------------------------------------
# States


class State(enum.Enum):
    VERSION = "awaiting ProtocolVersion"
    SECURITY = "awaiting security types"
    CHOOSE_TYPE = "client must select a security type"
    VNCAUTH_CHALLENGE = "awaiting VNC authentication challenge"
    VNCAUTH_RESPONSE = "client must answer the challenge"
    VENCRYPT_VERSION = "awaiting VeNCrypt version"
    VENCRYPT_ACK = "awaiting VeNCrypt version ack"
    VENCRYPT_SUBTYPES = "awaiting VeNCrypt sub-types"
    VENCRYPT_CHOOSE = "client must select a VeNCrypt sub-type"
    VENCRYPT_SUBTYPE_ACK = "awaiting VeNCrypt sub-type ack"
    TIGHT_TUNNELS = "awaiting Tight tunnel capabilities"
    TIGHT_AUTH = "awaiting Tight auth capabilities"
    TIGHT_CHOOSE = "client must select a Tight auth capability"
    ATEN_CREDENTIALS = "client must send ATEN iKVM credentials"
    TLS_START = "client must start TLS"
    SECURITY_RESULT = "awaiting SecurityResult"
    CLIENT_INIT = "client must send ClientInit"
    SERVER_INIT = "awaiting ServerInit"
    DONE = "handshake complete"
    CLOSED = "closed"
    ERROR = "error"


# ATEN iKVM answers the Tight selection with 24 bytes whose first word, read as a Tight tunnel
# count, is above 0x10000 (nmap's vnc.lua; docs/rfb.md §4.3).
ATEN_TUNNEL_COUNT: Final = 0x10000
ATEN_BLOB: Final = 24


# States in which the server is expected to speak; in the others it is our turn.
SERVER_TURN: Final = frozenset(
    {
        State.VERSION,
        State.SECURITY,
        State.VNCAUTH_CHALLENGE,
        State.VENCRYPT_VERSION,
        State.VENCRYPT_ACK,
        State.VENCRYPT_SUBTYPES,
        State.VENCRYPT_SUBTYPE_ACK,
        State.TIGHT_TUNNELS,
        State.TIGHT_AUTH,
        State.SECURITY_RESULT,
        State.SERVER_INIT,
    }
)

# States in which the server must wait for the client: anything it sends meanwhile is out of turn.
CLIENT_TURN: Final = frozenset(
    {
        State.CHOOSE_TYPE,
        State.VNCAUTH_RESPONSE,
        State.VENCRYPT_CHOOSE,
        State.TIGHT_CHOOSE,
        State.ATEN_CREDENTIALS,
        State.TLS_START,
        State.CLIENT_INIT,
    }
)


@dataclass(frozen=True)
class Limits:
    """Caps on what the server may make us buffer. All counts are checked before reading."""

    max_reason_length: int = 65536
    max_name_length: int = 65536
    max_tight_capabilities: int = 64
    max_buffer: int = 262144


_BANNER_RE: Final = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_CAPABILITY: Final = struct.Struct(">I4s8s")
_SERVER_INIT: Final = struct.Struct(">HHBBBBHHHBBB3xI")


def _text(raw: bytes) -> str:
    # Reason and name encodings are undefined (rfbproto §6); QEMU counts a trailing NUL.
    return raw.rstrip(b"\0").decode("utf-8", errors="replace")


def _capability(raw: bytes) -> Capability:
    code, vendor, signature = _CAPABILITY.unpack(raw)
    return Capability(code, vendor.decode("latin-1"), signature.decode("latin-1"))


class RfbClient:
    """One client handshake. Not thread-safe; one instance per connection."""

    def __init__(
        self,
        limits: Limits | None = None,
        client_version: tuple[int, int] | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self._forced_version = client_version
        self._buf = bytearray()
        self._out = bytearray()
        self._eof = False
        self._error: RemoteProtocolError | None = None
        self.state = State.VERSION
        self.version: tuple[int, int] | None = None  # the version we negotiated
        self._selected: int | None = None
        self._tight_used = False
        self._vencrypt_subtype: int | None = None
        self._tls_pending_list = False
        self._vencrypt_version: tuple[int, int] = (0, 0)
        self._tunnels: tuple[Capability, ...] = ()
        self._tls_announced = False

    # -- feeding -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; `b""` means the server closed (EOF)."""
        if not data:
            self._eof = True
            return
        room = self.limits.max_buffer - len(self._buf)
        if len(data) > room:
            # Keep what fits so the evidence is intact, drop the rest, fail on the next event.
            self._buf += data[: max(room, 0)]
            if self._error is None:
                self._error = LimitExceededError(
                    f"server sent more than {self.limits.max_buffer} bytes while "
                    f"{self.state.value}"
                )
            return
        self._buf += data

    def data_to_send(self) -> bytes:
        """Bytes queued for the server (client version, selections, ClientInit ...)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def their_turn(self) -> bool:
        """True while the server is expected to speak."""
        return self.state in SERVER_TURN

    @property
    def selected_type(self) -> int | None:
        return self._selected

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """What was received beyond what the handshake used, and whether the server closed.

        After ServerInit these bytes start the next phase (a Bell, a framebuffer update), as
        h11's `trailing_data` after a protocol switch; the caller carries on with them.
        """
        return bytes(self._buf), self._eof

    @property
    def out_of_turn(self) -> int:
        """Unparsed bytes held while the server should be waiting for the client.

        Only the caller knows whether they arrived before its reply (a server that did not wait;
        the probe treats that as malformed) or were fed together in a test.
        """
        return len(self._buf) if self.state in CLIENT_TURN else 0

    # -- events --------------------------------------------------------------------------

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA. Raises RemoteProtocolError on bad server input."""
        if self.state is State.ERROR:
            assert self._error is not None
            raise self._error
        if self._error is not None:
            self.state = State.ERROR
            raise self._error
        try:
            event = self._parse()
        except RemoteProtocolError as exc:
            self._error = exc
            self.state = State.ERROR
            raise
        if event is NEED_DATA and self._eof and self.state is not State.CLOSED:
            return self._on_eof()
        return event

    def _on_eof(self) -> Event:
        if not self._buf:
            prior = self.state
            self.state = State.CLOSED
            # Closing before the banner, or right after the version exchange instead of the
            # security types (LibVNCServer's refusal: its banner goes out before the
            # application's newClientHook can refuse, docs/rfb.md §1.2), is a refusal, not
            # broken RFB; the caller tells the two apart by what it has seen.
            refused = prior is State.VERSION or (
                prior is State.SECURITY and not self._tls_pending_list)
            if prior in SERVER_TURN and not refused:
                # The server hung up where the protocol says it must speak.
                exc = RemoteProtocolError(f"connection closed while {prior.value}")
                self._error = exc
                self.state = State.ERROR
                raise exc
            return ConnectionClosed()
        exc = RemoteProtocolError(
            f"connection closed with {len(self._buf)} unparsed bytes while {self.state.value}"
        )
        if self.state is State.VERSION and not self._buf.startswith(b"RFB "[: len(self._buf)]):
            exc = NotRfbError("server sent no RFB banner", bytes(self._buf[:64]))
        self._error = exc
        self.state = State.ERROR
        raise exc

    def _need(self, n: int) -> bool:
        return len(self._buf) >= n

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _u32_at(self, offset: int) -> int:
        value: int = struct.unpack_from(">I", self._buf, offset)[0]
        return value

    def _reason_at(self, offset: int, stage: str) -> Failure | NeedData:
        """Parse `U32 length + string` at offset (after `offset` bytes of header)."""
        if not self._need(offset + 4):
            return NEED_DATA
        length = self._u32_at(offset)
        if length > self.limits.max_reason_length:
            raise LimitExceededError(
                f"failure reason length {length} exceeds cap {self.limits.max_reason_length}"
            )
        if not self._need(offset + 4 + length):
            return NEED_DATA
        self._take(offset + 4)
        raw = self._take(length)
        self.state = State.CLOSED
        return Failure(_text(raw), stage, raw)

    def _parse(self) -> Event | NeedData:
        handler = _HANDLERS.get(self.state)
        if handler is None:
            return NEED_DATA
        return handler(self)

    # -- server-turn parsers -----------------------------------------------------------

    def _parse_version(self) -> Event | NeedData:
        head = bytes(self._buf[:12])
        if not b"RFB ".startswith(head[:4]):
            raise NotRfbError("not an RFB server", bytes(self._buf[:64]))
        if len(head) < 12:
            return NEED_DATA
        match = _BANNER_RE.fullmatch(head)
        if match is None:
            raise RemoteProtocolError(f"malformed RFB banner {head!r}")
        self._take(12)
        major, minor = int(match.group(1)), int(match.group(2))
        reply = self._forced_version or client_version_for(major, minor)
        if reply is None:
            self.state = State.CLOSED
            return ServerVersion(head, major, minor, None)
        self.version = reply
        self._out += b"RFB %03d.%03d\n" % reply
        self.state = State.SECURITY
        return ServerVersion(head, major, minor, reply)

    def _parse_security(self) -> Event | NeedData:
        inner = self._tls_pending_list
        if self.version == (3, 3) and not inner:
            if not self._need(4):
                return NEED_DATA
            word = self._u32_at(0)
            if word == 0:
                return self._reason_at(4, "security")
            self._take(4)
            self._selected = word
            if word == 1:
                self.state = State.CLIENT_INIT  # 3.3 None: no SecurityResult (§7.2.1)
            elif word == 2:
                self.state = State.VNCAUTH_CHALLENGE
            else:
                self.state = State.CLOSED  # a vendor type we do not speak
            return SecurityTypes((word,), server_chosen=True)
        if not self._need(1):
            return NEED_DATA
        count = self._buf[0]
        if count == 0:
            if not inner and self._need(5) and self._u32_at(1) == 0:
                # An empty 3.7+ reason, or the RFB 3.3 form (U32 0, U32 length, text) that
                # servers send unasked whatever version their banner gave (RealVNC's licence
                # refusals, docs/rfb.md §1.2): bytes after the empty reason decide.
                if self._need(8):
                    return self._reason_at(4, "security")
                if not self._eof:
                    return NEED_DATA
            return self._reason_at(1, "security")
        if not self._need(1 + count):
            return NEED_DATA
        if 0 in self._buf[1 : 1 + count]:
            # rfbproto §7.1.2: 0 means Invalid and is only sent alone, as count 0.
            raise RemoteProtocolError(f"security type 0 (Invalid) in a list of {count} types")
        self._take(1)
        types = tuple(self._take(count))
        self._tls_pending_list = False
        self.state = State.CHOOSE_TYPE
        return SecurityTypes(types, inside_tls=inner)

    def _parse_vnc_challenge(self) -> Event | NeedData:
        if not self._need(16):
            return NEED_DATA
        self.state = State.VNCAUTH_RESPONSE
        return VncAuthChallenge(self._take(16))

    def _parse_vencrypt_version(self) -> Event | NeedData:
        if not self._need(2):
            return NEED_DATA
        major, minor = self._take(2)
        self._vencrypt_version = (major, minor)
        if (major, minor) < (0, 2):
            self.state = State.CLOSED
            return Unsupported(f"VeNCrypt version {major}.{minor} (this client speaks 0.2)")
        self._out += b"\x00\x02"
        self.state = State.VENCRYPT_ACK
        return self._parse_vencrypt_ack()

    def _parse_vencrypt_ack(self) -> Event | NeedData:
        if not self._need(1):
            return NEED_DATA
        (ack,) = self._take(1)
        if ack != 0:
            self.state = State.CLOSED
            return Unsupported(f"server refused VeNCrypt 0.2 (ack {ack})")
        self.state = State.VENCRYPT_SUBTYPES
        return self._parse_vencrypt_subtypes()

    def _parse_vencrypt_subtypes(self) -> Event | NeedData:
        if not self._need(1):
            return NEED_DATA
        count = self._buf[0]
        if not self._need(1 + 4 * count):
            return NEED_DATA
        self._take(1)
        subtypes = struct.unpack(f">{count}I", self._take(4 * count))
        self.state = State.VENCRYPT_CHOOSE
        return VeNCryptSubtypes(self._vencrypt_version, subtypes)

    def _parse_vencrypt_subtype_ack(self) -> Event | NeedData:
        if not self._need(1):
            return NEED_DATA
        (ack,) = self._take(1)
        # Polarity is reversed from the version ack: 1 means accepted (docs/rfb.md §3.1).
        if ack != 1:
            self.state = State.CLOSED
            return Unsupported(f"server refused VeNCrypt sub-type {self._vencrypt_subtype}")
        self.state = State.TLS_START
        self._tls_announced = True
        return StartTls(anonymous=self._vencrypt_subtype in (257, 258, 259, 264, 266))

    def _announce_tls(self) -> Event | NeedData:
        # Type 18 switches to TLS right after the selection, with nothing read in between.
        if self._tls_announced:
            return NEED_DATA
        self._tls_announced = True
        return StartTls(anonymous=True)

    def _capabilities_at(self, offset: int, what: str) -> tuple[int, int] | None:
        """(count, total bytes) of `U32 count + count*16` at offset, or None if incomplete."""
        if not self._need(offset + 4):
            return None
        count = self._u32_at(offset)
        if count > self.limits.max_tight_capabilities:
            raise LimitExceededError(
                f"Tight {what} count {count} exceeds cap {self.limits.max_tight_capabilities}"
            )
        total = 4 + 16 * count
        if not self._need(offset + total):
            return None
        return count, total

    def _parse_tight_tunnels(self) -> Event | NeedData:
        if self._need(4) and self._u32_at(0) > ATEN_TUNNEL_COUNT:
            # No Tight server lists that many tunnels: ATEN's 24 bytes, and nothing after them
            # until the client logs in (docs/rfb.md §4.3); more is a broken count, refused below.
            if not self._need(ATEN_BLOB):
                return NEED_DATA
            if len(self._buf) == ATEN_BLOB:
                self.state = State.ATEN_CREDENTIALS
                return AtenTight(self._take(ATEN_BLOB))
        got = self._capabilities_at(0, "tunnel")
        if got is None:
            return NEED_DATA
        count, _ = got
        self._take(4)
        self._tunnels = tuple(_capability(self._take(16)) for _ in range(count))
        if count:
            self._out += struct.pack(">I", 0)  # NOTUNNEL; only sent when tunnels were listed
        self.state = State.TIGHT_AUTH
        return self._parse_tight_auth()

    def _parse_tight_auth(self) -> Event | NeedData:
        got = self._capabilities_at(0, "auth")
        if got is None:
            return NEED_DATA
        count, _ = got
        self._take(4)
        auth = tuple(_capability(self._take(16)) for _ in range(count))
        if count == 0:
            self._after_no_auth()  # zero auth caps: proceed as None
        else:
            self.state = State.TIGHT_CHOOSE
        return TightCapabilities(self._tunnels, auth)

    def _parse_security_result(self) -> Event | NeedData:
        if not self._need(4):
            return NEED_DATA
        status = self._u32_at(0)
        if status == 0:
            self._take(4)
            self.state = State.CLIENT_INIT
            return SecurityResult(0)
        if self.version == (3, 8):
            failure = self._reason_at(4, "security-result")
            if isinstance(failure, NeedData):
                return failure
            return SecurityResult(status, failure.reason)
        self._take(4)
        self.state = State.CLOSED
        return SecurityResult(status)

    def _parse_server_init(self) -> Event | NeedData:
        if not self._need(24):
            return NEED_DATA
        fields = _SERVER_INIT.unpack_from(self._buf, 0)
        name_length = fields[12]
        if name_length > self.limits.max_name_length:
            raise LimitExceededError(
                f"desktop name length {name_length} exceeds cap {self.limits.max_name_length}"
            )
        end = 24 + name_length
        if not self._need(end):
            return NEED_DATA
        interaction: tuple[Capability, ...] | None = None
        if self._tight_used:
            if not self._need(end + 8):
                return NEED_DATA
            n_server, n_client, n_enc, _pad = struct.unpack_from(">HHHH", self._buf, end)
            total = n_server + n_client + n_enc
            if total > self.limits.max_tight_capabilities * 4:
                raise LimitExceededError(f"Tight interaction capability count {total} too large")
            if not self._need(end + 8 + 16 * total):
                return NEED_DATA
            interaction = tuple(
                _capability(bytes(self._buf[end + 8 + 16 * i : end + 24 + 16 * i]))
                for i in range(total)
            )
            end += 8 + 16 * total
        raw_name = bytes(self._buf[24 : 24 + name_length])
        del self._buf[:end]
        w, h, bpp, depth, be, tc, rmax, gmax, bmax, rs, gs, bs, _ = fields
        pf = PixelFormat(bpp, depth, bool(be), bool(tc), rmax, gmax, bmax, rs, gs, bs, tc)
        self.state = State.DONE
        return ServerInit(w, h, pf, _text(raw_name), raw_name, interaction)

    # -- client actions ------------------------------------------------------------------

    def _require(self, *states: State) -> None:
        if self.state not in states:
            wanted = " or ".join(s.name for s in states)
            raise LocalProtocolError(f"cannot do that in state {self.state.name}; need {wanted}")

    def select_security_type(self, number: int) -> None:
        """Choose a type from the 3.7+ list (or, for active checks, one it did not offer)."""
        self._require(State.CHOOSE_TYPE)
        if not 0 < number < 256:
            raise LocalProtocolError(f"security type {number} does not fit in a U8")
        self._out.append(number)
        self._selected = number
        if number == 1:
            self._after_no_auth()
        elif number == 2:
            self.state = State.VNCAUTH_CHALLENGE
        elif number == 16:
            self._tight_used = True
            self.state = State.TIGHT_TUNNELS
        elif number == 18:
            self.state = State.TLS_START
            self._tls_pending_list = True
        elif number == 19:
            self.state = State.VENCRYPT_VERSION
        else:
            # A type whose wire format we do not parse: read the result if any, else stop.
            self.state = State.SECURITY_RESULT

    def _after_no_auth(self) -> None:
        # rfbproto §7.2.1: only 3.8 sends a SecurityResult after None.
        self.state = State.SECURITY_RESULT if self.version == (3, 8) else State.CLIENT_INIT

    def select_vencrypt_subtype(self, subtype: int) -> None:
        self._require(State.VENCRYPT_CHOOSE)
        if subtype not in VENCRYPT_TLS_SUBTYPES:
            raise LocalProtocolError(f"VeNCrypt sub-type {subtype} is not a TLS sub-type")
        self._out += struct.pack(">I", subtype)
        self._vencrypt_subtype = subtype
        self.state = State.VENCRYPT_SUBTYPE_ACK

    def select_tight_auth(self, code: int) -> None:
        self._require(State.TIGHT_CHOOSE)
        self._out += struct.pack(">I", code)
        if code == 1:
            self._after_no_auth()
        elif code == 2:
            self.state = State.VNCAUTH_CHALLENGE
        else:
            self.state = State.SECURITY_RESULT

    def tls_established(self) -> None:
        """Call after the TLS handshake; bytes fed from now on are the decrypted stream."""
        self._require(State.TLS_START)
        if self._tls_pending_list:
            self.state = State.SECURITY  # type 18 carries a second, 3.7-style list
            if self.version == (3, 3):
                raise LocalProtocolError("TLS type 18 needs RFB 3.7 or later")
        elif self._vencrypt_subtype in VENCRYPT_NO_AUTH_SUBTYPES:
            self.state = State.SECURITY_RESULT
        elif self._vencrypt_subtype in (258, 261):
            self.state = State.VNCAUTH_CHALLENGE
        else:
            self.state = State.CLOSED  # Plain/SASL/Ident inside TLS: credentials we never send

    def send_vnc_auth_response(self, response: bytes) -> None:
        self._require(State.VNCAUTH_RESPONSE)
        if len(response) != 16:
            raise LocalProtocolError("a VNC authentication response is 16 bytes")
        self._out += response
        self.state = State.SECURITY_RESULT

    def send_client_init(self, shared: bool = True) -> None:
        """ClientInit; shared=True so no connected user is disconnected (§7.3.1)."""
        self._require(State.CLIENT_INIT)
        self._out.append(1 if shared else 0)
        self.state = State.SERVER_INIT

    def close(self) -> None:
        """We are done; further data is ignored."""
        if self.state is not State.ERROR:
            self.state = State.CLOSED


def framebuffer_update_request(
    x: int, y: int, width: int, height: int, incremental: bool = False
) -> bytes:
    """FramebufferUpdateRequest (message type 3, rfbproto §7.5.3), the first message after
    ServerInit; non-incremental asks for every pixel of the region."""
    return struct.pack(">BBHHHH", 3, int(incremental), x, y, width, height)


_HANDLERS = {
    State.VERSION: RfbClient._parse_version,
    State.SECURITY: RfbClient._parse_security,
    State.VNCAUTH_CHALLENGE: RfbClient._parse_vnc_challenge,
    State.VENCRYPT_VERSION: RfbClient._parse_vencrypt_version,
    State.VENCRYPT_ACK: RfbClient._parse_vencrypt_ack,
    State.VENCRYPT_SUBTYPES: RfbClient._parse_vencrypt_subtypes,
    State.VENCRYPT_SUBTYPE_ACK: RfbClient._parse_vencrypt_subtype_ack,
    State.TIGHT_TUNNELS: RfbClient._parse_tight_tunnels,
    State.TIGHT_AUTH: RfbClient._parse_tight_auth,
    State.SECURITY_RESULT: RfbClient._parse_security_result,
    State.SERVER_INIT: RfbClient._parse_server_init,
    State.TLS_START: RfbClient._announce_tls,
}
