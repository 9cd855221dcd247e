"""`vncaudit serve`: run the web service (online VNC port checker + JSON API) with uvicorn.

Owns: the command's options, reading the TOML config, the `VNCAUDIT_SERVE_*` environment and
the token-hash file into `vncaudit.web.Settings`, the default Host names (the bound address
and the localhost names), checking the TLS files and the access log before the banner, minting
a new API token (`--new-token`), and starting uvicorn on the embedded default (the SQLite
store, in-process workers), over TLS when given a certificate. Must not: hold web logic (that
is `vncaudit.web`) or print anything but what the command is asked for.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vncaudit.cli.common import DbOpt, fail, finite, require_extra, setup_logging
from vncaudit.cli.program import app

if TYPE_CHECKING:  # the web extra may be missing: `serve` says how to get it
    from vncaudit.web.settings import Settings


@app.command(epilog="""Examples:

  vncaudit serve                                  http://127.0.0.1:8080/
  vncaudit serve --config /etc/vncaudit/serve.toml
  vncaudit serve --tls-cert c.pem --tls-key k.pem HTTPS, HSTS, Secure cookie
  vncaudit serve --allowed-host vnc.example.org   answer to this name only
  vncaudit serve --new-token                      a token for --token-file

Settings also come from VNCAUDIT_SERVE_<SETTING> variables, e.g.
VNCAUDIT_SERVE_WORKERS=8 (lists comma-separated); options beat them,
and they beat --config. Deployment: docs/deploy.md.""")
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port to listen on.")] = 8080,
    db: DbOpt = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML file with the service settings (a [serve] table; "
                     "see README)."),
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", help="Allow-list a CIDR or domain (repeatable). Without it, "
                     "each client may check only its own public address."),
    ] = None,
    only_allow_list: Annotated[
        bool,
        typer.Option("--only-allow-list", help="Refuse the client's own address unless it is "
                     "allow-listed too."),
    ] = False,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option("--trusted-proxy", help="CIDR of a reverse proxy whose X-Forwarded-For "
                     "is believed (repeatable); without it the header is ignored."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File of API token hashes (sha256:<hex>, one a "
                     "line); when given, /api/* needs 'Authorization: Bearer <token>'."),
    ] = None,
    new_token: Annotated[
        bool,
        typer.Option("--new-token", help="Print a new API token and the hash line for "
                     "--token-file, then exit."),
    ] = False,
    assume_exposure: Annotated[
        str | None,
        typer.Option("--assume-exposure", help="Grade findings as for this exposure (public, "
                     "private, loopback); default: by each checked address."),
    ] = None,
    allow_screenshots: Annotated[
        bool,
        typer.Option("--allow-screenshots", help="Offer the screenshot proof (one PNG of each "
                     "service that needs no password; off by default: the images are stored)."),
    ] = False,
    monitors: Annotated[
        Path | None,
        typer.Option("--monitors", metavar="FILE", help="Also run the monitors of this "
                     "monitors.toml (as vncaudit watch does); off by default. The /monitors "
                     "page and /api/monitors show them."),
    ] = None,
    retention: Annotated[
        str | None,
        typer.Option("--retention", metavar="DURATION", help="Delete scans older than this "
                     "daily (e.g. 90d); each monitor's latest cycle is kept."),
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Scans at once (4).")] = None,
    max_ports: Annotated[
        int | None, typer.Option("--max-ports", help="Ports per scan at most (65535).")] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", callback=finite,
                     help="Scan submissions per minute per client address (10)."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", callback=finite,
                                   help="Probe deadline in seconds (5).")] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", metavar="NAME",
                     help="A Host name the service answers to (repeatable; *.example.org for "
                     "subdomains). Default: the --host address and localhost names; others "
                     "get 400 (DNS rebinding)."),
    ] = None,
    access_log: Annotated[
        str | None,
        typer.Option("--access-log", metavar="FILE|-",
                     help="Log one line per request to FILE (appended) or stderr (-)."),
    ] = None,
    access_log_format: Annotated[
        str | None,
        typer.Option("--access-log-format", metavar="plain|json",
                     help="Access log lines: plain (combined log format) or json."),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", metavar="PEM", help="Serve HTTPS with this certificate "
                     "(chain) file; needs --tls-key. Adds HSTS and Secure cookies."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", metavar="PEM", help="The private key of --tls-cert."),
    ] = None,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, help="More log lines (-vv: debug).")
    ] = 0,
) -> None:
    """Run the web service: a check form, live progress, results with fix commands, history,
    and the JSON API (OpenAPI at /openapi.json, Prometheus metrics at /metrics).

    \f
    Length: the option declarations are the command's interface (typer reads them from the
    signature); the body is a few calls to helpers."""
    setup_logging(verbose)
    require_extra("web", ("fastapi", "uvicorn", "multipart", "prometheus_client"),
                  "vncaudit serve")
    if new_token:
        _print_new_token()
        return
    if not 1 <= port <= 65535:
        raise fail(f"invalid --port {port}: must be 1-65535")
    settings = _settings(config, host, _SettingsOptions(
        db, tuple(allow or ()), tuple(trusted_proxy or ()), only_allow_list, allow_screenshots,
        tuple(allowed_host or ()), monitors, retention, assume_exposure, workers, max_ports,
        rate, timeout, access_log, access_log_format, tls_cert, tls_key, token_file))
    _check_before_start(settings)
    _serve(settings, host, port)


def _print_new_token() -> None:
    from vncaudit.web.settings import hash_token, new_token

    token = new_token()
    typer.echo(f"token: {token}")
    typer.echo(f"hash:  {hash_token(token)}   # put this line in the --token-file")


@dataclass(frozen=True)
class _SettingsOptions:
    """The options of `serve` that set a service setting; each beats the environment and the
    --config file when given (an empty tuple, False or None: not given)."""

    db: Path | None
    allow: tuple[str, ...]
    trusted_proxy: tuple[str, ...]
    only_allow_list: bool
    allow_screenshots: bool
    allowed_host: tuple[str, ...]
    monitors: Path | None
    retention: str | None
    assume_exposure: str | None
    workers: int | None
    max_ports: int | None
    rate: float | None
    timeout: float | None
    access_log: str | None
    access_log_format: str | None
    tls_cert: Path | None
    tls_key: Path | None
    token_file: Path | None

    def overrides(self) -> dict[str, object]:
        """The given options as `Settings.load` keywords, the token file not yet read."""
        overrides: dict[str, object] = {}
        if self.db is not None:
            overrides["db_path"] = str(self.db)
        if self.allow:
            overrides["allow"] = self.allow
        if self.trusted_proxy:
            overrides["trusted_proxies"] = self.trusted_proxy
        if self.only_allow_list:
            overrides["allow_own_address"] = False
        if self.allow_screenshots:
            overrides["allow_screenshots"] = True
        if self.allowed_host:
            overrides["allowed_hosts"] = self.allowed_host
        if self.monitors is not None:
            overrides["monitors"] = str(self.monitors.expanduser().absolute())
        if self.retention is not None:
            overrides["retention"] = self.retention
        for key, value in (
                ("assume_exposure", self.assume_exposure), ("workers", self.workers),
                ("max_ports", self.max_ports), ("rate_per_minute", self.rate),
                ("probe_timeout", self.timeout), ("access_log", self.access_log),
                ("access_log_format", self.access_log_format),
                ("tls_cert", str(self.tls_cert) if self.tls_cert is not None else None),
                ("tls_key", str(self.tls_key) if self.tls_key is not None else None)):
            if value is not None:
                overrides[key] = value
        return overrides


def _settings(config: Path | None, host: str, options: _SettingsOptions) -> Settings:
    """The service settings: the options over the environment over --config; the Host
    names default to the bound address and the localhost names."""
    from vncaudit.web.settings import Settings, tokens_from

    overrides = options.overrides()
    try:
        if options.token_file is not None:
            overrides["token_hashes"] = tokens_from(_token_lines(options.token_file))
        settings = Settings.load(config, os.environ, **overrides)
        if not settings.allowed_hosts:
            settings = settings.with_changes(allowed_hosts=default_hosts(host))
    except OSError as exc:
        raise fail(f"cannot read {exc.filename}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise fail(f"bad settings: {exc}") from None
    return settings


def _check_before_start(settings: Settings) -> None:
    """What can be checked before the banner: the TLS files, the access log, the monitors
    file and the lock of another watcher."""
    _check_tls(settings.tls_cert, settings.tls_key)
    _check_access_log(settings.access_log)
    if settings.monitors:
        from vncaudit.watch import ConfigError, load

        try:
            load(settings.monitors)  # checked here: a mistake is one line, not a failed start-up
        except ConfigError as exc:
            raise fail(str(exc)) from None
        _check_runner_lock(settings.db_path)


def _serve(settings: Settings, host: str, port: int) -> None:
    """Listen, print where, and run uvicorn until Ctrl-C."""
    import uvicorn

    from vncaudit.web import create_app

    sock = _listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls_cert else "http"
    typer.echo(f"vncaudit web service on {scheme}://{shown}:{port}/ (Ctrl-C stops)", err=True)
    typer.echo(f"answers to Host: {', '.join(settings.hosts())} (set by --allowed-host)",
               err=True)
    tls: dict[str, object] = ({"ssl_certfile": settings.tls_cert,
                               "ssl_keyfile": settings.tls_key} if settings.tls_cert else {})
    server_config = uvicorn.Config(create_app(settings), host=host, port=port,
                                   log_level="warning", proxy_headers=False, server_header=False,
                                   **tls)  # type: ignore[arg-type]
    try:
        uvicorn.Server(server_config).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn has shut down gracefully and passes the Ctrl-C on: for a server that is
        # the normal way to stop, not an error.
        pass
    typer.echo("vncaudit web service stopped", err=True)


def default_hosts(bind: str) -> tuple[str, ...]:
    """The Host names answered when none are configured: the localhost names and the bound
    address; for a wildcard bind (0.0.0.0, ::) every address of this machine's interfaces and
    its host name, since any of them reaches the socket."""
    import ipaddress

    from vncaudit.web.security import LOCAL_HOSTS

    names = list(LOCAL_HOSTS)
    try:
        ip = ipaddress.ip_address(bind.strip("[]"))
    except ValueError:
        names.append(bind)  # a name given as --host
        return tuple(dict.fromkeys(names))
    if not ip.is_unspecified:
        names.append(str(ip))
        return tuple(dict.fromkeys(names))
    import psutil  # type: ignore[import-untyped]

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                text = address.address.split("%", 1)[0]  # fe80::1%eth0: the zone is no name
                names.append(text)
    names.append(socket.gethostname().lower())
    return tuple(dict.fromkeys(n for n in names if n))


def _check_tls(cert: str, key: str) -> None:
    """Load the certificate and key once now, so a wrong file is one line before the
    banner, not a traceback from inside uvicorn."""
    if not cert:
        return
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise fail(f"--tls-cert/--tls-key: {cert} and {key} are not a PEM certificate and "
                    f"its private key ({exc.reason or exc})") from None
    except OSError as exc:
        raise fail(f"--tls-cert/--tls-key: cannot read {exc.filename or cert}: "
                    f"{exc.strerror}") from None


def _check_access_log(target: str) -> None:
    if not target or target == "-":
        return
    try:
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise fail(f"access log {target}: {exc.strerror or exc}") from None


def _check_runner_lock(db_path: str) -> None:
    """Another process running these monitors is one line here, not a failed start-up."""
    from vncaudit.store import StoreError, default_db_path
    from vncaudit.watch.runner import RunnerLock

    lock = RunnerLock(Path(db_path).expanduser() if db_path else default_db_path())
    try:
        lock.acquire()
    except StoreError as exc:
        raise fail(str(exc), 3) from None
    lock.release()


def _token_lines(path: Path) -> list[str]:
    """The lines of --token-file, each checked, so a wrong line is named with its number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise fail(f"--token-file {path}: not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if entry and not re.fullmatch(r"sha256:[0-9a-f]{64}", entry):
            hint = (" (that is a token itself: the file holds its hash line, as printed by "
                     "--new-token)" if entry.startswith("vnca_") else "")
            raise fail(f"--token-file {path}:{number}: not a token hash "
                        f"(sha256:<64 hex digits>){hint}")
    return lines


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here rather than inside uvicorn, so that a port in use, a
    privileged port or a bad --host is one `vncaudit: error:` line before the banner."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise fail(f"invalid --host {host!r}: {why}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = {errno.EACCES: " (ports below 1024 need root)" if port < 1024 else "",
                errno.EADDRINUSE: " (another process listens there; choose another --port)",
                errno.EADDRNOTAVAIL: " (no interface of this machine has that address)",
                }.get(exc.errno or 0, "")
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}", 3) from None
    sock.set_inheritable(True)
    return sock
