"""Crafted input against the web checker, `harden` / `local` and the fix guide: each test
feeds one kind of hostile input to the real code (web app over its ASGI interface, real
sockets on 127.0.0.1, the real rich tables) and checks that it gets nowhere.
"""

from __future__ import annotations

import io
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

with warnings.catch_warnings():  # starlette nags about httpx; the pinned client is httpx
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from vncaudit.web import Settings, create_app

# The Host the service answers by default (allowed_hosts: the localhost names).
LOCAL = "http://localhost"

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

PROXY = ("127.0.0.1", 40002)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def _final(c: TestClient, scan_id: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        body: dict[str, Any] = c.get(f"/api/scans/{scan_id}", headers=headers).json()
        if body["status"] not in ("queued", "running"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_diff_to_previous_scan_never_shows_another_clients_scan(tmp_path: Path) -> None:
    """Two clients (behind a trusted proxy) check the same allow-listed target: the second
    client's result page and history must not name or diff the first client's scan."""
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        assume_exposure="public", probe_timeout=2.0, rate_burst=50,
                        rate_per_minute=600, trusted_proxies=("127.0.0.1/32",))
    alice = {"X-Forwarded-For": "198.51.100.10"}
    bob = {"X-Forwarded-For": "198.51.100.20"}
    port = _closed_port()
    with TestClient(create_app(settings), base_url=LOCAL, client=PROXY) as c:
        def scan(who: dict[str, str]) -> str:
            r = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)},
                       headers=who)
            assert r.status_code == 201, r.text
            scan_id: str = r.json()["id"]
            assert _final(c, scan_id, who)["status"] == "finished"
            return scan_id

        a1 = scan(alice)
        a2 = scan(alice)
        b1 = scan(bob)
        # Control: the same client does get the diff to its own previous scan.
        assert f'href="/scans/{a1}"' in c.get(f"/scans/{a2}", headers=alice).text
        page = c.get(f"/scans/{b1}", headers=bob).text
        assert a1 not in page and a2 not in page
        assert "This is the first scan of 127.0.0.1" in page
        history = c.get("/history", headers=bob).text
        assert b1 in history and a1 not in history and a2 not in history
        assert c.get(f"/api/scans/{a2}", headers=bob).status_code == 404


def _table_text(table: Any) -> str:
    out = Console(file=io.StringIO(), width=300, force_terminal=True, color_system=None,
                  highlight=False)
    out.print(table)
    text: str = out.file.getvalue()  # type: ignore[attr-defined]
    return text


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


def test_subdomains_table_prints_zone_names_as_text() -> None:
    """A zone transfer may carry any label: "[/]x" (valid in DNS) is shown, not read as
    markup."""
    import subprocess
    import sys

    from dns_server import DnsServer, make_zone

    zone = make_zone("corp.test", """
@ NS ns1
ns1 A 127.0.0.1
[/]x A 127.0.0.9
y CNAME [bold]z
[bold]z A 127.0.0.8
""")
    with DnsServer([zone], hosts=("127.0.0.1",),
                   axfr={"corp.test": {"127.0.0.1": "allow"}}) as dns:
        run = subprocess.run([sys.executable, "-m", "vncaudit", "subdomains", "corp.test",
                              "--resolver", dns.resolver, "--axfr-port", str(dns.port),
                              "--no-builtin-wordlist"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "COLUMNS": "250"})
    assert run.returncode == 0, run.stderr
    assert "[/]x.corp.test" in run.stdout
    assert "y.corp.test" in run.stdout and "[bold]z.corp.test" in run.stdout


def test_request_bodies_are_capped(tmp_path: Path) -> None:
    """POST /api/scans read any body whole into memory (20 MB were accepted with 201): one
    client could exhaust the server's memory. Declared and chunked bodies are refused."""
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        rate_burst=50, rate_per_minute=600)
    big = b'{"target": "127.0.0.1", "ports": "1", "x": "' + b"a" * (2 << 20) + b'"}'
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40003)) as c:
        r = c.post("/api/scans", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "body-too-large"
        assert r.headers["x-content-type-options"] == "nosniff"

        def chunks() -> Any:
            yield b'{"target": "127.0.0.1", "ports": "1", "x": "'
            for _ in range(64):
                yield b"a" * 32768
            yield b'"}'

        r = c.post("/api/scans", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413, r.text
        r = c.post("/scans", content=b"target=" + b"a" * (1 << 20),
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
        port = _closed_port()
        ok = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)})
        assert ok.status_code == 201, ok.text  # an ordinary request still goes through
        assert _final(c, ok.json()["id"], {})["status"] == "finished"


def test_rate_limit_covers_an_ipv6_clients_whole_64(tmp_path: Path) -> None:
    """One bucket per /128 let an IPv6 client with its /64 (2^64 source addresses) submit
    without limit. The policy refuses these documentation addresses, so nothing is probed:
    the rate limit answers first."""
    settings = Settings(db_path=str(tmp_path / "web.db"), rate_burst=2, rate_per_minute=1,
                        trusted_proxies=("127.0.0.1/32",))
    with TestClient(create_app(settings), base_url=LOCAL, client=PROXY) as c:
        codes = []
        for i in range(1, 4):
            me = f"2001:db8:1:2::{i}"
            r = c.post("/api/scans", json={"target": me, "ports": "5900"},
                       headers={"X-Forwarded-For": me})
            codes.append(r.status_code)
        assert codes == [403, 403, 429]
        other = "2001:db8:1:3::1"  # another /64 has its own bucket
        r = c.post("/api/scans", json={"target": other, "ports": "5900"},
                   headers={"X-Forwarded-For": other})
        assert r.status_code == 403
        mapped = c.post("/api/scans", json={"target": "192.0.2.1", "ports": "5900"},
                        headers={"X-Forwarded-For": "::ffff:192.0.2.1"})
        plain = [c.post("/api/scans", json={"target": "192.0.2.1", "ports": "5900"},
                        headers={"X-Forwarded-For": "192.0.2.1"}).status_code
                 for _ in range(2)]
        assert mapped.status_code == 403 and plain == [403, 429]  # one bucket for both spellings


def test_rollback_only_restores_private_backups_with_their_own_files(tmp_path: Path) -> None:
    """meta.json named the files rollback feeds to `nft -f` / iptables-restore as root: a
    tampered one ran `nft -f /etc/shadow`; a backup others could write was used as is."""
    import json
    import subprocess
    import sys

    from vncaudit import harden

    if os.geteuid() != 0:
        pytest.skip("rollback backups belong to root")
    root = tmp_path / "backups"
    good = harden._save("nftables", root, harden.run)  # reads the ruleset; changes nothing
    harden._write_meta(good)
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
    """Any user could name a process "sshd" and listen on [::1]:<VNC port>: harden then
    took the port for SSH and left the VNC server on it unfirewalled."""
    import subprocess
    import sys

    from vncaudit import harden
    from vncaudit import local as local_mod

    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    port = _closed_port()
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


def test_public_history_never_publishes_the_operators_cli_scans(tmp_path: Path) -> None:
    """The service opens the CLI's store by default. With public_history on, a CLI scan of
    the operator's own networks was readable by anyone who guessed its short id."""
    import subprocess
    import sys

    db = tmp_path / "shared.db"
    port = _closed_port()
    cli = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "127.0.0.1", "-p",
                          str(port), "--db", str(db), "--all", "-o", "json", "--timeout", "2"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode in (0, 1), cli.stderr
    from vncaudit.store import Store

    store = Store.open(db)
    try:
        (cli_scan,) = store.list_scans()
    finally:
        store.close()
    settings = Settings(db_path=str(db), allow=("127.0.0.1/32",), public_history=True,
                        rate_burst=50, rate_per_minute=600)
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40004)) as c:
        web = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)})
        assert web.status_code == 201
        _final(c, web.json()["id"], {})
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.2", 40005)) as other:
        # The control: public history shows another client's web scan …
        assert other.get(f"/api/scans/{web.json()['id']}").status_code == 200
        # … but never the operator's CLI scan, by any route.
        for path in (f"/api/scans/{cli_scan.id}", f"/api/scans/{cli_scan.id}/report.json",
                     f"/scans/{cli_scan.id}", f"/scans/{cli_scan.id}/status"):
            assert other.get(path).status_code == 404, path
        assert cli_scan.id not in other.get("/history").text


def test_active_scan_cap_covers_an_ipv6_clients_whole_64(tmp_path: Path) -> None:
    """max_active_per_client counted per /128: one /64 could hold every worker and the
    queue. The scans go to a loopback listener that never speaks, so they stay running."""
    settings = Settings(db_path=str(tmp_path / "web.db"), allow=("127.0.0.1/32",),
                        probe_timeout=3.0, rate_burst=50, rate_per_minute=600,
                        max_active_per_client=1, trusted_proxies=("127.0.0.1/32",))
    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(8)
    port = tarpit.getsockname()[1]
    try:
        with TestClient(create_app(settings), base_url=LOCAL, client=PROXY) as c:
            def submit(me: str) -> int:
                r = c.post("/api/scans", json={"target": "127.0.0.1", "ports": str(port)},
                           headers={"X-Forwarded-For": me})
                return r.status_code

            assert submit("2001:db8:1:2::1") == 201
            assert submit("2001:db8:1:2::2") == 429  # same /64: already has its one scan
            assert submit("2001:db8:1:3::1") == 201  # another /64 is another client
    finally:
        tarpit.close()


def test_discovered_cname_out_of_the_domain_gets_no_domain_privilege() -> None:
    """Allow-listing corp.example let discovery scan every address its names lead to, also
    through a CNAME to someone else's host (a CDN, or a dangling CNAME an attacker claimed
    and points at any victim). Pure policy check: nothing is sent to these addresses."""
    from vncaudit.web.policy import Policy, TargetRefused

    policy = Policy.build(["corp.example", "partner.example"])
    pending = policy.decide_discovery("corp.example", "5900", "9.9.9.9")
    hosts = [("www.corp.example", ["1.0.0.1"], ()),
             ("shop.corp.example", ["1.0.0.2"], ("shops.saas.example",)),
             ("old.corp.example", ["1.0.0.3"], ("x.corp.example", "gone.cloud.example")),
             ("in.corp.example", ["1.0.0.4"], ("edge.partner.example",)),
             ("me.corp.example", ["9.9.9.9"], ("home.dyn.example",))]
    decision, refused = policy.decide_discovered(pending, hosts, "9.9.9.9")
    # Plain names and chains that stay in allow-listed domains keep the domain's privilege;
    # the requester's own address stays allowed whatever name leads to it.
    assert decision.addresses == ("1.0.0.1", "1.0.0.4", "9.9.9.9")
    reasons = {r["address"]: r["reason"] for r in refused}
    assert set(reasons) == {"1.0.0.2", "1.0.0.3"}
    assert "CNAME to shops.saas.example" in reasons["1.0.0.2"]
    assert "CNAME to gone.cloud.example" in reasons["1.0.0.3"]
    with pytest.raises(TargetRefused):
        policy.decide_discovered(pending, hosts[1:2], "9.9.9.9")
    # The two-element form (no chain known) is still accepted.
    plain, _ = policy.decide_discovered(pending, [("a.corp.example", ["1.0.0.9"])], None)
    assert plain.addresses == ("1.0.0.9",)


CNAME_ZONE = """
@ NS ns1
ns1 A 127.0.0.1
vnc A 127.0.0.1
shop CNAME www.other.test.
"""


def test_web_discovery_passes_the_cname_chain_to_the_policy(tmp_path: Path) -> None:
    """End to end through the scan job: the refused list names the CNAME that leaves the
    domain (its address is private, so no version of the code would probe it)."""
    from dns_server import DnsServer, make_zone

    port = _closed_port()
    zones = [make_zone("corp.test", CNAME_ZONE),
             make_zone("other.test", "@ NS ns1.corp.test.\nwww A 10.0.0.7\n")]
    with DnsServer(zones, hosts=("127.0.0.1",),
                   axfr={"corp.test": {"127.0.0.1": "allow"}}) as dns:
        settings = Settings(db_path=str(tmp_path / "web.db"), allow=("corp.test",
                            "127.0.0.1/32"), dns_resolver=dns.resolver,
                            dns_axfr_port=dns.port, dns_timeout=1.0, probe_timeout=2.0,
                            rate_burst=50, rate_per_minute=600)
        with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40006)) as c:
            r = c.post("/api/scans", json={"target": "corp.test", "ports": str(port),
                                           "subdomains": True})
            assert r.status_code == 201, r.text
            body = _final(c, r.json()["id"], {})
    refused = {x["name"]: x for x in body["refused"]}
    assert refused["shop.corp.test"]["address"] == "10.0.0.7"
    assert "CNAME to www.other.test" in refused["shop.corp.test"]["reason"]
    assert "127.0.0.1" in body["addresses"]


def test_a_typed_name_whose_cname_leaves_the_domain_gets_no_domain_privilege() -> None:
    """decide("shop.corp.example") allowed whatever the name's CNAME led to: with a dangling
    CNAME claimed by someone else, any public address. Pure policy check (injected resolver,
    nothing is sent)."""
    from vncaudit.targets.expressions import Resolution, canonical_resolver
    from vncaudit.web.policy import Policy, TargetRefused

    def answer(addresses: list[str], canonical: str | None) -> Resolution:
        r = Resolution(addresses)
        r.canonical = canonical
        return r

    table = {"shop.corp.example": answer(["1.0.0.2"], "shops.saas.example"),
             "www.corp.example": answer(["1.0.0.1"], "www.corp.example"),
             "in.corp.example": answer(["1.0.0.4"], "Edge.Partner.Example."),
             "me.corp.example": answer(["9.9.9.9"], "home.dyn.example"),
             "old.corp.example": ["1.0.0.5"]}  # a resolver that reports no canonical name
    policy = Policy.build(["corp.example", "partner.example"], resolve=lambda n: table[n])
    with pytest.raises(TargetRefused, match="CNAME to shops.saas.example"):
        policy.decide("shop.corp.example", "5900", "8.8.4.4")
    assert policy.decide("www.corp.example", "5900", "8.8.4.4").addresses == ("1.0.0.1",)
    assert policy.decide("in.corp.example", "5900", "8.8.4.4").addresses == ("1.0.0.4",)
    assert policy.decide("me.corp.example", "5900", "9.9.9.9").addresses == ("9.9.9.9",)
    assert policy.decide("old.corp.example", "5900", "8.8.4.4").addresses == ("1.0.0.5",)
    # The default resolver reports the canonical name (from /etc/hosts here: no network).
    local = canonical_resolver("localhost")
    assert "127.0.0.1" in local and local.canonical == "localhost"
    assert Policy().resolve is canonical_resolver


@pytest.mark.parametrize("entry", ["com", "*.org", "COM.", "localhost"])
def test_a_top_level_domain_is_no_allow_list_entry(entry: str) -> None:
    """CIDRs broader than /8 were refused as an open scanner, but "com" allowed every public
    host under .com."""
    from vncaudit.web.policy import Policy

    with pytest.raises(ValueError, match="top-level domain"):
        Policy.build([entry])
    with pytest.raises(ValueError, match="top-level domain"):
        Settings(allow=(entry,))
    assert Policy.build(["corp.example"]).domains == ("corp.example",)  # the control


# Runs inside a namespace of its own, where 127.0.0.1:53 is free: `scan --domain` sends its
# zone transfer to the zone's name servers on port 53, and those are the test's server here.
_AXFR_CHILD = r"""
import asyncio, functools, json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from dns_server import DnsServer, _Udp, make_zone

class Port53(DnsServer):
    async def _bind(self):
        loop = asyncio.get_running_loop()
        self._closers = []
        for host in self.hosts:
            udp, _ = await loop.create_datagram_endpoint(
                functools.partial(_Udp, self, host), local_addr=(host, 53))
            tcp = await asyncio.start_server(functools.partial(self._tcp, local=host), host, 53)
            self._closers += [udp, tcp]
        self.port = 53

zone = make_zone("corp.test", sys.argv[2])
with Port53([zone], hosts=("127.0.0.1",), axfr={"corp.test": {"127.0.0.1": "allow"}}):
    run = subprocess.run([sys.executable, "-m", "vncaudit", "scan", "--domain", "corp.test",
                          "--resolver", "127.0.0.1:53", "-p", "1", "--db", sys.argv[3],
                          "--timeout", "1", "--all", "-o", "json"],
                         capture_output=True, text=True, timeout=120)
print(json.dumps({"rc": run.returncode, "out": run.stdout, "err": run.stderr}))
"""

AXFR_ZONE = """
@ NS ns1
ns1 A 127.0.0.1
vnc A 127.0.0.1
[/]x A 127.0.0.1
a/b A 127.0.0.1
c:d A 127.0.0.1
"""


@pytest.mark.netns
def test_scan_domain_skips_names_no_target_parser_takes(tmp_path: Path) -> None:
    """A zone transfer may carry any label; "a/b.corp.test" aborted the whole `scan
    --domain` (exit 2, nothing scanned), so a zone could keep its hosts from being audited."""
    import json
    import secrets
    import subprocess
    import sys

    from netns import require_netns

    require_netns()
    ns = f"vncaudit-sec-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        child = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _AXFR_CHILD,
             str(Path(__file__).parent), AXFR_ZONE, str(tmp_path / "scan.db")],
            capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    run = json.loads(child.stdout)
    assert run["rc"] == 0, run["err"]
    doc = json.loads(run["out"])
    assert doc["scan"]["targets"] == ["ns1.corp.test", "vnc.corp.test"]  # the plain names
    assert [s["host"] for s in doc["services"]] == ["127.0.0.1"]  # … were probed
    assert "not a plain host name" in run["err"] and "a/b.corp.test" in run["err"]


def test_a_non_ascii_csrf_token_is_refused_not_a_server_error(tmp_path: Path) -> None:
    """hmac.compare_digest raises TypeError for non-ASCII str: the form answered 500."""
    settings = Settings(db_path=str(tmp_path / "web.db"))
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40007),
                    raise_server_exceptions=False) as c:
        c.get("/")  # sets the CSRF cookie
        for token in ("é", "\u202e" * 10, "a" * 64 + "ü"):
            r = c.post("/scans", data={"target": "192.0.2.1", "csrf_token": token},
                       follow_redirects=False)
            assert r.status_code == 403, (token, r.status_code)
            assert "form expired" in r.text


def test_a_lone_surrogate_in_the_json_body_is_a_422_not_a_500(tmp_path: Path) -> None:
    """FastAPI's validation error echoes the input; encoding "\\udcff" as UTF-8 failed."""
    import json

    settings = Settings(db_path=str(tmp_path / "web.db"))
    with TestClient(create_app(settings), base_url=LOCAL, client=("127.0.0.1", 40008),
                    raise_server_exceptions=False) as c:
        for body in ({"target": "\udcff", "ports": "5900"},
                     {"target": "a\ud800.example", "ports": "5900", "subdomains": True},
                     {"target": "192.0.2.1", "ports": "\udcff"}):
            r = c.post("/api/scans", content=json.dumps(body),
                       headers={"content-type": "application/json"})
            assert r.status_code == 422, (body, r.status_code)
            assert r.json()["detail"]
        ok = c.post("/api/scans", json={"target": 5, "ports": "5900"})
        assert ok.status_code == 422 and ok.json()["detail"][0]["loc"] == ["body", "target"]
