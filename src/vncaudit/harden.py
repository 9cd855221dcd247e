"""Fix what `local` found: the exact commands for this host, and (on request) the firewall part.

Owns: choosing the firewall this host uses (ufw if active, else nftables, else iptables; print-only
guidance on Windows and macOS), building the plan from the local audit (firewall block or
allow-list for each exposed VNC port, bind-to-localhost for the detected product, closing an
IPv6 wildcard listener, an SSH tunnel with this host's names, persistence), and `apply`: back up
the current rules, run exactly the firewall commands the plan shows, re-verify (VNC ports blocked
from outside, SSH's verdict unchanged, loopback still answering RFB) and roll back on any failure;
`rollback` restores a backup and checks that the rules are as before.

The command text comes from the fix guide (`vncaudit.remedies`): harden only selects, orders and
runs it. Must not: write command text of its own, touch anything but the firewall, run a command
through a shell, or apply anything the user has not seen.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import platform
import re
import shlex
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vncaudit import firewall, remedies
from vncaudit.exceptions import UsageError, VncAuditError
from vncaudit.local import Listener, LocalAudit, probe_address, sniff_rfb
from vncaudit.models import SILENT_STATES, State

log = logging.getLogger(__name__)

DEFAULT_BACKUP_DIR = Path(os.environ.get("VNCAUDIT_BACKUP_DIR", "/var/lib/vncaudit/harden"))


class Backend(StrEnum):
    """The firewall a plan's commands are written for."""

    UFW = "ufw"
    NFTABLES = "nftables"
    IPTABLES = "iptables"
    WINDOWS = "windows"
    MACOS = "macos"
    NONE = "none"  # no firewall tool found: the plan has no firewall commands


APPLIABLE: frozenset[Backend] = frozenset({Backend.NFTABLES, Backend.IPTABLES})
"""The backends whose commands --apply runs."""
BACKENDS = ("auto", Backend.UFW.value, Backend.NFTABLES.value, Backend.IPTABLES.value)
"""What --backend accepts."""
NFT_TABLE = ("inet", "vncaudit")  # the table the fix guide's nftables steps create
_APPLY_TOOLS = {"iptables", "ip6tables", "nft", "ufw"}
_SHELL_TOKENS = {">", ">>", "<", "|", "||", "&&", ";", "&"}
SSH_PORT = 22


class HardenError(VncAuditError):
    """Applying or rolling back failed (exit 3); the message says what state the host is in."""


# --------------------------------------------------------------------------- #
# The plan
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Section:
    title: str
    lines: tuple[str, ...] = ()  # explanations
    commands: tuple[str, ...] = ()
    applied: bool = False  # the commands --apply runs
    steps: tuple[remedies.FixStep, ...] = ()  # the fix guide's steps, print-only

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "lines": list(self.lines), "commands": list(self.commands),
                "applied_by_apply": self.applied, "steps": [s.to_dict() for s in self.steps]}


@dataclass
class Plan:
    backend: Backend
    hostname: str
    targets: list[Listener]
    ports: tuple[int, ...]
    allow: tuple[str, ...]
    firewall_commands: tuple[str, ...]
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    protected_ports: tuple[int, ...] = ()  # SSH ports never touched

    @property
    def can_apply(self) -> bool:
        return self.backend in APPLIABLE and bool(self.firewall_commands)

    def render(self) -> str:
        """The plan as plain text, commands indented so they can be copied."""
        out: list[str] = []
        if not self.targets:
            out.append("Nothing to fix: no VNC listener here is reachable from other machines.")
        else:
            out.append(f"Exposed VNC on {self.hostname}: " + ", ".join(
                f"{x.address}:{x.port}" for x in self.targets))
            out.append(f"Firewall in use: {self.backend}")
        for note in self.notes:
            out.append(f"note: {note}")
        for i, sec in enumerate(self.sections, 1):
            out.append("")
            mark = "  [applied by --apply]" if sec.applied else ""
            out.append(f"{i}. {sec.title}{mark}")
            out += [f"   {line}" for line in sec.lines]
            out += [f"     {cmd}" for cmd in sec.commands]
            for step in sec.steps:
                out.append(f"   - [{step.platform}] {step.text}")
                out += [f"       {cmd}" for cmd in step.commands]
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend.value,
            "hostname": self.hostname,
            "targets": [{"address": x.address, "port": x.port, "family": x.family,
                         "product": x.product} for x in self.targets],
            "ports": list(self.ports),
            "allow": list(self.allow),
            "firewall_commands": list(self.firewall_commands),
            "sections": [s.to_dict() for s in self.sections],
            "notes": self.notes,
            "protected_ports": list(self.protected_ports),
        }


def choose_backend(state: firewall.FirewallState | None, system: str | None = None) -> Backend:
    system = system or platform.system()
    if system == "Windows":
        return Backend.WINDOWS
    if system == "Darwin":
        return Backend.MACOS
    if state is None:
        return Backend.NONE
    if state.ufw_active:
        return Backend.UFW
    if "nft" not in state.absent and not any(u.tool == "nftables" for u in state.unreadable):
        return Backend.NFTABLES
    if "iptables" not in state.absent:
        return Backend.IPTABLES
    return Backend.NONE


def ssh_ports(audit: LocalAudit) -> tuple[int, ...]:
    """Ports an sshd listens on here (from the audit's sockets), always with 22.

    Only root's processes count: any user can name a process "sshd" and listen on a VNC
    port number in the other address family, which would keep that VNC port unfirewalled."""
    ports = {SSH_PORT}
    for x in audit.listeners:
        if x.process is not None and x.process.name in ("sshd", "dropbear") and \
                x.process.user == "root":
            ports.add(x.port)
    for _addr, port, pid in audit.other_listeners:
        if pid is not None:
            try:
                import psutil  # type: ignore[import-untyped]

                proc = psutil.Process(pid)
                if proc.name() in ("sshd", "dropbear") and proc.uids().real == 0:
                    ports.add(port)
            except Exception:  # noqa: BLE001 - the process may be gone or hidden
                continue
    return tuple(sorted(ports))


def needs_fix(x: Listener) -> bool:
    """A VNC listener that other machines can (or may) reach."""
    if x.scope == "loopback":
        return False
    if x.result is not None and x.result.state in SILENT_STATES:
        return False
    return x.reachable_from_outside is not False


def applicable(cmd: str) -> bool:
    """A firewall-changing command we can run without a shell, with nothing left to fill in."""
    if any(p in cmd for p in remedies.PLACEHOLDERS):
        return False
    try:
        argv = shlex.split(cmd)
    except ValueError:
        return False
    if not argv or argv[0] not in _APPLY_TOOLS or _SHELL_TOKENS & set(argv):
        return False
    if argv[0] == "ufw" and argv[1:2] and argv[1] in ("status", "show", "app"):
        return False
    if argv[0] == "nft" and argv[1:2] and argv[1].split()[0] in ("list", "monitor"):
        return False
    return True


def _kind(cmd: str) -> int:
    """0: setup (tables, chains), 1: an allow rule, 2: a block rule."""
    words = set(re.split(r"[\s'\"]+", cmd))
    if words & {"ACCEPT", "accept", "allow"} and "add chain" not in cmd and "policy" not in cmd:
        return 1
    if words & {"DROP", "REJECT", "drop", "reject", "deny"} and "policy" not in cmd:
        return 2
    return 0


def order_commands(backend: str, commands: Iterable[str]) -> tuple[str, ...]:
    """Each command once; allow rules end up ahead of block rules.

    iptables `-I` puts every rule at the top, so blocks are inserted before allows; nftables
    `add rule` and ufw append, so allows go first.
    """
    seen: list[str] = []
    for c in commands:
        if c not in seen:
            seen.append(c)
    inserted = backend == "iptables"
    return tuple(sorted(seen, key=lambda c: (_kind(c) if not inserted or _kind(c) == 0
                                             else 3 - _kind(c))))


def build_plan(
    audit: LocalAudit,
    *,
    allow: Sequence[str] = (),
    backend: str = "auto",
    system: str | None = None,
) -> Plan:
    """The commands for this host, from the local findings (nothing is run here)."""
    for cidr in allow:
        remedies.check_trusted(cidr)  # UsageError for anything but a plain network
    chosen = choose_backend(audit.firewall, system) if backend == "auto" else Backend(backend)
    protected = ssh_ports(audit)
    targets = [x for x in audit.listeners if needs_fix(x)]
    plan = Plan(chosen, audit.hostname, targets, (), tuple(allow), (), protected_ports=protected)
    if audit.firewall is not None and audit.firewall.unreadable:
        plan.notes.append("the firewall could not be read ("
                          + ", ".join(u.tool for u in audit.firewall.unreadable)
                          + "): run as root for commands that fit it (ufw may be active)")
    for x in targets:
        if x.port in protected:
            plan.notes.append(f"port {x.port} is also an SSH port: left out of the firewall "
                              "commands (fix the VNC server's port instead)")
    fw_ports: list[int] = []
    fw_cmds: list[str] = []
    keep: list[str] = []
    per_listener_ids = ("firewall-allowlist",) if allow else ("firewall-block",)
    for x in targets:
        if x.port in protected or x.port in fw_ports:
            continue
        verdicts = [x.firewall.get(f) for f in x.served_families]
        if not allow and verdicts and all(
                v is not None and v.action is firewall.Action.RESTRICTED for v in verdicts):
            plan.notes.append(f"{x.address}:{x.port} is already limited to "
                              f"{', '.join(verdicts[0].sources if verdicts[0] else ())}; "
                              "use --allow CIDR to replace that with a block plus your list")
            continue
        fw_ports.append(x.port)
        trusted_list: list[str | None] = [*allow] or [None]
        for rid in per_listener_ids:
            for trusted in trusted_list:
                fix = remedies.remedy(rid, host=x.address, port=x.port, product=x.product,
                                      trusted=trusted)
                for step in fix.steps:
                    if not _platform_matches(step.platform, chosen):
                        continue
                    for cmd in step.commands:
                        (fw_cmds if applicable(cmd) else keep).append(cmd)
    plan.ports = tuple(fw_ports)
    plan.firewall_commands = order_commands(chosen, fw_cmds) if chosen != "none" else ()
    if chosen in ("windows", "macos"):
        plan.firewall_commands = ()
    if plan.firewall_commands or keep:
        title = {"ufw": "Firewall (ufw)", "nftables": "Firewall (nftables, own table inet "
                 "vncaudit)", "iptables": "Firewall (iptables and ip6tables)",
                 "windows": "Firewall (Windows, elevated prompt)",
                 "macos": "Firewall (macOS pf)"}.get(chosen, "Firewall")
        lines = [f"Blocks new connections to port(s) {', '.join(map(str, fw_ports))} from "
                 "every interface except loopback; loopback and SSH "
                 f"(port {', '.join(map(str, protected))}) are not touched."]
        if allow:
            lines.append(f"Allowed to keep access: {', '.join(allow)}.")
        lines.append("Connections already open stay open until the client disconnects.")
        applied = plan.can_apply
        if chosen in ("windows", "macos"):
            plan.sections.append(Section(title, tuple(lines), tuple(keep)))
            keep = []
        else:
            plan.sections.append(Section(title, tuple(lines), plan.firewall_commands, applied))
            if chosen == "ufw":
                plan.notes.append("--apply changes iptables/nftables only: run the ufw commands "
                                  "yourself, or pass --backend nftables")
    persist = [c for c in dict.fromkeys(keep)]
    if persist:
        plan.sections.append(Section("Keep the firewall change across reboots (not run by "
                                     "--apply)", (), tuple(persist)))
    _product_sections(plan, targets)
    _tunnel_section(plan, audit, targets)
    return plan


def _platform_matches(step_platform: str, backend: str) -> bool:
    if backend == "iptables":
        return step_platform in ("iptables", "ip6tables")
    return step_platform == backend


_FIREWALL_PLATFORMS = {"ufw", "iptables", "ip6tables", "nftables", "windows", "macos"}


def _guide_section(plan: Plan, title: str, fix: remedies.Remedy,
                   lines: Sequence[str] = ()) -> None:
    steps = tuple(st for st in fix.steps if st.platform not in _FIREWALL_PLATFORMS)
    if steps:
        plan.sections.append(Section(title, tuple(lines), steps=steps))


def _product_sections(plan: Plan, targets: Sequence[Listener]) -> None:
    done: set[tuple[str, str]] = set()
    for x in targets:
        product = x.product or "unknown"
        if ("bind-localhost", product) not in done:
            done.add(("bind-localhost", product))
            fix = remedies.remedy("bind-localhost", host=x.address, port=x.port,
                                  product=product, display=x.display)
            _guide_section(plan, f"{fix.title} ({product})", fix)
        if x.family == firewall.IPV6 and x.scope == "all-interfaces" and (
                "ipv6", product) not in done:
            done.add(("ipv6", product))
            fix = remedies.remedy("disable-ipv6-listener", host=x.address, port=x.port,
                                  product=product)
            _guide_section(plan, f"{fix.title}: [::]:{x.port} ({product})", fix)
        if x.result is not None:
            for fix in remedies.remedies_for(x.result):
                if fix.id in ("bind-localhost", "firewall-block", "firewall-allowlist",
                              "ssh-tunnel", "disable-ipv6-listener") or (fix.id, product) in done:
                    continue
                done.add((fix.id, product))
                _guide_section(plan, f"{fix.title} ({product})", fix)


def _tunnel_section(plan: Plan, audit: LocalAudit, targets: Sequence[Listener]) -> None:
    if not targets:
        return
    from vncaudit.local import host_addresses

    names = [n for n in dict.fromkeys([socket.getfqdn(), audit.hostname]) if _plain_host(n)]
    addrs = host_addresses()
    host = names[0] if names else (addrs[0] if addrs else None)
    if host is None:
        return
    fix = remedies.remedy("ssh-tunnel", host=host, port=targets[0].port,
                          product=targets[0].product)
    _guide_section(plan, fix.title, fix, [f"This host: {', '.join(names + addrs)}."])


def _plain_host(name: str) -> bool:
    if name in ("localhost", "localhost.localdomain"):
        return False
    try:
        remedies.check_host(name)
    except UsageError:
        return False
    return True


# --------------------------------------------------------------------------- #
# Apply, backup, rollback
# --------------------------------------------------------------------------- #

Run = Callable[[Sequence[str], str | None], tuple[int, str, str]]


def run(argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
    """Run one command without a shell; (returncode, stdout, stderr)."""
    try:
        p = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                           timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{what} changes the firewall and needs root (run it with sudo)")


@dataclass
class Backup:
    path: Path
    backend: str
    files: dict[str, str]  # name -> file name inside path
    commands: tuple[str, ...] = ()
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "files": self.files, "commands": list(self.commands),
                "created": self.created}


def save_backup(backend: str, directory: Path, runner: Run) -> Backup:
    """Save the current ruleset of `backend` into a new private directory under `directory`."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stamp}-{backend}"
    path.mkdir(parents=True, mode=0o700)
    files: dict[str, str] = {}
    if backend == "iptables":
        for tool in ("iptables-save", "ip6tables-save"):
            rc, out, err = runner([tool], None)
            if rc != 0:
                raise HardenError(f"backup failed: {tool}: {err.strip() or rc}; nothing changed")
            _write_private(path / f"{tool}.rules", out)
            files[tool] = f"{tool}.rules"
    else:
        rc, out, err = runner(["nft", "list", "ruleset"], None)
        if rc != 0:
            raise HardenError(f"backup failed: nft list ruleset: {err.strip() or rc}; "
                              "nothing changed")
        _write_private(path / "nft.ruleset", out)
        files["ruleset"] = "nft.ruleset"
        rc, out, _ = runner(["nft", "list", "table", *NFT_TABLE], None)
        if rc == 0:
            _write_private(path / "nft.table", out)
            files["table"] = "nft.table"
    return Backup(path, backend, files, created=stamp)


def write_backup_meta(b: Backup) -> None:
    """Write the backup's meta.json (what `load_backup` and `rollback` read), owner-only."""
    _write_private(b.path / "meta.json", json.dumps(b.to_dict(), indent=2) + "\n")


def _write_private(path: Path, text: str) -> None:
    # 0600 whatever the umask: the rules are the host's, and rollback refuses looser files.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def load_backup(directory: Path, backup_id: str | None = None) -> Backup:
    """The named backup, or the newest one in `directory`."""
    if not directory.is_dir():
        raise UsageError(f"no harden backups in {directory}")
    dirs = sorted(d for d in directory.iterdir() if (d / "meta.json").is_file())
    if backup_id:
        dirs = [d for d in dirs if d.name == backup_id or d.name.startswith(backup_id)]
    if not dirs:
        raise UsageError(f"no harden backup {backup_id or ''} in {directory}".replace("  ", " "))
    d = dirs[-1]
    _check_private(d)
    _check_private(d / "meta.json")
    try:
        meta = json.loads((d / "meta.json").read_text())
        backend, files = meta["backend"], dict(meta["files"])
        commands = tuple(str(c) for c in meta.get("commands") or ())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{d} is not a harden backup ({exc})") from None
    # Rollback feeds these files to iptables-restore / nft -f as root: they must be the plain
    # file names _save wrote inside this backup, never a path out of it.
    needed = _BACKUP_FILES.get(backend)
    if needed is None or not needed <= set(files) or not all(
            isinstance(v, str) and _BACKUP_NAME.fullmatch(v) for v in files.values()):
        raise UsageError(f"{d / 'meta.json'} does not describe a harden backup")
    for name in files.values():
        _check_private(d / name)
    return Backup(d, backend, files, commands, str(meta.get("created", "")))


_BACKUP_FILES = {"iptables": {"iptables-save", "ip6tables-save"}, "nftables": {"ruleset"}}
_BACKUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.(rules|ruleset|table)")


def _check_private(path: Path) -> None:
    """A backup (directory or file) that someone else could have written is refused."""
    try:
        st = path.lstat()
    except OSError as exc:
        raise UsageError(f"harden backup {path}: {exc.strerror}") from None
    if path.is_symlink() or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise UsageError(f"harden backup {path} is a symlink, not owned by this user, or "
                         "writable by others: not restored")


def rollback_commands(b: Backup) -> list[str]:
    """What rollback runs, shown before it runs (`<` is fed from the file, not by a shell)."""
    if b.backend == "iptables":
        return [f"iptables-restore < {b.path / b.files['iptables-save']}",
                f"ip6tables-restore < {b.path / b.files['ip6tables-save']}",
                "(and any iptables table created since the backup is removed again)"]
    cmds = [f"nft delete table {' '.join(NFT_TABLE)}"]
    if "table" in b.files:
        cmds.append(f"nft -f {b.path / b.files['table']}")
    return cmds


def normalize_rules(text: str) -> list[str]:
    """Rules text without comments and packet counters, for before/after comparison."""
    out = []
    for line in text.splitlines():
        s = line.rstrip()
        if not s or s.lstrip().startswith("#"):
            continue
        s = re.sub(r"\[\d+:\d+\]", "[0:0]", s)
        s = re.sub(r"counter packets \d+ bytes \d+", "counter", s)
        out.append(s)
    return out


def _tables(save_text: str) -> set[str]:
    return {line[1:].strip() for line in save_text.splitlines() if line.startswith("*")}


def _drop_new_tables(b: Backup, runner: Run) -> None:
    """Tables that did not exist at backup time (iptables-nft creates them on first use):
    iptables-restore leaves them alone, so remove them (nf_tables) or empty them (legacy)."""
    rc, version, _ = runner(["iptables", "-V"], None)
    nf_tables = rc == 0 and "nf_tables" in version
    for save, restore, family in (("iptables-save", "iptables-restore", "ip"),
                                  ("ip6tables-save", "ip6tables-restore", "ip6")):
        saved = _tables((b.path / b.files[save]).read_text())
        now = _tables(runner([save], None)[1])
        for table in sorted(now - saved):
            if nf_tables:
                rc, _, err = runner(["nft", "delete", "table", family, table], None)
            else:
                rc, _, err = runner([restore], f"*{table}\nCOMMIT\n")
            if rc != 0:
                raise HardenError(f"rollback: could not remove {family} table {table} created "
                                  f"after the backup: {err.strip()}")


def current_rules(backend: str, runner: Run = run) -> str:
    if backend == "iptables":
        return "".join(runner([t], None)[1] for t in ("iptables-save", "ip6tables-save"))
    return runner(["nft", "list", "ruleset"], None)[1]


def rollback(b: Backup, runner: Run = run) -> list[str]:
    """Restore the backup; returns the lines that still differ from it ([] = exactly as before)."""
    if b.backend == "iptables":
        for tool, key in (("iptables-restore", "iptables-save"),
                          ("ip6tables-restore", "ip6tables-save")):
            rc, _, err = runner([tool], (b.path / b.files[key]).read_text())
            if rc != 0:
                raise HardenError(f"rollback: {tool} failed: {err.strip() or rc}; "
                                  f"the backup is in {b.path}")
        _drop_new_tables(b, runner)
        before = "".join((b.path / b.files[k]).read_text()
                         for k in ("iptables-save", "ip6tables-save"))
    else:
        rc, _, _ = runner(["nft", "list", "table", *NFT_TABLE], None)
        if rc == 0:
            rc, _, err = runner(["nft", "delete", "table", *NFT_TABLE], None)
            if rc != 0:
                raise HardenError(f"rollback: nft delete table failed: {err.strip()}")
        if "table" in b.files:
            rc, _, err = runner(["nft", "-f", str(b.path / b.files["table"])], None)
            if rc != 0:
                raise HardenError(f"rollback: nft -f failed: {err.strip()}; "
                                  f"the backup is in {b.path}")
        before = (b.path / b.files["ruleset"]).read_text()
    now = current_rules(b.backend, runner)
    a, c = normalize_rules(before), normalize_rules(now)
    return [f"- {x}" for x in a if x not in c] + [f"+ {x}" for x in c if x not in a]


@dataclass
class ApplyReport:
    backup: Backup
    ran: list[str]
    verdicts: dict[str, str]  # "ipv4/5901" -> verdict text after apply
    loopback: dict[int, bool]  # port -> still answers RFB on loopback
    ssh: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"backup": str(self.backup.path), "ran": self.ran, "verdicts": self.verdicts,
                "loopback_rfb": {str(k): v for k, v in self.loopback.items()}, "ssh": self.ssh}


def apply(
    plan: Plan,
    *,
    backup_dir: Path = DEFAULT_BACKUP_DIR,
    runner: Run = run,
    read_state: Callable[[], firewall.FirewallState] = firewall.read_state,
) -> ApplyReport:
    """Back up, run `plan.firewall_commands` in order, re-verify; undo everything on failure."""
    require_root("harden --apply")
    if plan.backend not in APPLIABLE:
        raise UsageError(f"--apply works with nftables or iptables; this plan is for "
                         f"{plan.backend} (run its commands yourself, or pass --backend)")
    if not plan.firewall_commands:
        raise UsageError("nothing to apply: no exposed VNC port needs a firewall rule")
    before = read_state()
    ssh_before = {f"{f}/{p}": str(before.verdict(f, p))
                  for p in plan.protected_ports for f in firewall.FAMILIES}
    backup = save_backup(plan.backend, backup_dir, runner)
    backup.commands = plan.firewall_commands
    write_backup_meta(backup)
    ran: list[str] = []
    try:
        for cmd in plan.firewall_commands:
            rc, _, err = runner(shlex.split(cmd), None)
            if rc != 0:
                raise HardenError(f"{cmd!r} failed: {err.strip() or f'exit {rc}'}")
            ran.append(cmd)
            log.info("ran: %s", cmd)
        after = read_state()
        verdicts: dict[str, str] = {}
        for x in plan.targets:
            if x.port not in plan.ports:
                continue
            for fam in x.served_families:
                v = after.verdict(fam, x.port)
                verdicts[f"{fam}/{x.port}"] = str(v)
                ok = v.blocked or (plan.allow and v.action is firewall.Action.RESTRICTED)
                if not ok:
                    raise HardenError(f"after the change {fam} port {x.port} is still {v}")
        ssh_after = {k: str(after.verdict(*_split_key(k))) for k in ssh_before}
        for k, was in ssh_before.items():
            if ssh_after[k] != was and after.verdict(*_split_key(k)).blocked:
                raise HardenError(f"SSH ({k}) would change from {was} to {ssh_after[k]}")
        loopback = asyncio.run(_loopback_checks(plan))
        answered = {x.port for x in plan.targets
                    if x.result is not None and x.result.state is State.VNC}
        lost = sorted(p for p, ok in loopback.items() if not ok and p in answered)
        if lost:
            raise HardenError(f"VNC stopped answering on loopback (port {lost[0]})")
    except Exception as exc:
        diff = []
        try:
            diff = rollback(backup, runner)
        except HardenError as undo:
            raise HardenError(f"{exc}; rolling back ALSO failed: {undo}") from exc
        state = "previous rules restored" if not diff else \
            f"restored, but {len(diff)} lines differ from the backup in {backup.path}"
        if isinstance(exc, HardenError):
            raise HardenError(f"{exc}; {state}") from exc
        raise HardenError(f"{type(exc).__name__}: {exc}; {state}") from exc
    return ApplyReport(backup, ran, verdicts, loopback, ssh_after)


def _split_key(k: str) -> tuple[str, int]:
    fam, port = k.split("/")
    return fam, int(port)


async def _loopback_checks(plan: Plan) -> dict[int, bool]:
    """Does each VNC port still answer RFB from this machine (one banner read each)?"""
    where: dict[int, str] = {}
    for x in plan.targets:
        if x.port in plan.ports and x.port not in where:
            where[x.port] = probe_address(x.address)
    ports = sorted(where)
    hits = await asyncio.gather(*(sniff_rfb(where[p], p) for p in ports))
    return dict(zip(ports, hits, strict=True))
