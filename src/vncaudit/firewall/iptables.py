"""`iptables -S` / `ip6tables -S` (filter table) → a Ruleset whose base chain is INPUT.

Owns: the rule grammar of iptables-save/-S lines and what each match means for a new inbound
TCP SYN. An option or module it does not know makes the rule undecidable, never ignored.
Must not: run iptables (that is `read_state`).
"""

from __future__ import annotations

import ipaddress
import shlex

from vncaudit.firewall._model import (
    _SYN,
    IPV4,
    Cond,
    Network,
    Packet,
    Rule,
    Ruleset,
    Tri,
    _flag_bits,
    _neg,
    _nets,
    _port_ranges,
    const_cond,
    ctstate_cond,
    iface_cond,
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
