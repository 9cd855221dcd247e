"""Firewall interpretation from recorded outputs (tests/data/firewall/, see record.sh there).

The iptables/ip6tables/nft fixtures were read back from rules loaded into throwaway network
namespaces; the ufw `status verbose` ones follow the format documented in ufw(8).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vncaudit import firewall as fw
from vncaudit.firewall import IPV4, IPV6, Action

DATA = Path(__file__).parent / "data" / "firewall"


def views(name: str, nft_skip: bool = True) -> list[fw.Ruleset]:
    out = [
        fw.parse_iptables((DATA / f"{name}.iptables").read_text(), IPV4),
        fw.parse_iptables((DATA / f"{name}.ip6tables").read_text(), IPV6),
    ]
    skip = [("ip", "filter"), ("ip6", "filter")] if nft_skip else []
    out.append(fw.parse_nft((DATA / f"{name}.nft.json").read_text(), skip))
    return out


def verdict(name: str, family: str, port: int) -> fw.Verdict:
    return fw.decide(views(name), family, port)


def test_no_rules_means_allowed_on_both_families() -> None:
    for family in (IPV4, IPV6):
        v = verdict("empty", family, 5900)
        assert v.action is Action.ALLOWED
        assert "policy ACCEPT" in v.reason or "no chain" in v.reason


def test_default_drop_policy_with_source_restrictions_and_open_ipv6() -> None:
    name = "policy-drop-v4only"
    assert verdict(name, IPV4, 22).action is Action.ALLOWED
    v = verdict(name, IPV4, 5900)
    assert (v.action, v.sources) == (Action.RESTRICTED, ("10.0.0.0/8",))
    # --dports 5901,5902 from a /24
    assert verdict(name, IPV4, 5902).sources == ("192.168.7.0/24",)
    assert verdict(name, IPV4, 5903).action is Action.REJECTED
    dropped = verdict(name, IPV4, 5904)
    assert dropped.action is Action.DROPPED and "policy DROP" in dropped.reason
    # ip6tables was never configured: the same ports are wide open over IPv6.
    assert verdict(name, IPV6, 5900).action is Action.ALLOWED
    assert verdict(name, IPV6, 5904).action is Action.ALLOWED


def test_user_chains_ranges_return_and_negated_loopback() -> None:
    name = "user-chains"
    # 5900:5910 -> VNC-IN: 198.18.0.0/15 RETURNs (then policy ACCEPT), others ! -i lo -> LOGDROP
    v = verdict(name, IPV4, 5900)
    assert (v.action, v.sources) == (Action.RESTRICTED, ("198.18.0.0/15",))
    assert verdict(name, IPV4, 5905).action is Action.ALLOWED
    assert verdict(name, IPV4, 5910).action is Action.RESTRICTED
    assert verdict(name, IPV4, 5911).action is Action.ALLOWED  # just past the range
    assert verdict(name, IPV4, 5999).action is Action.DROPPED
    # IPv6: multiport 5900:5910,5999 -> VNC6 (fd00::/8 accepted, rest rejected)
    v6 = verdict(name, IPV6, 5999)
    assert (v6.action, v6.sources) == (Action.RESTRICTED, ("fd00::/8",))
    assert verdict(name, IPV6, 5950).action is Action.ALLOWED


def test_ufw_chains_limit_interface_and_per_family_rules() -> None:
    name = "ufw-chains"
    # LIMIT on 22: the `recent --update` rule does not stop a first connection
    assert verdict(name, IPV4, 22).action is Action.ALLOWED
    assert verdict(name, IPV4, 5905).action is Action.ALLOWED  # multiport range ACCEPT
    assert verdict(name, IPV4, 5950).action is Action.DROPPED  # default deny
    assert verdict(name, IPV4, 5920).sources == ("203.0.113.0/24",)
    assert verdict(name, IPV6, 5920).action is Action.DROPPED
    on_if = verdict(name, IPV4, 5990)  # -i eth9 -j ACCEPT: open on that interface
    assert on_if.action is Action.ALLOWED
    assert any("eth9" in n for n in on_if.notes)


def test_nftables_inet_table_sets_vmap_ranges_and_families() -> None:
    name = "nft-inet-drop"
    rs = views(name)[2]
    assert rs.rule_count == 10
    assert verdict(name, IPV4, 22).action is Action.ALLOWED
    # named interval set @vncports {5900-5903, 5950} with ip saddr 198.18.0.0/15
    for port in (5900, 5903, 5950):
        v = verdict(name, IPV4, port)
        assert (v.action, v.sources) == (Action.RESTRICTED, ("198.18.0.0/15",))
        assert verdict(name, IPV6, port).action is Action.DROPPED  # ip saddr: IPv4 only
    assert verdict(name, IPV4, 5904).action is Action.DROPPED
    assert verdict(name, IPV6, 5904).sources == ("fd00::/8",)
    assert verdict(name, IPV4, 5906).action is Action.REJECTED
    assert verdict(name, IPV6, 5907).action is Action.ALLOWED  # meta nfproto ipv6
    assert verdict(name, IPV4, 5907).action is Action.DROPPED
    # jump vnc: 5909 accepted there; 5908 and 5910 fall back to the policy
    assert verdict(name, IPV4, 5909).action is Action.ALLOWED
    assert verdict(name, IPV4, 5908).action is Action.DROPPED


def test_iptables_nft_tables_are_read_once_and_native_tables_added() -> None:
    name = "iptables-nft-mixed"
    assert verdict(name, IPV4, 5900).action is Action.DROPPED  # iptables rule
    assert verdict(name, IPV6, 5900).action is Action.ALLOWED
    assert verdict(name, IPV4, 5901).action is Action.DROPPED  # inet extra table
    assert verdict(name, IPV6, 5901).action is Action.DROPPED
    # nft alone shows the conntrack rule as an opaque xt match: an ACCEPT that may or may not
    # apply before the DROP, so 5900 is unknown there; 5902 is accepted either way.
    only_nft = fw.parse_nft((DATA / f"{name}.nft.json").read_text())
    v = fw.decide([only_nft], IPV4, 5900)
    assert v.action is Action.UNKNOWN and "xt match conntrack" in v.reason
    assert fw.decide([only_nft], IPV4, 5902).action is Action.ALLOWED


def test_unevaluable_accept_before_drop_policy_is_unknown_never_protected() -> None:
    text = "-P INPUT DROP\n-A INPUT -p tcp -m set --match-set admins src -j ACCEPT\n"
    v = fw.decide([fw.parse_iptables(text)], IPV4, 5900)
    assert v.action is Action.UNKNOWN
    assert "ipset" in v.reason


def test_unreadable_tool_makes_allowed_unknown_but_a_drop_stands() -> None:
    allowed = fw.parse_iptables("-P INPUT ACCEPT\n")
    blocked = fw.parse_iptables("-P INPUT ACCEPT\n-A INPUT -p tcp --dport 5900 -j DROP\n")
    nft_missing = [fw.Unreadable("nftables", frozenset({IPV4, IPV6}), "permission denied")]
    v = fw.decide([allowed], IPV4, 5900, nft_missing)
    assert v.action is Action.UNKNOWN and "permission denied" in v.reason
    assert fw.decide([blocked], IPV4, 5900, nft_missing).action is Action.DROPPED
    nothing = fw.decide([], IPV6, 5900, nft_missing)
    assert nothing.action is Action.UNKNOWN


def test_tcp_flags_state_and_sport_conditions() -> None:
    text = "\n".join([
        "-P INPUT DROP",
        "-A INPUT -p tcp ! --syn -j ACCEPT",  # not a new connection
        "-A INPUT -p tcp --tcp-flags SYN,RST,ACK ACK -j ACCEPT",  # ditto
        "-A INPUT -m conntrack --ctstate NEW,ESTABLISHED -p tcp --dport 5901 -j ACCEPT",
        "-A INPUT -p tcp --sport 53 --dport 5902 -j ACCEPT",  # the sender picks its sport
        "-A INPUT -p udp --dport 5903 -j ACCEPT",
    ])
    rs = [fw.parse_iptables(text)]
    assert fw.decide(rs, IPV4, 5900).action is Action.DROPPED
    assert fw.decide(rs, IPV4, 5901).action is Action.ALLOWED
    assert fw.decide(rs, IPV4, 5902).action is Action.ALLOWED
    assert fw.decide(rs, IPV4, 5903).action is Action.DROPPED


@pytest.mark.parametrize("port,v4,v6", [
    (22, "allowed", "allowed"),          # LIMIT lets a first connection in
    (5901, "allowed", "dropped"),        # range 5901:5903; (v6) DENY
    (5904, "dropped", "dropped"),        # 5904,5905 DENY; IPv6 default deny
    (5906, "rejected", "rejected"),      # no /proto: tcp and udp
    (5907, "allowed", "dropped"),        # `on eth1`: open on that interface
])
def test_ufw_status_verbose(port: int, v4: str, v6: str) -> None:
    st = fw.parse_ufw((DATA / "ufw-active.status").read_text())
    assert st.active and st.default_incoming == "deny" and st.ruleset is not None
    assert st.ruleset.rule_count == 12  # the OUT rule is not counted as inbound
    assert fw.decide([st.ruleset], IPV4, port).action.value == v4
    assert fw.decide([st.ruleset], IPV6, port).action.value == v6


def test_ufw_application_profile_is_unknown_and_allow_default_and_inactive() -> None:
    st = fw.parse_ufw((DATA / "ufw-active.status").read_text())
    assert st.ruleset is not None
    v = fw.decide([st.ruleset], IPV4, 5900)  # 192.168.1.0/24 only, then the OpenSSH profile
    assert v.action is Action.UNKNOWN and "OpenSSH" in v.reason
    assert fw.decide([st.ruleset], IPV6, 5900).action is Action.ALLOWED
    allow = fw.parse_ufw((DATA / "ufw-allow-default.status").read_text())
    assert allow.ruleset is not None
    assert fw.decide([allow.ruleset], IPV4, 5900).action is Action.DROPPED
    r = fw.decide([allow.ruleset], IPV4, 5901)
    assert (r.action, r.sources) == (Action.RESTRICTED, ("203.0.113.7",))
    assert fw.decide([allow.ruleset], IPV6, 5901).action is Action.ALLOWED
    assert fw.decide([allow.ruleset], IPV4, 5902).action is Action.ALLOWED
    inactive = fw.parse_ufw((DATA / "ufw-inactive.status").read_text())
    assert not inactive.active and inactive.ruleset is None


def test_read_state_reports_permission_and_absent_tools() -> None:
    recorded = (DATA / "policy-drop-v4only.iptables").read_text()

    def run(argv: list[str] | tuple[str, ...]) -> tuple[int, str, str]:
        argv = list(argv)
        if argv == ["iptables", "-V"]:
            return 0, "iptables v1.8.9 (nf_tables)\n", ""
        if argv[0] == "iptables":
            return 0, recorded, ""
        if argv[0] == "ip6tables":
            return 4, "", "ip6tables v1.8.9 (nf_tables): Permission denied (you must be root)"
        return 127, "", "not installed"

    st = fw.read_state(run)
    assert [r.tool for r in st.rulesets] == ["iptables"]
    assert st.absent == ["nft", "ufw"]
    assert st.verdict(IPV4, 5900).action is Action.RESTRICTED
    v6 = st.verdict(IPV6, 5900)
    assert v6.action is Action.UNKNOWN and "permission denied" in v6.reason


def test_goto_returns_to_the_caller_of_the_chain_not_to_the_goto() -> None:
    text = "\n".join([
        "-P INPUT DROP",
        "-N A",
        "-N B",
        "-A INPUT -p tcp --dport 5900 -j A",
        "-A INPUT -p tcp --dport 5900 -j ACCEPT",  # reached after A RETURNs
        "-A A -g B",
        "-A A -j DROP",  # skipped: B's RETURN goes back to INPUT, not to A
        "-A B -j RETURN",
        "-A INPUT -p tcp --dport 5901 -j RETURN",  # RETURN in a base chain: the policy
    ])
    rs = [fw.parse_iptables(text)]
    assert fw.decide(rs, IPV4, 5900).action is Action.ALLOWED
    v = fw.decide(rs, IPV4, 5901)
    assert v.action is Action.DROPPED and "policy DROP" in v.reason


def test_unknown_target_and_queue_are_unknown() -> None:
    text = "-P INPUT ACCEPT\n-A INPUT -p tcp --dport 5900 -j NFQUEUE --queue-num 1\n"
    v = fw.decide([fw.parse_iptables(text)], IPV4, 5900)
    assert v.action is Action.UNKNOWN and "NFQUEUE" in v.reason
    assert fw.decide([fw.parse_iptables(text)], IPV4, 5901).action is Action.ALLOWED


def test_nft_prerouting_drop_and_reverse_path_filter() -> None:
    doc = {"nftables": [
        {"chain": {"family": "inet", "table": "t", "name": "pre", "type": "filter",
                   "hook": "prerouting", "prio": -150, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "pre", "expr": [
            {"match": {"op": "==", "left": {"fib": {"flags": ["saddr", "iif"],
                                                    "result": "oif"}}, "right": False}},
            {"drop": None}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "pre", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                       "right": {"set": [{"range": [5900, 5902]}]}}},
            {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}},
            {"drop": None}]}},
    ]}
    import json

    rs = fw.parse_nft(json.dumps(doc))
    assert fw.decide([rs], IPV4, 5901).action is Action.DROPPED
    assert fw.decide([rs], IPV6, 5902).action is Action.DROPPED
    assert fw.decide([rs], IPV4, 5903).action is Action.ALLOWED  # rpfilter: not for real peers


REAL_UFW_PORTS = (22, 80, 5899, 5900, 5901, 5903, 5904, 5905, 5906, 5907, 5908, 5950, 5999)


def test_real_ufw_status_and_the_chains_it_loaded_agree() -> None:
    """ufw-real.*: recorded from ufw itself (record.sh, step 7). Its `status verbose` and the
    iptables/ip6tables chains it generated are interpreted independently and must agree."""
    st = fw.parse_ufw((DATA / "ufw-real.status").read_text())
    assert st.active and st.ruleset is not None
    chains = [fw.parse_iptables((DATA / "ufw-real.iptables").read_text(), IPV4),
              fw.parse_iptables((DATA / "ufw-real.ip6tables").read_text(), IPV6)]
    assert sum(r.rule_count for r in chains) > 150  # ufw's before/after/logging chains too
    for family in (IPV4, IPV6):
        for port in REAL_UFW_PORTS:
            if family == IPV6 and port == 22:
                continue  # see the next test
            a, b = fw.decide([st.ruleset], family, port), fw.decide(chains, family, port)
            assert str(a) == str(b), (family, port, a, b)
    v = fw.decide(chains, IPV4, 5900)
    assert (v.action, v.sources) == (Action.RESTRICTED, ("192.168.1.0/24", "10.9.0.0/16"))
    assert fw.decide(chains, IPV4, 80).action is Action.ALLOWED  # "80/tcp (WWW)" profile
    assert fw.decide(chains, IPV6, 5906).action is Action.REJECTED
    assert fw.decide(chains, IPV6, 5900).action is Action.DROPPED  # IPv4-only source rule


def test_real_ufw_ipv6_limit_drops_where_status_says_limit() -> None:
    # ufw loads its IPv6 rate-limit chains only when the kernel passes its capability check;
    # here it did not, so "22/tcp (v6) LIMIT IN" jumps to an empty ufw6-user-limit-accept and
    # falls through to the default deny. The chains are what the kernel runs.
    st = fw.parse_ufw((DATA / "ufw-real.status").read_text())
    assert st.ruleset is not None
    assert fw.decide([st.ruleset], IPV6, 22).action is Action.ALLOWED
    v6 = fw.parse_iptables((DATA / "ufw-real.ip6tables").read_text(), IPV6)
    assert v6.chains["ufw6-user-limit-accept"] == []
    assert fw.decide([v6], IPV6, 22).action is Action.DROPPED


def test_unknown_match_option_is_never_ignored() -> None:
    text = "-P INPUT ACCEPT\n-A INPUT -p tcp -m frobnicate --frob 3 -j DROP\n"
    v = fw.decide([fw.parse_iptables(text)], IPV4, 5900)
    # Ignoring the option would make it an unconditional DROP: "protected" by a guess.
    assert v.action is Action.UNKNOWN and "frobnicate" in v.reason
