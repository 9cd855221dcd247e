"""Real alert receivers for the watch tests, each a separate process on loopback.

Owns: an HTTP(S) webhook receiver and an SMTP server (aiosmtpd, STARTTLS required, AUTH LOGIN /
only LOGIN offered), both honouring the alert's idempotency key (the HTTP ``Idempotency-Key``
header, the mail's ``Message-ID``): a repeat is answered like the first but not processed
again. Each logs what it saw as JSON lines to a file the test reads (a webhook's ``type``,
``text``, ``alert`` and ``digest``): ``arrived`` (the request came in), then ``accepted``
(first time for that key) or ``duplicate``.

HTTP paths: ``/hook`` answers 200; ``/slow/N`` logs the arrival, waits N seconds, then
processes and answers 200; ``/status/NNN`` answers NNN (a 3xx with a Location). Helpers to
start them (`start_http`, `start_smtp`) and to make a self-signed certificate
(`self_signed`) are importable; ``python tests/receivers.py http|smtp ...`` runs one.

Must not: listen anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
HOST = "127.0.0.1"
SMTP_USER = "alerts"
SMTP_PASSWORD = "s3cret-pass"


def self_signed(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (openssl); returns (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class _Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.seen: set[str] = set()

    def write(self, **entry: Any) -> None:
        entry["time"] = time.time()
        with self.lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    def process(self, key: str, **entry: Any) -> None:
        with self.lock:
            first = key not in self.seen
            self.seen.add(key)
        self.write(event="accepted" if first else "duplicate", key=key, **entry)


def monitors_toml(db: Path, smtp_port: int, hook_port: int, cert: Path, monitor: str) -> str:
    """A monitors.toml whose store is `db`, with the SMTP receiver on `smtp_port` (its test
    login, the password in a file `pw` next to the config, `cert` as its CA), the HTTP receiver
    on `hook_port` as webhook `ops`, and `monitor` as the body of `[monitor.lab]`."""
    return f"""
db = "{db}"
[smtp]
host = "127.0.0.1"
port = {smtp_port}
username = "{SMTP_USER}"
password_file = "pw"
from = "vncaudit@example.org"
ca_file = "{cert}"
[webhook.ops]
url = "http://127.0.0.1:{hook_port}/hook"
[monitor.lab]
{monitor.strip()}
"""


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# HTTP


def _http_handler(log: _Log, secret: bytes | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            key = self.headers.get("Idempotency-Key") or ""
            stamp = self.headers.get("X-Vncaudit-Timestamp") or ""
            signature = self.headers.get("X-Vncaudit-Signature")
            signed: bool | None = None
            if secret is not None:
                expected = "sha256=" + hmac.new(secret, stamp.encode() + b"." + body,
                                                hashlib.sha256).hexdigest()
                signed = signature is not None and hmac.compare_digest(expected, signature)
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {}
            entry = {"key": key, "path": self.path, "signature_ok": signed,
                     "has_signature": signature is not None, "text": doc.get("text"),
                     "type": doc.get("type"), "alert": doc.get("alert"),
                     "digest": doc.get("digest")}
            log.write(event="arrived", **entry)
            parts = self.path.strip("/").split("/")
            if parts[0] == "status" and len(parts) > 1:
                code = int(parts[1])
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", "https://elsewhere.invalid/hook")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if parts[0] == "slow" and len(parts) > 1:
                time.sleep(float(parts[1]))
            entry.pop("key")
            log.process(key, **entry)
            reply = b'{"ok":true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(reply)

    return Handler


def serve_http(port: int, log_path: Path, secret: str | None, cert: str | None,
               key: str | None) -> None:
    log = _Log(log_path)
    server = ThreadingHTTPServer((HOST, port), _http_handler(log, secret.encode()
                                                              if secret else None))
    server.daemon_threads = True
    if cert and key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


# ---------------------------------------------------------------------------------------------
# SMTP


def _login(session: Any) -> str | None:
    data = getattr(session, "auth_data", None)
    login = getattr(data, "login", None)
    return login.decode() if isinstance(login, bytes) else None


def serve_smtp(port: int, log_path: Path, cert: str, key: str) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    log = _Log(log_path)

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            message = message_from_bytes(envelope.original_content or envelope.content)
            key = str(message.get("Message-ID") or "")
            log.write(event="arrived", key=key, rcpt=list(envelope.rcpt_tos))
            log.process(key, rcpt=list(envelope.rcpt_tos), subject=str(message["Subject"]),
                        body=message.get_payload(decode=True).decode(errors="replace"),
                        idempotency=str(message.get("X-Vncaudit-Idempotency-Key") or ""),
                        tls=session.ssl is not None,
                        login=_login(session))
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode()
              and auth_data.password == SMTP_PASSWORD.encode())
        log.write(event="auth", mechanism=mechanism, ok=ok)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    controller = Controller(Handler(), hostname=HOST, port=port, tls_context=context,
                            require_starttls=True, auth_required=True, auth_require_tls=True,
                            authenticator=authenticator, ready_timeout=10,
                            # Only LOGIN, as many corporate relays offer it: the client must
                            # not depend on PLAIN.
                            auth_exclude_mechanism=["PLAIN"])
    controller.start()
    print(f"ready {controller.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    controller.stop()


# ---------------------------------------------------------------------------------------------
# Starting them from a test


@dataclass
class Receiver:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    def entries(self, event: str | None = None) -> list[dict[str, Any]]:
        return [e for e in read_log(self.log) if event is None or e["event"] == event]

    def wait_for(self, event: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.entries(event)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        return self.entries(event)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start(args: list[str], log: Path) -> Receiver:
    proc = subprocess.Popen([sys.executable, str(HERE), *args, "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "ready":
        proc.kill()
        raise RuntimeError(f"receiver did not start: {proc.stderr.read() if proc.stderr else ''}")
    return Receiver(proc, int(line[1]), log)


@contextlib.contextmanager
def http_receiver(log: Path, secret: str | None = None, cert: Path | None = None,
                  key: Path | None = None, port: int = 0) -> Iterator[Receiver]:
    args = ["http", "--port", str(port)]
    if secret:
        args += ["--secret", secret]
    if cert and key:
        args += ["--cert", str(cert), "--key", str(key)]
    receiver = _start(args, log)
    try:
        yield receiver
    finally:
        receiver.stop()


@contextlib.contextmanager
def smtp_receiver(log: Path, cert: Path, key: Path) -> Iterator[Receiver]:
    receiver = _start(["smtp", "--port", "0", "--cert", str(cert), "--key", str(key)], log)
    try:
        yield receiver
    finally:
        receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("http", "smtp"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--secret")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    opts = parser.parse_args()
    if opts.kind == "http":
        serve_http(opts.port, opts.log, opts.secret, opts.cert, opts.key)
    else:
        if opts.port == 0:
            import socket

            with socket.socket() as s:
                s.bind((HOST, 0))
                opts.port = s.getsockname()[1]
        serve_smtp(opts.port, opts.log, opts.cert, opts.key)


if __name__ == "__main__":
    main()
