"""`vncaudit local` on this machine: real servers on loopback, root and non-root views.

Every audit here is limited to the test server's own port (`only_ports`), so no other
developer's server on this machine is listed, sniffed or probed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vncaudit import firewall
from vncaudit import local as local_mod
from vncaudit.models import Severity, State

from servers import free_port

pytestmark = pytest.mark.realserver


def test_tigervnc_on_loopback_is_listed_with_process_config_and_lower_severity(
        vnc_server_factory) -> None:
    srv = vnc_server_factory("tigervnc-none", desktop="local-audit")
    audit = local_mod.audit(only_ports=[srv.port])
    assert audit.root
    [x] = audit.listeners
    assert (x.address, x.port, x.family, x.scope) == ("127.0.0.1", srv.port, "ipv4", "loopback")
    assert x.process is not None and x.process.pid in srv.pids
    assert x.process.name == "Xvnc" and x.process.user == "root"
    assert "-interface" in x.process.cmdline
    assert x.product == "TigerVNC"
    assert any("TigerVNC server" in r for r in x.reasons)
    facts = {(c.setting, c.value) for c in x.config}
    assert ("-interface", "127.0.0.1") in facts and ("-securitytypes", "None") in facts
    # Loopback: no firewall family matters, and nobody else can reach it.
    assert x.served_families == () and x.reachable_from_outside is False
    assert x.result is not None and x.result.state is State.VNC
    assert x.result.rfb is not None and x.result.rfb.desktop_name == "local-audit"
    ids = {f.id for f in x.result.findings}
    assert "no-auth" in ids
    no_auth = next(f for f in x.result.findings if f.id == "no-auth")
    # "loopback only" lowers the severity that "all interfaces" would raise.
    assert no_auth.severity.rank < Severity.CRITICAL.rank
    assert any("loopback" in e for e in no_auth.evidence)
    doc = audit.to_dict()
    assert doc["kind"] == "local-audit" and doc["listeners"][0]["process"]["pid"] in srv.pids
    assert audit.firewall is not None  # iptables/nft are readable as root


def test_unknown_port_found_by_its_rfb_banner_and_not_without_sniffing(
        vnc_server_factory) -> None:
    srv = vnc_server_factory("x11vnc-none")  # a random port, outside 5800-5999
    assert not 5800 <= srv.port <= 5999
    seen = local_mod.audit(ports=(), only_ports=[srv.port], probe_listeners=False,
                           read_firewall=False)
    # x11vnc is a known server process, so it counts without the banner:
    assert [x.reasons for x in seen.listeners] == [("process x11vnc is a VNC server",)]
    facts = {c.setting for c in seen.listeners[0].config}
    assert {"-nopw", "-listen", "-rfbportv6"} <= facts


_NOBODY = r"""
import json, os, sys
# Import everything the audit needs first: after dropping root this interpreter may no longer
# read its own install directory.
import asyncio, ipaddress, subprocess, tomllib, psutil
import vncaudit.local, vncaudit.assess, vncaudit.fingerprint, vncaudit.probe, vncaudit.firewall
import encodings.idna, ssl, concurrent.futures.thread, selectors
vncaudit.local.known_servers()
from vncaudit.models import NamedType, RfbFacts, ServiceResult, State
vncaudit.assess.assess(ServiceResult("127.0.0.1", 5900, State.VNC, rfb=RfbFacts(
    "RFB 003.008\n", "3.8", "3.8", (NamedType(1, "None"),))))  # loads its data files now
os.setgroups([]); os.setgid(65534); os.setuid(65534)
port = int(sys.argv[1])
audit = vncaudit.local.audit(ports=(port,), only_ports=[port], sniff=True)
sys.stdout.write(json.dumps(audit.to_dict()))
"""


def test_without_root_it_still_lists_and_probes_and_says_what_it_could_not_see(
        vnc_server_factory, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    srv = vnc_server_factory("tigervnc-none", desktop="seen-by-nobody")
    script = tmp_path / "nobody.py"
    script.write_text(_NOBODY)
    script.chmod(0o644)
    tmp_path.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(Path(local_mod.__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(srv.port)], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["host"]["root"] is False
    [x] = doc["listeners"]
    assert x["address"] == "127.0.0.1" and x["port"] == srv.port
    # The socket is root's: no PID, process or command line for an unprivileged user …
    assert x["process"] is None
    # … but the probe still works, and the banner says what it is.
    assert x["service"]["state"] == "vnc"
    assert x["service"]["rfb"]["desktop_name"] == "seen-by-nobody"
    blind = " ".join(doc["blind_spots"])
    assert "other users" in blind and "root" in blind
    # iptables/nft refuse an unprivileged user: said so, never "protected".
    assert "permission denied" in blind
    assert doc["firewall"]["read"] == [] or all(
        r["tool"] not in ("iptables", "nftables") for r in doc["firewall"]["read"])


def test_firewall_verdict_without_permission_is_unknown() -> None:
    def denied(argv):
        return 4, "", "Permission denied (you must be root)"

    st = firewall.read_state(denied)
    v = st.verdict(firewall.IPV4, 5900)
    assert v.action is firewall.Action.UNKNOWN and "permission denied" in v.reason
    lst = local_mod.Listener("0.0.0.0", 5900, firewall.IPV4, None, ("port",),
                             firewall={firewall.IPV4: v})
    assert lst.reachable_from_outside is None  # unknown, not "protected"


def test_tigervnc_config_files_both_formats(tmp_path: Path) -> None:
    new_style = tmp_path / "config"
    new_style.write_text("# TigerVNC 1.11+\nlocalhost\nsecuritytypes=vncauth\n")
    debian = tmp_path / "vncserver-config-mandatory"
    debian.write_text('$localhost = "no";\n$SecurityTypes = "None";\n')
    got = local_mod.tigervnc_file(new_style) + local_mod.tigervnc_file(debian)
    assert [(c.setting, c.value, c.meaning) for c in got] == [
        ("localhost", "(set)", "loopback only"),
        ("securitytypes", "vncauth", "security types offered"),
        ("localhost", "no", "every interface"),
        ("securitytypes", "None", "security types offered"),
    ]
    assert local_mod.tigervnc_file(tmp_path / "absent") == []


def test_xvnc_parameters_and_x11vnc_flags() -> None:
    params = local_mod.xvnc_params([":1", "-localhost", "0", "-rfbport", "5901",
                                     "-SecurityTypes=None", "desktop=x", "-AlwaysShared"])
    assert params == {"localhost": "0", "rfbport": "5901", "securitytypes": "None",
                      "desktop": "x", "alwaysshared": "1"}
    proc = local_mod.ProcessInfo(1, "x11vnc", None, ("x11vnc", "-display", ":0", "-noipv6",
                                                     "-passwd", "hunter2", "-rfbport", "5900"))
    facts = {c.setting: c for c in local_mod.x11vnc_config(proc)}
    assert facts["-passwd"].value == "***"  # never repeat a password from a command line
    assert "keeps [::]" in facts["-noipv6"].meaning
    assert "IPv6 wildcard" in facts["-rfbportv6"].meaning


def test_served_families_of_wildcards() -> None:
    v6 = local_mod.Listener("::", 5900, firewall.IPV6, None, ("port",), dual_stack=True)
    assert v6.served_families == (firewall.IPV6, firewall.IPV4)
    v6only = local_mod.Listener("::", 5900, firewall.IPV6, None, ("port",))
    assert v6only.served_families == (firewall.IPV6,)
    assert local_mod.Listener("::1", 5900, firewall.IPV6, None, ()).scope == "loopback"
    assert local_mod.Listener("198.18.0.9", 5900, firewall.IPV4, None, ()).scope == "address"


def test_cli_local_json_and_fail_on(vnc_server_factory, tmp_path: Path) -> None:
    srv = vnc_server_factory("tigervnc-none")
    out = tmp_path / "local.json"
    cmd = [sys.executable, "-m", "vncaudit", "local", "--only-port", str(srv.port), "-o", "json",
           "--output-file", str(out), "--fail-on", "low"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr  # no-auth is at least low even on loopback
    doc = json.loads(out.read_text())
    assert [x["port"] for x in doc["listeners"]] == [srv.port]
    bad = subprocess.run([sys.executable, "-m", "vncaudit", "local", "-o", "xml"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_harden_apply_refuses_without_root_in_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs the CLI as an unprivileged user, which needs root to set up")
    script = tmp_path / "h.py"
    script.write_text(
        "import os, sys\n"
        "import vncaudit.cli, vncaudit.cli.local, vncaudit.harden, vncaudit.local\n"
        "import contextlib, io, psutil, encodings.idna\n"
        "# Let typer load its lazy modules while the install directory is still readable.\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    vncaudit.cli.app(['harden', '--help'])\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "sys.argv = ['vncaudit', 'harden', '--apply', '--yes']\n"
        "vncaudit.cli.main()\n")
    tmp_path.chmod(0o755)
    script.chmod(0o644)
    env = {**os.environ, "PYTHONPATH": str(Path(local_mod.__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "needs root" in proc.stderr
    assert proc.stdout == ""  # refused before looking at anything


# --------------------------------------------------------------------------- #
# The harden plan built from local findings (pure: no command is run)
# --------------------------------------------------------------------------- #

FIXTURES = Path(__file__).parent / "data" / "firewall"


def _audit_with(state: firewall.FirewallState, *listeners: local_mod.Listener,
                system: str = "Linux") -> local_mod.LocalAudit:
    return local_mod.LocalAudit("vnchost.example", system, True, list(listeners), [], state)


def _listener(address: str, port: int, state: firewall.FirewallState,
              product: str = "TigerVNC") -> local_mod.Listener:
    fam = firewall.IPV6 if ":" in address else firewall.IPV4
    x = local_mod.Listener(address, port, fam, None, ("port",), product)
    return local_mod.Listener(address, port, fam, None, ("port",), product,
                              firewall={f: state.verdict(f, port) for f in x.served_families})


def _state(name: str, ufw: str | None = None) -> firewall.FirewallState:
    st = firewall.FirewallState()
    st.rulesets = [
        firewall.parse_iptables((FIXTURES / f"{name}.iptables").read_text(), firewall.IPV4),
        firewall.parse_iptables((FIXTURES / f"{name}.ip6tables").read_text(), firewall.IPV6),
    ]
    if ufw is not None:
        st.ufw = firewall.parse_ufw((FIXTURES / ufw).read_text())
    return st


def test_plan_nftables_block_commands_come_from_the_fix_guide() -> None:
    from vncaudit import harden, remedies

    st = _state("empty")
    audit = _audit_with(st, _listener("0.0.0.0", 5901, st), _listener("127.0.0.1", 5902, st),
                        _listener("0.0.0.0", 22, st))
    plan = harden.build_plan(audit)
    assert plan.backend == "nftables" and plan.can_apply
    assert plan.ports == (5901,)  # loopback needs nothing; 22 is SSH and never touched
    guide = remedies.remedy("firewall-block", host="0.0.0.0", port=5901, product="TigerVNC")
    nft = [c for s in guide.steps if s.platform == "nftables" for c in s.commands]
    assert list(plan.firewall_commands) == [c for c in nft if harden.applicable(c)]
    assert all("iifname != \"lo\"" in c for c in plan.firewall_commands if "dport" in c)
    text = plan.render()
    for cmd in plan.firewall_commands:
        assert f"     {cmd}\n" in text
    assert "nft list table inet vncaudit >> /etc/nftables.conf" in text  # persistence, shown
    assert "nft list" not in " ".join(plan.firewall_commands)  # … but never run
    assert "ssh -N -L" in text and "vnchost.example" in text
    assert any("SSH" in n and "22" in n for n in plan.notes)


def test_plan_allowlist_orders_allow_before_block_for_each_backend() -> None:
    from vncaudit import harden

    st = _state("empty")
    audit = _audit_with(st, _listener("0.0.0.0", 5901, st), _listener("::", 5900, st))
    nft = harden.build_plan(audit, allow=["198.18.0.0/15", "fd00::/8"], backend="nftables")
    rules = [c for c in nft.firewall_commands if "add rule" in c]
    kinds = ["accept" if "accept" in c else "drop" for c in rules]
    assert kinds == sorted(kinds)  # every accept (appended) ahead of every drop
    assert any("ip6 saddr fd00::/8" in c for c in rules)
    ipt = harden.build_plan(audit, allow=["198.18.0.0/15"], backend="iptables")
    inserted = [c for c in ipt.firewall_commands if " -I " in c]
    # -I puts each at the top: drops are inserted first, then the ACCEPTs above them.
    assert [("ACCEPT" in c) for c in inserted] == sorted("ACCEPT" in c for c in inserted)
    with pytest.raises(Exception, match="trusted|network|CIDR|plain"):
        harden.build_plan(audit, allow=["10.0.0.0/8; rm -rf /"])


def test_plan_with_ufw_active_is_print_only_and_already_restricted_is_kept() -> None:
    from vncaudit import harden

    st = _state("policy-drop-v4only", ufw="ufw-active.status")
    open_v6 = _listener("::", 5904, st)  # ip6tables open
    limited = _listener("0.0.0.0", 5900, st)  # restricted(10.0.0.0/8) over IPv4
    plan = harden.build_plan(_audit_with(st, open_v6, limited))
    assert plan.backend == "ufw" and not plan.can_apply
    assert "ufw deny 5904/tcp" in plan.firewall_commands
    assert plan.ports == (5904,)
    assert any("already limited to 10.0.0.0/8" in n for n in plan.notes)
    assert any("--apply changes iptables/nftables only" in n for n in plan.notes)


def test_plan_on_windows_and_macos_is_guidance_only() -> None:
    from vncaudit import harden

    st = _state("empty")
    for system, word in (("Windows", "netsh advfirewall"), ("Darwin", "pfctl")):
        audit = _audit_with(st, _listener("0.0.0.0", 5900, st, "RealVNC"), system=system)
        plan = harden.build_plan(audit, system=system)
        assert plan.backend in ("windows", "macos") and not plan.can_apply
        assert plan.firewall_commands == ()
        assert word in plan.render()


def test_command_filter_for_apply() -> None:
    from vncaudit import harden

    assert harden.applicable("iptables -I INPUT -p tcp --dport 5901 ! -i lo -j DROP")
    assert harden.applicable("nft 'add rule inet vncaudit input iifname != \"lo\" tcp dport "
                             "5901 drop'")
    assert not harden.applicable("iptables-save > /etc/iptables/rules.v4")
    assert not harden.applicable("nft list table inet vncaudit >> /etc/nftables.conf")
    assert not harden.applicable("ufw status numbered")
    assert not harden.applicable("iptables -I INPUT -s <trusted-cidr> -j ACCEPT")
    assert not harden.applicable("systemctl enable nftables.service")


def test_systemd_template_unit_and_its_execstart(tmp_path: Path, monkeypatch) -> None:
    unit_dir = tmp_path / "system"
    unit_dir.mkdir()
    (unit_dir / "vncserver@.service").write_text(
        "[Service]\nType=forking\nExecStart=/usr/bin/vncserver -localhost no %i\n")
    monkeypatch.setattr(local_mod, "UNIT_DIRS", (str(unit_dir),))
    assert local_mod.unit_file("vncserver@:1.service") == unit_dir / "vncserver@.service"
    proc = local_mod.ProcessInfo(4242, "Xvnc", "/usr/bin/Xtigervnc", ("Xvnc", ":1"), "alice",
                                 unit="vncserver@:1.service")
    server = local_mod.known_server(proc)
    assert server is not None and server.product == "TigerVNC"
    facts = [c for c in local_mod.product_config(proc, server) if c.setting == "ExecStart"]
    assert [c.value for c in facts] == ["/usr/bin/vncserver -localhost no %i"]
    assert "vncserver@:1.service" in facts[0].source


def test_display_comes_from_an_x_server_command_line_only() -> None:
    def listener(*cmdline: str) -> local_mod.Listener:
        proc = local_mod.ProcessInfo(1, cmdline[0].rsplit("/", 1)[-1], None, cmdline)
        return local_mod.Listener("0.0.0.0", 15977, firewall.IPV4, proc, ("port",))

    assert listener("/usr/bin/Xtigervnc", ":77", "-rfbport", "15977").display == 77
    assert listener("Xtightvnc", ":54", "-rfbport", "15954").display == 54
    # x11vnc mirrors display :60; that is not a VNC display of its own.
    assert listener("x11vnc", "-display", ":60", "-rfbport", "15977").display is None
    assert local_mod.Listener("0.0.0.0", 5900, firewall.IPV4, None, ()).display is None


def test_a_socket_shared_with_a_forked_child_belongs_to_the_parent() -> None:
    import subprocess
    import sys

    # The parent listens, then forks a child that keeps the socket (as Xvnc does with xkbcomp).
    code = (
        "import os, socket, sys, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    time.sleep(30); os._exit(0)\n"
        "print(s.getsockname()[1], child, flush=True); sys.stdin.read(); os.kill(child, 9)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port_text, child_text = proc.stdout.readline().split()
        port, child = int(port_text), int(child_text)
        socks, _ = local_mod.listening_sockets()
        [mine] = [s for s in socks if s.port == port and s.address == "127.0.0.1"]
        assert mine.pid == proc.pid and mine.pid != child
    finally:
        proc.communicate("")


@pytest.mark.parametrize(("kind", "process", "product", "reason"), [
    ("wayvnc", "wayvnc", "wayvnc", "process wayvnc is a VNC server"),
    ("vino-noprompt", "vino-server", "GNOME vino", "process vino-server is a GNOME vino server"),
    ("x0vncserver-none", "X0tigervnc", "TigerVNC", "process X0tigervnc is a TigerVNC server"),
])
def test_desktop_sharing_servers_are_named_by_their_process(
        vnc_server_factory, kind: str, process: str, product: str, reason: str) -> None:
    """wayvnc is built on neatvnc (not LibVNCServer), vino on its own fork of it; Debian's
    x0vncserver wrapper leaves X0tigervnc listening."""
    srv = vnc_server_factory(kind)
    seen = local_mod.audit(ports=(), only_ports=[srv.port], sniff=False, probe_listeners=False,
                           read_firewall=False)
    assert seen.listeners, seen
    for x in seen.listeners:
        assert x.process is not None and x.process.name == process
        assert (x.product, x.reasons) == (product, (reason,))


def test_known_process_reasons_read_as_english() -> None:
    assert local_mod.known_reason("Xvnc", "TigerVNC") == "process Xvnc is a TigerVNC server"
    assert local_mod.known_reason("x11vnc", "x11vnc") == "process x11vnc is a VNC server"
    assert local_mod.known_reason("winvnc", "UltraVNC") == "process winvnc is an UltraVNC server"
    assert local_mod.known_reason("qemu-kvm", "QEMU") == "process qemu-kvm is a QEMU server"
    assert local_mod.known_reason(None, "x11vnc") == "the process is an x11vnc server"


def test_check_over_loopback_calls_a_loopback_listener_what_it_is(vnc_server_factory) -> None:
    """`check 127.0.0.1` scans from this host itself: a listener bound to loopback answering
    there is as it should be, not "another host or a port forward"."""
    srv = vnc_server_factory("tigervnc-none")
    run = subprocess.run([sys.executable, "-m", "vncaudit", "check", "127.0.0.1", "--only-port",
                          str(srv.port), "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    [row] = json.loads(run.stdout)["ports"]
    assert row["scope"] == "loopback" and row["outside"] == "vnc"
    assert row["verdict"] == "loopback only, as it should be"
    assert "port forward" not in row["verdict"]
    # In the table, what a scan over loopback cannot tell is said once, under it.
    table = subprocess.run([sys.executable, "-m", "vncaudit", "check", "127.0.0.1",
                            "--only-port", str(srv.port)], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    said = " ".join(table.stdout.split())
    assert said.count("Scanned over loopback (127.0.0.1)") == 1, table.stdout
    assert "not what other hosts reach" in said and "--outside FILE" in said
    assert all(len(line) <= 80 for line in table.stdout.splitlines())


def test_check_verdicts_over_loopback_never_claim_the_outside() -> None:
    from vncaudit.cli.local import compare, is_loopback_host
    from vncaudit.models import ServiceResult

    inside = [{"address": "127.0.0.1", "port": 5901, "scope": "loopback"},
              {"address": "0.0.0.0", "port": 5902, "scope": "all-interfaces"}]
    outside = [ServiceResult("127.0.0.1", 5901, State.VNC),
               ServiceResult("127.0.0.1", 5902, State.VNC),
               ServiceResult("127.0.0.1", 5903, State.VNC)]
    rows = {r["port"]: r["verdict"] for r in compare(inside, outside, over_loopback=True)}
    assert rows[5901].startswith("loopback only")
    assert not rows[5902].startswith("EXPOSED") and "from another machine" in rows[5902]
    assert "NAT" not in rows[5903] and "no listener seen inside" in rows[5903]
    # From another host the same facts mean something else.
    rows = {r["port"]: r["verdict"] for r in compare(inside, outside)}
    assert rows[5901].startswith("open outside but bound to loopback here")
    assert rows[5902].startswith("EXPOSED")
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert is_loopback_host("localhost") and not is_loopback_host("192.0.2.1")


# A no-auth RFB 3.8 server in its own process, so the process name and command line are what
# an unprivileged local user can choose (prctl / argv), as seen by root's `vncaudit local`.
_CRAFTED_SERVER = r"""
import ctypes, socket, struct, sys, threading
ctypes.CDLL(None).prctl(15, b"[/]vnc", 0, 0, 0)  # PR_SET_NAME: what psutil reports as name
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)

def serve(c):
    try:
        c.sendall(b"RFB 003.008\n"); c.recv(12)
        c.sendall(b"\x01\x01"); c.recv(1)
        c.sendall(struct.pack(">I", 0)); c.recv(1)
        name = b"[bold]desk[/]"
        c.sendall(struct.pack(">HH", 64, 48) + bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255,
                  16, 8, 0, 0, 0, 0]) + struct.pack(">I", len(name)) + name)
        c.recv(100)
    except OSError:
        pass
    finally:
        c.close()

while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@pytest.mark.realserver
def test_local_table_prints_process_names_and_command_lines_as_text(tmp_path: Path) -> None:
    """A process named "[/]vnc" is shown as text, not read as rich markup (a MarkupError
    traceback in root's `vncaudit local`), and ESC sequences in its command line never reach
    root's terminal."""
    import subprocess
    import sys

    script = tmp_path / "crafted.py"
    script.write_text(_CRAFTED_SERVER)
    server = subprocess.Popen([sys.executable, str(script), "\x1b]0;owned\x07", "[/]",
                               "[link=http://x]y"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        run = subprocess.run([sys.executable, "-m", "vncaudit", "local", "--only-port",
                              str(port), "--timeout", "2"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "COLUMNS": "250"})
    finally:
        server.kill()
        server.wait()
    assert "Traceback" not in run.stderr and run.returncode == 0, run.stderr[-2000:]
    assert f"{server.pid} [/]vnc" in run.stdout  # the name as it is, not swallowed as markup
    assert "\x1b" not in run.stdout  # not a terminal: any ESC would be the injected one
    assert "\\x1b]0;owned" in run.stdout  # shown, made inert
    assert "[link=http://x]y" in run.stdout


def test_check_table_prints_saved_views_as_text(tmp_path: Path) -> None:
    """`check --inside/--outside` read files someone else may have written (a colleague's
    `local -o json`): their strings are text, never rich markup ("[/]" would crash it)."""
    import json
    import subprocess
    import sys

    inside = tmp_path / "inside.json"
    inside.write_text(json.dumps({"kind": "local-audit", "listeners": [{
        "address": "[/]0.0.0.0", "port": 5901, "scope": "[bold]all-interfaces",
        "firewall": {"ipv4": {"text": "[/]open \x1b[2J"}}}]}))
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"services": [{"host": "192.0.2.1", "port": 5901,
                                                 "state": "vnc"}]}))
    run = subprocess.run([sys.executable, "-m", "vncaudit", "check", "192.0.2.1", "--inside",
                          str(inside), "--outside", str(outside)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert run.returncode == 1, run.stderr  # EXPOSED, and no crash (exit 3)
    assert "[/]0.0.0.0" in run.stdout and "[bold]all-interfaces" in run.stdout
    assert "\x1b" not in run.stdout and "EXPOSED" in run.stdout


def test_rollback_only_restores_private_backups_with_their_own_files(tmp_path: Path) -> None:
    """meta.json names the files rollback feeds to `nft -f` / iptables-restore as root: a
    tampered one (`nft -f /etc/shadow`) is refused, and so is a backup others could write."""
    import json
    import subprocess
    import sys

    from vncaudit import harden

    if os.geteuid() != 0:
        pytest.skip("rollback backups belong to root")
    root = tmp_path / "backups"
    good = harden.save_backup("nftables", root, harden.run)  # reads the ruleset; changes nothing
    harden.write_backup_meta(good)
    for f in good.path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o600, f
    assert good.path.stat().st_mode & 0o777 == 0o700
    assert harden.load_backup(root).path == good.path  # the control: a real backup loads

    evil = root / "29991231T000000.000000Z-nftables"  # the newest: rollback's default
    evil.mkdir(mode=0o700)
    meta = {"backend": "nftables", "files": {"ruleset": "nft.ruleset", "table": "/etc/shadow"}}
    (evil / "meta.json").write_text(json.dumps(meta))
    (evil / "meta.json").chmod(0o600)
    (evil / "nft.ruleset").write_text("")
    (evil / "nft.ruleset").chmod(0o600)
    with pytest.raises(harden.UsageError, match="does not describe"):
        harden.load_backup(root)
    meta["files"] = {"ruleset": "../../../etc/passwd"}
    (evil / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(harden.UsageError, match="does not describe"):
        harden.load_backup(root, evil.name)
    run = subprocess.run([sys.executable, "-m", "vncaudit", "harden", "--rollback",
                          "--backup-dir", str(root)], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "/etc/passwd" not in run.stdout and "does not describe" in run.stderr

    meta["files"] = {"ruleset": "nft.ruleset"}
    (evil / "meta.json").write_text(json.dumps(meta))
    assert harden.load_backup(root).path == evil  # well-formed and private: accepted
    evil.chmod(0o777)  # a backup anyone may have written is not restored
    with pytest.raises(harden.UsageError, match="writable by others"):
        harden.load_backup(root)
    evil.chmod(0o700)
    (evil / "nft.ruleset").chmod(0o666)
    with pytest.raises(harden.UsageError, match="writable by others"):
        harden.load_backup(root)


@pytest.mark.parametrize("display", [":\u00b2", ":99999999999"])
def test_a_crafted_xvnc_command_line_cannot_stop_the_harden_plan(display: str) -> None:
    """Any local user may run a process called Xvnc on a VNC port. Its ":²" argument (int()
    raises ValueError) or ":99999999999" (a display out of range) must not stop root's
    `harden` plan: the plan keeps the <display> placeholder for that listener."""
    from vncaudit import firewall, harden
    from vncaudit import local as local_mod

    st = firewall.FirewallState()
    proc = local_mod.ProcessInfo(4242, name="Xvnc", cmdline=("/tmp/Xvnc", display,
                                                             "-rfbport", "15931"))
    x = local_mod.Listener("0.0.0.0", 15931, firewall.IPV4, proc, ("port",), "TigerVNC",
                           firewall={firewall.IPV4: st.verdict(firewall.IPV4, 15931)})
    assert x.display is None
    audit = local_mod.LocalAudit("vnchost.example", "Linux", True, [x], [], st)
    plan = harden.build_plan(audit, backend="nftables")
    assert plan.ports == (15931,) and plan.can_apply
    assert "<display>" in plan.render()
    real = local_mod.Listener("0.0.0.0", 15931, firewall.IPV4, local_mod.ProcessInfo(
        4243, name="Xvnc", cmdline=("/usr/bin/Xvnc", ":31")), ("port",), "TigerVNC")
    assert real.display == 31  # the control: a real display number is still read


_FAKE_SSHD = r"""
import ctypes, socket, sys, time
ctypes.CDLL(None).prctl(15, b"sshd", 0, 0, 0)
s = socket.socket(socket.AF_INET6)
s.bind(("::1", int(sys.argv[1])))
s.listen(1)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.realserver
@pytest.mark.parametrize("user", ["nobody", "root"])
def test_only_roots_sshd_keeps_a_port_out_of_the_firewall(user: str) -> None:
    """Any user can name a process "sshd" and listen on [::1]:<VNC port>: only root's sshd
    makes harden take the port for SSH and leave it out of the firewall."""
    import subprocess
    import sys

    from vncaudit import harden
    from vncaudit import local as local_mod

    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    port = free_port()
    # The system interpreter: another user may not be able to run this test's one.
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    fake = subprocess.Popen([python, "-c", _FAKE_SSHD, str(port)], stdout=subprocess.PIPE,
                            text=True, user=user)
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "ready"
        audit = local_mod.audit(ports=(), only_ports=[port], probe_listeners=False,
                                read_firewall=False, timeout=1.0)
        assert (("::1", port, fake.pid) in audit.other_listeners
                or any(x.port == port for x in audit.listeners))
        protected = harden.ssh_ports(audit)
    finally:
        fake.kill()
        fake.wait()
    assert (port in protected) is (user == "root")


def test_check_never_reads_a_ledger_answer_as_a_firewall_verdict() -> None:
    """A port the connection ledger answered for (nothing sent): with facts read before, the
    outside cell says how old they are; without any, it is "not probed" (never "filtered
    outside: the firewall works") unless a half-open SYN saw it open."""
    from vncaudit.cli.local import compare
    from vncaudit.models import ServiceResult
    from vncaudit.payloads import BudgetNote

    def answered(port: int, state: State, read_at: str | None,
                 liveness: str | None = None) -> ServiceResult:
        note = BudgetNote(False, "not re-probed: ...", "198.18.0.1", "tigervnc", 4, 4, 10.0,
                          read_at, 42.0 if read_at else None, liveness)
        return ServiceResult("198.18.0.9", port, state).with_extra(budget=note)

    inside = [{"address": "0.0.0.0", "port": p, "scope": "all-interfaces"}
              for p in (5901, 5902, 5903)]
    outside = [answered(5901, State.VNC, "2026-01-01T00:00:00+00:00"),
               answered(5902, State.FILTERED, None),
               answered(5903, State.FILTERED, None, liveness="open")]
    rows = {r["port"]: r for r in compare(inside, outside)}
    assert rows[5901]["outside"] == "vnc" and rows[5901]["verdict"].startswith("EXPOSED")
    assert rows[5901]["outside_note"] == "not re-probed; read 42 s ago"
    assert rows[5902]["outside"] == "not probed" and "firewall" not in rows[5902]["verdict"]
    assert rows[5903]["outside"] == "open" and rows[5903]["verdict"].startswith("EXPOSED")
