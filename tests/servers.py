"""Start REAL VNC servers (Debian packages) on loopback for tests.

Pytest-independent: ``tests/conftest.py`` wraps these in fixtures and
``tests/record_transcripts.py`` uses them directly.

Every server gets a free TCP port (bind port 0 on 127.0.0.1) and a free X
display number (from 40 upwards; a display is free when neither
``/tmp/.X11-unix/X<N>`` nor ``/tmp/.X<N>-lock`` nor an abstract X socket exists,
and no other process using this module has reserved it).  Each process runs in
its own session/process group, and ``stop()`` kills the group by PID.

Readiness NEVER connects to the RFB port: TigerVNC Xvnc counts every connection
that ends before authentication towards its blacklist (5 per address, then
"Too many security failures").  Instead we wait until ``/proc/net/tcp`` shows a
LISTEN socket on the port whose inode belongs to one of our processes, and (for
X servers) until ``/proc/net/unix`` shows the listening X socket.

Server kinds (see ``KINDS``):

* ``tigervnc-none``      Xvnc -SecurityTypes None
* ``tigervnc-vncauth``   Xvnc -SecurityTypes VncAuth -PasswordFile F
* ``tigervnc-vencrypt``  Xvnc -SecurityTypes VeNCrypt,TLSVnc,VncAuth,TLSNone -PasswordFile F
* ``tigervnc-default``   Xvnc -PasswordFile F (TigerVNC default SecurityTypes TLSVnc,VncAuth)
* ``tigervnc``           Xvnc with any ``security_types`` / ``password`` / ``extra_args``
* ``x11vnc-none``        Xvfb + x11vnc -nopw
* ``x11vnc-password``    Xvfb + x11vnc -rfbauth F
* ``xtightvnc``          Xtightvnc -rfbauth F (TightVNC 1.3.10)
* ``xtightvnc-none``     Xtightvnc without a password file
* ``qemu``               qemu-system-x86_64 -vnc 127.0.0.1:N (no password, no guest: -S)
* ``qemu-password``      the same with ``password=on`` and no password set (every login fails)
* ``x0vncserver``        Xvfb + TigerVNC x0vncserver -SecurityTypes VncAuth (scraping server)
* ``tigervnc-queryconnect``  Xvnc -SecurityTypes None -QueryConnect, with ``vncconfig -nowin`` on
                         its display (the helper that shows the Accept dialog, as a vncserver
                         session runs it); ``vncconfig=False`` leaves it out
* ``x0vncserver-none``   the same with -SecurityTypes None
* ``x0vncserver-queryconnect``  the same with -SecurityTypes None -QueryConnect
* ``vino``               Xvfb + a private session D-Bus + GNOME vino-server, its GSettings in a
                         keyfile of its own; defaults are vino's (``prompt-enabled``, TLS type 18
                         required, no password); ``vino-noprompt``, ``vino-noprompt-plain``
                         (require-encryption off), ``vino-password`` (VNC password, no prompt)
* ``wayvnc``             sway (headless wlroots backend, pixman renderer) run as an unprivileged
                         user + wayvnc on its output; ``wayvnc-auth``: enable_auth with a
                         self-signed certificate (VeNCrypt X509Plain)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
DEFAULT_PASSWORD = "secret12"
DEFAULT_GEOMETRY = (800, 600)
FIRST_DISPLAY = 40
LAST_DISPLAY = 400
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 4
_RESERVATION_DIR = Path(tempfile.gettempdir()) / "vncaudit-test-displays"


class ServerUnavailable(RuntimeError):
    """A binary needed for this server kind is not installed."""

    def __init__(self, kind: str, missing: Sequence[str]) -> None:
        self.kind = kind
        self.missing = list(missing)
        pkgs = sorted({PACKAGE_OF.get(b, b) for b in missing})
        super().__init__(
            f"{kind}: missing {', '.join(missing)} (apt-get install -y {' '.join(pkgs)})"
        )


class ServerStartError(RuntimeError):
    """The server did not come up (log tail included in the message)."""


# binary -> Debian package
PACKAGE_OF = {
    "Xvnc": "tigervnc-standalone-server",
    "vncpasswd": "tigervnc-tools",
    "Xvfb": "xvfb",
    "X0tigervnc": "tigervnc-scraping-server",
    "x11vnc": "x11vnc",
    "Xtightvnc": "tightvncserver",
    "tightvncpasswd": "tightvncpasswd",
    "xsetroot": "x11-xserver-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "vncconfig": "tigervnc-tools",
    "vino-server": "vino",
    "dbus-daemon": "dbus-daemon",
    "gsettings": "libglib2.0-bin",
    "sway": "sway",
    "wayvnc": "wayvnc",
    "openssl": "openssl",
}

VINO_SERVER = "/usr/lib/vino/vino-server"  # Debian installs it outside PATH
VINO_MIN_PORT, VINO_MAX_PORT = 5000, 50000  # vino-server.h: alternative-port must lie between


# --------------------------------------------------------------------------- #
# Free ports and displays
# --------------------------------------------------------------------------- #

_handed_ports: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now on *host* (bind port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_ports and not tcp_listen_inodes(port):
            _handed_ports.add(port)
            return port
    raise RuntimeError("could not find a free TCP port")


def free_port_between(low: int, high: int, host: str = HOST) -> int:
    """A free TCP port in (low, high), for servers that take no other (vino: 5000-50000)."""
    import random

    for _ in range(200):
        port = random.randint(low + 1, high - 1)
        if port in _handed_ports or tcp_listen_inodes(port):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_ports.add(port)
        return port
    raise RuntimeError(f"could not find a free TCP port between {low} and {high}")


def _abstract_x_sockets() -> set[int]:
    used: set[int] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and "/.X11-unix/X" in parts[7]:
                with contextlib.suppress(ValueError):
                    used.add(int(parts[7].rsplit("X", 1)[1]))
    return used


def _display_in_use(n: int, abstract: set[int]) -> bool:
    return (
        n in abstract or Path(f"/tmp/.X11-unix/X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists()
    )


class DisplayReservation:
    """An flock on a per-display file, held while our server uses display N.

    Protects parallel test runs (several pytest processes, xdist, other
    engineers' sessions) from picking the same display before the X server has
    created its lock file.
    """

    def __init__(self, display: int, fh: IO[str]) -> None:
        self.display = display
        self._fh: IO[str] | None = fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def reserve_display(start: int = FIRST_DISPLAY) -> DisplayReservation:
    """Reserve the first free X display number >= *start*."""
    _RESERVATION_DIR.mkdir(mode=0o1777, parents=True, exist_ok=True)
    abstract = _abstract_x_sockets()
    for n in range(start, LAST_DISPLAY):
        if _display_in_use(n, abstract):
            continue
        fh = open(_RESERVATION_DIR / f"{n}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        if _display_in_use(n, _abstract_x_sockets()):  # raced with an X server
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
            continue
        return DisplayReservation(n, fh)
    raise RuntimeError(f"no free X display in {start}..{LAST_DISPLAY}")


# --------------------------------------------------------------------------- #
# Readiness without connecting
# --------------------------------------------------------------------------- #


def tcp_listen_inodes(port: int) -> set[int]:
    """Inodes of LISTEN sockets on *port* (any address, IPv4 and IPv6)."""
    inodes: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A = TCP_LISTEN
                continue
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(parts[9]))
    return inodes


def tcp_listen_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every LISTEN TCP socket owned by *pid* (for tests)."""
    owned = _socket_inodes(pid)
    out: list[tuple[str, int]] = []
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) < 10 or parts[3] != "0A" or int(parts[9]) not in owned:
                    continue
                addr_hex, port_hex = parts[1].rsplit(":", 1)
                out.append((_decode_proc_addr(addr_hex, v6), int(port_hex, 16)))
    return out


def _decode_proc_addr(addr_hex: str, v6: bool) -> str:
    raw = bytes.fromhex(addr_hex)
    # /proc/net/tcp* prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, raw)


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def is_listening(port: int, pids: Sequence[int] | None = None) -> bool:
    """True when a LISTEN socket exists on *port* (owned by one of *pids* if given)."""
    inodes = tcp_listen_inodes(port)
    if not inodes:
        return False
    if pids is None:
        return True
    return any(inodes & _socket_inodes(p) for p in pids)


def x_display_listening(display: int) -> bool:
    """True when /proc/net/unix has a listening socket for X display *display*."""
    names = {f"/tmp/.X11-unix/X{display}", f"@/tmp/.X11-unix/X{display}"}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            # Flags 00010000 = __SO_ACCEPTCON (listening); St 01 = unconnected.
            if len(parts) >= 8 and parts[7] in names and parts[3] == "00010000":
                return True
    return False


# --------------------------------------------------------------------------- #
# Running server object
# --------------------------------------------------------------------------- #


@dataclass
class VncServer:
    """A running real VNC server. Stop it with ``stop()`` (idempotent)."""

    kind: str
    host: str
    port: int
    display: int
    password: str | None
    command: list[str]
    desktop: str | None = None
    geometry: tuple[int, int] | None = None
    workdir: Path | None = None
    log_path: Path | None = None
    start_seconds: float = 0.0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    rfb_index: int = -1  # which of `procs` serves RFB (Xvnc + vncconfig: the first)
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    # The desktop user's session (vino: its GSettings keyfile and session bus), for the
    # commands a person would run in it.
    session_env: dict[str, str] = field(default_factory=dict)
    _reservation: DisplayReservation | None = None
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """PID of the process that serves RFB (Xvnc, x11vnc, Xtightvnc, vino-server, ...)."""
        return self.procs[self.rfb_index].pid

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def env(self) -> dict[str, str]:
        """Environment for X clients (xsetroot, xdotool) on this display."""
        return {**os.environ, "DISPLAY": f":{self.display}"}

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def listening(self) -> bool:
        return is_listening(self.port, self.pids)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        # Stop in reverse start order: the VNC front end before its X server.
        for proc in reversed(self.procs):
            _kill_group(proc)
        for fh in self._logs:
            with contextlib.suppress(OSError):
                fh.close()
        self._logs.clear()
        for undo in self.cleanup:
            with contextlib.suppress(OSError):
                undo()
        self.cleanup.clear()
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None

    def __enter__(self) -> VncServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"VncServer(kind={self.kind!r}, host={self.host!r}, port={self.port}, "
            f"display={self.display}, pids={self.pids})"
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # Each process was started with start_new_session=True, so pgid == pid.
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def have(binary: str) -> bool:
    """Whether *binary* is installed (vino-server lives outside PATH)."""
    if binary == "vino-server":
        return Path(_vino_binary()).exists()
    return shutil.which(binary) is not None


def require(kind: str, binaries: Sequence[str]) -> None:
    missing = [b for b in binaries if not have(b)]
    if missing:
        raise ServerUnavailable(kind, missing)


def make_password_file(path: Path, password: str = DEFAULT_PASSWORD) -> Path:
    """Write a VNC DES-obfuscated password file (``vncpasswd -f`` format).

    TigerVNC ``vncpasswd -f``, ``tightvncpasswd -f`` and x11vnc ``-rfbauth``
    all use the same 8-byte format (verified: identical bytes for "secret12").
    """
    tool = shutil.which("vncpasswd") or shutil.which("tightvncpasswd")
    if tool is None:
        raise ServerUnavailable("password-file", ["vncpasswd"])
    out = subprocess.run(
        [tool, "-f"], input=(password + "\n").encode(), capture_output=True, check=True
    ).stdout
    if len(out) != 8:
        raise ServerStartError(f"{tool} -f produced {len(out)} bytes, expected 8")
    path.write_bytes(out)
    path.chmod(0o600)
    return path


def _workdir(workdir: Path | None) -> Path:
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="vncaudit-servers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def _log_tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _popen(cmd: list[str], log: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # own process group: stop() kills the group
    )


def _wait(
    what: str,
    ready: Callable[[], bool],
    procs: Sequence[subprocess.Popen[bytes]],
    log_path: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        for p in procs:
            if p.poll() is not None:
                raise ServerStartError(
                    f"{what}: {p.args!r} exited with {p.returncode}\n{_log_tail(log_path)}"
                )
        if time.monotonic() > deadline:
            raise ServerStartError(f"{what}: not ready after {timeout}s\n{_log_tail(log_path)}")
        time.sleep(0.02)


def _base_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(workdir)  # no ~/.vnc, ~/.x11vncrc of the user
    env.pop("DISPLAY", None)
    env.pop("XAUTHORITY", None)
    return env


def _launch(
    kind: str,
    build: Callable[[int, int, Path], list[list[str]]],
    *,
    password: str | None,
    desktop: str | None,
    geometry: tuple[int, int] | None,
    workdir: Path | None,
    timeout: float,
    x_ready_first: bool,
    port: int | None = None,
) -> VncServer:
    """Start the commands produced by ``build(display, port, log_dir)``.

    With one command it is the VNC X server (Xvnc, Xtightvnc).  With two the
    first is an X server (Xvfb) and the second the VNC front end (x11vnc).
    Retries with a new display/port when the start fails (a race with another
    process picking the same display or port).
    """
    wd = _workdir(workdir)
    last_error: Exception | None = None
    for attempt in range(START_ATTEMPTS):
        try:
            return _launch_once(
                kind,
                build,
                attempt=attempt,
                password=password,
                desktop=desktop,
                geometry=geometry,
                workdir=wd,
                timeout=timeout,
                x_ready_first=x_ready_first,
                port=port,
            )
        except ServerStartError as exc:
            last_error = exc
    raise ServerStartError(f"{kind}: gave up after {START_ATTEMPTS} attempts: {last_error}")


def _launch_once(
    kind: str,
    build: Callable[[int, int, Path], list[list[str]]],
    *,
    attempt: int,
    password: str | None,
    desktop: str | None,
    geometry: tuple[int, int] | None,
    workdir: Path,
    timeout: float,
    x_ready_first: bool,
    port: int | None = None,
) -> VncServer:
    reservation = reserve_display()
    display = reservation.display
    port = port or free_port()
    log_path = workdir / f"{kind}-{display}-{port}-{attempt}.log"
    log = open(log_path, "wb")
    server = VncServer(
        kind=kind,
        host=HOST,
        port=port,
        display=display,
        password=password,
        command=[],
        desktop=desktop,
        geometry=geometry,
        workdir=workdir,
        log_path=log_path,
        _reservation=reservation,
        _logs=[log],
    )
    t0 = time.monotonic()
    try:
        commands = build(display, port, workdir)
        server.commands = commands
        server.command = commands[-1]
        env = _base_env(workdir)

        def x_ready() -> None:
            _wait(
                f"{kind} X server :{display}",
                lambda: x_display_listening(display),
                server.procs,
                log_path,
                timeout,
            )

        for i, cmd in enumerate(commands):
            server.procs.append(_popen(cmd, log, env))
            if i == 0 and (len(commands) > 1 or x_ready_first):
                x_ready()
        _wait(
            f"{kind} RFB port {port}",
            lambda: is_listening(port, server.pids),
            server.procs,
            log_path,
            timeout,
        )
        if not x_ready_first:
            x_ready()
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.monotonic() - t0
    return server


def _geom(geometry: tuple[int, int] | None) -> tuple[int, int]:
    return geometry or DEFAULT_GEOMETRY


# --------------------------------------------------------------------------- #
# TigerVNC Xvnc
# --------------------------------------------------------------------------- #


def start_tigervnc(
    *,
    security_types: str | None = None,
    password: str | None = None,
    desktop: str | None = "vncaudit-tiger",
    geometry: tuple[int, int] | None = DEFAULT_GEOMETRY,
    extra_args: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
    kind: str = "tigervnc",
    port: int | None = None,
) -> VncServer:
    """TigerVNC ``Xvnc`` on 127.0.0.1.

    *security_types* None means: do not pass ``-SecurityTypes`` (TigerVNC's
    default, TLSVnc,VncAuth).  With a *password* a ``-PasswordFile`` is made.
    *port*: listen there (a server restarted where it was) instead of a free one.
    """
    require(kind, ["Xvnc"] + (["vncpasswd"] if password is not None else []))
    wd = _workdir(workdir)

    def build(display: int, port: int, d: Path) -> list[list[str]]:
        cmd = ["Xvnc", f":{display}", "-rfbport", str(port), "-interface", HOST]
        cmd += ["-nolisten", "tcp"]
        if security_types is not None:
            cmd += ["-SecurityTypes", security_types]
        if password is not None:
            pw = make_password_file(d / f"passwd-:{display}", password)
            cmd += ["-PasswordFile", str(pw)]
        if desktop is not None:
            cmd += ["-desktop", desktop]
        if geometry is not None:
            cmd += ["-geometry", f"{geometry[0]}x{geometry[1]}"]
        cmd += list(extra_args)
        return [cmd]

    return _launch(
        kind,
        build,
        password=password,
        desktop=desktop,
        geometry=_geom(geometry) if geometry else (1024, 768),  # Xvnc default 1024x768
        workdir=wd,
        timeout=timeout,
        x_ready_first=False,
        port=port,
    )


def start_tigervnc_none(**kw: Any) -> VncServer:
    return start_tigervnc(security_types="None", kind="tigervnc-none", **kw)


def start_tigervnc_vncauth(password: str = DEFAULT_PASSWORD, **kw: Any) -> VncServer:
    return start_tigervnc(
        security_types="VncAuth", password=password, kind="tigervnc-vncauth", **kw
    )


def start_tigervnc_vencrypt(password: str = DEFAULT_PASSWORD, **kw: Any) -> VncServer:
    return start_tigervnc(
        security_types="VeNCrypt,TLSVnc,VncAuth,TLSNone",
        password=password,
        kind="tigervnc-vencrypt",
        **kw,
    )


def start_tigervnc_default(password: str = DEFAULT_PASSWORD, **kw: Any) -> VncServer:
    """TigerVNC as shipped: no -SecurityTypes (TLSVnc,VncAuth), a password file."""
    return start_tigervnc(security_types=None, password=password, kind="tigervnc-default", **kw)


# --------------------------------------------------------------------------- #
# Xvfb + TigerVNC x0vncserver (screen scraping)
# --------------------------------------------------------------------------- #


def start_x0vncserver(
    *,
    password: str | None = DEFAULT_PASSWORD,
    desktop: str | None = "vncaudit-x0",
    geometry: tuple[int, int] | None = DEFAULT_GEOMETRY,
    extra_args: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
    kind: str = "x0vncserver",
) -> VncServer:
    """``Xvfb :N`` + ``X0tigervnc -display :N -rfbport P -localhost -SecurityTypes VncAuth``.

    ``X0tigervnc`` is Debian's name for TigerVNC's x0vncserver binary (``x0vncserver`` there is
    a wrapper that daemonises). It shares Xvnc's `VNCServerST`, so the same blacklist applies.
    ``-localhost`` makes it listen on loopback only (127.0.0.1 and ::1).
    """
    require(kind, ["Xvfb", "X0tigervnc"] + (["vncpasswd"] if password is not None else []))
    wd = _workdir(workdir)
    w, h = _geom(geometry)

    def build(display: int, port: int, d: Path) -> list[list[str]]:
        xvfb = ["Xvfb", f":{display}", "-screen", "0", f"{w}x{h}x24", "-nolisten", "tcp"]
        vnc = ["X0tigervnc", "-display", f":{display}", "-rfbport", str(port), "-localhost"]
        if password is None:
            vnc += ["-SecurityTypes", "None"]
        else:
            pw = make_password_file(d / f"passwd-:{display}", password)
            vnc += ["-SecurityTypes", "VncAuth", "-PasswordFile", str(pw)]
        if desktop is not None:
            vnc += ["-desktop", desktop]
        vnc += list(extra_args)
        return [xvfb, vnc]

    return _launch(
        kind,
        build,
        password=password,
        desktop=desktop,
        geometry=(w, h),
        workdir=wd,
        timeout=timeout,
        x_ready_first=True,
    )


# --------------------------------------------------------------------------- #
# Xvfb + x11vnc (LibVNCServer)
# --------------------------------------------------------------------------- #


def start_x11vnc(
    *,
    password: str | None = None,
    desktop: str | None = None,
    geometry: tuple[int, int] | None = DEFAULT_GEOMETRY,
    extra_args: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
    kind: str | None = None,
) -> VncServer:
    """``Xvfb :N`` + ``x11vnc -display :N -rfbport P -listen 127.0.0.1 ...``.

    x11vnc 0.9.16 opens an IPv6 wildcard listener on [::]:5900 EVEN WITH
    ``-noipv6``; ``-rfbportv6 -1`` is what turns it off (so that parallel
    servers do not fight over port 5900 and nothing listens beyond loopback).
    Without *desktop* x11vnc names the desktop "<hostname>:<display>".
    """
    kind = kind or ("x11vnc-password" if password is not None else "x11vnc-none")
    require(kind, ["Xvfb", "x11vnc"] + (["vncpasswd"] if password is not None else []))
    wd = _workdir(workdir)
    w, h = _geom(geometry)

    def build(display: int, port: int, d: Path) -> list[list[str]]:
        xvfb = ["Xvfb", f":{display}", "-screen", "0", f"{w}x{h}x24", "-nolisten", "tcp"]
        vnc = ["x11vnc", "-display", f":{display}", "-rfbport", str(port)]
        vnc += ["-listen", HOST, "-noipv6", "-rfbportv6", "-1"]
        vnc += ["-forever", "-shared", "-norc"]
        if password is None:
            vnc += ["-nopw"]
        else:
            pw = make_password_file(d / f"passwd-:{display}", password)
            vnc += ["-rfbauth", str(pw)]
        if desktop is not None:
            vnc += ["-desktop", desktop]
        vnc += list(extra_args)
        return [xvfb, vnc]

    return _launch(
        kind,
        build,
        password=password,
        desktop=desktop,
        geometry=(w, h),
        workdir=wd,
        timeout=timeout,
        x_ready_first=True,
    )


def start_x11vnc_none(**kw: Any) -> VncServer:
    return start_x11vnc(password=None, **kw)


def start_x11vnc_password(password: str = DEFAULT_PASSWORD, **kw: Any) -> VncServer:
    return start_x11vnc(password=password, **kw)


# --------------------------------------------------------------------------- #
# TightVNC 1.3.10 Xtightvnc
# --------------------------------------------------------------------------- #


def start_xtightvnc(
    *,
    password: str | None = DEFAULT_PASSWORD,
    desktop: str | None = "vncaudit-tight",
    geometry: tuple[int, int] | None = DEFAULT_GEOMETRY,
    extra_args: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
    kind: str | None = None,
) -> VncServer:
    """``Xtightvnc :N -rfbport P -localhost -nolisten tcp [-rfbauth F]``.

    Without ``-rfbauth`` it offers None (+Tight).  ``-nolisten tcp`` keeps it
    from opening X11 on 0.0.0.0:600N.
    """
    kind = kind or ("xtightvnc" if password is not None else "xtightvnc-none")
    require(kind, ["Xtightvnc"] + (["vncpasswd"] if password is not None else []))
    wd = _workdir(workdir)

    def build(display: int, port: int, d: Path) -> list[list[str]]:
        cmd = ["Xtightvnc", f":{display}", "-rfbport", str(port), "-localhost"]
        cmd += ["-nolisten", "tcp"]
        if password is not None:
            pw = make_password_file(d / f"passwd-:{display}", password)
            cmd += ["-rfbauth", str(pw)]
        if desktop is not None:
            cmd += ["-desktop", desktop]
        if geometry is not None:
            cmd += ["-geometry", f"{geometry[0]}x{geometry[1]}"]
        cmd += list(extra_args)
        return [cmd]

    return _launch(
        kind,
        build,
        password=password,
        desktop=desktop,
        geometry=_geom(geometry) if geometry else (1024, 768),
        workdir=wd,
        timeout=timeout,
        x_ready_first=False,
    )


def start_xtightvnc_none(**kw: Any) -> VncServer:
    return start_xtightvnc(password=None, **kw)


# --------------------------------------------------------------------------- #
# QEMU's built-in VNC server
# --------------------------------------------------------------------------- #

QEMU_BASE_PORT = 5900  # QEMU listens on 5900 + display number


def start_qemu(
    *,
    password: bool = False,
    name: str | None = "vncaudit-qemu",
    extra_args: Sequence[str] = (),
    vnc_options: Sequence[str] = (),
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
    kind: str | None = None,
) -> VncServer:
    """``qemu-system-x86_64 -nodefaults -display none -vnc 127.0.0.1:N -S`` on loopback.

    *vnc_options* are appended to the ``-vnc`` value (``tls-creds=ID``, ``sasl=on``), the
    objects they name go into *extra_args* (``-object tls-creds-anon,id=ID,endpoint=server``).

    No guest runs (``-S``: the CPU never starts, TCG so no KVM is needed). QEMU takes a
    display number, so the port is 5900 + N with N from a free port. ``password=on`` without
    a password set (no monitor) offers VNC authentication that always fails. With *name*
    the desktop is "QEMU (<name>)", as libvirt and Proxmox show it.
    """
    kind = kind or ("qemu-password" if password else "qemu")
    require(kind, ["qemu-system-x86_64"])
    wd = _workdir(workdir)
    last_error: Exception | None = None
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        while port <= QEMU_BASE_PORT:
            port = free_port()
        display = port - QEMU_BASE_PORT
        vnc = f"{HOST}:{display}" + (",password=on" if password else "")
        vnc += "".join(f",{option}" for option in vnc_options)
        cmd = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-vnc", vnc, "-S",
               "-machine", "accel=tcg", "-m", "16", "-monitor", "none", "-serial", "none"]
        if name is not None:
            cmd += ["-name", name]
        cmd += list(extra_args)
        log_path = wd / f"{kind}-{display}-{port}-{attempt}.log"
        log = open(log_path, "wb")
        server = VncServer(kind=kind, host=HOST, port=port, display=display,
                           password=None, command=cmd, desktop=name, workdir=wd,
                           log_path=log_path, commands=[cmd], _logs=[log])
        t0 = time.monotonic()
        try:
            server.procs.append(_popen(cmd, log, _base_env(wd)))
            pids = server.pids
            _wait(f"{kind} RFB port {port}", lambda p=port, q=pids: is_listening(p, q),
                  server.procs, log_path, timeout)
        except ServerStartError as exc:
            server.stop()
            last_error = exc
            continue
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - t0
        return server
    raise ServerStartError(f"{kind}: gave up after {START_ATTEMPTS} attempts: {last_error}")


def start_qemu_password(**kw: Any) -> VncServer:
    return start_qemu(password=True, **kw)


# --------------------------------------------------------------------------- #
# Servers that hold a session until the desktop's user accepts it
# --------------------------------------------------------------------------- #


def _chain(
    kind: str,
    *,
    display: DisplayReservation | None,
    port: int,
    workdir: Path,
    attempt: int,
    password: str | None,
    desktop: str | None,
    geometry: tuple[int, int] | None,
) -> tuple[VncServer, Path, IO[bytes]]:
    log_path = workdir / f"{kind}-{display.display if display else 0}-{port}-{attempt}.log"
    log = open(log_path, "wb")
    server = VncServer(kind=kind, host=HOST, port=port,
                       display=display.display if display else 0, password=password,
                       command=[], desktop=desktop, geometry=geometry, workdir=workdir,
                       log_path=log_path, _reservation=display, _logs=[log])
    return server, log_path, log


def _add(server: VncServer, cmd: list[str], log: IO[bytes], env: dict[str, str],
         **popen: Any) -> subprocess.Popen[bytes]:
    server.commands.append(cmd)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True, **popen)
    server.procs.append(proc)
    return proc


def _retrying(kind: str, once: Callable[[int], VncServer]) -> VncServer:
    last_error: Exception | None = None
    for attempt in range(START_ATTEMPTS):
        try:
            return once(attempt)
        except ServerStartError as exc:
            last_error = exc
    raise ServerStartError(f"{kind}: gave up after {START_ATTEMPTS} attempts: {last_error}")


def _xvfb(server: VncServer, log: IO[bytes], log_path: Path, env: dict[str, str],
          geometry: tuple[int, int], timeout: float) -> None:
    w, h = geometry
    _add(server, ["Xvfb", f":{server.display}", "-screen", "0", f"{w}x{h}x24",
                  "-nolisten", "tcp"], log, env)
    _wait(f"{server.kind} X server :{server.display}",
          lambda: x_display_listening(server.display), server.procs, log_path, timeout)


def _wait_rfb(server: VncServer, log_path: Path, timeout: float) -> None:
    _wait(f"{server.kind} RFB port {server.port}",
          lambda: is_listening(server.port, [server.pid]), server.procs, log_path, timeout)


def start_tigervnc_queryconnect(
    *,
    vncconfig: bool = True,
    query_timeout: int | None = None,
    desktop: str | None = "tiger-query",
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
    kind: str = "tigervnc-queryconnect",
    **_: Any,
) -> VncServer:
    """Xvnc -SecurityTypes None -QueryConnect [+ vncconfig -nowin on its display].

    Xvnc shows the "Accept connection?" dialog only through vncconfig (Xvnc(1)); without it every
    client gets SecurityResult failed "Unable to query the local user to accept the connection."
    at once. With it the dialog stays QueryConnectTimeout seconds (default 10) and then fails
    the client with "The attempt to prompt the user to accept the connection failed".
    """
    require(kind, ["Xvnc"] + (["vncconfig"] if vncconfig else []))
    wd = _workdir(workdir)

    def once(attempt: int) -> VncServer:
        reservation = reserve_display()
        port = free_port()
        server, log_path, log = _chain(kind, display=reservation, port=port, workdir=wd,
                                       attempt=attempt, password=None, desktop=desktop,
                                       geometry=(1024, 768))
        server.rfb_index = 0
        t0 = time.monotonic()
        try:
            cmd = ["Xvnc", f":{server.display}", "-rfbport", str(port), "-interface", HOST,
                   "-nolisten", "tcp", "-SecurityTypes", "None", "-QueryConnect"]
            if query_timeout is not None:
                cmd += ["-QueryConnectTimeout", str(query_timeout)]
            if desktop is not None:
                cmd += ["-desktop", desktop]
            env = _base_env(wd)
            _add(server, cmd, log, env)
            server.command = cmd
            _wait_rfb(server, log_path, timeout)
            _wait(f"{kind} X server :{server.display}",
                  lambda: x_display_listening(server.display), server.procs, log_path, timeout)
            if vncconfig:
                _add(server, ["vncconfig", "-display", f":{server.display}", "-nowin"], log, env)
                _wait(f"{kind} vncconfig", lambda: _vncconfig_ready(server), server.procs,
                      log_path, timeout)
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - t0
        return server

    return _retrying(kind, once)


def _vncconfig_ready(server: VncServer) -> bool:
    # vncconfig -nowin maps no window; the outside sign that it is up is its X connection (a
    # socket among its fds), after which it selects Xvnc's query events at once.
    if not _socket_inodes(server.procs[-1].pid):
        return False
    time.sleep(0.3)
    return True


def start_x0vncserver_none(**kw: Any) -> VncServer:
    return start_x0vncserver(password=None, kind="x0vncserver-none", **kw)


def start_x0vncserver_queryconnect(
    *, query_timeout: int | None = None, extra_args: Sequence[str] = (), **kw: Any
) -> VncServer:
    """x0vncserver -SecurityTypes None -QueryConnect: it asks on the display ("VNC Server :
    Accept Connection?") and after QueryConnectTimeout seconds (default 10) fails the client
    with "Connection rejected by local user", also when nobody clicked (measured on 1.12.0)."""
    args = ["-QueryConnect", *(["-QueryConnectTimeout", str(query_timeout)]
                               if query_timeout is not None else []), *extra_args]
    return start_x0vncserver(password=None, kind="x0vncserver-queryconnect", extra_args=args,
                             **kw)


def start_vino(
    *,
    prompt: bool = True,
    require_encryption: bool = True,
    password: str | None = None,
    view_only: bool = False,
    geometry: tuple[int, int] | None = DEFAULT_GEOMETRY,
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
    kind: str | None = None,
    **_: Any,
) -> VncServer:
    """Xvfb :N + a session D-Bus of its own + GNOME ``vino-server`` on 127.0.0.1:P and ::1:P.

    Its GSettings (org.gnome.Vino) live in a keyfile (GSETTINGS_BACKEND=keyfile) in the work
    directory, written with ``gsettings set`` before it starts: the port (use-alternative-port),
    network-interface 'lo', and what the test asks for. Defaults are vino's own: prompt-enabled
    (a notification with Accept/Refuse; no notification daemon runs here, so nobody ever
    answers and the session stays on hold), require-encryption (only type 18), no password.
    vino keeps a held client's socket until the prompt is answered, even after the client
    closes (CLOSE-WAIT). vino-server binds 0.0.0.0:5900 and [::]:5900 for a moment at start-up
    before it applies network-interface and the port (measured on 3.22.0).
    """
    kind = kind or "vino"
    require(kind, ["Xvfb", "dbus-daemon", "gsettings", "vino-server"])
    wd = _workdir(workdir)
    geom = _geom(geometry)
    settings: list[tuple[str, str]] = [
        ("prompt-enabled", "true" if prompt else "false"),
        ("require-encryption", "true" if require_encryption else "false"),
        ("view-only", "true" if view_only else "false"),
        ("network-interface", "lo"),
        ("use-alternative-port", "true"),
        ("notify-on-connect", "false"),
    ]
    if password is not None:
        import base64

        settings += [("authentication-methods", "['vnc']"),
                     ("vnc-password", base64.b64encode(password.encode()).decode())]

    def once(attempt: int) -> VncServer:
        reservation = reserve_display()
        port = free_port_between(VINO_MIN_PORT, VINO_MAX_PORT)
        server, log_path, log = _chain(kind, display=reservation, port=port, workdir=wd,
                                       attempt=attempt, password=password, desktop=None,
                                       geometry=geom)
        home = wd / f"{kind}-{server.display}-{port}"
        (home / "run").mkdir(parents=True, exist_ok=True)
        (home / "run").chmod(0o700)
        bus = home / "bus"
        t0 = time.monotonic()
        try:
            env = _base_env(wd)
            env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
                       XDG_RUNTIME_DIR=str(home / "run"), GSETTINGS_BACKEND="keyfile",
                       DBUS_SESSION_BUS_ADDRESS=f"unix:path={bus}", NO_AT_BRIDGE="1")
            env.pop("WAYLAND_DISPLAY", None)
            _xvfb(server, log, log_path, env, geom, timeout)
            _add(server, ["dbus-daemon", "--session", "--nofork", "--nopidfile",
                          f"--address=unix:path={bus}"], log, env)
            _wait(f"{kind} session bus", lambda: _unix_listening(bus), server.procs, log_path,
                  timeout)
            for key, value in [*settings, ("alternative-port", str(port))]:
                subprocess.run(["gsettings", "set", "org.gnome.Vino", key, value], env=env,
                               check=True, capture_output=True, timeout=30)
            env["DISPLAY"] = f":{server.display}"
            server.session_env = dict(env)
            cmd = [_vino_binary()]
            _add(server, cmd, log, env)
            server.command = cmd
            _wait_rfb(server, log_path, timeout)
        except subprocess.CalledProcessError as exc:
            server.stop()
            raise ServerStartError(f"{kind}: {exc.cmd} failed: {exc.stderr!r}") from exc
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - t0
        return server

    return _retrying(kind, once)


def _vino_binary() -> str:
    for path in (VINO_SERVER, "/usr/libexec/vino-server"):
        if Path(path).exists():
            return path
    return "vino-server"


def _unix_listening(path: Path) -> bool:
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == str(path) and parts[3] == "00010000":
                return True
    return False


def start_vino_noprompt(**kw: Any) -> VncServer:
    return start_vino(prompt=False, kind="vino-noprompt", **kw)


def start_vino_noprompt_plain(**kw: Any) -> VncServer:
    return start_vino(prompt=False, require_encryption=False, kind="vino-noprompt-plain", **kw)


def start_vino_password(password: str = DEFAULT_PASSWORD, **kw: Any) -> VncServer:
    return start_vino(prompt=False, require_encryption=False, password=password,
                      kind="vino-password", **kw)


TEST_USER = "vncaudit-test"


def unprivileged_user() -> tuple[int, int]:
    """(uid, gid) of a user that is not root, for programs that refuse root (sway).

    Not root: the current user. Root: the system user ``vncaudit-test``, created (no home, no
    login shell) when it does not exist yet.
    """
    import pwd

    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", TEST_USER], check=True, capture_output=True,
                       timeout=30)
        entry = pwd.getpwnam(TEST_USER)
    return entry.pw_uid, entry.pw_gid


def start_wayvnc(
    *,
    password: str | None = None,
    username: str = "vncaudit",
    geometry: tuple[int, int] | None = DEFAULT_GEOMETRY,
    workdir: Path | None = None,
    timeout: float = START_TIMEOUT,
    kind: str | None = None,
    **_: Any,
) -> VncServer:
    """sway with the headless wlroots backend + ``wayvnc 127.0.0.1 P``, both as an
    unprivileged user (sway refuses root) with an XDG_RUNTIME_DIR of their own.

    With *password*: wayvnc's enable_auth with *username*/*password* and a self-signed
    certificate made by openssl, which neatvnc 0.5 offers as VeNCrypt with X509Plain only.
    """
    kind = kind or ("wayvnc-auth" if password is not None else "wayvnc")
    require(kind, ["sway", "wayvnc"] + (["openssl"] if password is not None else []))
    uid, gid = unprivileged_user()
    w, h = _geom(geometry)

    def once(attempt: int) -> VncServer:
        port = free_port()
        # The user must reach its files: a directory of its own, not the (root-only) workdir.
        home = Path(tempfile.mkdtemp(prefix=f"vncaudit-{kind}-"))
        logs = _workdir(workdir)
        server, log_path, log = _chain(kind, display=None, port=port, workdir=logs,
                                       attempt=attempt, password=password, desktop="WayVNC",
                                       geometry=(w, h))
        server.cleanup.append(lambda: shutil.rmtree(home, ignore_errors=True))
        run = home / "run"
        run.mkdir(mode=0o700)
        (home / "sway.conf").write_text(f"xwayland disable\noutput HEADLESS-1 resolution {w}x{h}\n")
        config = home / "wayvnc.conf"
        lines = [f"address={HOST}", f"port={port}"]
        if password is not None:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-days", "2", "-subj", "/CN=localhost", "-keyout",
                            str(home / "key.pem"), "-out", str(home / "cert.pem")],
                           check=True, capture_output=True, timeout=60)
            lines += ["enable_auth=true", f"username={username}", f"password={password}",
                      f"private_key_file={home / 'key.pem'}",
                      f"certificate_file={home / 'cert.pem'}"]
        config.write_text("\n".join(lines) + "\n")
        for path in [home, *home.rglob("*")]:
            os.chown(path, uid, gid)
        env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(run), "PATH": os.environ.get(
            "PATH", "/usr/bin:/bin"), "WLR_BACKENDS": "headless", "WLR_RENDERER": "pixman",
            "WLR_LIBINPUT_NO_DEVICES": "1"}
        as_user: dict[str, Any] = {"user": uid, "group": gid, "extra_groups": [],
                                   "cwd": str(home)}
        t0 = time.monotonic()
        try:
            _add(server, ["sway", "-c", str(home / "sway.conf")], log, env, **as_user)
            _wait(f"{kind} sway", lambda: _wayland_socket(run) is not None, server.procs,
                  log_path, timeout)
            env["WAYLAND_DISPLAY"] = str(_wayland_socket(run))
            cmd = ["wayvnc", "-C", str(config)]
            _add(server, cmd, log, env, **as_user)
            server.command = cmd
            _wait_rfb(server, log_path, timeout)
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - t0
        return server

    return _retrying(kind, once)


def _wayland_socket(run: Path) -> str | None:
    for sock in sorted(run.glob("wayland-*")):
        if not sock.name.endswith(".lock") and _unix_listening(sock):
            return sock.name
    return None


def start_wayvnc_auth(password: str = DEFAULT_PASSWORD, **kw: Any) -> VncServer:
    return start_wayvnc(password=password, **kw)


# --------------------------------------------------------------------------- #
# Registry and X helpers
# --------------------------------------------------------------------------- #

KINDS: dict[str, Callable[..., VncServer]] = {
    "tigervnc": start_tigervnc,
    "tigervnc-none": start_tigervnc_none,
    "tigervnc-vncauth": start_tigervnc_vncauth,
    "tigervnc-vencrypt": start_tigervnc_vencrypt,
    "tigervnc-default": start_tigervnc_default,
    "x11vnc-none": start_x11vnc_none,
    "x11vnc-password": start_x11vnc_password,
    "xtightvnc": start_xtightvnc,
    "xtightvnc-none": start_xtightvnc_none,
    "qemu": start_qemu,
    "qemu-password": start_qemu_password,
    "x0vncserver": start_x0vncserver,
    "tigervnc-queryconnect": start_tigervnc_queryconnect,
    "x0vncserver-none": start_x0vncserver_none,
    "x0vncserver-queryconnect": start_x0vncserver_queryconnect,
    "vino": start_vino,
    "vino-noprompt": start_vino_noprompt,
    "vino-noprompt-plain": start_vino_noprompt_plain,
    "vino-password": start_vino_password,
    "wayvnc": start_wayvnc,
    "wayvnc-auth": start_wayvnc_auth,
}

# Binaries each kind needs (password kinds also need vncpasswd).
BINARIES: dict[str, list[str]] = {
    "tigervnc": ["Xvnc"],
    "tigervnc-none": ["Xvnc"],
    "tigervnc-vncauth": ["Xvnc", "vncpasswd"],
    "tigervnc-vencrypt": ["Xvnc", "vncpasswd"],
    "tigervnc-default": ["Xvnc", "vncpasswd"],
    "x11vnc-none": ["Xvfb", "x11vnc"],
    "x11vnc-password": ["Xvfb", "x11vnc", "vncpasswd"],
    "xtightvnc": ["Xtightvnc", "vncpasswd"],
    "xtightvnc-none": ["Xtightvnc"],
    "qemu": ["qemu-system-x86_64"],
    "qemu-password": ["qemu-system-x86_64"],
    "x0vncserver": ["Xvfb", "X0tigervnc", "vncpasswd"],
    "tigervnc-queryconnect": ["Xvnc", "vncconfig"],
    "x0vncserver-none": ["Xvfb", "X0tigervnc"],
    "x0vncserver-queryconnect": ["Xvfb", "X0tigervnc"],
    "vino": ["Xvfb", "dbus-daemon", "gsettings", "vino-server"],
    "vino-noprompt": ["Xvfb", "dbus-daemon", "gsettings", "vino-server"],
    "vino-noprompt-plain": ["Xvfb", "dbus-daemon", "gsettings", "vino-server"],
    "vino-password": ["Xvfb", "dbus-daemon", "gsettings", "vino-server"],
    "wayvnc": ["sway", "wayvnc"],
    "wayvnc-auth": ["sway", "wayvnc", "openssl"],
}


def start(kind: str, **options: Any) -> VncServer:
    """Start a server of *kind* (a key of ``KINDS``) with keyword *options*."""
    try:
        fn = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown server kind {kind!r}; known: {sorted(KINDS)}") from None
    return fn(**options)


def missing_binaries(kind: str) -> list[str]:
    return [b for b in BINARIES[kind] if not have(b)]


def paint_root(server: VncServer, color: str = "red", timeout: float = 10.0) -> None:
    """Fill the root window of *server*'s X display with *color* (``xsetroot -solid``)."""
    require("xsetroot", ["xsetroot"])
    subprocess.run(
        ["xsetroot", "-solid", color],
        env=server.env,
        check=True,
        timeout=timeout,
        capture_output=True,
    )


@contextlib.contextmanager
def running(kind: str, **options: Any) -> Iterator[VncServer]:
    """``with running("tigervnc-none") as srv: ...`` — stopped on exit."""
    srv = start(kind, **options)
    try:
        yield srv
    finally:
        srv.stop()
