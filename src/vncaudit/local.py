"""Host audit: which VNC servers listen on THIS machine, how exposed each is, and why.

Owns: listing listening TCP sockets with psutil (never netstat parsing), deciding which are VNC
(a port in the VNC range, a known VNC server process, or an RFB banner on a loopback probe),
the owning process (PID, name, command line, user), the product's settings that decide its
exposure where they can be read (TigerVNC `~/.vnc/config` and `/etc/tigervnc/vncserver-config-*`,
x11vnc and Xvnc command-line flags, the systemd unit), one core probe of each listener from
this machine, grading by `assess` with the listener's exposure, and the firewall verdict per
family (`vncaudit.firewall`). It says what it could not see (other users' sockets without root,
unreadable configs, firewall tools it could not read) instead of guessing.

Must not: change anything on the host (that is `harden`), probe any address that is not one of
this machine's own listening addresses, or import the CLI. Process knowledge lives in
`data/local.toml`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import platform
import pwd
import re
import shlex
import socket
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs pinned; used at its boundary only

from vncaudit import firewall
from vncaudit import rfb as rfb_mod
from vncaudit.budget import Decision, Ledger, grant_note
from vncaudit.budget.clock import process_start
from vncaudit.models import Product, RfbFacts, ServiceResult, Severity, State, Target
from vncaudit.payloads import LocalBinding
from vncaudit.probe import ProbeOptions, probe

log = logging.getLogger(__name__)

DEFAULT_PORTS: tuple[int, ...] = tuple(range(5800, 6000))
SNIFF_TIMEOUT = 0.6
SNIFF_LIMIT = 64  # listeners outside the VNC range we read a banner from, at most


@dataclass(frozen=True)
class ConfigFact:
    """One setting that decides where the server listens or who may connect."""

    source: str  # "command line", "/home/u/.vnc/config", "systemd unit vncserver@:1.service"
    setting: str
    value: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "setting": self.setting, "value": self.value,
                "meaning": self.meaning}


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    name: str | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] = ()
    user: str | None = None
    unit: str | None = None  # systemd unit owning the process
    error: str | None = None  # what psutil refused to tell

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "exe": self.exe, "cmdline": list(self.cmdline),
                "user": self.user, "unit": self.unit, "error": self.error}


@dataclass(frozen=True)
class Listener:
    """One listening socket that is (or may be) VNC, with everything known about it."""

    address: str
    port: int
    family: str  # firewall.IPV4 | firewall.IPV6
    process: ProcessInfo | None
    reasons: tuple[str, ...]  # why it counts as VNC
    product_hint: str | None = None  # from the process name (data/local.toml)
    config: tuple[ConfigFact, ...] = ()
    firewall: dict[str, firewall.Verdict] = field(default_factory=dict, compare=False)
    result: ServiceResult | None = None
    dual_stack: bool = False  # a [::] socket that may also take IPv4 (see _dual_stack)

    @property
    def scope(self) -> str:
        """"all-interfaces" (0.0.0.0, ::), "loopback" or "address" (one local address)."""
        ip = ipaddress.ip_address(self.address.split("%")[0])
        if ip.is_unspecified:
            return "all-interfaces"
        if ip.is_loopback:
            return "loopback"
        return "address"

    @property
    def served_families(self) -> tuple[str, ...]:
        """The address families whose packets can reach this socket."""
        if self.scope == "loopback":
            return ()
        if self.dual_stack:
            return (firewall.IPV6, firewall.IPV4)
        ip = ipaddress.ip_address(self.address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return (firewall.IPV4,)
        return (self.family,)

    @property
    def reachable_from_outside(self) -> bool | None:
        """False when loopback-only or every served family is blocked; None when unknown."""
        fams = self.served_families
        if not fams:
            return False
        verdicts = [self.firewall.get(f) for f in fams]
        if any(v is None or v.action is firewall.Action.UNKNOWN for v in verdicts):
            if any(v is not None and not v.blocked and v.action is not firewall.Action.UNKNOWN
                   for v in verdicts):
                return True
            return None
        return any(v is not None and not v.blocked for v in verdicts)

    @property
    def severity(self) -> Severity | None:
        return self.result.worst_severity if self.result is not None else None

    @property
    def product(self) -> str | None:
        if self.result is not None and self.result.product is not None \
                and self.result.product.name != "unknown":
            return self.result.product.name
        return self.product_hint

    @property
    def display(self) -> int | None:
        """The X display an Xvnc-style server was started as (`Xvnc :51 ...`), if known.

        Only for servers that are their own X server (Xvnc, Xtightvnc, Xtigervnc): x11vnc's
        `-display :N` names the X server it mirrors, not a VNC display of its own.
        """
        if self.process is None or not self.process.cmdline:
            return None
        exe = self.process.cmdline[0].rsplit("/", 1)[-1]
        if not exe.startswith("X") or not exe.lower().endswith("vnc"):
            return None
        for arg in self.process.cmdline[1:]:
            # Anyone can start a process called Xvnc: ":²" passes isdigit() but not int(), and
            # ":99999999" is no display; neither may stop root's harden plan.
            number = arg[1:]
            if arg.startswith(":") and number.isascii() and number.isdigit() and \
                    len(number) <= 5 and int(number) <= 65535:
                return int(number)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "port": self.port,
            "family": self.family,
            "scope": self.scope,
            "served_families": list(self.served_families),
            "process": self.process.to_dict() if self.process else None,
            "reasons": list(self.reasons),
            "product": self.product,
            "config": [c.to_dict() for c in self.config],
            "firewall": {f: v.to_dict() for f, v in self.firewall.items()},
            "reachable_from_outside": self.reachable_from_outside,
            "severity": self.severity.value if self.severity else None,
            "service": self.result.to_dict() if self.result is not None else None,
        }


@dataclass
class LocalAudit:
    """The whole host audit."""

    hostname: str
    system: str
    root: bool
    listeners: list[Listener]
    blind_spots: list[str]
    firewall: firewall.FirewallState | None
    sockets_seen: int = 0
    other_listeners: list[tuple[str, int, int | None]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "kind": "local-audit",
            "host": {"hostname": self.hostname, "system": self.system, "root": self.root,
                     "addresses": host_addresses()},
            "listeners": [x.to_dict() for x in self.listeners],
            "sockets_seen": self.sockets_seen,
            "blind_spots": self.blind_spots,
            "firewall": self.firewall.to_dict() if self.firewall else None,
        }

    @property
    def worst(self) -> Severity | None:
        sev = [x.severity for x in self.listeners if x.severity is not None]
        return max(sev, key=lambda s: s.rank) if sev else None


# --------------------------------------------------------------------------- #
# Knowledge
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class KnownServer:
    names: frozenset[str]
    product: str
    config: str


@cache
def known_servers() -> tuple[KnownServer, ...]:
    text = resources.files("vncaudit").joinpath("data/local.toml").read_text()
    doc = tomllib.loads(text)
    return tuple(KnownServer(frozenset(s["names"]), s["product"], s["config"])
                 for s in doc.get("server", []))


def known_reason(name: str | None, product: str) -> str:
    """Why a process counts as a VNC server: "process Xvnc is a TigerVNC server"."""
    if name is None:
        return f"the process is {_article(product)} {product} server"
    if name.casefold() == product.casefold():
        return f"process {name} is a VNC server"
    return f"process {name} is {_article(product)} {product} server"


def _article(word: str) -> str:
    # Product names are spoken as written: "an x11vnc" (ex-), "an UltraVNC" (ul-), "a TigerVNC".
    return "an" if word[:1].lower() in "aeioux" else "a"


def known_server(proc: ProcessInfo | None) -> KnownServer | None:
    if proc is None:
        return None
    names = {n for n in (proc.name, Path(proc.exe).name if proc.exe else None,
                         Path(proc.cmdline[0]).name if proc.cmdline else None) if n}
    for server in known_servers():
        if names & server.names:
            if server.config == "qemu" and not any("-vnc" in a for a in proc.cmdline):
                continue
            return server
    return None


def _dual_stack() -> bool:
    # Linux default (bindv6only=0): a [::] socket also takes IPv4 unless the program set
    # IPV6_V6ONLY; servers that open a separate 0.0.0.0 socket must have set it.
    try:
        return Path("/proc/sys/net/ipv6/bindv6only").read_text().strip() == "0"
    except OSError:
        return False


def host_addresses() -> list[str]:
    """This machine's own addresses (for the SSH-tunnel text and `check`)."""
    out: list[str] = []
    with contextlib.suppress(OSError, psutil.Error):
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    ip = a.address.split("%")[0]
                    if not ipaddress.ip_address(ip).is_loopback and ip not in out:
                        out.append(ip)
    return out


# --------------------------------------------------------------------------- #
# Sockets and processes
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Socket:
    address: str
    port: int
    family: str
    pid: int | None


def listening_sockets() -> tuple[list[Socket], list[str]]:
    """Every listening TCP socket psutil can see, and what it could not see."""
    blind: list[str] = []
    for attempt in range(_OWNER_ATTEMPTS):
        try:
            conns = psutil.net_connections(kind="tcp")
        except psutil.AccessDenied:
            return [], ["listening sockets: the OS refused to list them without root "
                        "(run as root/Administrator)"]
        seen: dict[tuple[str, int], Socket] = {}
        for c in conns:
            if c.status != psutil.CONN_LISTEN or not c.laddr:
                continue
            fam = firewall.IPV6 if c.family == socket.AF_INET6 else firewall.IPV4
            key = (c.laddr.ip, c.laddr.port)
            if key not in seen or seen[key].pid is None:
                pid = _main_owner(c.pid, key) if c.pid is not None else None
                seen[key] = Socket(c.laddr.ip, c.laddr.port, fam, pid)
        # A holder named by psutil may be a forked child that exited since (Xvnc's xkbcomp):
        # list again rather than report a socket whose owner cannot be read.
        if all(s.pid is None or psutil.pid_exists(s.pid) for s in seen.values()):
            break
        if attempt + 1 < _OWNER_ATTEMPTS:
            time.sleep(0.05)
    return sorted(seen.values(), key=lambda s: (s.port, s.family, s.address)), blind


_OWNER_ATTEMPTS = 5


def _main_owner(pid: int, laddr: tuple[str, int]) -> int:
    """The process that owns a listening socket which forked children also hold.

    psutil names one holder of a socket; a server that forks (Xvnc runs xkbcomp, inetd-style
    daemons fork per client) shares it with short-lived children, and the holder named may be
    such a child. Walk up while the parent holds the same listening socket.
    """
    for _ in range(8):
        try:
            parent = psutil.Process(pid).parent()
            if parent is None or not any(
                c.status == psutil.CONN_LISTEN and c.laddr and (c.laddr.ip, c.laddr.port) == laddr
                for c in parent.net_connections(kind="tcp")
            ):
                return pid
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return pid
        pid = parent.pid
    return pid


def _unowned(socks: Sequence[Socket]) -> list[str]:
    unowned = sum(1 for s in socks if s.pid is None)
    if unowned and os.geteuid() != 0:
        return [f"{unowned} listening sockets belong to other users: their PID, process and "
                "command line need root (run as root to see them)"]
    if unowned:
        return [f"{unowned} listening sockets have no owning process visible here (kernel "
                "sockets or another PID namespace)"]
    return []


def process_info(pid: int) -> ProcessInfo:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            name = p.name()
            cmdline: tuple[str, ...] = ()
            exe = user = None
            errors: list[str] = []
            try:
                cmdline = tuple(p.cmdline())
            except psutil.AccessDenied:
                errors.append("command line")
            try:
                exe = p.exe() or None
            except psutil.AccessDenied:
                errors.append("executable")
            try:
                user = p.username()
            except (psutil.AccessDenied, KeyError):
                errors.append("user")
    except psutil.NoSuchProcess:
        return ProcessInfo(pid, error="process exited while being read")
    except psutil.AccessDenied:
        return ProcessInfo(pid, error="access denied (run as root)")
    return ProcessInfo(pid, name, exe, cmdline, user, systemd_unit(pid),
                       f"not readable: {', '.join(errors)}" if errors else None)


def systemd_unit(pid: int) -> str | None:
    """The .service (or .scope) that owns the process, from its cgroup path."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.rsplit(":", 1)[-1]
        for part in reversed(path.split("/")):
            if part.endswith(".service"):
                return part
    return None


UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
              "/lib/systemd/system", "/usr/lib/systemd/system")


def unit_file(unit: str) -> Path | None:
    candidates = [unit]
    m = re.fullmatch(r"(.+@)[^.]*(\.service)", unit)
    if m:
        candidates.append(m.group(1) + m.group(2))  # the template vncserver@.service
    for d in UNIT_DIRS:
        for name in candidates:
            p = Path(d) / name
            if p.is_file():
                return p
    return None


# --------------------------------------------------------------------------- #
# Product settings that decide exposure
# --------------------------------------------------------------------------- #


def xvnc_params(args: Sequence[str]) -> dict[str, str]:
    """Xvnc-style parameters: `-name value`, `-name=value`, `name=value`, bare `-flag`."""
    out: dict[str, str] = {}
    i = 0
    bools = {"localhost", "alwaysshared", "nevershared", "useipv4", "useipv6"}
    while i < len(args):
        a = args[i]
        if a.startswith(":") or not (a.startswith("-") or "=" in a):
            i += 1
            continue
        body = a.lstrip("-")
        if "=" in body:
            k, v = body.split("=", 1)
            out[k.lower()] = v
        elif body.lower() in bools:
            nxt = args[i + 1] if i + 1 < len(args) else ""
            if nxt.lower() in ("0", "1", "yes", "no", "true", "false", "on", "off"):
                out[body.lower()] = nxt
                i += 1
            else:
                out[body.lower()] = "1"
        elif i + 1 < len(args) and not args[i + 1].startswith("-"):
            out[body.lower()] = args[i + 1]
            i += 1
        else:
            out[body.lower()] = "1"
        i += 1
    return out


def _truthy(v: str) -> bool:
    return v.strip().strip('"').lower() in ("1", "yes", "true", "on", "")


def tigervnc_config(proc: ProcessInfo) -> list[ConfigFact]:
    facts: list[ConfigFact] = []
    params = xvnc_params(proc.cmdline[1:])
    for key, meaning_on, meaning_off in (
        ("localhost", "listens on loopback only", "listens on every interface"),
        ("useipv6", "also listens on IPv6", "IPv6 listening off"),
        ("useipv4", "listens on IPv4", "IPv4 listening off"),
    ):
        if key in params:
            on = _truthy(params[key])
            facts.append(ConfigFact("command line", f"-{key}", params[key],
                                    meaning_on if on else meaning_off))
    if "interface" in params:
        facts.append(ConfigFact("command line", "-interface", params["interface"],
                                f"listens on {params['interface']} only"))
    for key in ("securitytypes", "rfbport", "passwordfile", "rfbauth"):
        if key in params:
            facts.append(ConfigFact("command line", f"-{key}", params[key],
                                    _TIGER_MEANING[key]))
    home = _home(proc.user)
    files = [Path(home) / ".vnc" / "config"] if home else []
    files += [Path("/etc/tigervnc/vncserver-config-defaults"),
              Path("/etc/tigervnc/vncserver-config-mandatory")]
    for f in files:
        facts += tigervnc_file(f)
    return facts


_TIGER_MEANING = {
    "securitytypes": "security types offered",
    "rfbport": "VNC port",
    "passwordfile": "VNC password file",
    "rfbauth": "VNC password file",
}


def tigervnc_file(path: Path) -> list[ConfigFact]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [ConfigFact(str(path), "(file)", "", f"not readable: {exc.strerror}")]
    facts: list[ConfigFact] = []
    for line in text.splitlines():
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        # TigerVNC 1.11+: `key` or `key=value`; Debian's Perl files: `$key = "value";`
        m = re.fullmatch(r'\$(\w+)\s*=\s*"?([^";]*)"?\s*;?', s)
        key, value = (m.group(1), m.group(2)) if m else (s.split("=", 1) + [""])[:2]
        key = key.strip().lower()
        value = value.strip()
        if key == "localhost":
            on = _truthy(value)
            facts.append(ConfigFact(str(path), "localhost", value or "(set)",
                                    "loopback only" if on else "every interface"))
        elif key in ("interface", "securitytypes", "rfbport", "useipv6"):
            facts.append(ConfigFact(str(path), key, value, _TIGER_MEANING.get(
                key, "listens on " + value if key == "interface" else key)))
    return facts


def x11vnc_config(proc: ProcessInfo) -> list[ConfigFact]:
    args = list(proc.cmdline[1:])
    facts: list[ConfigFact] = []
    flags = {
        "-localhost": "listens on loopback only (IPv4 and IPv6)",
        # Measured (x11vnc 0.9.16): `-listen 127.0.0.1 -noipv6` still opens [::]:5900;
        # `-localhost -noipv6` and `-rfbportv6 -1` open no IPv6 socket.
        "-noipv6": "asks for no IPv6, but x11vnc keeps [::]:5900 open unless -localhost or "
                   "-rfbportv6 -1",
        "-nopw": "no password: anyone who reaches the port gets the desktop",
        "-6": "IPv6 listening on",
        "-ssl": "TLS for connections",
        "-unixpw": "Unix login instead of a VNC password",
        "-usepw": "VNC password required",
    }
    for i, a in enumerate(args):
        if a in flags:
            facts.append(ConfigFact("command line", a, "", flags[a]))
        elif a in ("-listen", "-listen6", "-rfbportv6", "-rfbport", "-rfbauth", "-passwd",
                   "-passwdfile") and i + 1 < len(args):
            v = args[i + 1]
            meaning = {
                "-listen": f"IPv4 listener on {v}",
                "-listen6": f"IPv6 listener on {v}",
                "-rfbportv6": "IPv6 listener closed" if v == "-1" else f"IPv6 port {v}",
                "-rfbport": "VNC port",
                "-rfbauth": "VNC password file",
                "-passwd": "password given on the command line (visible to every user)",
                "-passwdfile": "password file",
            }[a]
            facts.append(ConfigFact("command line", a, v if a != "-passwd" else "***", meaning))
    if "-rfbportv6" not in args and "-localhost" not in args:
        facts.append(ConfigFact("command line", "-rfbportv6", "(not given)",
                                "x11vnc opens an IPv6 wildcard listener [::] by default "
                                "(measured: [::]:5900 with -rfbport 5905)"))
    return facts


def tightvnc_config(proc: ProcessInfo) -> list[ConfigFact]:
    args = list(proc.cmdline[1:])
    facts: list[ConfigFact] = []
    if "-localhost" in args:
        facts.append(ConfigFact("command line", "-localhost", "", "listens on loopback only"))
    for i, a in enumerate(args):
        if a == "-interface" and i + 1 < len(args):
            facts.append(ConfigFact("command line", a, args[i + 1], f"listens on {args[i + 1]}"))
        if a == "-nolisten" and i + 1 < len(args):
            facts.append(ConfigFact("command line", a, args[i + 1], "X11 TCP listener off"))
        if a == "-rfbauth" and i + 1 < len(args):
            facts.append(ConfigFact("command line", a, args[i + 1], "VNC password file"))
    if "-nolisten" not in args:
        facts.append(ConfigFact("command line", "-nolisten", "(not given)",
                                "Xtightvnc also opens X11 on TCP 6000+display"))
    return facts


def qemu_config(proc: ProcessInfo) -> list[ConfigFact]:
    args = list(proc.cmdline)
    return [ConfigFact("command line", "-vnc", args[i + 1],
                       "VNC display of the VM (password=on / tls-creds decide access)")
            for i, a in enumerate(args[:-1]) if a in ("-vnc", "--vnc")]


_READERS: dict[str, Callable[[ProcessInfo], list[ConfigFact]]] = {
    "tigervnc": tigervnc_config,
    "x11vnc": x11vnc_config,
    "tightvnc": tightvnc_config,
    "qemu": qemu_config,
}


def _home(user: str | None) -> str | None:
    if not user:
        return None
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return None


def product_config(proc: ProcessInfo | None, server: KnownServer | None) -> list[ConfigFact]:
    facts: list[ConfigFact] = []
    if proc is None:
        return facts
    reader = _READERS.get(server.config) if server else None
    if reader is not None:
        facts += reader(proc)
    if proc.unit:
        path = unit_file(proc.unit)
        if path is None:
            facts.append(ConfigFact(f"systemd unit {proc.unit}", "(unit file)", "",
                                    "started by systemd; unit file not found"))
        else:
            try:
                for line in path.read_text().splitlines():
                    if line.strip().startswith("ExecStart="):
                        facts.append(ConfigFact(f"systemd unit {proc.unit} ({path})",
                                                "ExecStart", line.split("=", 1)[1].strip(),
                                                "how systemd starts it"))
            except OSError as exc:
                facts.append(ConfigFact(str(path), "(unit file)", "", f"not readable: {exc}"))
    return facts


# --------------------------------------------------------------------------- #
# The audit
# --------------------------------------------------------------------------- #


def probe_address(address: str) -> str:
    """Where to reach a local listener from this machine: loopback for a wildcard bind."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else "127.0.0.1"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address


async def sniff_rfb(host: str, port: int) -> bool:
    """Does the socket speak first with an RFB banner? One short connection."""
    return _is_banner((await read_banner(host, port))[1])


def _is_banner(data: bytes | None) -> bool:
    return data is not None and bool(re.fullmatch(rb"RFB \d{3}\.\d{3}\n", data))


async def read_banner(host: str, port: int, source: str | None = None
                      ) -> tuple[bool, bytes | None]:
    """(connected, the first 12 bytes the socket said or None): one short connection, from
    `source` when given."""
    writer: asyncio.StreamWriter | None = None
    connected = False
    try:
        async with asyncio.timeout(SNIFF_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host, port, local_addr=(source, 0) if source is not None else None)
            connected = True
            data = await reader.read(12)
    except (OSError, TimeoutError):
        return connected, None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    return True, data


async def _sniff_all(socks: Sequence[Socket], ledger: Ledger | None) -> list[bool]:
    """Which of these listeners answer with an RFB banner; through the connection ledger when
    there is one (a banner read is a connection a blacklisting server counts), answering
    from the banner read last when one more would arm the server's blacklist."""
    targets = [Target(probe_address(s.address), s.port) for s in socks]
    if ledger is None:
        return list(await asyncio.gather(*(sniff_rfb(t.host, t.port) for t in targets)))
    decisions = ledger.admit(targets, kind="banner check")

    async def one(decision: Decision) -> tuple[bool, bytes | None]:
        if not decision.allowed:
            return False, None
        return await read_banner(decision.target.host, decision.target.port, decision.bind)

    reads = await asyncio.gather(*(one(d) for d in decisions))
    outcomes: list[tuple[Decision, ServiceResult]] = []
    hits: list[bool] = []
    for decision, (connected, data) in zip(decisions, reads, strict=True):
        target = decision.target
        if not decision.allowed:
            last = decision.last
            hits.append(last is not None and last.result is not None
                        and last.result.rfb is not None)
            continue
        hits.append(_is_banner(data))
        state = (State.VNC if _is_banner(data) else State.OPEN_NOT_VNC) if connected \
            else State.FILTERED
        rfb = None
        if _is_banner(data):
            assert data is not None
            banner = data.decode("latin-1")
            version = rfb_mod.format_version(int(banner[4:7]), int(banner[8:11]))
            rfb = RfbFacts(banner=banner, server_version=version)
        outcomes.append((decision, ServiceResult(target.host, target.port, state, rfb=rfb)))
    ledger.record(outcomes)
    return hits


def _exposure(listener: Listener) -> Any:
    from vncaudit import assess

    if listener.scope == "all-interfaces":
        return assess.Exposure.ALL_INTERFACES
    if listener.scope == "loopback":
        return assess.Exposure.LOOPBACK
    return assess.exposure_of(listener.address)


def grade(result: ServiceResult, listener: Listener) -> ServiceResult:
    """assess() with this listener's exposure ("all interfaces" raises, loopback lowers)."""
    from vncaudit import assess

    return assess.assess(result, _exposure(listener))


def audit(
    ports: Iterable[int] = DEFAULT_PORTS,
    *,
    only_ports: Iterable[int] | None = None,
    sniff: bool = True,
    probe_listeners: bool = True,
    timeout: float = 5.0,
    read_firewall: bool = True,
    runner: firewall.Runner = firewall.run_command,
    ledger: Ledger | None = None,
) -> LocalAudit:
    """Audit this machine. `only_ports` limits everything (listing, probing) to those ports.
    `ledger`: count every banner read and probe there (`vncaudit.budget`); without one
    nothing is counted."""
    return asyncio.run(audit_async(ports, only_ports=only_ports, sniff=sniff,
                                   probe_listeners=probe_listeners, timeout=timeout,
                                   read_firewall=read_firewall, runner=runner, ledger=ledger))


async def audit_async(
    ports: Iterable[int] = DEFAULT_PORTS,
    *,
    only_ports: Iterable[int] | None = None,
    sniff: bool = True,
    probe_listeners: bool = True,
    timeout: float = 5.0,
    read_firewall: bool = True,
    runner: firewall.Runner = firewall.run_command,
    ledger: Ledger | None = None,
) -> LocalAudit:
    vnc_ports = set(ports)
    only = set(only_ports) if only_ports is not None else None
    root = os.geteuid() == 0
    socks, blind = listening_sockets()
    total = len(socks)
    if only is not None:
        socks = [s for s in socks if s.port in only]
    blind += _unowned(socks)
    procs: dict[int, ProcessInfo] = {}
    for s in socks:
        if s.pid is not None and s.pid not in procs:
            procs[s.pid] = process_info(s.pid)
    for p in procs.values():
        if p.error:
            blind.append(f"PID {p.pid}: {p.error}")

    candidates: list[tuple[Socket, list[str]]] = []
    others: list[Socket] = []
    for s in socks:
        reasons: list[str] = []
        proc = procs.get(s.pid) if s.pid is not None else None
        server = known_server(proc)
        if s.port in vnc_ports:
            reasons.append(f"port {s.port} is in the VNC range")
        if server is not None:
            reasons.append(known_reason(proc.name if proc else None, server.product))
        if reasons:
            candidates.append((s, reasons))
        else:
            others.append(s)
    if sniff and others:
        sniffed = others[:SNIFF_LIMIT]
        if len(others) > SNIFF_LIMIT:
            blind.append(f"{len(others) - SNIFF_LIMIT} other listeners not checked for an RFB "
                         "banner")
        hits = await _sniff_all(sniffed, ledger)
        for s, hit in zip(sniffed, hits, strict=True):
            if hit:
                candidates.append((s, ["answers with an RFB banner"]))
        others = [s for s, hit in zip(sniffed, hits, strict=True) if not hit] + others[
            SNIFF_LIMIT:]

    state = await _firewall_state(runner, blind) if read_firewall else None
    listeners = _listeners(candidates, others, procs, state)
    if probe_listeners and listeners:
        results = await _probe_all(listeners, ProbeOptions(timeout=timeout), ledger)
        listeners = [_graded(x, r) for x, r in zip(listeners, results, strict=True)]
    listeners.sort(key=lambda x: (x.port, x.family, x.address))
    return LocalAudit(
        hostname=socket.gethostname(),
        system=platform.system(),
        root=root,
        listeners=listeners,
        blind_spots=blind,
        firewall=state,
        sockets_seen=total,
        other_listeners=[(s.address, s.port, s.pid) for s in others],
    )


def _listeners(candidates: list[tuple[Socket, list[str]]], others: list[Socket],
               procs: dict[int, ProcessInfo],
               state: firewall.FirewallState | None) -> list[Listener]:
    """A `Listener` for each candidate socket: its process, product, config and firewall."""
    listeners: list[Listener] = []
    for s, reasons in candidates:
        proc = procs.get(s.pid) if s.pid is not None else None
        server = known_server(proc)
        v4_too = [o for o, _ in candidates + [(x, []) for x in others]
                  if o.port == s.port and o.family == firewall.IPV4]
        dual = (s.family == firewall.IPV6 and ipaddress.ip_address(s.address).is_unspecified
                and not v4_too and _dual_stack())
        lst = Listener(s.address, s.port, s.family, proc, tuple(reasons),
                       server.product if server else None, tuple(product_config(proc, server)),
                       dual_stack=dual)
        if state is not None:
            lst = replace(lst, firewall={f: state.verdict(f, s.port)
                                         for f in lst.served_families})
        listeners.append(lst)
    return listeners


async def _firewall_state(runner: firewall.Runner,
                          blind: list[str]) -> firewall.FirewallState | None:
    """The firewall's rules where they can be read; what cannot be read goes to `blind`."""
    if platform.system() != "Linux":
        blind.append(f"firewall: reading the firewall of {platform.system()} is not supported; "
                     "check it by hand (see `vncaudit harden`)")
        return None
    state = await asyncio.to_thread(firewall.read_state, runner)
    for u in state.unreadable:
        blind.append(f"firewall: {u.tool} could not be read ({u.reason})")
    return state


def _graded(listener: Listener, result: ServiceResult) -> Listener:
    """The listener with the probe's result from inside (graded where it speaks RFB)."""
    result = result.with_extra(local=LocalBinding(listener.address, listener.scope))
    if result.state is State.VNC:
        result = grade(result, listener)
    return replace(listener, result=result)


async def _probe_all(listeners: Sequence[Listener], options: ProbeOptions,
                     ledger: Ledger | None) -> list[ServiceResult]:
    """One probe per listener, through the connection ledger when there is one: a listener
    whose server counts connections is probed from another loopback address once
    127.0.0.1's budget is spent (the listener's users come from 127.0.0.1), or, when none
    is left, reported with the facts read last. A server process that started after the
    ledger's connections has a fresh tally."""
    targets = [Target(probe_address(x.address), x.port) for x in listeners]
    if ledger is None:
        return list(await asyncio.gather(*(probe(t, options) for t in targets)))
    starts = {}
    for t, x in zip(targets, listeners, strict=True):
        start = process_start(x.process.pid) if x.process is not None else None
        if start is not None:
            starts[(t.host, t.port)] = start
    decisions = ledger.admit(targets, restarted=starts)

    async def one(decision: Decision) -> ServiceResult:
        if not decision.allowed:
            return ledger.answer(decision)
        return await probe(decision.target, options, source=decision.bind)

    def noted(decision: Decision, result: ServiceResult) -> ServiceResult:
        # A probe from another loopback address (or by --risk-lockout) says so.
        note = grant_note(decision) if decision.allowed else None
        return result if note is None else result.with_extra(budget=note)

    results = list(await asyncio.gather(*(one(d) for d in decisions)))
    # The process names the product where the handshake alone may not (TigerVNC with [2]):
    # the ledger then knows which blacklist rule applies.
    ledger.record([(d, r if r.product is not None or x.product is None
                    else replace(r, product=Product(x.product)))
                   for d, r, x in zip(decisions, results, listeners, strict=True) if d.allowed])
    return [noted(d, r) for d, r in zip(decisions, results, strict=True)]


def from_dict(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The listeners of a saved `local -o json` document (for `check --inside FILE`)."""
    if doc.get("kind") != "local-audit":
        raise ValueError("not a `vncaudit local -o json` document")
    return list(doc.get("listeners") or [])


def command_line(proc: ProcessInfo | None) -> str:
    return shlex.join(proc.cmdline) if proc and proc.cmdline else ""
