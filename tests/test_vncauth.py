"""VNC Authentication DES: the docs/rfb.md §5 test vectors, truncation, and real vncpasswd files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vncaudit.vncauth import (
    deobfuscate_password,
    obfuscate_password,
    password_bytes,
    vnc_auth_response,
    vnc_key,
)


def test_key_reverses_the_bits_of_each_byte() -> None:
    assert vnc_key("1234567890").hex() == "8c4ccc2cac6cec1c"
    assert vnc_key(b"\x01\x80") == b"\x80\x01" + b"\0" * 6


@pytest.mark.parametrize(
    ("password", "challenge", "response"),
    [
        # docs/rfb.md §5, matching nmap's vnc.lua unit test and John-the-Ripper vectors.
        ("1234567890", "2f7532b3efd17eea5dd3a0949ffdf1d8", "0eb42d4d9ac1ef1b6ef6647b9594a621"),
        ("123", "7963f9bb7ba6a42a085763808156f570", "475b10d05648e4110d77f03916106f98"),
    ],
)
def test_response_matches_reference_vectors(password: str, challenge: str, response: str) -> None:
    assert vnc_auth_response(password, bytes.fromhex(challenge)).hex() == response


def test_only_the_first_eight_bytes_count() -> None:
    challenge = bytes(range(16))
    assert vnc_auth_response("password", challenge) == vnc_auth_response("password123", challenge)
    assert vnc_auth_response("passwor", challenge) != vnc_auth_response("password", challenge)
    assert password_bytes("päss") == "päss".encode()  # UTF-8, as viewers send it


def test_challenge_must_be_16_bytes() -> None:
    with pytest.raises(ValueError):
        vnc_auth_response("x", b"short")


def test_obfuscation_round_trip() -> None:
    assert deobfuscate_password(obfuscate_password("secret12")) == b"secret12"
    assert deobfuscate_password(obfuscate_password("abc")) == b"abc"


@pytest.mark.skipif(shutil.which("vncpasswd") is None, reason="vncpasswd (tigervnc-tools) absent")
def test_matches_a_real_vncpasswd_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    subprocess.run(
        ["vncpasswd", str(path)],
        input=b"secret12\nsecret12\nn\n",
        check=True,
        capture_output=True,
        timeout=10,
    )
    stored = path.read_bytes()
    assert stored[:8] == obfuscate_password("secret12")
    assert deobfuscate_password(stored) == b"secret12"
