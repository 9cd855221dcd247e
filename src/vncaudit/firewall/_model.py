"""The firewall model shared by the interpreters: verdicts, the packet, three-valued
conditions, rules, chains and the walk that follows a new inbound TCP SYN through them.

Owns: `Action`/`Verdict` (what `local` shows), `Ruleset.outcome` (jumps, gotos, RETURN,
policies, undecidable conditions followed both ways). Must not: parse any tool's output (that
is `iptables`, `nft`, `ufw`), run commands, or import the rest of the package.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

IPV4 = "ipv4"
IPV6 = "ipv6"
FAMILIES = (IPV4, IPV6)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Action(StrEnum):
    """What happens to a new inbound TCP connection to one port."""

    ALLOWED = "allowed"
    DROPPED = "dropped"
    REJECTED = "rejected"
    RESTRICTED = "restricted"  # allowed only from `sources`
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    """The firewall's answer for one (family, port); `reason` says what decided it."""

    action: Action
    sources: tuple[str, ...] = ()
    reason: str = ""
    notes: tuple[str, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.action in (Action.DROPPED, Action.REJECTED)

    def __str__(self) -> str:
        if self.action is Action.RESTRICTED:
            return f"restricted({', '.join(self.sources)})"
        if self.action is Action.UNKNOWN:
            return f"unknown({self.reason})"
        return self.action.value

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action.value, "sources": list(self.sources),
                "reason": self.reason, "notes": list(self.notes), "text": str(self)}


# --------------------------------------------------------------------------- #
# The packet and the three-valued match
# --------------------------------------------------------------------------- #


class Tri(Enum):
    YES = "yes"
    NO = "no"
    MAYBE = "maybe"  # we cannot tell whether the condition holds
    ANY = "any"  # the sender (or the interface it comes in on) decides: count it if it opens


@dataclass(frozen=True)
class Packet:
    """A new inbound TCP SYN to `port`, from `source` (None: "any other address")."""

    family: str
    port: int
    source: Network | None = None


@dataclass(frozen=True)
class Cond:
    """One condition of a rule: `test(packet)` and the rule text it came from."""

    test: Callable[[Packet], Tri]
    text: str


def negated(t: Tri, negate: bool) -> Tri:
    if not negate:
        return t
    return {Tri.YES: Tri.NO, Tri.NO: Tri.YES}.get(t, t)


def port_cond(ranges: Sequence[tuple[int, int]], negate: bool, text: str) -> Cond:
    def test(p: Packet) -> Tri:
        hit = any(lo <= p.port <= hi for lo, hi in ranges)
        return negated(Tri.YES if hit else Tri.NO, negate)

    return Cond(test, text)


def proto_cond(protos: Iterable[str], negate: bool, text: str) -> Cond:
    names = {str(x).lower() for x in protos}
    hit = bool(names & {"tcp", "6", "all", "0"})

    def test(p: Packet) -> Tri:
        return negated(Tri.YES if hit else Tri.NO, negate)

    return Cond(test, text)


def source_cond(nets: Sequence[Network], negate: bool, text: str) -> Cond:
    """Source addresses: each source network in the rules is evaluated as its own sender."""

    def test(p: Packet) -> Tri:
        same = [n for n in nets if (n.version == 4) == (p.family == IPV4)]
        if not same:
            return Tri.NO  # an address of the other family never matches (nft adds nfproto)
        if p.source is None:
            return negated(Tri.NO, negate)
        if p.source.version != same[0].version:
            return Tri.NO
        hit = any(_subnet(p.source, n) for n in same)
        return negated(Tri.YES if hit else Tri.NO, negate)

    return Cond(test, text)


def _subnet(a: Network, b: Network) -> bool:
    if a.version == 4 and b.version == 4:
        return a.subnet_of(b)
    if a.version == 6 and b.version == 6:
        return a.subnet_of(b)
    return False


def iface_cond(names: Sequence[str], negate: bool, text: str) -> Cond:
    """Inbound interface: `lo` never carries the outside packet; any other name might."""
    only_lo = all(n == "lo" for n in names)

    def test(p: Packet) -> Tri:
        if only_lo:
            return Tri.YES if negate else Tri.NO
        return Tri.ANY

    return Cond(test, text)


def const_cond(value: Tri, text: str) -> Cond:
    return Cond(lambda p: value, text)


_NEW_STATES = {"new"}


def ctstate_cond(states: Iterable[str], negate: bool, text: str) -> Cond:
    hit = bool({s.strip().lower() for s in states} & _NEW_STATES)
    return const_cond(negated(Tri.YES if hit else Tri.NO, negate), text)


_TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")


def flag_bits(names: Iterable[str]) -> int:
    bits = 0
    for n in names:
        n = n.strip().lower()
        if n == "all":
            bits |= 0xFF
        elif n in _TCP_FLAGS:
            bits |= 1 << _TCP_FLAGS.index(n)
    return bits


SYN_FLAG = flag_bits(["syn"])


# --------------------------------------------------------------------------- #
# Rules, chains and the walk
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Rule:
    conds: tuple[Cond, ...]
    target: str  # accept | drop | reject | jump | goto | return | continue | unknown
    chain: str = ""  # for jump / goto
    text: str = ""
    nets: tuple[Network, ...] = ()  # source networks named in this rule

    def match(self, p: Packet) -> tuple[Tri, str]:
        worst = Tri.YES
        why = ""
        for c in self.conds:
            t = c.test(p)
            if t is Tri.NO:
                return Tri.NO, ""
            if t is Tri.MAYBE:
                worst, why = Tri.MAYBE, c.text
            elif t is Tri.ANY and worst is Tri.YES:
                worst, why = Tri.ANY, c.text
        return worst, why


@dataclass(frozen=True)
class Outcome:
    kind: str  # accept | drop | reject | return | unknown
    why: str = ""
    notes: tuple[str, ...] = ()


_BLOCK = ("drop", "reject")
_MAX_FORKS = 256


@dataclass
class Ruleset:
    """One tool's view: named chains, the base chains a new inbound packet passes, policies."""

    tool: str  # "iptables", "ip6tables", "nftables", "ufw"
    families: frozenset[str]
    chains: dict[str, list[Rule]] = field(default_factory=dict)
    base: list[tuple[str, str, frozenset[str]]] = field(default_factory=list)
    # (chain name, policy, families it sees)
    notes: list[str] = field(default_factory=list)
    rule_count: int = 0

    def sources(self) -> list[Network]:
        seen: list[Network] = []
        for rules in self.chains.values():
            for r in rules:
                for n in r.nets:
                    if n not in seen:
                        seen.append(n)
        return seen

    def outcome(self, packet: Packet) -> Outcome:
        """What this ruleset does with the packet: every base chain must let it through."""
        results: list[Outcome] = []
        for name, policy, fams in self.base:
            if packet.family not in fams:
                continue
            budget = [_MAX_FORKS]
            results.append(self._walk(name, 0, packet, (), (name, policy), budget))
        if not results:
            return Outcome("accept", f"{self.tool}: no chain filters {packet.family} input")
        return combine_all(results)

    def _walk(self, chain: str, start: int, p: Packet, stack: tuple[tuple[str, int], ...],
              base: tuple[str, str], budget: list[int]) -> Outcome:
        """Follow the packet from rule `start` of `chain` to its final fate; `stack` holds
        where each jump came from, so RETURN and the end of a user chain go back there."""
        if len(stack) > 40:
            return Outcome("unknown", f"{self.tool}: chain jumps nest deeper than 40 ({chain})")
        rules = self.chains.get(chain)
        if rules is None:
            return Outcome("unknown", f"{self.tool}: target {chain.split()[-1]} is not a chain "
                           "this tool shows")
        for i in range(start, len(rules)):
            rule = rules[i]
            m, why = rule.match(p)
            if m is Tri.NO:
                continue
            if m is Tri.YES:
                if rule.target == "continue":
                    continue
                return self._apply(rule, chain, i, p, stack, base, budget)
            if rule.target == "continue":
                continue
            budget[0] -= 1
            if budget[0] < 0:
                return Outcome("unknown", f"{self.tool}: too many conditional rules to follow")
            taken = self._apply(rule, chain, i, p, stack, base, budget)
            skipped = self._walk(chain, i + 1, p, stack, base, budget)
            return fork(m, taken, skipped, why, rule.text)
        return self._return(p, stack, base, budget)

    def _return(self, p: Packet, stack: tuple[tuple[str, int], ...], base: tuple[str, str],
                budget: list[int]) -> Outcome:
        if not stack:
            name, policy = base
            return Outcome(policy, f"{self.tool} {name} policy {policy.upper()}")
        parent, resume = stack[-1]
        return self._walk(parent, resume, p, stack[:-1], base, budget)

    def _apply(self, rule: Rule, chain: str, i: int, p: Packet,
               stack: tuple[tuple[str, int], ...], base: tuple[str, str],
               budget: list[int]) -> Outcome:
        t = rule.target
        if t in ("accept", "drop", "reject", "unknown"):
            return Outcome(t, rule.text)
        if t == "return":
            return self._return(p, stack, base, budget)
        if t == "jump":
            return self._walk(rule.chain, 0, p, (*stack, (chain, i + 1)), base, budget)
        if t == "goto":
            return self._walk(rule.chain, 0, p, stack, base, budget)
        return Outcome("unknown", f"unhandled target {t}")


def fork(kind: Tri, taken: Outcome, skipped: Outcome, why: str, text: str) -> Outcome:
    """Combine the two ways a rule with an undecidable condition can go."""
    if taken.kind == skipped.kind:
        return taken
    if kind is Tri.ANY:
        # The sender picks its source port, and a listener on all interfaces gets packets
        # from every interface: a way in for some packets is a way in.
        if "accept" in (taken.kind, skipped.kind):
            won = taken if taken.kind == "accept" else skipped
            return Outcome("accept", won.why, (*won.notes, f"only where {why}"))
        if taken.kind in _BLOCK and skipped.kind in _BLOCK:
            return Outcome(taken.kind, taken.why, taken.notes)
    if taken.kind in _BLOCK and skipped.kind in _BLOCK:
        return Outcome("drop", taken.why, taken.notes)
    return Outcome("unknown", f"cannot evaluate '{why}' in rule '{text}'")


def combine_all(results: Sequence[Outcome]) -> Outcome:
    """Every base chain at the input hook must accept; one drop or reject ends it."""
    for r in results:
        if r.kind in _BLOCK:
            return r
    for r in results:
        if r.kind == "unknown":
            return r
    notes = tuple(n for r in results for n in r.notes)
    first = results[0]
    return Outcome("accept", first.why, notes)


# --------------------------------------------------------------------------- #


def parse_port_ranges(spec: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part or "-" in part:
            lo_s, hi_s = re.split(r"[:-]", part, maxsplit=1)
            lo = int(lo_s) if lo_s else 0
            hi = int(hi_s) if hi_s else 65535
            out.append((lo, hi))
        elif part.isdigit():
            out.append((int(part), int(part)))
        else:
            raise ValueError(f"port {part!r}")
    return out


def parse_nets(spec: str) -> list[Network]:
    return [ipaddress.ip_network(s.strip(), strict=False) for s in spec.split(",") if s.strip()]
