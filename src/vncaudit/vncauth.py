"""VNC Authentication (security type 2): the DES challenge-response (rfbproto §7.2.2).

Owns: key derivation (password truncated to 8 bytes, NUL-padded, the bits of every key byte
reversed — docs/rfb.md §5), the 16-byte response to a challenge, and the fixed-key obfuscation of
stored password files (`~/.vnc/passwd`, TigerVNC `obfuscate.cxx`), so `local` audits can tell
what a password file holds.

Must not: do I/O or decide when to authenticate (that is `active`, behind explicit flags).
DES here is the protocol's, not a choice: it is what makes the scheme weak (56-bit key, only the
first 8 characters count), which is exactly what the password audit reports.
"""

from __future__ import annotations

from typing import Any, Final

CHALLENGE_LENGTH: Final = 16
MAX_PASSWORD_BYTES: Final = 8

# The fixed key every VNC implementation uses to "encrypt" stored passwords
# (docs/rfb.md §5, item 6).
PASSWD_FILE_KEY: Final = bytes([23, 82, 107, 6, 35, 78, 88, 7])

# Bit-reversal table: the spec takes the lowest bit of each key byte as DES's first bit.
_REVERSED: Final = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _des(key: bytes) -> Any:
    # pycryptodome loads its C code through cffi (tens of ms): imported when DES is first
    # needed, not by every command that imports this module (a scan with no password).
    from Crypto.Cipher import DES

    return DES.new(key, DES.MODE_ECB)


def password_bytes(password: str | bytes) -> bytes:
    """The bytes a server compares: UTF-8 for text, truncated to 8 (characters 9+ never count)."""
    raw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    return raw[:MAX_PASSWORD_BYTES]


def vnc_key(password: str | bytes) -> bytes:
    """The 8-byte DES key: password[:8], NUL-padded, each byte bit-reversed."""
    return password_bytes(password).ljust(MAX_PASSWORD_BYTES, b"\0").translate(_REVERSED)


def vnc_auth_response(password: str | bytes, challenge: bytes) -> bytes:
    """DES-ECB of the 16-byte challenge under `vnc_key(password)`."""
    if len(challenge) != CHALLENGE_LENGTH:
        raise ValueError(f"a VNC challenge is {CHALLENGE_LENGTH} bytes, got {len(challenge)}")
    return bytes(_des(vnc_key(password)).encrypt(challenge))


def obfuscate_password(password: str | bytes) -> bytes:
    """The 8 bytes `vncpasswd` writes for `password` (DES under the public fixed key)."""
    plain = password_bytes(password).ljust(MAX_PASSWORD_BYTES, b"\0")
    # The fixed key goes through the same bit-reversing deskey() as the auth key.
    return bytes(_des(PASSWD_FILE_KEY.translate(_REVERSED)).encrypt(plain))


def deobfuscate_password(stored: bytes) -> bytes:
    """The password held in a VNC password file (first 8 bytes), trailing NULs removed."""
    if len(stored) < MAX_PASSWORD_BYTES:
        raise ValueError("a VNC password file holds at least 8 bytes")
    cipher = _des(PASSWD_FILE_KEY.translate(_REVERSED))
    return bytes(cipher.decrypt(stored[:MAX_PASSWORD_BYTES])).rstrip(b"\0")
