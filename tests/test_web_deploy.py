"""The web service as people deploy it, run as `vncaudit serve` (the real command, real sockets).

- Host allow-list: real HTTP requests with a foreign Host are refused; the DNS-rebinding case is
  played in Debian's Chromium: a page on a name that the browser resolves to 127.0.0.1
  (`--host-resolver-rules`) acts as a loopback client of a loopback-bound `serve`. With
  `--allowed-host '*'` (the control) the page reads the loopback client's scans; by default it
  gets nothing.
- Origin: a cross-site form or API post is refused.
- Settings from `VNCAUDIT_SERVE_*`, with the same checks as the TOML file.
- The access log, plain and JSON.
- TLS served directly with a certificate made here by openssl: HSTS and a Secure cookie; and
  behind Debian's nginx as the documented reverse proxy (`trusted_proxies` for the client
  address, X-Forwarded-Proto for HSTS).
- /docs: Swagger UI served by the service itself; Chromium loads it with no request to another
  host and no policy violation, and the screenshot is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vncaudit.web.security import cross_origin, host_allowed, same_origin, split_host_header
from vncaudit.web.settings import Settings

import servers
from browser import artifacts, launch_chromium
from hostile import Farm, hostile_farm  # noqa: F401  (hostile_farm is a fixture)

ARTIFACTS = artifacts("web-deploy")
CLIENT_ADDRESS = re.compile(r'id="client-address">([^<]+)<')


class Serve:
    """`vncaudit serve` on a free loopback port, as a child process; stopped on exit."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None,
                 host: str = "127.0.0.1", scheme: str = "http", port: int | None = None) -> None:
        self.port = port or servers.free_port(host)
        self.host = host
        self.scheme = scheme
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{self.port}"
        self.cmd = [sys.executable, "-m", "vncaudit", "serve", "--host", host, "--port",
                    str(self.port), "--db", str(tmp_path / "web.db"), *args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.banner = ""

    def __enter__(self) -> Serve:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=self.env)
        assert self.proc.stderr is not None
        self.banner = self.proc.stderr.readline()
        assert "web service on" in self.banner, self.banner + self.proc.stderr.read()
        self.banner += self.proc.stderr.readline()  # the Host names it answers
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        deadline = time.monotonic() + 30
        while True:
            with socket.socket(family) as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    break
            assert self.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def chromium(*args: str) -> Iterator[Any]:
    yield from launch_chromium(extra_args=args)


def raw_request(port: int, head: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """One HTTP/1.1 request written by hand (any Host, or none), its status and body."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(head.encode("latin-1"))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


# -- the pure checks ------------------------------------------------------------------------------


def test_host_and_origin_rules() -> None:
    hosts = ("localhost", "127.0.0.1", "[::1]", "*.example.org")
    assert split_host_header("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert split_host_header("[::1]:8080") == ("::1", 8080)
    assert split_host_header("LocalHost") == ("localhost", None)
    for bad in ("", "[::1", "a:b:c", "host:99999", "[nothing]:80", "a b"):
        assert split_host_header(bad) is None, bad
    allowed = {h: host_allowed(split_host_header(h)[0], hosts)  # type: ignore[index]
               for h in ("localhost:80", "[0:0::1]:1", "vnc.example.org", "example.org",
                         "evil.example", "127.0.0.2", "evil.example.org.attacker.test")}
    assert allowed == {"localhost:80": True, "[0:0::1]:1": True, "vnc.example.org": True,
                       "example.org": False, "evil.example": False, "127.0.0.2": False,
                       "evil.example.org.attacker.test": False}
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert same_origin("https://vnc.example.org", "vnc.example.org")  # behind a TLS proxy
    assert same_origin("https://vnc.example.org", "vnc.example.org:443")
    assert not same_origin("http://vnc.example.org", "vnc.example.org:8443")
    assert not same_origin("http://evil.example:8080", "127.0.0.1:8080")
    assert not same_origin("null", "127.0.0.1:8080")
    assert not same_origin("http://127.0.0.1:8081", "127.0.0.1:8080")
    # Our pages are Referrer-Policy: no-referrer, so their forms post "Origin: null"; the
    # browser's Sec-Fetch-Site then says whose page it was.
    host = "127.0.0.1:8080"
    assert not cross_origin("null", "same-origin", host)
    assert cross_origin("null", "cross-site", host) and cross_origin("null", None, host)
    assert cross_origin("http://evil.example", "same-origin", host)  # Origin decides
    assert not cross_origin(None, None, host)  # curl, scripts
    assert cross_origin(None, "cross-site", host) and cross_origin(None, "same-site", host)
    with pytest.raises(ValueError, match="scheme, port or path"):
        Settings(allowed_hosts=("https://vnc.example.org/",))
    with pytest.raises(ValueError, match="wildcard"):
        Settings(allowed_hosts=("*.127.0.0.1",))


# -- Host header ----------------------------------------------------------------------------------


def test_foreign_host_is_refused_by_a_loopback_bound_serve(tmp_path: Path) -> None:
    with Serve(tmp_path) as web:
        assert "answers to Host: localhost, 127.0.0.1, [::1]" in web.banner
        for host, expected in ((f"127.0.0.1:{web.port}", 200), ("localhost", 200),
                               (f"[::1]:{web.port}", 200), ("evil.example", 400),
                               (f"evil.example:{web.port}", 400), ("127.0.0.2", 400),
                               ("localhost.evil.example", 400)):
            status, body = raw_request(web.port, f"GET /api/scans HTTP/1.1\r\nHost: {host}\r\n"
                                       "Connection: close\r\n\r\n")
            assert status == expected, (host, body)
            if expected == 400:
                assert json.loads(body)["code"] == "host-not-allowed"
        # No Host at all (HTTP/1.0) is no allowed host either.
        status, _ = raw_request(web.port, "GET / HTTP/1.0\r\n\r\n")
        assert status == 400
        # A refused request gets the security headers too, and nothing of the page.
        refused = httpx.get(web.url + "/", headers={"Host": "evil.example"})
        assert refused.status_code == 400 and "<form" not in refused.text
        assert refused.headers["x-frame-options"] == "DENY"
    with Serve(tmp_path, "--allowed-host", "vnc-check.example.test") as web:
        ok = httpx.get(web.url + "/api/health", headers={"Host": "vnc-check.example.test"})
        assert ok.status_code == 200
        assert httpx.get(web.url + "/api/health").status_code == 400  # only what is listed


ATTACK = """<!doctype html><title>attack</title><body><script>
(async () => {
  const out = {};
  try {
    const list = await fetch("/api/scans");
    out.list_status = list.status; out.list = await list.text();
    const ids = list.ok ? JSON.parse(out.list).map(s => s.id) : [];
    if (ids.length) {
      const scan = await fetch("/api/scans/" + ids[0]);
      out.scan_status = scan.status; out.scan = await scan.text();
    }
  } catch (e) { out.error = String(e); }
  try {
    const post = await fetch("/api/scans", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({target: "127.0.0.1", ports: "PORT"})});
    out.post_status = post.status;
  } catch (e) { out.post_error = String(e); }
  document.body.textContent = JSON.stringify(out);
  document.title = "done";
})();
</script></body>"""


def rebinding_attack(web: Serve, port: int) -> dict[str, Any]:
    """Chromium maps rebind.test to 127.0.0.1; the attacker's page is served on
    rebind.test:<the service's port> (as the attacker's server did before the name rebound),
    and its script then talks to what the name now reaches: the loopback service."""
    origin = f"http://rebind.test:{web.port}"
    with chromium(
            "--host-resolver-rules=MAP rebind.test 127.0.0.1",
            # A browser without Chromium's local-network-access gate (Firefox, Safari, older
            # Chromium): the service must refuse the page on its own.
            "--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessChecks,"
            "BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights") as browser:
        page = browser.new_page()
        page.route(f"{origin}/attack.html", lambda route: route.fulfill(
            status=200, content_type="text/html", body=ATTACK.replace("PORT", str(port))))
        page.goto(f"{origin}/attack.html")
        page.wait_for_function("document.title === 'done'", timeout=30000)
        result: dict[str, Any] = json.loads(page.locator("body").inner_text())
        page.close()
    return result


def test_dns_rebinding_page_cannot_use_the_browser_as_a_loopback_client(
        tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    port = hostile_farm.ports["vnc-none"]
    common = ("--allow", "127.0.0.1/32", "--assume-exposure", "public")

    def victims_scan(web: Serve) -> str:
        # The victim (a loopback client) checks a service; its scan is private to 127.0.0.1.
        made = httpx.post(web.url + "/api/scans", json={"target": "127.0.0.1",
                                                        "ports": str(port)})
        assert made.status_code == 201, made.text
        scan_id: str = made.json()["id"]
        deadline = time.monotonic() + 20
        while httpx.get(f"{web.url}/api/scans/{scan_id}").json()["status"] in (
                "queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        return scan_id

    # The control: a service that answers any Host is read through the browser.
    with Serve(tmp_path / "open", *common, "--allowed-host", "*") as web:
        scan_id = victims_scan(web)
        stolen = rebinding_attack(web, port)
        assert stolen["list_status"] == 200 and scan_id in stolen["list"], stolen
        assert stolen["scan_status"] == 200 and "farm-none" in stolen["scan"]
        assert stolen["post_status"] == 201  # and it made the browser start a scan
    # The default: the same page gets nothing and starts nothing.
    with Serve(tmp_path / "default", *common) as web:
        scan_id = victims_scan(web)
        refused = rebinding_attack(web, port)
        assert refused["list_status"] == 400, refused
        assert "host-not-allowed" in refused["list"] and scan_id not in refused["list"]
        assert "scan" not in refused and refused["post_status"] == 400
        listed = httpx.get(web.url + "/api/scans").json()
        assert [s["id"] for s in listed] == [scan_id]  # no scan from the page


# -- Origin ---------------------------------------------------------------------------------------


def test_cross_site_posts_are_refused(tmp_path: Path, hostile_farm: Farm) -> None:  # noqa: F811
    port = str(hostile_farm.ports["vnc-none"])
    with Serve(tmp_path, "--allow", "127.0.0.1/32") as web, httpx.Client() as client:
        page = client.get(web.url + "/")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token and client.cookies.get("vncaudit_csrf")
        form = {"target": "127.0.0.1", "preset": "custom", "ports": port,
                "csrf_token": token.group(1)}
        for sent in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                     {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
                     {"Origin": f"http://127.0.0.1:{web.port + 1}"},
                     {"Sec-Fetch-Site": "cross-site"}):
            refused = client.post(web.url + "/scans", data=form, headers=sent)
            assert refused.status_code == 403, (sent, refused.text)
            assert refused.json()["code"] == "cross-origin"
            api = client.post(web.url + "/api/scans", json={"target": "127.0.0.1",
                                                            "ports": port}, headers=sent)
            assert api.status_code == 403
        assert client.get(web.url + "/api/scans").json() == []  # nothing was submitted
        ours = client.post(web.url + "/scans", data=form,
                           headers={"Origin": f"http://127.0.0.1:{web.port}"},
                           follow_redirects=False)
        assert ours.status_code == 303 and ours.headers["location"].startswith("/scans/")
        # What Chromium sends for our own form (no-referrer policy): null + same-origin.
        form["ports"] = str(hostile_farm.ports["vnc-auth"])
        ours = client.post(web.url + "/scans", data=form, follow_redirects=False,
                           headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
        assert ours.status_code == 303, ours.text
        plain = client.post(web.url + "/api/scans", json={"target": "127.0.0.1",
                                                          "ports": port})
        assert plain.status_code == 201  # scripts send no Origin


# -- settings from the environment ----------------------------------------------------------------


def serve_error(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run([sys.executable, "-m", "vncaudit", "serve", "--db",
                          str(tmp_path / "web.db"), "--port", "1", *args],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, **(env or {})}, check=False)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vncaudit: error: "), run.stderr
    return lines[0]


@pytest.mark.parametrize(("variable", "value", "toml", "expected"), [
    ("VNCAUDIT_SERVE_WORKERS", "0", "workers = 0", "workers must be >= 1"),
    ("VNCAUDIT_SERVE_WORKERS", "four", 'workers = "four"', "workers must be an integer"),
    ("VNCAUDIT_SERVE_ALLOW", "0.0.0.0/0", 'allow = ["0.0.0.0/0"]', "broader than"),
    ("VNCAUDIT_SERVE_PUBLIC_HISTORY", "maybe", 'public_history = "maybe"', "true or false"),
    ("VNCAUDIT_SERVE_TRUSTED_PROXIES", "nonsense", 'trusted_proxies = ["nonsense"]',
     "trusted_proxies"),
    ("VNCAUDIT_SERVE_ALLOWED_HOSTS", "http://a.example/", 'allowed_hosts = ["http://a.example/"]',
     "not a host name"),
    ("VNCAUDIT_SERVE_ACCESS_LOG_FORMAT", "xml", 'access_log_format = "xml"', "plain, json"),
    ("VNCAUDIT_SERVE_ALOW", "10.0.0.0/8", 'alow = ["10.0.0.0/8"]', "alow"),
])
def test_environment_settings_are_checked_like_the_file(
        tmp_path: Path, variable: str, value: str, toml: str, expected: str) -> None:
    from_env = serve_error(tmp_path, env={variable: value})
    assert variable in from_env and expected in from_env, from_env
    config = tmp_path / "serve.toml"
    config.write_text(f"[serve]\n{toml}\n")
    from_file = serve_error(tmp_path, "--config", str(config))
    assert str(config) in from_file and expected in from_file, from_file


def test_environment_settings_take_effect_between_file_and_options(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('[serve]\nallowed_hosts = ["file.example.test"]\nrate_burst = 1\n'
                      'allow = ["127.0.0.1/32"]\n')
    env = {"VNCAUDIT_SERVE_ALLOWED_HOSTS": "env.example.test, localhost",
           "VNCAUDIT_SERVE_RATE_BURST": "2", "VNCAUDIT_SERVE_ALLOW_OWN_ADDRESS": "false"}
    with Serve(tmp_path, "--config", str(config), env=env) as web:
        assert "answers to Host: env.example.test, localhost" in web.banner
        assert httpx.get(web.url + "/api/health",
                         headers={"Host": "env.example.test"}).status_code == 200
        assert httpx.get(web.url + "/api/health",
                         headers={"Host": "file.example.test"}).status_code == 400
        codes = [httpx.post(web.url + "/api/scans", headers={"Host": "localhost"},
                            json={"target": "127.0.0.1", "ports": "1"}).status_code
                 for _ in range(3)]
        assert codes[2] == 429 and 429 not in codes[:2]  # rate_burst 2 from the environment
    with Serve(tmp_path, "--config", str(config), "--allowed-host", "cli.example.test",
               env=env) as web:
        assert "answers to Host: cli.example.test" in web.banner  # the option wins


# -- access log -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_access_log(tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "access.log"
    with Serve(tmp_path, "--access-log", str(log), "--access-log-format", fmt) as web:
        httpx.get(web.url + "/api/health?probe=1", headers={"User-Agent": 'agent "x"\x01'})
        httpx.get(web.url + "/", headers={"Host": "evil.example"})
        httpx.get(web.url + "/no/such/page")
        deadline = time.monotonic() + 10
        while len(log.read_text().splitlines()) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert len(lines) == 3, lines
    if fmt == "json":
        entries = [json.loads(line) for line in lines]
        assert [(e["method"], e["path"], e["status"]) for e in entries] == [
            ("GET", "/api/health?probe=1", 200), ("GET", "/", 400), ("GET", "/no/such/page",
                                                                    404)]
        assert entries[0]["client"] == "127.0.0.1" and entries[0]["bytes"] > 0
        assert entries[0]["user_agent"] == 'agent "x"\x01' and entries[1]["host"] == "evil.example"
        assert all(e["seconds"] >= 0 for e in entries)
    else:
        combined = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                              r'"GET (\S+) HTTP/1\.1" (\d{3}) (\d+) "-" "([^"]*)" \d+\.\d{6}$')
        parsed = [combined.match(line) for line in lines]
        assert all(parsed), lines
        assert [(m.group(1), m.group(2)) for m in parsed if m] == [
            ("/api/health?probe=1", "200"), ("/", "400"), ("/no/such/page", "404")]
        assert parsed[0] and parsed[0].group(4) == "agent \\x22x\\x22\\x01"  # one line, inert


# -- TLS ------------------------------------------------------------------------------------------


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly *cert*."""
    return ssl.create_default_context(cafile=str(cert))


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_tls_served_directly_with_hsts_and_a_secure_cookie(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with Serve(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key),
               scheme="https") as web:
        assert web.banner.startswith(f"vncaudit web service on https://127.0.0.1:{web.port}/")
        page = httpx.get(web.url + "/", verify=trusting(cert))
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        cookie = page.headers["set-cookie"]
        assert "vncaudit_csrf=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
        with pytest.raises(httpx.ConnectError):
            httpx.get(web.url + "/")  # an unknown certificate is not trusted by default
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{web.port}/", timeout=5)  # no plain HTTP there
    with Serve(tmp_path) as web:  # plain HTTP: neither
        page = httpx.get(web.url + "/")
        assert "strict-transport-security" not in page.headers
        assert "Secure" not in page.headers["set-cookie"]
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    line = serve_error(tmp_path, "--tls-cert", str(broken), "--tls-key", str(key))
    assert "not a PEM certificate" in line
    line = serve_error(tmp_path, "--tls-cert", str(cert))
    assert "tls_cert and tls_key go together" in line


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{http_port};
    listen 127.0.0.1:{https_port} ssl;
    server_name localhost;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://127.0.0.1:{app_port};
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
"""


@pytest.fixture
def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        from conftest import in_ci

        if in_ci():
            pytest.fail("nginx is not installed [CI is set: this test must not skip]")
        pytest.skip("Debian's nginx is not installed")
    return found


@pytest.fixture
def nginx_in_front(tmp_path: Path, nginx_binary: str) -> Iterator[dict[str, Any]]:
    cert, key = self_signed(tmp_path)
    app_port = servers.free_port("127.0.0.1")
    http_port, https_port = servers.free_port("127.0.0.1"), servers.free_port("127.0.0.1")
    conf_dir = tmp_path / "nginx"
    conf_dir.mkdir()
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=conf_dir, http_port=http_port, https_port=https_port,
                                      cert=cert, key=key, app_port=app_port))
    proc = subprocess.Popen([nginx_binary, "-c", str(conf), "-p", str(conf_dir), "-g",
                             "daemon off;"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", https_port)) == 0:
                break
        assert proc.poll() is None, (conf_dir / "error.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        yield {"app_port": app_port, "http": f"http://localhost:{http_port}",
               "https": f"https://localhost:{https_port}", "cert": cert}
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_behind_nginx_the_client_address_and_https_come_from_the_proxy(
        tmp_path: Path, nginx_in_front: dict[str, Any]) -> None:
    front = nginx_in_front
    # The service on the port nginx forwards to; the browser-facing name is localhost.
    web = Serve(tmp_path, "--trusted-proxy", "127.0.0.1/32", port=front["app_port"])
    # A client on 127.0.0.5 (a distinct loopback source), as nginx will report it.
    transport = httpx.HTTPTransport(local_address="127.0.0.5", verify=trusting(front["cert"]))
    with web, httpx.Client(transport=transport) as client:
        page = client.get(front["https"] + "/")
        assert page.status_code == 200, page.text
        shown = CLIENT_ADDRESS.search(page.text)
        assert shown and shown.group(1) == "127.0.0.5"  # not nginx's 127.0.0.1
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        assert "Secure" in page.headers["set-cookie"]
        plain = client.get(front["http"] + "/")
        assert "strict-transport-security" not in plain.headers
        assert CLIENT_ADDRESS.search(plain.text).group(1) == "127.0.0.5"  # type: ignore[union-attr]
        forged = client.get(front["http"] + "/", headers={"X-Forwarded-For": "203.0.113.9"})
        assert CLIENT_ADDRESS.search(forged.text).group(1) == "127.0.0.5"  # type: ignore[union-attr]
    # Without --trusted-proxy the headers are ignored: every client is nginx itself.
    untrusting = Serve(tmp_path, port=front["app_port"])
    transport = httpx.HTTPTransport(local_address="127.0.0.5", verify=trusting(front["cert"]))
    with untrusting, httpx.Client(transport=transport) as client:
        page = client.get(front["https"] + "/")
        assert CLIENT_ADDRESS.search(page.text).group(1) == "127.0.0.1"  # type: ignore[union-attr]
        assert "strict-transport-security" not in page.headers


# -- /docs ----------------------------------------------------------------------------------------


def test_docs_page_served_from_the_service_itself(tmp_path: Path) -> None:
    with Serve(tmp_path) as web:
        assets = httpx.get(web.url + "/docs/assets/swagger-ui-bundle.js")
        assert assets.status_code == 200 and len(assets.content) > 500_000
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            problems: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(web.url + "/docs")
            page.locator(".opblock-summary-path", has_text="/api/scans").first.wait_for(
                timeout=30000)
            assert page.locator(".opblock").count() >= 6
            page.locator(".opblock-summary", has_text="POST").first.click()
            page.locator(".opblock-body").first.wait_for()
            page.screenshot(path=str(ARTIFACTS / "docs.png"), full_page=False)
            assert problems == [], problems
            foreign = [u for u in requests if not u.startswith(web.url + "/")]
            assert foreign == [], foreign
            assert web.url + "/openapi.json" in requests
            assert any(u.endswith("/docs/assets/swagger-ui.css") for u in requests)
