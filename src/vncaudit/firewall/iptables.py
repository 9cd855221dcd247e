"""`iptables -S` / `ip6tables -S` (filter table) → a Ruleset whose base chain is INPUT.

Owns: the rule grammar of iptables-save/-S lines and what each match means for a new inbound
TCP SYN. An option or module it does not know makes the rule undecidable, never ignored.
Must not: run iptables (that is `read_state`).
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable

from vncaudit.firewall._model import (
    IPV4,
    SYN_FLAG,
    Cond,
    Network,
    Packet,
    Rule,
    Ruleset,
    Tri,
    const_cond,
    ctstate_cond,
    flag_bits,
    iface_cond,
    negated,
    parse_nets,
    parse_port_ranges,
    port_cond,
    proto_cond,
    source_cond,
)

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
    reader = _RuleReader(args)
    try:
        reader.read()
    except (ValueError, IndexError) as exc:
        return Rule((const_cond(Tri.MAYBE, f"unreadable ({exc})"),), "unknown", text=line)
    return Rule(tuple(reader.conds), reader.target, reader.chain, line, tuple(reader.nets))


class _RuleReader:
    """The options of one rule after `-A CHAIN`, read left to right: the conditions they set
    on a new inbound TCP SYN, the source networks they name, and the target (with its chain
    for a jump or goto). A `!` negates the option after it."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.i = 0  # the option being read; its value is at i + 1
        self.negate = False
        self.after_target = False
        self.conds: list[Cond] = []
        self.nets: list[Network] = []
        self.target = "continue"
        self.chain = ""

    def read(self) -> None:
        args = self.args
        while self.i < len(args):
            a = args[self.i]
            if a == "!":
                self.negate = True
                self.i += 1
                continue
            option = _OPTIONS.get(a)
            if option is not None:
                option(self, a)
            elif a.startswith("--"):
                self.other(a)
            self.negate = False
            self.i += 1

    def val(self) -> str:
        """The option's value (empty when the line ends), stepping over it."""
        self.i += 1
        return self.args[self.i] if self.i < len(self.args) else ""

    def bang(self) -> str:
        return "! " if self.negate else ""

    def protocol(self, a: str) -> None:
        v = self.val()
        self.conds.append(proto_cond([v], self.negate, f"{self.bang()}-p {v}"))

    def source(self, a: str) -> None:
        v = self.val()
        if a == "--src-range":
            lo_s, hi_s = v.split("-", 1)
            got: list[Network] = list(ipaddress.summarize_address_range(
                ipaddress.ip_address(lo_s), ipaddress.ip_address(hi_s)))
        else:
            got = parse_nets(v)
        self.nets.extend(got)
        self.conds.append(source_cond(got, self.negate, f"{self.bang()}{a} {v}"))

    def destination(self, a: str) -> None:
        v = self.val()
        if a == "--dst-type":
            t = negated(Tri.YES if "LOCAL" in v.split(",") else Tri.NO, self.negate)
            self.conds.append(const_cond(t, f"--dst-type {v}"))
        elif a == "--src-type":
            t = negated(Tri.NO if v.split(",") == ["LOCAL"] else Tri.MAYBE, self.negate)
            self.conds.append(const_cond(t, f"--src-type {v}"))
        else:
            self.conds.append(const_cond(Tri.ANY, f"{a} {v}"))

    def in_interface(self, a: str) -> None:
        v = self.val()
        self.conds.append(iface_cond([v], self.negate, f"{self.bang()}-i {v}"))

    def skip_value(self, a: str) -> None:
        """-o (an inbound packet has no output interface yet) and --limit, --hashlimit-upto,
        --hashlimit (under the rate: a first connection matches)."""
        self.val()

    def destination_port(self, a: str) -> None:
        v = self.val()
        self.conds.append(port_cond(parse_port_ranges(v), self.negate, f"{a} {v}"))

    def source_port(self, a: str) -> None:
        v = self.val()
        self.conds.append(const_cond(Tri.ANY, f"{a} {v}"))

    def either_port(self, a: str) -> None:
        v = self.val()
        # --ports matches the source OR the destination port, and the sender picks the
        # source port.
        ports = port_cond(parse_port_ranges(v), self.negate, f"--ports {v}")
        self.conds.append(_either_port(ports))

    def ctstate(self, a: str) -> None:
        v = self.val()
        self.conds.append(ctstate_cond(v.split(","), self.negate, f"{a} {v}"))

    def syn(self, a: str) -> None:
        self.conds.append(const_cond(negated(Tri.YES, self.negate), "--syn"))

    def tcp_flags(self, a: str) -> None:
        mask = flag_bits(self.val().split(","))
        comp = flag_bits(self.val().split(","))
        self.conds.append(const_cond(negated(Tri.YES if (SYN_FLAG & mask) == comp else Tri.NO,
                                          self.negate), f"--tcp-flags {mask:#x} {comp:#x}"))

    def module(self, a: str) -> None:
        mod = self.val()
        args, i = self.args, self.i
        if mod == "recent":
            self.conds.append(_recent_cond(args, i))
        elif mod in ("set",):
            self.conds.append(const_cond(Tri.MAYBE, "-m set (ipset contents not read)"))
        elif mod in _EXTENSION_HEADER_MODULES:
            # A plain TCP SYN carries no routing, fragment or other extension header.
            self.conds.append(const_cond(Tri.NO, f"-m {mod} (an extension header)"))
        elif mod == "pkttype":
            v = args[i + 2] if i + 2 < len(args) else ""
            self.conds.append(const_cond(Tri.YES if v == "unicast" else Tri.NO,
                                         f"-m pkttype {v}"))
        elif mod not in _KNOWN_MODULES:
            self.conds.append(const_cond(Tri.MAYBE, f"-m {mod}"))

    def hashlimit_above(self, a: str) -> None:
        self.val()
        self.conds.append(const_cond(Tri.NO, "--hashlimit-above"))

    def connlimit_above(self, a: str) -> None:
        v = self.val()
        self.conds.append(const_cond(negated(Tri.NO, self.negate), f"--connlimit-above {v}"))

    def fragment(self, a: str) -> None:
        self.conds.append(const_cond(negated(Tri.NO, self.negate), "-f"))

    def jump(self, a: str) -> None:
        v = self.val()
        self.after_target = True
        if v in _IPT_TARGETS:
            self.target = _IPT_TARGETS[v]
        elif v in _NONTERMINAL:
            self.target = "continue"
        else:
            # A user chain; an extension target we do not know (NFQUEUE, TARPIT …) has no
            # chain of that name, and the walk says `unknown` for it.
            self.target = "goto" if a in ("-g", "--goto") else "jump"
            self.chain = v

    def other(self, a: str) -> None:
        """Options of the target (after -j) and of modules that do not decide whether a
        packet matches are skipped; any other match option is not understood, and a rule we
        do not understand must not count as matching or not."""
        args = self.args
        if not self.after_target and a not in _NEUTRAL_OPTIONS:
            self.conds.append(const_cond(Tri.MAYBE, f"{self.bang()}{a}"))
        if a not in _FLAG_OPTIONS and self.i + 1 < len(args) and \
                not args[self.i + 1].startswith("-"):
            self.i += 1


def _options(*pairs: tuple[tuple[str, ...], Callable[[_RuleReader, str], None]]
             ) -> dict[str, Callable[[_RuleReader, str], None]]:
    return {name: read for names, read in pairs for name in names}


# Each option's reader; an option not here that starts with "--" goes to `_RuleReader.other`.
_OPTIONS = _options(
    (("-p", "--protocol"), _RuleReader.protocol),
    (("-s", "--source", "--src-range"), _RuleReader.source),
    (("-d", "--destination", "--dst-range", "--dst-type", "--src-type"),
     _RuleReader.destination),
    (("-i", "--in-interface"), _RuleReader.in_interface),
    (("-o", "--out-interface", "--limit", "--hashlimit-upto", "--hashlimit"),
     _RuleReader.skip_value),
    (("--dport", "--destination-port", "--dports", "--destination-ports"),
     _RuleReader.destination_port),
    (("--sport", "--source-port", "--sports", "--source-ports"), _RuleReader.source_port),
    (("--ports",), _RuleReader.either_port),
    (("--ctstate", "--state"), _RuleReader.ctstate),
    (("--syn",), _RuleReader.syn),
    (("--tcp-flags",), _RuleReader.tcp_flags),
    (("-m",), _RuleReader.module),
    (("--hashlimit-above",), _RuleReader.hashlimit_above),
    (("--connlimit-above",), _RuleReader.connlimit_above),
    (("-f", "--fragment"), _RuleReader.fragment),
    (("-j", "--jump", "-g", "--goto"), _RuleReader.jump),
)


def _either_port(cond: Cond) -> Cond:
    def test(p: Packet) -> Tri:
        return Tri.YES if cond.test(p) is Tri.YES else Tri.ANY

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
