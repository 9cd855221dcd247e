"""Put a REAL greeter or a REAL X session on a test server's display (for desktop-kind tests).

* ``start_xdm(server, workdir, ...)``: Debian ``xdm`` managing the server's X display, declared
  ``foreign`` in a private Xservers file (xdm does not start an X server, does no XDMCP and
  touches nothing under /etc); optional Xresources overrides and a root colour set by a
  private Xsetup script, so tests can hold out variants of the greeter.
* ``start_session(server, wm, terminals)``: a plain X session: a window manager (``twm``,
  ``openbox``) plus ``xterm`` windows.

Every process runs in its own process group and is stopped by PID (``stop()``). Readiness is
checked with ``xwininfo -root -children`` (a top-level window appears), never by connecting to
the VNC port (TigerVNC counts connections).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import servers

PACKAGE_OF = {
    "xdm": "xdm",
    "twm": "twm",
    "openbox": "openbox",
    "xterm": "xterm",
    "xwininfo": "x11-utils",
}


def missing(*binaries: str) -> list[str]:
    return [b for b in binaries if shutil.which(b) is None]


@dataclass
class XClients:
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_path: Path | None = None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()


def client_windows(server: servers.VncServer) -> int:
    """Number of windows with a WM_CLASS (real clients: xterm, xlogin) on the display."""
    out = subprocess.run(
        ["xwininfo", "-root", "-tree"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    return sum(1 for line in out.splitlines() if '": ("' in line)


def _wait_windows(server: servers.VncServer, at_least: int, settle: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client_windows(server) >= at_least:
            break
        time.sleep(0.2)
    time.sleep(settle)  # let the client finish drawing (fonts, logo) after mapping


def _spawn(cmd: Sequence[str], server: servers.VncServer, log: Path) -> subprocess.Popen[bytes]:
    env = dict(server.env)
    env.setdefault("HOME", str(log.parent))
    with open(log, "ab") as fh:
        return subprocess.Popen(
            list(cmd),
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=log.parent,
        )


def start_xdm(
    server: servers.VncServer,
    workdir: Path,
    *,
    resources: dict[str, str] | None = None,
    root_colour: str | None = None,
    settle: float = 2.0,
    timeout: float = 20.0,
) -> XClients:
    """xdm greeting on the server's display. `resources` override xlogin*… Xresources."""
    d = workdir / f"xdm-{server.display}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "Xservers").write_text(f":{server.display} foreign\n")
    res = d / "Xresources"
    base = Path("/etc/X11/xdm/Xresources").read_text()
    extra = "".join(f"{k}: {v}\n" for k, v in (resources or {}).items())
    res.write_text(base + "\n" + extra)
    setup = d / "Xsetup"
    setup.write_text("#!/bin/sh\n" + (f"xsetroot -solid '{root_colour}'\n" if root_colour else ""))
    setup.chmod(0o755)
    cfg = d / "xdm-config"
    cfg.write_text(
        "\n".join(
            [
                f"DisplayManager.servers: {d}/Xservers",
                f"DisplayManager.pidFile: {d}/xdm.pid",
                f"DisplayManager.authDir: {d}",
                f"DisplayManager.errorLogFile: {d}/xdm.log",
                "DisplayManager.requestPort: 0",
                "DisplayManager*authorize: false",
                f"DisplayManager*resources: {res}",
                f"DisplayManager*setup: {setup}",
                "DisplayManager*startup: /bin/true",
                "DisplayManager*reset: /bin/true",
                "DisplayManager*session: /bin/true",
            ]
        )
        + "\n"
    )
    clients = XClients(log_path=d / "xdm.log")
    before = client_windows(server)
    clients.procs.append(_spawn(["xdm", "-nodaemon", "-config", str(cfg)], server, d / "out.log"))
    _wait_windows(server, before + 1, settle, timeout)
    return clients


def start_session(
    server: servers.VncServer,
    workdir: Path,
    *,
    wm: str | None = "twm",
    terminals: Sequence[Sequence[str]] = ((),),
    root_colour: str | None = None,
    settle: float = 1.5,
    timeout: float = 20.0,
) -> XClients:
    """A window manager (None: none, a bare X server) plus one xterm per entry of `terminals`
    (extra xterm arguments).

    twm places a window without a position interactively, grabbing the server until a click
    that never comes, so every terminal gets a -geometry with a position under twm. Without a
    window manager xterm opens undecorated at its geometry (default: the top-left corner).
    """
    d = workdir / f"session-{server.display}"
    d.mkdir(parents=True, exist_ok=True)
    clients = XClients(log_path=d / "session.log")
    if root_colour:
        subprocess.run(["xsetroot", "-solid", root_colour], env=server.env, check=True, timeout=10)
    if wm is not None:
        clients.procs.append(_spawn([wm], server, d / "session.log"))
        time.sleep(0.5)
    before = client_windows(server)
    for i, args in enumerate(terminals):
        if wm == "twm" and "-geometry" not in args:
            args = ("-geometry", f"80x24+{20 + 30 * i}+{20 + 30 * i}", *args)
        clients.procs.append(_spawn(["xterm", *args], server, d / "session.log"))
    _wait_windows(server, before + len(terminals), settle, timeout)
    return clients
