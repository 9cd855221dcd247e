"""Read and interpret the host firewall: ufw, iptables/ip6tables and nftables.

Owns: turning `iptables -S` / `ip6tables -S` text, `nft -j list ruleset` JSON and
`ufw status verbose` text into a verdict per (family, port) for a NEW inbound TCP connection
that arrives on a non-loopback interface: `allowed`, `dropped`, `rejected`,
`restricted(sources)` or `unknown(reason)`; and (`read_state`) running those read-only commands.

The interpreters (`iptables`, `nft`, `ufw` submodules, on the model of `_model`) are pure
(text in, verdicts out) and follow chains, jumps/gotos to user
chains, RETURN, policies, `-i lo`/`iifname`, `--dport`/`--dports`/ranges/sets, conntrack state,
verdict maps and ufw's own chains. A rule whose condition cannot be evaluated is followed both
ways; when the two ways disagree the verdict is `unknown`, never a guess of "protected".

This module combines the views (`decide`: every base chain must accept; each source network
named in a rule is tried as a sender of its own) and reads them (`read_state`).

Must not: change any firewall (that is `harden`), probe the network, or import the CLI.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vncaudit.firewall._model import (
    FAMILIES,
    IPV4,
    IPV6,
    Action,
    Network,
    Outcome,
    Packet,
    Ruleset,
    Verdict,
    combine_all,
)
from vncaudit.firewall.iptables import parse_iptables
from vncaudit.firewall.nft import parse_nft
from vncaudit.firewall.ufw import UfwStatus, parse_ufw

__all__ = [
    "FAMILIES", "IPV4", "IPV6", "Action", "FirewallState", "Ruleset", "Runner", "UfwStatus",
    "Unreadable", "Verdict", "decide", "parse_iptables", "parse_nft", "parse_ufw",
    "read_state", "run_command",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- #
# Decisions over all views
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Unreadable:
    """A firewall view that exists but could not be read (`families` it would cover)."""

    tool: str
    families: frozenset[str]
    reason: str


def decide(rulesets: Sequence[Ruleset], family: str, port: int,
           unreadable: Sequence[Unreadable] = ()) -> Verdict:
    """The verdict for a new inbound TCP connection to `port` over `family`.

    Each source network named in any rule is tried as a sender of its own, besides "any other
    address": allowed for any other address → `allowed`; blocked for it but allowed for some
    named networks → `restricted(those)`.
    """
    views = [r for r in rulesets if family in r.families]
    missing = [u for u in unreadable if family in u.families]
    if not views and missing:
        return Verdict(Action.UNKNOWN, reason="; ".join(f"{u.tool}: {u.reason}" for u in missing))
    if not views:
        return Verdict(Action.UNKNOWN, reason=f"no firewall state read for {family}")
    nets: list[Network] = []
    for r in views:
        for n in r.sources():
            if (n.version == 4) == (family == IPV4) and n not in nets:
                nets.append(n)

    def outcome_for(source: Network | None) -> Outcome:
        outs = [r.outcome(Packet(family, port, source)) for r in views]
        out = combine_all(outs)
        if out.kind == "accept" and missing:
            return Outcome("unknown", "; ".join(f"{u.tool}: {u.reason}" for u in missing))
        return out

    generic = outcome_for(None)
    notes = tuple(dict.fromkeys(generic.notes))
    if generic.kind == "accept":
        return Verdict(Action.ALLOWED, reason=generic.why, notes=notes)
    if generic.kind == "unknown":
        return Verdict(Action.UNKNOWN, reason=generic.why, notes=notes)
    allowed: list[str] = []
    for n in nets:
        o = outcome_for(n)
        if o.kind == "accept":
            allowed.append(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n))
        elif o.kind == "unknown":
            return Verdict(Action.UNKNOWN, reason=f"from {n}: {o.why}", notes=notes)
    if allowed:
        return Verdict(Action.RESTRICTED, tuple(allowed), reason=generic.why, notes=notes)
    action = Action.REJECTED if generic.kind == "reject" else Action.DROPPED
    return Verdict(action, reason=generic.why, notes=notes)


# --------------------------------------------------------------------------- #
# Reading the live state (read-only commands)
# --------------------------------------------------------------------------- #

Runner = Callable[[Sequence[str]], tuple[int, str, str]]


def run_command(argv: Sequence[str], timeout: float = 10.0) -> tuple[int, str, str]:
    """Run a read-only command; (returncode, stdout, stderr); 127 when it is not installed."""
    if shutil.which(argv[0]) is None:
        return 127, "", f"{argv[0]} not installed"
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 126, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


@dataclass
class FirewallState:
    """Everything read from this host's firewall tools, and what could not be read."""

    rulesets: list[Ruleset] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    ufw: UfwStatus | None = None
    iptables_backend: str | None = None  # "nf_tables" | "legacy"
    raw: dict[str, str] = field(default_factory=dict)

    def verdict(self, family: str, port: int) -> Verdict:
        return decide(self.rulesets, family, port, self.unreadable)

    @property
    def ufw_active(self) -> bool:
        return bool(self.ufw and self.ufw.active)

    @property
    def rule_count(self) -> int:
        return sum(r.rule_count for r in self.rulesets)

    def describe(self) -> list[str]:
        lines = [f"{r.tool}: {r.rule_count} rules read" for r in self.rulesets]
        lines += [f"{u.tool}: could not read ({u.reason})" for u in self.unreadable]
        lines += [f"{t}: not installed" for t in self.absent]
        if self.ufw is not None:
            lines.append(f"ufw: {'active' if self.ufw.active else 'inactive'}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": [{"tool": r.tool, "rules": r.rule_count, "notes": r.notes}
                     for r in self.rulesets],
            "unreadable": [{"tool": u.tool, "families": sorted(u.families), "reason": u.reason}
                           for u in self.unreadable],
            "absent": self.absent,
            "ufw_active": self.ufw_active if self.ufw is not None else None,
            "iptables_backend": self.iptables_backend,
        }


def _reason(rc: int, err: str) -> str:
    text = " ".join(err.split())[:160]
    if "ermission denied" in text or "must be root" in text or "Operation not permitted" in text:
        return "permission denied (run as root)"
    return text or f"exit code {rc}"


def read_state(run: Runner = run_command) -> FirewallState:
    """Read ufw, iptables, ip6tables and nftables with their read-only listing commands."""
    st = FirewallState()
    rc, out, err = run(["iptables", "-V"])
    if rc == 0:
        st.iptables_backend = "nf_tables" if "nf_tables" in out else "legacy"
    read_by_iptables: list[tuple[str, str]] = []
    for tool, family in (("iptables", IPV4), ("ip6tables", IPV6)):
        rc, out, err = run([tool, "-w", "5", "-S"])
        if rc == 127:
            st.absent.append(tool)
            continue
        if rc != 0:
            st.unreadable.append(Unreadable(tool, frozenset({family}), _reason(rc, err)))
            continue
        st.raw[tool] = out
        st.rulesets.append(parse_iptables(out, family, tool))
        if st.iptables_backend == "nf_tables":
            read_by_iptables.append(("ip" if family == IPV4 else "ip6", "filter"))
    rc, out, err = run(["nft", "-j", "list", "ruleset"])
    if rc == 127:
        st.absent.append("nft")
    elif rc != 0:
        st.unreadable.append(Unreadable("nftables", frozenset(FAMILIES), _reason(rc, err)))
    else:
        st.raw["nftables"] = out
        try:
            st.rulesets.append(parse_nft(out, read_by_iptables))
        except (ValueError, KeyError, TypeError) as exc:
            st.unreadable.append(Unreadable("nftables", frozenset(FAMILIES),
                                            f"unreadable JSON ({exc})"))
    rc, out, err = run(["ufw", "status", "verbose"])
    if rc == 127:
        st.absent.append("ufw")
    elif rc != 0:
        # ufw's rules are in iptables too; only a loss when iptables could not be read.
        st.unreadable.append(Unreadable("ufw", frozenset(), _reason(rc, err)))
    else:
        st.raw["ufw"] = out
        st.ufw = parse_ufw(out)
        if st.ufw.ruleset is not None and not any(
                r.tool in ("iptables", "ip6tables") for r in st.rulesets):
            st.rulesets.append(st.ufw.ruleset)
    return st
