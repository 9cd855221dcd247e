"""`ufw status verbose` → a Ruleset (first match wins, as in ufw-user-input).

Format as documented in ufw(8) ("status verbose") and as recorded from ufw 0.36 in
tests/data/firewall/ufw-real.status. Must not: run ufw.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from vncaudit.firewall._model import (
    FAMILIES,
    IPV4,
    IPV6,
    Cond,
    Network,
    Rule,
    Ruleset,
    Tri,
    const_cond,
    iface_cond,
    parse_nets,
    parse_port_ranges,
    port_cond,
    proto_cond,
    source_cond,
)

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
            conds.append(port_cond(parse_port_ranges(m.group(1)), False, spec))
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
        got = parse_nets(ftoks[0])
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
