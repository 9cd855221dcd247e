"""`nft -j list ruleset` → one Ruleset of every filter base chain at the input and
prerouting hooks (ip, ip6, inet), with named sets, verdict maps and jumps resolved.

Must not: run nft, or read the iptables-nft tables a second time when `iptables -S` did.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from vncaudit.firewall._model import (
    FAMILIES,
    IPV4,
    IPV6,
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
    port_cond,
    proto_cond,
    source_cond,
)

_NFT_FAMILIES = {"ip": frozenset({IPV4}), "ip6": frozenset({IPV6}), "inet": frozenset(FAMILIES)}


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
                return Cond(lambda p: negated(Tri.YES if p.family in fams else Tri.NO, negate),
                            text), []
            if key == "pkttype":
                return const_cond(negated(Tri.YES if "host" in vals else Tri.NO, negate), text), []
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
                mask = flag_bits(_names(parts[1]))
                comp = flag_bits(_names(right))
                return const_cond(negated(Tri.YES if (SYN_FLAG & mask) == comp else Tri.NO, negate),
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


def _only_family(family: str, cond: Cond) -> Cond:
    def test(p: Packet) -> Tri:
        return cond.test(p) if p.family == family else Tri.NO

    return Cond(test, cond.text)


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
