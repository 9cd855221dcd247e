"""Active checks: proof on request (screenshot, password audit, authentication, auth bypass).

Owns: the opt-in checks, each of which opens its OWN connection and only when the
caller (the engine, on an explicit CLI flag) asks for it:
  * `screenshot()`       — one full framebuffer update as PNG (`--screenshot`; with `--password`
                           on protected servers);
  * `authenticate()`     — VNC Authentication with a known password, to read ServerInit
                           (`--password`);
  * `check_passwords()`  — a lockout-aware weak-password audit (`--check-passwords`);
  * `check_unoffered_none()` — CVE-2006-2369/CVE-2006-2450: select None although it was not
                           offered (`--active-checks`);
  * `check_honeypot()`   — an unassigned type selected, VNC challenges compared
                           (`--active-checks`);
  * `desktop_kind()`     — login screen or live desktop, from a screenshot (`desktop`).
Each returns its payload (`vncaudit.payloads`); `run_active` gathers them in `extra.active`.

Must not: run anything by default, send input events (KeyEvent/PointerEvent) or a non-shared
ClientInit (a connected user must never be kicked), parse RFB bytes itself (that is `rfb` and
`framebuffer`), or grade (that is `assess`). Passwords are masked in every result unless
`show_passwords` is set, and never logged.

Lockout etiquette (docs/design.md "Probing etiquette", docs/rfb.md §6.2): TigerVNC and
RealVNC 4 count EVERY connection from an address that ends before a successful authentication
and start a block at the 5th; a successful authentication clears the count. Each password
attempt is one connection, so the audit never makes more than `LOCKOUT_CONNECTIONS - 1`
connections per server per scan including the ones the scan already made (the probe's), never
more than `max_attempts` (3) attempts, and stops at the first sign of throttling. A product
that counts no connections (docs/rfb.md §10) gets every attempt asked for.
The budget lives in `passwords`; `run_active` orders the checks to keep the count low.

The package re-exports its public names; the parts live in:
  * `transport`  — `Connector`, `tcp_connector`, `bound_connector` (the stream shapes are
                   `pump`'s);
  * `handshake`  — one connection up to ServerInit (`Handshake`, `connect_and_handshake`);
  * `honeypot`   — `check_honeypot`;
  * `passwords`  — `authenticate`, `check_passwords`, wordlists, masking, the attempt budget;
  * `bypass`     — `check_unoffered_none` (CVE-2006-2369 / CVE-2006-2450);
  * `capture`    — `screenshot`, `Screenshot`, PNG files, `desktop_kind`;
  * `options`    — `ActiveOptions` and `run_active`, what the engine calls.
Each part imports only parts listed before it.
"""

from vncaudit.active.bypass import CVE_UNOFFERED_NONE, check_unoffered_none
from vncaudit.active.capture import (
    Screenshot,
    desktop_kind,
    desktop_verdict,
    encode_png,
    save_screenshot,
    screenshot,
    screenshot_filename,
)
from vncaudit.active.handshake import Handshake, NonePolicy, Outcome
from vncaudit.active.honeypot import UNASSIGNED_TYPE, check_honeypot
from vncaudit.active.options import ActiveOptions, run_active
from vncaudit.active.passwords import (
    DEFAULT_MAX_ATTEMPTS,
    LOCKOUT_CONNECTIONS,
    MASK,
    attempt_budget,
    authenticate,
    builtin_passwords,
    check_passwords,
    load_wordlist,
    mask_password,
    read_wordlist,
)
from vncaudit.active.transport import (
    READ_CHUNK,
    ByteReader,
    ByteWriter,
    Connector,
    bound_connector,
    tcp_connector,
)

__all__ = [
    "CVE_UNOFFERED_NONE",
    "DEFAULT_MAX_ATTEMPTS",
    "LOCKOUT_CONNECTIONS",
    "MASK",
    "READ_CHUNK",
    "UNASSIGNED_TYPE",
    "ActiveOptions",
    "ByteReader",
    "ByteWriter",
    "Connector",
    "Handshake",
    "NonePolicy",
    "Outcome",
    "Screenshot",
    "attempt_budget",
    "authenticate",
    "builtin_passwords",
    "check_honeypot",
    "check_passwords",
    "check_unoffered_none",
    "desktop_kind",
    "desktop_verdict",
    "encode_png",
    "load_wordlist",
    "mask_password",
    "read_wordlist",
    "run_active",
    "save_screenshot",
    "screenshot",
    "screenshot_filename",
    "bound_connector",
    "tcp_connector",
]
