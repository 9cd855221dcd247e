"""Read and interpret the host firewall: ufw, iptables/ip6tables and nftables.

Owns: turning `iptables -S` / `ip6tables -S` text, `nft -j list ruleset` JSON and
`ufw status verbose` text into a verdict per (family, port) for a NEW inbound TCP connection
that arrives on a non-loopback interface: `allowed`, `dropped`, `rejected`,
`restricted(sources)` or `unknown(reason)`; and (`read_state`) running those read-only commands.

The interpreters are pure (text in, verdicts out) and follow chains, jumps/gotos to user
chains, RETURN, policies, `-i lo`/`iifname`, `--dport`/`--dports`/ranges/sets, conntrack state,
verdict maps and ufw's own chains. A rule whose condition cannot be evaluated is followed both
ways; when the two ways disagree the verdict is `unknown`, never a guess of "protected".

Must not: change any firewall (that is `harden`), probe the network, or import the CLI.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

log = logging.getLogger(__name__)

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


def _neg(t: Tri, negate: bool) -> Tri:
    if not negate:
        return t
    return {Tri.YES: Tri.NO, Tri.NO: Tri.YES}.get(t, t)


def _and(values: Iterable[Tri]) -> Tri:
    out = Tri.YES
    for v in values:
        if v is Tri.NO:
            return Tri.NO
        if v is Tri.MAYBE:
            out = Tri.MAYBE
        elif v is Tri.ANY and out is Tri.YES:
            out = Tri.ANY
    return out


def port_cond(ranges: Sequence[tuple[int, int]], negate: bool, text: str) -> Cond:
    def test(p: Packet) -> Tri:
        hit = any(lo <= p.port <= hi for lo, hi in ranges)
        return _neg(Tri.YES if hit else Tri.NO, negate)

    return Cond(test, text)


def proto_cond(protos: Iterable[str], negate: bool, text: str) -> Cond:
    names = {str(x).lower() for x in protos}
    hit = bool(names & {"tcp", "6", "all", "0"})

    def test(p: Packet) -> Tri:
        return _neg(Tri.YES if hit else Tri.NO, negate)

    return Cond(test, text)


def family_cond(family: str, text: str) -> Cond:
    return Cond(lambda p: Tri.YES if p.family == family else Tri.NO, text)


def source_cond(nets: Sequence[Network], negate: bool, text: str) -> Cond:
    """Source addresses: each source network in the rules is evaluated as its own sender."""

    def test(p: Packet) -> Tri:
        same = [n for n in nets if (n.version == 4) == (p.family == IPV4)]
        if not same:
            return Tri.NO  # an address of the other family never matches (nft adds nfproto)
        if p.source is None:
            return _neg(Tri.NO, negate)
        if p.source.version != same[0].version:
            return Tri.NO
        hit = any(_subnet(p.source, n) for n in same)
        return _neg(Tri.YES if hit else Tri.NO, negate)

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
    return const_cond(_neg(Tri.YES if hit else Tri.NO, negate), text)


_TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")


def _flag_bits(names: Iterable[str]) -> int:
    bits = 0
    for n in names:
        n = n.strip().lower()
        if n == "all":
            bits |= 0xFF
        elif n in _TCP_FLAGS:
            bits |= 1 << _TCP_FLAGS.index(n)
    return bits


_SYN = _flag_bits(["syn"])


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
# iptables -S
# --------------------------------------------------------------------------- #


def _port_ranges(spec: str) -> list[tuple[int, int]]:
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


def _nets(spec: str) -> list[Network]:
    return [ipaddress.ip_network(s.strip(), strict=False) for s in spec.split(",") if s.strip()]


_IPT_TARGETS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject", "RETURN": "return"}
_NONTERMINAL = {"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "CT", "NOTRACK", "TRACE", "AUDIT",
                "CLASSIFY", "DSCP", "TOS", "TTL", "HL", "TCPMSS", "SET", "CHECKSUM"}


def parse_iptables(text: str, family: str = IPV4, tool: str | None = None) -> Ruleset:
    """`iptables -S` (filter table) → a Ruleset whose base chain is INPUT."""
    tool = tool or ("iptables" if family == IPV4 else "ip6tables")
    rs = Ruleset(tool=tool, families=frozenset({family}))
    policies: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            args = shlex.split(line)
        except ValueError:
            rs.notes.append(f"unreadable line: {line}")
            continue
        if args[0] == "-P" and len(args) >= 3:
            policies[args[1]] = args[2]
            rs.chains.setdefault(args[1], [])
        elif args[0] == "-N" and len(args) >= 2:
            rs.chains.setdefault(args[1], [])
        elif args[0] == "-A" and len(args) >= 2:
            rs.chains.setdefault(args[1], []).append(_iptables_rule(args[2:], family, line))
            rs.rule_count += 1
    if "INPUT" in policies or "INPUT" in rs.chains:
        policy = _IPT_TARGETS.get(policies.get("INPUT", "ACCEPT"), "accept")
        rs.base.append(("INPUT", policy, frozenset({family})))
    return rs


def _iptables_rule(args: list[str], family: str, line: str) -> Rule:
    conds: list[Cond] = []
    nets: list[Network] = []
    target = "continue"
    chain = ""
    i = 0
    negate = False
    after_target = False

    def val() -> str:
        nonlocal i
        i += 1
        return args[i] if i < len(args) else ""

    try:
        while i < len(args):
            a = args[i]
            if a == "!":
                negate = True
                i += 1
                continue
            if a in ("-p", "--protocol"):
                v = val()
                conds.append(proto_cond([v], negate, f"{'! ' if negate else ''}-p {v}"))
            elif a in ("-s", "--source", "--src-range"):
                v = val()
                if a == "--src-range":
                    lo_s, hi_s = v.split("-", 1)
                    got: list[Network] = list(ipaddress.summarize_address_range(
                        ipaddress.ip_address(lo_s), ipaddress.ip_address(hi_s)))
                else:
                    got = _nets(v)
                nets.extend(got)
                conds.append(source_cond(got, negate, f"{'! ' if negate else ''}{a} {v}"))
            elif a in ("-d", "--destination", "--dst-range", "--dst-type", "--src-type"):
                v = val()
                if a == "--dst-type":
                    t = _neg(Tri.YES if "LOCAL" in v.split(",") else Tri.NO, negate)
                    conds.append(const_cond(t, f"--dst-type {v}"))
                elif a == "--src-type":
                    t = _neg(Tri.NO if v.split(",") == ["LOCAL"] else Tri.MAYBE, negate)
                    conds.append(const_cond(t, f"--src-type {v}"))
                else:
                    conds.append(const_cond(Tri.ANY, f"{a} {v}"))
            elif a in ("-i", "--in-interface"):
                v = val()
                conds.append(iface_cond([v], negate, f"{'! ' if negate else ''}-i {v}"))
            elif a in ("-o", "--out-interface"):
                val()
            elif a in ("--dport", "--destination-port", "--dports", "--destination-ports"):
                v = val()
                conds.append(port_cond(_port_ranges(v), negate, f"{a} {v}"))
            elif a in ("--sport", "--source-port", "--sports", "--source-ports"):
                v = val()
                conds.append(const_cond(Tri.ANY, f"{a} {v}"))
            elif a == "--ports":
                v = val()
                # --ports matches the source OR the destination port, and the sender picks
                # the source port.
                conds.append(_either_port(port_cond(_port_ranges(v), negate, f"--ports {v}")))
            elif a in ("--ctstate", "--state"):
                v = val()
                conds.append(ctstate_cond(v.split(","), negate, f"{a} {v}"))
            elif a == "--syn":
                conds.append(const_cond(_neg(Tri.YES, negate), "--syn"))
            elif a == "--tcp-flags":
                mask = _flag_bits(val().split(","))
                comp = _flag_bits(val().split(","))
                conds.append(const_cond(_neg(Tri.YES if (_SYN & mask) == comp else Tri.NO,
                                             negate), f"--tcp-flags {mask:#x} {comp:#x}"))
            elif a == "-m":
                mod = val()
                if mod == "recent":
                    conds.append(_recent_cond(args, i))
                elif mod in ("set",):
                    conds.append(const_cond(Tri.MAYBE, "-m set (ipset contents not read)"))
                elif mod in _EXTENSION_HEADER_MODULES:
                    # A plain TCP SYN carries no routing, fragment or other extension header.
                    conds.append(const_cond(Tri.NO, f"-m {mod} (an extension header)"))
                elif mod == "pkttype":
                    v = args[i + 2] if i + 2 < len(args) else ""
                    conds.append(const_cond(Tri.YES if v == "unicast" else Tri.NO,
                                            f"-m pkttype {v}"))
                elif mod not in _KNOWN_MODULES:
                    conds.append(const_cond(Tri.MAYBE, f"-m {mod}"))
            elif a in ("--limit", "--hashlimit-upto", "--hashlimit"):
                val()  # under the rate: a first connection matches
            elif a in ("--hashlimit-above",):
                val()
                conds.append(const_cond(Tri.NO, "--hashlimit-above"))
            elif a == "--connlimit-above":
                v = val()
                conds.append(const_cond(_neg(Tri.NO, negate), f"--connlimit-above {v}"))
            elif a in ("-f", "--fragment"):
                conds.append(const_cond(_neg(Tri.NO, negate), "-f"))
            elif a in ("-j", "--jump", "-g", "--goto"):
                v = val()
                after_target = True
                if v in _IPT_TARGETS:
                    target = _IPT_TARGETS[v]
                elif v in _NONTERMINAL:
                    target = "continue"
                else:
                    # A user chain; an extension target we do not know (NFQUEUE, TARPIT …)
                    # has no chain of that name, and the walk says `unknown` for it.
                    target = "goto" if a in ("-g", "--goto") else "jump"
                    chain = v
            elif a.startswith("--"):
                # Options of the target (after -j) and of modules that do not decide whether
                # a packet matches are skipped; any other match option is not understood,
                # and a rule we do not understand must not count as matching or not.
                if not after_target and a not in _NEUTRAL_OPTIONS:
                    conds.append(const_cond(Tri.MAYBE, f"{'! ' if negate else ''}{a}"))
                if a not in _FLAG_OPTIONS and i + 1 < len(args) and \
                        not args[i + 1].startswith("-"):
                    i += 1
            negate = False
            i += 1
    except (ValueError, IndexError) as exc:
        return Rule((const_cond(Tri.MAYBE, f"unreadable ({exc})"),), "unknown", text=line)
    return Rule(tuple(conds), target, chain, line, tuple(nets))


def _either_port(cond: Cond) -> Cond:
    def test(p: Packet) -> Tri:
        return Tri.YES if cond.test(p) is Tri.YES else Tri.ANY

    return Cond(test, cond.text)


def _only_family(family: str, cond: Cond) -> Cond:
    def test(p: Packet) -> Tri:
        return cond.test(p) if p.family == family else Tri.NO

    return Cond(test, cond.text)


_EXTENSION_HEADER_MODULES = {"rt", "frag", "hbh", "dst", "mh", "ah", "esp", "ipv6header"}
# Modules whose options are parsed above (or only describe, like comment).
_KNOWN_MODULES = {"tcp", "udp", "multiport", "conntrack", "state", "comment", "limit",
                  "hashlimit", "connlimit", "addrtype", "iprange", "recent", "icmp", "icmp6",
                  "icmpv6", "ipv6-icmp", "udplite", "sctp", "set"}
_NEUTRAL_OPTIONS = {"--comment", "--limit-burst", "--name", "--mask", "--seconds",
                    "--hitcount", "--rsource", "--rdest", "--set", "--update", "--rcheck",
                    "--remove", "--reap", "--rttl", "--hashlimit-name", "--hashlimit-mode",
                    "--hashlimit-burst", "--hashlimit-srcmask", "--hashlimit-dstmask",
                    "--hashlimit-htable-size", "--hashlimit-htable-max",
                    "--hashlimit-htable-expire", "--hashlimit-htable-gcinterval",
                    "--connlimit-mask", "--connlimit-saddr", "--connlimit-daddr",
                    "--icmp-type", "--icmpv6-type", "--pkt-type", "--limit-iface-in",
                    "--limit-iface-out", "--match-set"}
_FLAG_OPTIONS = {"--rsource", "--rdest", "--set", "--update", "--rcheck", "--remove",
                 "--reap", "--rttl", "--connlimit-saddr", "--connlimit-daddr",
                 "--limit-iface-in", "--limit-iface-out"}


def _recent_cond(args: list[str], i: int) -> Cond:
    rest = args[i + 1:]
    # `--set` always matches; `--update`/`--rcheck --hitcount N` matches a sender seen before:
    # a first connection from a new sender is never over the limit.
    if "--update" in rest or "--rcheck" in rest:
        return const_cond(Tri.NO, "-m recent --update (over the rate limit)")
    return const_cond(Tri.YES, "-m recent --set")


# --------------------------------------------------------------------------- #
# nft -j list ruleset
# --------------------------------------------------------------------------- #

_NFT_FAMILIES = {"ip": frozenset({IPV4}), "ip6": frozenset({IPV6}), "inet": frozenset(FAMILIES)}
_IPTABLES_NFT_TABLES = {"filter", "raw", "mangle", "security", "nat"}


def parse_nft(text: str, skip_tables: Iterable[tuple[str, str]] = ()) -> Ruleset:
    """`nft -j list ruleset` → one Ruleset holding every filter base chain at the input and
    prerouting hooks of the ip, ip6 and inet families. `skip_tables` ((family, name), …) are
    left out — the iptables-nft tables when `iptables -S` already read them."""
    doc = json.loads(text)
    items = doc.get("nftables", []) if isinstance(doc, dict) else []
    skip = set(skip_tables)
    rs = Ruleset(tool="nftables", families=frozenset(FAMILIES))
    sets: dict[tuple[str, str, str], list[Any]] = {}
    chains: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for item in items:
        if "set" in item or "map" in item:
            s = item.get("set") or item.get("map")
            sets[(s["family"], s["table"], s["name"])] = list(s.get("elem") or [])
        elif "chain" in item:
            chains.append(item["chain"])
        elif "rule" in item:
            rules.append(item["rule"])
    for c in chains:
        if (c["family"], c["table"]) in skip or c["family"] not in _NFT_FAMILIES:
            continue
        key = _nft_chain_key(c["family"], c["table"], c["name"])
        rs.chains.setdefault(key, [])
        if c.get("hook") in ("input", "prerouting") and c.get("type", "filter") == "filter":
            rs.base.append((key, _nft_verdict_name(c.get("policy", "accept")),
                            _NFT_FAMILIES[c["family"]]))
    for r in rules:
        if (r["family"], r["table"]) in skip or r["family"] not in _NFT_FAMILIES:
            continue
        key = _nft_chain_key(r["family"], r["table"], r["chain"])
        ctx = _NftCtx(r["family"], r["table"], sets)
        rs.chains.setdefault(key, []).extend(ctx.rules(r.get("expr") or []))
        rs.rule_count += 1
    if skip:
        rs.notes.append("tables read through iptables left out: "
                        + ", ".join(f"{f} {t}" for f, t in sorted(skip)))
    return rs


def _nft_chain_key(family: str, table: str, chain: str) -> str:
    return f"{family} {table} {chain}"


def _nft_verdict_name(v: str) -> str:
    return {"accept": "accept", "drop": "drop"}.get(v, "accept")


def _brief(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))[:120]


class _NftCtx:
    """Turns one nft JSON rule into Rules (a verdict map becomes one Rule per key)."""

    def __init__(self, family: str, table: str, sets: dict[tuple[str, str, str], list[Any]]):
        self.family = family
        self.table = table
        self.sets = sets

    def rules(self, exprs: list[dict[str, Any]]) -> list[Rule]:
        conds: list[Cond] = []
        nets: list[Network] = []
        text = _nft_text(exprs)
        for e in exprs:
            (kind, body), = e.items() if len(e) == 1 else (("?", e),)
            if kind == "match":
                c, found = self.match(body)
                conds.append(c)
                nets.extend(found)
            elif kind in ("accept", "drop", "return"):
                return [Rule(tuple(conds), kind, text=text, nets=tuple(nets))]
            elif kind == "reject":
                return [Rule(tuple(conds), "reject", text=text, nets=tuple(nets))]
            elif kind in ("jump", "goto"):
                target = _nft_chain_key(self.family, self.table, body["target"])
                return [Rule(tuple(conds), kind, target, text, tuple(nets))]
            elif kind in ("queue",):
                return [Rule(tuple(conds), "unknown", text=text, nets=tuple(nets))]
            elif kind == "vmap":
                return self.vmap(body, conds, nets, text)
            elif kind == "limit":
                conds.append(const_cond(Tri.NO if body.get("inv") else Tri.YES, "limit"))
            elif kind == "xt":
                conds.append(const_cond(Tri.MAYBE, f"xt {body.get('type')} "
                                        f"{body.get('name')} (an iptables-nft extension)"))
            elif kind in ("quota", "synproxy", "tproxy"):
                conds.append(const_cond(Tri.MAYBE, kind))
            # counter, log, mangle, meta/ct set, notrack, set/dynset updates: no verdict.
        return [Rule(tuple(conds), "continue", text=text, nets=tuple(nets))]

    def vmap(self, body: dict[str, Any], conds: list[Cond], nets: list[Network],
             text: str) -> list[Rule]:
        data = body.get("data")
        if isinstance(data, str) and data.startswith("@"):
            pairs = self.sets.get((self.family, self.table, data[1:]), [])
        elif isinstance(data, dict) and "set" in data:
            pairs = data["set"]
        else:
            return [Rule((*conds, const_cond(Tri.MAYBE, "vmap")), "unknown", text=text)]
        out: list[Rule] = []
        for pair in pairs:
            if isinstance(pair, dict) and "elem" in pair:
                pair = pair["elem"]
            if not isinstance(pair, list) or len(pair) != 2:
                continue
            key, verdict = pair
            c, found = self.match({"op": "==", "left": body["key"], "right": key})
            (vk, vb), = verdict.items()
            target = vk if vk in ("accept", "drop", "reject", "return") else "unknown"
            chain = ""
            if vk in ("jump", "goto"):
                target, chain = vk, _nft_chain_key(self.family, self.table, vb["target"])
            out.append(Rule((*conds, c), target, chain, text, (*nets, *found)))
        return out

    # -- values -------------------------------------------------------------

    def values(self, right: Any) -> list[Any] | None:
        """Flatten a right-hand side into scalars, ("range", a, b) and networks."""
        if isinstance(right, str) and right.startswith("@"):
            elems = self.sets.get((self.family, self.table, right[1:]))
            if elems is None:
                return None
            return self.values({"set": elems})
        if isinstance(right, dict):
            if "set" in right:
                out: list[Any] = []
                for el in right["set"]:
                    if isinstance(el, dict) and "elem" in el:
                        el = el["elem"]["val"] if isinstance(el["elem"], dict) else el["elem"]
                    got = self.values(el)
                    if got is None:
                        return None
                    out.extend(got)
                return out
            if "range" in right:
                a, b = right["range"]
                return [("range", a, b)]
            if "prefix" in right:
                pre = right["prefix"]
                return [ipaddress.ip_network(f"{pre['addr']}/{pre['len']}", strict=False)]
            return None
        if isinstance(right, list):
            out = []
            for el in right:
                got = self.values(el)
                if got is None:
                    return None
                out.extend(got)
            return out
        return [right]

    def match(self, body: dict[str, Any]) -> tuple[Cond, list[Network]]:
        op = body.get("op", "==")
        left = body.get("left")
        right = body.get("right")
        negate = op == "!="
        text = f"{_brief(left)} {op} {_brief(right)}"
        if op not in ("==", "!=", "in"):
            return const_cond(Tri.MAYBE, text), []
        if not isinstance(left, dict):
            return const_cond(Tri.MAYBE, text), []
        vals = self.values(right)
        if vals is None:
            return const_cond(Tri.MAYBE, text + " (set not found)"), []
        if "meta" in left:
            key = left["meta"].get("key")
            if key in ("iifname", "iif"):
                return iface_cond([str(v) for v in vals], negate, text), []
            if key == "l4proto":
                return proto_cond([str(v) for v in vals], negate, text), []
            if key == "nfproto":
                fams = {str(v) for v in vals}
                return Cond(lambda p: _neg(Tri.YES if p.family in fams else Tri.NO, negate),
                            text), []
            if key == "pkttype":
                return const_cond(_neg(Tri.YES if "host" in vals else Tri.NO, negate), text), []
            return const_cond(Tri.MAYBE, text), []
        if "payload" in left:
            proto = left["payload"].get("protocol")
            fld = left["payload"].get("field")
            fam_only = {"ip": IPV4, "ip6": IPV6}.get(str(proto))
            if proto in ("tcp", "th") and fld == "dport":
                return self._ports(vals, negate, text), []
            if proto in ("udp", "sctp", "dccp", "udplite", "icmp", "icmpv6"):
                return const_cond(Tri.NO, text), []  # not a TCP packet
            if proto in ("tcp", "th") and fld == "sport":
                return const_cond(Tri.ANY, text), []
            if fam_only and fld == "saddr":
                nets = [v if isinstance(v, ipaddress.IPv4Network | ipaddress.IPv6Network)
                        else _range_or_addr(v) for v in vals]
                flat = [n for sub in nets for n in (sub if isinstance(sub, list) else [sub])]
                return source_cond(flat, negate, text), flat
            if fam_only and fld == "daddr":
                return _only_family(fam_only, const_cond(Tri.ANY, text)), []
            if fam_only and fld in ("protocol", "nexthdr"):
                return _only_family(fam_only, proto_cond([str(v) for v in vals], negate,
                                                         text)), []
            return const_cond(Tri.MAYBE, text), []
        if "ct" in left:
            if left["ct"].get("key") == "state":
                return ctstate_cond([str(v) for v in vals], negate, text), []
            return const_cond(Tri.MAYBE, text), []
        if "fib" in left:
            # Reverse-path checks (`fib saddr . iif oif missing drop`) only catch spoofed
            # sources, which an ordinary connection is not.
            if left["fib"].get("result") == "oif":
                return const_cond(Tri.NO, text + " (reverse-path check)"), []
            return const_cond(Tri.MAYBE, text), []
        if "&" in left:
            parts = left["&"]
            if (isinstance(parts, list) and len(parts) == 2 and isinstance(parts[0], dict)
                    and parts[0].get("payload", {}).get("field") == "flags"):
                mask = _flag_bits(_names(parts[1]))
                comp = _flag_bits(_names(right))
                return const_cond(_neg(Tri.YES if (_SYN & mask) == comp else Tri.NO, negate),
                                  text), []
        return const_cond(Tri.MAYBE, text), []

    def _ports(self, vals: list[Any], negate: bool, text: str) -> Cond:
        ranges: list[tuple[int, int]] = []
        for v in vals:
            if isinstance(v, tuple) and v[0] == "range":
                ranges.append((int(v[1]), int(v[2])))
            elif isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
                ranges.append((int(v), int(v)))
            else:
                return const_cond(Tri.MAYBE, text + " (service name)")
        return port_cond(ranges, negate, text)


def _names(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list):
        return [str(x) for x in v]
    if isinstance(v, dict) and "|" in v:
        return [str(x) for x in v["|"]]
    return []


def _range_or_addr(v: Any) -> Network | list[Network]:
    if isinstance(v, tuple) and v[0] == "range":
        return list(ipaddress.summarize_address_range(ipaddress.ip_address(v[1]),
                                                      ipaddress.ip_address(v[2])))
    return ipaddress.ip_network(str(v), strict=False)


def _nft_text(exprs: list[dict[str, Any]]) -> str:
    return "nft " + _brief(exprs)


# --------------------------------------------------------------------------- #
# ufw status verbose
# --------------------------------------------------------------------------- #

_UFW_ACTIONS = {"ALLOW": "accept", "DENY": "drop", "REJECT": "reject", "LIMIT": "accept"}


@dataclass(frozen=True)
class UfwStatus:
    active: bool
    default_incoming: str | None  # "deny" | "reject" | "allow"
    ruleset: Ruleset | None


def parse_ufw(text: str) -> UfwStatus:
    """`ufw status verbose` (format of ufw(8), "status verbose") → its rules as a Ruleset.

    Rules are evaluated first-match in the order listed, like ufw's `ufw-user-input` chain;
    lines marked `(v6)` apply to IPv6, the others to IPv4; LIMIT lets a first connection in.
    """
    active = False
    default: str | None = None
    header: str | None = None
    rules4: list[Rule] = []
    rules6: list[Rule] = []
    count = 0
    for line in text.splitlines():
        s = line.strip()
        if s.lower().startswith("status:"):
            active = s.split(":", 1)[1].strip().lower() == "active"
        elif s.lower().startswith("default:"):
            m = re.search(r"(\w+) \(incoming\)", s)
            default = m.group(1).lower() if m else None
        elif s.startswith("To") and "Action" in s and "From" in s:
            header = line
        elif header is not None and s and not set(s) <= {"-", " "}:
            rule = _ufw_rule(line, header)
            if rule is None:
                continue
            v6, r = rule
            (rules6 if v6 else rules4).append(r)
            count += 1
    if not active:
        return UfwStatus(False, default, None)
    policy = {"deny": "drop", "reject": "reject", "allow": "accept"}.get(default or "", "")
    rs = Ruleset(tool="ufw", families=frozenset(FAMILIES), rule_count=count)
    rs.chains["ufw4"] = rules4
    rs.chains["ufw6"] = rules6
    if not policy:
        rs.notes.append("ufw default incoming policy not shown (run `ufw status verbose`)")
        policy = "unknown"
    rs.base.append(("ufw4", policy, frozenset({IPV4})))
    rs.base.append(("ufw6", policy, frozenset({IPV6})))
    return UfwStatus(True, default, rs)


def _ufw_rule(line: str, header: str) -> tuple[bool, Rule] | None:
    a_col = header.index("Action")
    f_col = header.index("From")
    to = line[:a_col].strip()
    action = line[a_col:f_col].strip().split()
    frm = line[f_col:].split("#", 1)[0].strip()
    if not action or action[0] not in _UFW_ACTIONS:
        return None
    direction = action[1] if len(action) > 1 else "IN"
    if direction != "IN":
        return None  # OUT and FWD rules do not decide inbound connections to this host
    v6 = "(v6)" in to or "(v6)" in frm
    conds: list[Cond] = []
    nets: list[Network] = []
    # ufw names the application profile after its ports: "80/tcp (WWW)", "80/tcp (WWW (v6))".
    to = to.replace("(v6)", " ")
    named = re.search(r"\(([^()]*)\s*\)", to)
    if named and to[:named.start()].strip():
        to = to[:named.start()] + to[named.end():]
    tokens = to.split()
    if "on" in tokens:
        k = tokens.index("on")
        conds.append(iface_cond([tokens[k + 1]], False, f"on {tokens[k + 1]}"))
        tokens = tokens[:k] + tokens[k + 2:]
    port_tok = [t for t in tokens if t != "Anywhere" and not _is_addr(t)]
    if port_tok:
        spec = " ".join(port_tok)
        m = re.fullmatch(r"([\d,:]+)(?:/(\w+))?", spec)
        if m:
            conds.append(port_cond(_port_ranges(m.group(1)), False, spec))
            if m.group(2):
                conds.append(proto_cond([m.group(2)], False, spec))
        else:
            conds.append(const_cond(Tri.MAYBE, f"application profile {spec!r} (ports not read)"))
    if any(_is_addr(t) for t in tokens):
        conds.append(const_cond(Tri.ANY, f"to {tokens[0]}"))
    ftoks = frm.replace("(v6)", " ").split()
    if "on" in ftoks:
        k = ftoks.index("on")
        conds.append(iface_cond([ftoks[k + 1]], False, f"on {ftoks[k + 1]}"))
        ftoks = ftoks[:k] + ftoks[k + 2:]
    if ftoks and ftoks[0] != "Anywhere" and _is_addr(ftoks[0]):
        got = _nets(ftoks[0])
        nets.extend(got)
        conds.append(source_cond(got, False, f"from {ftoks[0]}"))
    if len(ftoks) > 1:
        conds.append(const_cond(Tri.ANY, f"from port {' '.join(ftoks[1:])}"))
    target = _UFW_ACTIONS[action[0]]
    text = " ".join(line.split())
    if action[0] == "LIMIT":
        text += " (rate-limited)"
    return v6, Rule(tuple(conds), target, text=f"ufw: {text}", nets=tuple(nets))


def _is_addr(tok: str) -> bool:
    try:
        ipaddress.ip_network(tok, strict=False)
    except ValueError:
        return False
    return True


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
